//! One sink behind a bounded queue, written by a thread of its own. A sink
//! that blocks (a FIFO whose reader stopped reading, a terminal paused with
//! ^S, a disk that takes seconds per write) then blocks only that thread:
//! the pipeline hands each event over without waiting, the run loop keeps
//! its timers and notices a stop, and the reader keeps draining the kernel
//! buffer. When the queue is full the sink loses its oldest event, counted:
//! what it gets when it resumes is the most recent activity, as a gRPC
//! subscriber that falls behind does (grpc.rs).
//!
//! Before the queues (issue 16), a FIFO nobody read kept SIGTERM waiting
//! for 19 s (until the reader died), `/ready` said 200, and 55,038 events
//! were lost at the reader's queue while the summary claimed 333 written.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::sink::Sink;
use crate::status::{monotonic_ms, now_secs, SinkStatus};

/// A write or flush that has not returned for this long makes its sink
/// stalled (and the agent not ready); so does a queue that lost an event
/// within this long. Writes of a 64 KiB buffer to a file take well under a
/// millisecond here, and to a pipe as long as its reader takes to read
/// 64 KiB; seconds means the reader stopped reading.
pub const STALL_AFTER: Duration = Duration::from_secs(2);

/// Events a writer takes before it flushes, so that a sink under constant
/// load still flushes (and counts what it wrote) regularly.
const BATCH: u64 = 1024;

/// Events handed over before the writer is woken without waiting for the
/// end of the pipeline's batch: waking it for each event costs a futex call
/// on both sides (perf, a TCP storm of 160,000 events: 2,559 futex calls
/// with the writer woken per batch, the agent's main loop alone made 210).
const WAKE_EVERY: usize = 256;

/// One event's JSON, serialised once for every sink.
pub type Json = Arc<String>;

