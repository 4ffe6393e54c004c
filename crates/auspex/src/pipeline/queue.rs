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

use crate::doorbell::{Doorbell, Wake};

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
const FLUSH_EVERY: u64 = 1024;

/// Events a batch holds at most (fewer with a small queue: a quarter of
/// it), before it is handed to the writers without waiting for the end of
/// the pipeline's batch. Waking a writer for each event costs a futex call
/// on both sides (perf, a TCP storm of 160,000 events: 2,559 futex calls
/// with the writer woken per batch, the agent's main loop alone made 210).
pub const BATCH_EVENTS: usize = 256;

/// The JSON of a run of events, one line each, written once for every
/// sink: the output writes the whole text with one call, a sink that
/// takes events one by one (gRPC) gets each line. Handed over as one
/// `Arc` per batch rather than one per event: with an `Arc<String>` per
/// event, their reference counts, the channel sends and the buffers'
/// recycling were 21 % of the pipeline thread's CPU in a TCP storm, and
/// copying each into the output's buffer most of the writer thread's
/// (perf, core_bpf, issue 19).
#[derive(Debug, Default)]
pub struct Batch {
    /// Each event's JSON followed by a newline.
    text: String,
    /// Each event's type, and where its JSON is in `text`.
    events: Vec<(&'static str, usize, usize)>,
}

impl Batch {
    /// Appends an event of type `kind`, whose JSON `write` appends to the
    /// string it is given (without a newline).
    pub fn push(&mut self, kind: &'static str, write: impl FnOnce(&mut String)) {
        let start = self.text.len();
        write(&mut self.text);
        let end = self.text.len();
        self.text.push('\n');
        self.events.push((kind, start, end));
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Each event's type and JSON (no newline).
    pub fn events(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        self.events
            .iter()
            .map(|&(kind, start, end)| (kind, &self.text[start..end]))
    }

    /// Every event's JSON, each followed by a newline.
    pub fn lines(&self) -> &str {
        &self.text
    }

    fn clear(&mut self) {
        self.text.clear();
        self.events.clear();
    }
}

/// One batch, as every sink's queue holds it.
pub type Shared = Arc<Batch>;

/// The batches a writer is done with, handed back so that the pipeline's
/// thread reuses what it allocated: freed by the writer, each free took
/// glibc's lock of the pipeline's arena (perf: `__lll_lock_wait_private`
/// in the writer, `__lll_lock_wake_private` in the pipeline).
type Used = Vec<Shared>;

/// Batches the sinks are done with, for the next events: no allocation
/// per batch once the agent runs.
#[derive(Default)]
pub struct Recycled {
    batches: Vec<Batch>,
}

/// Batches kept at most: more than are in flight between the pipeline and
/// a writer that keeps up (one handed over, one being written).
const RECYCLED_MAX: usize = 4;
/// A larger batch (of long command lines, or a delta of a big table) is
/// freed, not kept: with 16 of up to 1 MiB kept, a run of the soak test
/// failed with its RSS grown by 11 MiB in 80 s (it passed with this).
const RECYCLED_CAPACITY_MAX: usize = 256 * 1024;

impl Recycled {
    /// An empty batch: a used one when there is one.
    pub fn take(&mut self) -> Batch {
        match self.batches.pop() {
            Some(batch) => batch,
            None => Batch {
                text: String::with_capacity(64 * 1024),
                events: Vec::with_capacity(BATCH_EVENTS),
            },
        }
    }

