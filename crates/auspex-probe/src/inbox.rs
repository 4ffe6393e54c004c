//! Where a probe's records become events, between the kernel's buffer and
//! the caller of `poll`: decoded, and UDP releases turned into closes.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use auspex_events::Event;

use crate::clock::BootClock;
use crate::decode::{Context, Decoded, Decoder};
use crate::stats::{KernelDrops, ProbeStats};
use crate::udp_sockets::UdpSockets;

/// UDP sockets whose opens are remembered until they are released.
const UDP_SOCKETS_TRACKED: usize = 65536;

pub(crate) struct Inbox {
    decoder: Decoder,
    udp: UdpSockets,
    events: VecDeque<Event>,
    /// Put each batch in the order of the events' times before handing it
    /// over: set for a perf event array, whose per-CPU buffers are read one
    /// after the other, so that a process's connect on one CPU could
    /// otherwise be handed over before its exec on another (and be
    /// enriched with the image before the exec: measured in the PID reuse
    /// test, tests/identity_checks). A ring buffer is one queue already.
    by_time: bool,
}

impl Inbox {
    /// An empty inbox, shared between a probe and its reader's callback.
    pub(crate) fn shared() -> Rc<RefCell<Inbox>> {
        Self::shared_in_order(false)
    }

    /// As `shared`; `by_time`: see [`Inbox::by_time`].
    pub(crate) fn shared_in_order(by_time: bool) -> Rc<RefCell<Inbox>> {
        Rc::new(RefCell::new(Inbox {
            decoder: Decoder::new(Context::new(BootClock::now())),
            udp: UdpSockets::new(UDP_SOCKETS_TRACKED),
            events: VecDeque::new(),
            by_time,
        }))
    }

    /// Takes one record from the kernel.
    pub(crate) fn take(&mut self, record: &[u8]) {
        match self.decoder.decode(record) {
            Some(Decoded::Event(event)) => {
                self.udp.observe(&event);
                self.events.push_back(*event);
            }
            Some(Decoded::UdpReleased { time, sock_id }) => {
                self.events.extend(self.udp.release(sock_id, time));
            }
            None => {}
        }
    }

    /// Hands every waiting event over; returns how many.
    pub(crate) fn deliver(&mut self, on_event: &mut dyn FnMut(Event)) -> usize {
        if self.by_time {
            // Stable: events of one time keep the order they came in.
            self.events.make_contiguous().sort_by_key(|e| e.time);
        }
        let events = std::mem::take(&mut self.events);
        let n = events.len();
        events.into_iter().for_each(on_event);
        n
    }

    /// The probe's statistics: `kernel_drops` and what this inbox counted.
    pub(crate) fn stats(&self, kernel_drops: KernelDrops) -> ProbeStats {
        ProbeStats {
            kernel_drops,
            decode: self.decoder.stats(),
            udp_sockets_forgotten: self.udp.forgotten(),
        }
    }
}