/// One event's type and JSON.
type Item = (&'static str, Json);

/// The JSON a writer is done with, handed back so that the pipeline's
/// thread frees what it allocated: freed by the writer, each free took
/// glibc's lock of the pipeline's arena (perf: `__lll_lock_wait_private`
/// in the writer, `__lll_lock_wake_private` in the pipeline). With both,
/// the storm above costs the agent 88-89 ticks of CPU instead of 92-97
/// (release build; main before the queues: 71-75, of which the collector
/// thread 42-45 against 51-53 now, the writes moved to the writer thread).
/// The pipeline now reuses them (`Recycled`) rather than freeing them.
type Used = Vec<Json>;

/// Buffers of JSON the sinks are done with, for the next events: no
/// allocation, no copy per event (issue 19: before, each event's JSON was
/// copied into an `Arc<str>` of its own, a malloc, a memmove and a free).
#[derive(Default)]
pub struct Recycled {
    buffers: Vec<Json>,
}

/// Buffers kept at most: what a writer hands back per round at high rates
/// (WAKE_EVERY events, or a batch), about 1 KiB each for process and
/// connection events.
const RECYCLED_MAX: usize = 1024;
/// A larger buffer (a delta of a big table) is freed, not kept.
const RECYCLED_CAPACITY_MAX: usize = 64 * 1024;

impl Recycled {
    /// An empty buffer: a used one when there is one.
    pub fn take(&mut self) -> Json {
        match self.buffers.pop() {
            Some(json) => json,
            None => Arc::new(String::with_capacity(1024)),
        }
    }

    /// Whether it holds no buffer.
    pub fn is_empty(&self) -> bool {
        self.buffers.is_empty()
    }

    /// Keeps `json` for reuse once nothing else holds it (the last sink
    /// that had it gave it back).
    pub fn give(&mut self, json: Json) {
        if Arc::strong_count(&json) == 1
            && json.capacity() <= RECYCLED_CAPACITY_MAX
            && self.buffers.len() < RECYCLED_MAX
        {
            self.buffers.push(json);
        }
    }
}

/// What the writer thread tells the pipeline's side.
#[derive(Default)]
struct Shared {
    /// Events the sink took and flushed.
    written: AtomicU64,
    /// Events the sink did not want (a gRPC stream without subscribers).
    unwanted: AtomicU64,
    /// When the call into the sink that has not returned yet began
    /// (`monotonic_ms`); 0 when none is under way.
    busy_since: AtomicU64,
    /// The error that ended the sink.
    error: Mutex<Option<io::Error>>,
}

/// A sink's queue, as the pipeline holds it.
pub struct Queued {
    /// As in metrics labels and drop causes: `output`, `grpc`.
    pub id: &'static str,
    /// As in messages: `the output`.
    pub name: &'static str,
    /// Dropped to tell the writer that nothing more comes.
    sender: Option<Sender<Item>>,
    /// The same channel, to take the oldest event out when it is full.
    oldest: Option<Receiver<Item>>,
    /// Wakes the writer: it waits on this, not on the queue (dropped with
    /// the queue).
    doorbell: Option<Sender<()>>,
    /// Events handed over since the writer was last woken.
    unrung: usize,
    /// What the writer is done with, to free here.
    used: Receiver<Used>,
    capacity: usize,
    shared: Arc<Shared>,
    /// Disconnected when the writer thread has ended.
    done: Receiver<()>,
    /// The drop cause of events lost to a full queue: `<id>_queue_full`.
    pub lost_cause: &'static str,
    /// Events handed to the queue.
    handed: u64,
    /// Events lost because the queue was full.
    lost: u64,
    /// Since when it loses events, and when it last lost one.
    losing: Option<(u64, u64)>,
}

/// What a sink did, at the end.
#[derive(Debug)]
pub struct SinkReport {
    pub id: &'static str,
    pub name: &'static str,
    pub written: u64,
    /// Lost while the run went on: its queue was full.
    pub lost: u64,
    /// Still queued, or written but not flushed, when the writer was given
    /// up (the flush deadline passed, or the sink failed).
    pub left: u64,
    pub error: Option<io::Error>,
}

impl SinkReport {
    /// Events the sink should have had and did not get.
    pub fn undelivered(&self) -> u64 {
        self.lost + self.left
    }
}

impl Queued {
    /// Starts the writer thread of `sink`, with room for `capacity` events.
    pub fn start(id: &'static str, sink: Box<dyn Sink>, capacity: usize) -> io::Result<Queued> {
        // Unbounded, held to `capacity` by its only sender: a bounded
        // channel allocates every slot up front (see collect/reader.rs).
        let (sender, receiver) = crossbeam_channel::unbounded();
        let (doorbell, rings) = crossbeam_channel::bounded(1);
        let (give_back, used) = crossbeam_channel::unbounded();
        let (done_sender, done) = crossbeam_channel::bounded::<()>(0);
        let shared = Arc::new(Shared::default());
        let name = sink.name();
        let oldest = receiver.clone();
        std::thread::Builder::new()
            .name(format!("sink-{id}"))
            .spawn({
                let shared = Arc::clone(&shared);
                move || {
                    // Writing to descriptors already open needs no
                    // capability; this thread exists before the lockdown,
                    // which reaches only the thread that applies it.
                    crate::lockdown::drop_all_for_this_thread();
                    if let Err(e) = write_all(sink, &receiver, &rings, &give_back, &shared) {
                        *shared.error.lock().unwrap() = Some(e);
                    }
                    drop(done_sender);
                }
            })?;
        Ok(Queued {
            id,
            name,
            sender: Some(sender),
            oldest: Some(oldest),
            doorbell: Some(doorbell),
            unrung: 0,
            used,
            capacity,
            shared,
            done,
            lost_cause: Box::leak(format!("{id}_queue_full").into_boxed_str()),
            handed: 0,
            lost: 0,
            losing: None,
        })
    }

    /// Hands one event to the writer; when the queue is full, its oldest
    /// event is lost to make room.
    pub fn push(&mut self, kind: &'static str, json: &Json, recycled: &mut Recycled) {
        let (Some(sender), Some(oldest)) = (&self.sender, &self.oldest) else {
            return;
        };
        self.handed += 1;
        // The writer may take one meanwhile: then there is room anyway.
        while sender.len() >= self.capacity {
            if oldest.try_recv().is_ok() {
                self.lost += 1;
                let now = monotonic_ms();
                let since = match self.losing {
                    // Still the same episode: it lost one within the last
                    // STALL_AFTER.
                    Some((since, last)) if now - last < STALL_AFTER.as_millis() as u64 => since,
                    _ => now,
                };
                self.losing = Some((since, now));
            }
        }
        // Fails only when the writer has gone, which `failed` reports.
        let _ = sender.send((kind, Arc::clone(json)));
        self.unrung += 1;
        if self.unrung >= WAKE_EVERY {
            self.wake(recycled);
        }
    }

    /// Wakes the writer for what was handed over (and takes back what it
    /// is done with).
    fn wake(&mut self, recycled: &mut Recycled) {
        if let Some(doorbell) = &self.doorbell {
            // Full: it is woken already, and takes everything there is.
            let _ = doorbell.try_send(());
        }
        self.unrung = 0;
        self.reclaim(recycled);
    }

    /// Takes back the buffers the writer is done with.
    pub fn reclaim(&mut self, recycled: &mut Recycled) {
        self.used
            .try_iter()
            .flatten()
            .for_each(|json| recycled.give(json));
    }

    /// Events lost because the queue was full.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// The end of the pipeline's batch: the writer writes (and flushes)
    /// what it was handed.
    pub fn flush(&mut self, recycled: &mut Recycled) {
        if self.unrung > 0 {
            self.wake(recycled);
        }
    }

    /// Whether the sink failed (its writer ended with an error).
    pub fn failed(&self) -> bool {
        self.shared.error.lock().unwrap().is_some()
    }

    /// The sink as /status shows it.
    pub fn status(&self) -> SinkStatus {
        let now = monotonic_ms();
        let stall = STALL_AFTER.as_millis() as u64;
        let busy = match self.shared.busy_since.load(Ordering::Relaxed) {
            0 => None,
            since if now - since >= stall => Some(since),
            _ => None,
        };
        let losing = self
            .losing
            .filter(|(_, last)| now - last < stall)
            .map(|(since, _)| since);
        let stalled = match (busy, losing) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let why = match (busy, losing) {
            (Some(since), _) => Some(format!(
                "a write has not returned for {} s",
                (now - since) / 1000
            )),
            (None, Some(_)) => Some("it cannot keep up: its queue is full".to_string()),
            (None, None) => None,
        };
        SinkStatus {
            sink: self.id,
            written: self.shared.written.load(Ordering::Relaxed),
            queued: self.sender.as_ref().map_or(0, |s| s.len() as u64),
            capacity: self.capacity as u64,
            lost: self.lost,
            stalled_since: stalled.map(|since| now_secs().saturating_sub((now - since) / 1000)),
            stalled_for_s: stalled.map(|since| (now - since) / 1000),
            stalled: why,
            error: self
                .shared
                .error
                .lock()
                .unwrap()
                .as_ref()
                .map(|e| e.to_string()),
        }
    }

    /// Tells the writer that nothing more comes: it writes what is queued,
    /// then finishes the sink.
    pub fn close(&mut self) {
        self.sender = None;
        self.oldest = None;
        self.doorbell = None;
    }

    /// Closes the queue and waits for the writer until `deadline` at the
    /// latest; what the sink did.
    pub fn finish(mut self, deadline: Instant) -> SinkReport {
        self.close();
        let _ = self.done.recv_deadline(deadline);
        let written = self.shared.written.load(Ordering::Relaxed);
        let unwanted = self.shared.unwanted.load(Ordering::Relaxed);
        SinkReport {
            id: self.id,
            name: self.name,
            written,
            lost: self.lost,
            left: self.handed.saturating_sub(self.lost + written + unwanted),
            error: self.shared.error.lock().unwrap().take(),
        }
    }
}

/// The writer thread: when woken, takes every event off the queue into
/// the sink and flushes; once the queue is closed, finishes the sink.
fn write_all(
    mut sink: Box<dyn Sink>,
    queue: &Receiver<Item>,
    rings: &Receiver<()>,
    give_back: &Sender<Used>,
    shared: &Shared,
) -> io::Result<()> {
    // Every call into the sink is timed, for /status: one that does not
    // return is a stalled sink.
    let call = |f: &mut dyn FnMut() -> io::Result<()>| {
        shared.busy_since.store(monotonic_ms(), Ordering::Relaxed);
        let result = f();
        shared.busy_since.store(0, Ordering::Relaxed);
        result
    };
    let mut open = true;
    while open {
        // Disconnected: the queue is closed, and this is the last round.
        open = rings.recv().is_ok();
        // Written to the sink, not yet flushed.
        let mut pending = 0;
        let mut used = Used::with_capacity(queue.len());
        // The writes are timed by the BATCH (from its first write to its
        // flush), not one by one: two clock reads per event were 1 % of the
        // agent's CPU in a TCP storm (issue 19), and a batch that takes
        // STALL_AFTER is a stalled sink too.
        shared.busy_since.store(monotonic_ms(), Ordering::Relaxed);
        let writes = (|| {
            for (kind, json) in queue.try_iter() {
                if sink.wants() {
                    sink.write(kind, &json)?;
                    pending += 1;
                } else {
                    shared.unwanted.fetch_add(1, Ordering::Relaxed);
                }
                used.push(json);
                if pending >= BATCH {
                    sink.flush()?;
                    shared.written.fetch_add(pending, Ordering::Relaxed);
                    pending = 0;
                    shared.busy_since.store(monotonic_ms(), Ordering::Relaxed);
                }
            }
            io::Result::Ok(())
        })();
        shared.busy_since.store(0, Ordering::Relaxed);
        writes?;
        let end = |sink: &mut Box<dyn Sink>| match open {
            true => sink.flush(),
            false => sink.finish(),
        };
        call(&mut || end(&mut sink))?;
        shared.written.fetch_add(pending, Ordering::Relaxed);
        // Gone when the queue was closed: then freed here, once.
        let _ = give_back.send(used);
    }
    Ok(())
}
