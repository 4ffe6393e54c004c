//! How one of the agent's threads wakes another that waits for work (the
//! reader waking the pipeline, the pipeline a sink's writer): a flag under
//! a mutex and a condition variable, which waits in the kernel at once.
//!
//! A channel's blocking receive (crossbeam's) first spins, then yields the
//! CPU a few times before it sleeps. With the agent's threads on one CPU
//! (as on a node that gives it one), each yield ran the other waiting
//! thread, which yielded back: `sched_yield` under crossbeam's
//! `Backoff::snooze` was 32 % of the agent's CPU in an ebpf TCP storm
//! (perf, `--call-graph dwarf`, issue 19). The queues stay channels; only
//! the waiting is done here.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Doorbell {
    state: Mutex<State>,
    rung: Condvar,
}

#[derive(Default)]
struct State {
    rung: bool,
    closed: bool,
}

/// Why a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    Rung,
    /// Closed: nothing more comes (whatever was sent before is there).
    Closed,
    TimedOut,
}

impl Doorbell {
    /// Wakes the waiter, or the next wait at once if none waits now.
    pub fn ring(&self) {
        let mut state = self.state.lock().unwrap();
        if !state.rung {
            state.rung = true;
            drop(state);
            self.rung.notify_one();
        }
    }

    /// Ends every wait, now and later.
    pub fn close(&self) {
        self.state.lock().unwrap().closed = true;
        self.rung.notify_all();
    }

    /// Waits until rung (since the last wait) or closed, or `timeout` has
    /// passed (None: no timeout).
    pub fn wait(&self, timeout: Option<Duration>) -> Wake {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = self.state.lock().unwrap();
        loop {
            if state.closed {
                return Wake::Closed;
            }
            if std::mem::take(&mut state.rung) {
                return Wake::Rung;
            }
            state = match deadline {
                None => self.rung.wait(state).unwrap(),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Wake::TimedOut;
                    }
                    self.rung.wait_timeout(state, left).unwrap().0
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_ring_before_the_wait_is_kept_once_and_close_ends_every_wait() {
        let bell = Doorbell::default();
        bell.ring();
        bell.ring();
        assert_eq!(bell.wait(Some(Duration::ZERO)), Wake::Rung);
        assert_eq!(bell.wait(Some(Duration::from_millis(10))), Wake::TimedOut);
        bell.ring();
        bell.close();
        assert_eq!(bell.wait(None), Wake::Closed);
        assert_eq!(bell.wait(None), Wake::Closed);
    }

    #[test]
    fn a_waiter_on_another_thread_is_woken() {
        let bell = Arc::new(Doorbell::default());
        let waiter = std::thread::spawn({
            let bell = Arc::clone(&bell);
            move || (bell.wait(Some(Duration::from_secs(30))), bell.wait(None))
        });
        std::thread::sleep(Duration::from_millis(20));
        bell.ring();
        // The first wait took the ring; the second waits for the close.
        std::thread::sleep(Duration::from_millis(20));
        bell.close();
        assert_eq!(waiter.join().unwrap(), (Wake::Rung, Wake::Closed));
    }
}