    /// Whether it holds no batch.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Keeps `batch` for reuse once nothing else holds it (the last sink
    /// that had it gave it back).
    pub fn give(&mut self, batch: Shared) {
        if let Ok(mut batch) = Arc::try_unwrap(batch) {
            if batch.text.capacity() <= RECYCLED_CAPACITY_MAX && self.batches.len() < RECYCLED_MAX {
                batch.clear();
                self.batches.push(batch);
            }
        }
    }
}

/// What the writer thread tells the pipeline's side.
#[derive(Default)]
struct Progress {
    /// Events in the queue: added before a batch is sent, taken off when
    /// the writer receives it.
    queued: AtomicU64,
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
    sender: Option<Sender<Shared>>,
    /// The same channel, to take the oldest batch out when it is full.
    oldest: Option<Receiver<Shared>>,
    /// Wakes the writer: it waits on this, not on the queue (closed with
    /// the queue).
    doorbell: Arc<Doorbell>,
    /// What the writer is done with, to reuse here.
    used: Receiver<Used>,
    capacity: usize,
    shared: Arc<Progress>,
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
        let doorbell = Arc::new(Doorbell::default());
        let (give_back, used) = crossbeam_channel::unbounded();
        let (done_sender, done) = crossbeam_channel::bounded::<()>(0);
        let shared = Arc::new(Progress::default());
        let name = sink.name();
        let oldest = receiver.clone();
        std::thread::Builder::new()
            .name(format!("sink-{id}"))
            .spawn({
                let shared = Arc::clone(&shared);
                let rings = Arc::clone(&doorbell);
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
            doorbell,
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

    /// Hands a batch to the writer, and wakes it; when the queue cannot
    /// take it, its oldest batches are lost to make room (whole batches,
    /// each of its events counted).
    pub fn push(&mut self, batch: &Shared, recycled: &mut Recycled) {
        let (Some(sender), Some(oldest)) = (&self.sender, &self.oldest) else {
            return;
        };
        let n = batch.len() as u64;
        self.handed += n;
        while self.shared.queued.load(Ordering::Relaxed) + n > self.capacity as u64 {
            // Empty: the writer took it meanwhile (and is about to say so).
            let Ok(old) = oldest.try_recv() else { break };
            let m = old.len() as u64;
            self.shared.queued.fetch_sub(m, Ordering::Relaxed);
            self.lost += m;
            let now = monotonic_ms();
            let since = match self.losing {
                // Still the same episode: it lost one within the last
                // STALL_AFTER.
                Some((since, last)) if now - last < STALL_AFTER.as_millis() as u64 => since,
                _ => now,
            };
            self.losing = Some((since, now));
            recycled.give(old);
        }
        // Counted before it is sent: the writer takes it off on receipt.
        self.shared.queued.fetch_add(n, Ordering::Relaxed);
        // Fails only when the writer has gone, which `failed` reports.
        let _ = sender.send(Arc::clone(batch));
        self.doorbell.ring();
    }

    /// Takes back the batches the writer is done with.
    pub fn reclaim(&mut self, recycled: &mut Recycled) {
        self.used
            .try_iter()
            .flatten()
            .for_each(|batch| recycled.give(batch));
    }

    /// Events lost because the queue was full.
    pub fn lost(&self) -> u64 {
        self.lost
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
            queued: self.shared.queued.load(Ordering::Relaxed),
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
        self.doorbell.close();
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

/// A queue dropped unfinished (the run failed) still lets its writer end.
impl Drop for Queued {
    fn drop(&mut self) {
        self.doorbell.close();
    }
}

/// The writer thread: when woken, takes every event off the queue into
/// the sink and flushes; once the queue is closed, finishes the sink.
fn write_all(
    mut sink: Box<dyn Sink>,
    queue: &Receiver<Shared>,
    rings: &Doorbell,
    give_back: &Sender<Used>,
    shared: &Progress,
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
        open = rings.wait(None) != Wake::Closed;
        // Written to the sink, not yet flushed.
        let mut pending = 0;
        let mut used = Used::with_capacity(queue.len());
        // The writes are timed by the round (from its first write to its
        // flush), not one by one: two clock reads per event were 1 % of the
        // agent's CPU in a TCP storm (issue 19), and a batch that takes
        // STALL_AFTER is a stalled sink too.
        shared.busy_since.store(monotonic_ms(), Ordering::Relaxed);
        let writes = (|| {
            for batch in queue.try_iter() {
                let n = batch.len() as u64;
                shared.queued.fetch_sub(n, Ordering::Relaxed);
                if sink.wants() {
                    sink.write_batch(&batch)?;
                    pending += n;
                } else {
                    shared.unwanted.fetch_add(n, Ordering::Relaxed);
                }
                used.push(batch);
                if pending >= FLUSH_EVERY {
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
