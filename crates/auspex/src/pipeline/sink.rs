//! Where events go. A [`Sink`] takes each event the pipeline writes, as the
//! JSON object docs/events.md describes (serialised once, for every sink);
//! [`Sinks`] hands it to each of them through a queue of its own, written
//! by a thread of its own (queue.rs), so that no sink ever waits for
//! another or holds up the pipeline. Two sinks exist: `JsonLines` (the
//! output, stdout or a file: output.rs) and the gRPC stream (grpc.rs).
//! Adding one is implementing the trait and adding it in run.rs.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::Instant;

use auspex_collect::Drops;
use auspex_events::Event;

use super::queue::{Batch, Queued, Recycled, SinkReport, BATCH_EVENTS};
use crate::metrics::{Metrics, TypeLabel};
use crate::status::SinkStatus;
use prometheus_client::metrics::counter::Counter;

/// A sink runs on a thread of its own (hence `Send`): each call may block
/// as long as it must, and only that sink waits meanwhile.
pub trait Sink: Send {
    /// For messages ("writing events to {name} failed").
    fn name(&self) -> &'static str;
    /// Whether the sink takes events now (a gRPC stream without
    /// subscribers does not): asked before each event is written to it.
    fn wants(&self) -> bool {
        true
    }
    /// One event of type `kind`, as its JSON object (no newline). An error
    /// ends the run: the sink gets nothing more.
    fn write(&mut self, kind: &'static str, json: &str) -> io::Result<()>;
    /// A batch of events: each in turn unless the sink can take them
    /// whole (the output writes their lines with one call).
    fn write_batch(&mut self, batch: &Batch) -> io::Result<()> {
        batch
            .events()
            .try_for_each(|(kind, json)| self.write(kind, json))
    }
    /// The end of a batch: what is buffered should reach its reader. Events
    /// count as written once the flush after them returned.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// The end of the run, after the last event.
    fn finish(&mut self) -> io::Result<()> {
        self.flush()
    }
}

/// Every sink behind its queue, and what the pipeline reported.
pub struct Sinks {
    queues: Vec<Queued>,
    /// The events written since the last batch was handed over.
    batch: Batch,
    /// Events a batch holds at most.
    batch_max: usize,
    /// Batches to reuse once every sink wrote them.
    recycled: Recycled,
    /// Writes the JSON, reusing each thread's process object.
    writer: auspex_events::json::EventWriter,
    /// Events handed to the sinks, by type.
    reported: BTreeMap<&'static str, u64>,
    /// The events counter of each type, looked up once: a lookup per
    /// event allocated its label's String and hashed it (issue 19).
    counters: BTreeMap<&'static str, Counter>,
}

impl Sinks {
    /// Starts a writer for each sink, named by its id (`output`, `grpc`:
    /// metrics labels and drop causes), with a queue of `capacity` events.
    pub fn new(
        sinks: Vec<(&'static str, Box<dyn Sink>)>,
        capacity: usize,
        metrics: Arc<Metrics>,
    ) -> io::Result<Self> {
        let queues = sinks
            .into_iter()
            .map(|(id, sink)| Queued::start(id, sink, capacity))
            .collect::<io::Result<_>>()?;
        let counters = auspex_events::EventKind::names()
            .map(|kind| {
                let label = TypeLabel {
                    r#type: kind.to_string(),
                };
                (kind, metrics.events.get_or_create(&label).clone())
            })
            .collect();
        let mut recycled = Recycled::default();
        Ok(Sinks {
            queues,
            batch: recycled.take(),
            // A batch is lost whole when a queue is full: a quarter of the
            // queue at most, so that a full queue still holds the newest.
            batch_max: BATCH_EVENTS.min(capacity / 4).max(1),
            recycled,
            writer: Default::default(),
            reported: BTreeMap::new(),
            counters,
        })
    }

    pub fn write(&mut self, event: &Event) {
        let kind = event.kind.name();
        let writer = &mut self.writer;
        self.batch.push(kind, |json| writer.write(json, event));
        *self.reported.entry(kind).or_default() += 1;
        if let Some(counter) = self.counters.get(kind) {
            counter.inc();
        }
        if self.batch.len() >= self.batch_max {
            self.hand_over();
        }
    }

    /// The end of the pipeline's batch: what was written is handed to the
    /// writers, each of which flushes once it has written what is queued.
    pub fn flush(&mut self) {
        if !self.batch.is_empty() {
            self.hand_over();
        }
    }

    /// Hands the batch to every queue, and starts the next.
    fn hand_over(&mut self) {
        // The writers hand batches back per round: taken back only when
        // the next is needed.
        if self.recycled.is_empty() {
            for queue in &mut self.queues {
                queue.reclaim(&mut self.recycled);
            }
        }
        let next = self.recycled.take();
        let batch = Arc::new(std::mem::replace(&mut self.batch, next));
        for queue in &mut self.queues {
            queue.push(&batch, &mut self.recycled);
        }
        // Kept at once when no sink took it.
        self.recycled.give(batch);
    }

    /// Whether a sink failed: the run ends.
    pub fn failed(&self) -> bool {
        self.queues.iter().any(Queued::failed)
    }

    /// Events handed to the sinks, by type.
    pub fn reported(&self) -> &BTreeMap<&'static str, u64> {
        &self.reported
    }

    /// Events each sink lost to its full queue.
    pub fn drops(&self) -> Drops {
        self.queues
            .iter()
            .map(|q| (q.lost_cause, q.lost()))
            .collect()
    }

    /// Each sink, as /status shows it.
    pub fn status(&self) -> Vec<SinkStatus> {
        self.queues.iter().map(Queued::status).collect()
    }

    /// Closes every queue, and waits for the writers until `deadline` at
    /// the latest: what each sink did.
    pub fn finish(mut self, deadline: Instant) -> Vec<SinkReport> {
        self.flush();
        // All closed first: they finish side by side.
        self.queues.iter_mut().for_each(Queued::close);
        self.queues
            .into_iter()
            .map(|q| q.finish(deadline))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use auspex_events::{EventKind, Process};
    use crossbeam_channel::{Receiver, Sender};
    use std::sync::Mutex;
    use std::time::Duration;

    /// A sink that keeps what it got; fails at its `fail_at`th write; and,
    /// with a gate, waits at every write until the gate lets it through.
    struct Kept {
        lines: Arc<Mutex<Vec<String>>>,
        wants: bool,
        fail_at: usize,
        gate: Option<Receiver<()>>,
    }

    fn kept(lines: &Arc<Mutex<Vec<String>>>) -> Kept {
        Kept {
            lines: Arc::clone(lines),
            wants: true,
            fail_at: 0,
            gate: None,
        }
    }

    impl Sink for Kept {
        fn name(&self) -> &'static str {
            "kept"
        }
        fn wants(&self) -> bool {
            self.wants
        }
        fn write(&mut self, kind: &'static str, json: &str) -> io::Result<()> {
            if let Some(gate) = &self.gate {
                // Blocks until opened; the end of the test opens it for good.
                let _ = gate.recv();
            }
            let mut lines = self.lines.lock().unwrap();
            if lines.len() + 1 == self.fail_at {
                return Err(io::Error::from(io::ErrorKind::BrokenPipe));
            }
            lines.push(format!("{kind} {json}"));
            Ok(())
        }
    }

    fn exec(pid: u32) -> Event {
        let process = Process {
            pid,
            ..Process::default()
        };
        Event::new(
            chrono::DateTime::from_timestamp(0, 0).unwrap(),
            EventKind::ProcessExec { process },
        )
    }

    fn pids(lines: &Mutex<Vec<String>>) -> Vec<u32> {
        lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| {
                let json: serde_json::Value =
                    serde_json::from_str(&l[l.find(' ').unwrap()..]).unwrap();
                json["process"]["pid"].as_u64().unwrap() as u32
            })
            .collect()
    }

    fn in_a_while() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    #[test]
    fn every_wanting_sink_gets_the_same_json_and_an_error_ends_only_that_sink() {
        let (a, b, c) = (Arc::default(), Arc::default(), Arc::default());
        let sinks: Vec<(&'static str, Box<dyn Sink>)> = vec![
            (
                "a",
                Box::new(Kept {
                    fail_at: 3,
                    ..kept(&a)
                }),
            ),
            (
                "b",
                Box::new(Kept {
                    wants: false,
                    ..kept(&b)
                }),
            ),
            ("c", Box::new(kept(&c))),
        ];
        let mut sinks = Sinks::new(sinks, 100, Arc::new(Metrics::new())).unwrap();
        for pid in 1..=4 {
            sinks.write(&exec(pid));
        }
        sinks.flush();
        let expected = serde_json::to_string(&exec(1)).unwrap();
        assert_eq!(sinks.reported()["process_exec"], 4);
        let reports = sinks.finish(in_a_while());
        assert_eq!(a.lock().unwrap()[0], format!("process_exec {expected}"));
        assert_eq!(pids(&a), [1, 2], "nothing after the error");
        assert!(
            b.lock().unwrap().is_empty(),
            "a sink that does not want events gets none"
        );
        assert_eq!(pids(&c), [1, 2, 3, 4]);
        let summary: Vec<_> = reports
            .iter()
            .map(|r| {
                (
                    r.id,
                    r.written,
                    r.lost,
                    r.left,
                    r.error.as_ref().map(io::Error::kind),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                // The two it took before the error are not counted written:
                // no flush returned after them.
                ("a", 0, 0, 4, Some(io::ErrorKind::BrokenPipe)),
                ("b", 0, 0, 0, None),
                ("c", 4, 0, 0, None),
            ]
        );
    }

    /// What a sink that blocks costs the pipeline: nothing but the events
    /// its queue cannot hold, the oldest (in whole batches), each counted.
    #[test]
    fn a_blocked_sink_holds_up_nothing_and_loses_its_oldest_events_counted() {
        const CAPACITY: usize = 50;
        const SENT: u32 = 500;
        let blocked = Arc::default();
        let (open, gate): (Sender<()>, _) = crossbeam_channel::unbounded();
        let sinks: Vec<(&'static str, Box<dyn Sink>)> = vec![(
            "blocked",
            Box::new(Kept {
                gate: Some(gate),
                ..kept(&blocked)
            }),
        )];
        let metrics = Arc::new(Metrics::new());
        let mut sinks = Sinks::new(sinks, CAPACITY, metrics).unwrap();
        // Written from another thread, so that a pipeline held up by the
        // sink fails the test rather than hanging it.
        let (handed, sent) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            sinks.write(&exec(0));
            sinks.flush();
            // The writer took the first event and waits in its write.
            while sinks.status()[0].queued > 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            for pid in 1..SENT {
                sinks.write(&exec(pid));
            }
            sinks.flush();
            let _ = handed.send(sinks);
        });
        let sinks = sent
            .recv_timeout(Duration::from_secs(30))
            .expect("the pipeline was held up by a blocked sink");
        // Batches of a quarter of the queue, 12 events: after the first
        // event (a batch of its own, taken), 41 batches of 12 and one of 7.
        // The queue holds the newest that fit: the 7 and three of 12.
        let batch = (CAPACITY / 4) as u64;
        let last = u64::from(SENT - 1) % batch;
        let status = sinks.status();
        let queued = status[0].queued;
        assert_eq!(
            queued,
            last + (CAPACITY as u64 - last) / batch * batch,
            "{status:?}"
        );
        let lost = u64::from(SENT) - 1 - queued;
        assert_eq!(sinks.drops(), [("blocked_queue_full", lost)]);
        assert_eq!(
            status[0].stalled.as_deref(),
            Some("it cannot keep up: its queue is full"),
            "{status:?}"
        );
        assert!(status[0].stalled_since.is_some(), "{status:?}");

        // Let it through: it writes the first event and the newest ones.
        drop(open);
        let reports = sinks.finish(in_a_while());
        let expected: Vec<u32> = std::iter::once(0)
            .chain(SENT - queued as u32..SENT)
            .collect();
        assert_eq!(pids(&blocked), expected);
        let r = &reports[0];
        assert_eq!((r.written, r.lost, r.left), (queued + 1, lost, 0), "{r:?}");
    }

    /// Buffers come back from the writers and are reused: a short event
    /// written into the buffer of a longer one is exactly its own JSON.
    #[test]
    fn reused_buffers_hold_exactly_the_next_events_json() {
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let sinks: Vec<(&'static str, Box<dyn Sink>)> = vec![("kept", Box::new(kept(&lines)))];
        let mut sinks = Sinks::new(sinks, 100, Arc::new(Metrics::new())).unwrap();
        let long = |pid| {
            let mut e = exec(pid);
            if let EventKind::ProcessExec { process } = &mut e.kind {
                process.args = Some(vec!["x".repeat(3000)].into());
            }
            e
        };
        let mut expected = Vec::new();
        for pid in 0..50 {
            let event = if pid % 2 == 0 { long(pid) } else { exec(pid) };
            expected.push(format!(
                "process_exec {}",
                serde_json::to_string(&event).unwrap()
            ));
            sinks.write(&event);
            sinks.flush();
            // Until the writer has taken it (and given back the last round).
            let deadline = in_a_while();
            while sinks.status()[0].written < u64::from(pid) + 1 {
                assert!(
                    Instant::now() < deadline,
                    "the writer wrote {} of {} events",
                    sinks.status()[0].written,
                    pid + 1
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        for queue in &mut sinks.queues {
            queue.reclaim(&mut sinks.recycled);
        }
        assert!(!sinks.recycled.is_empty(), "no batch came back for reuse");
        sinks.finish(in_a_while());
        assert_eq!(*lines.lock().unwrap(), expected);
    }

    #[test]
    fn a_sink_still_blocked_at_the_deadline_is_left_with_what_it_did_not_write() {
        let lines = Arc::default();
        let (open, gate) = crossbeam_channel::unbounded::<()>();
        let sinks: Vec<(&'static str, Box<dyn Sink>)> = vec![(
            "blocked",
            Box::new(Kept {
                gate: Some(gate),
                ..kept(&lines)
            }),
        )];
        let mut sinks = Sinks::new(sinks, 10, Arc::new(Metrics::new())).unwrap();
        for pid in 0..5 {
            sinks.write(&exec(pid));
        }
        let reports = sinks.finish(Instant::now() + Duration::from_millis(100));
        let r = &reports[0];
        assert_eq!(
            (r.written, r.lost, r.left, r.undelivered()),
            (0, 0, 5, 5),
            "{r:?}"
        );
        // The writer, still blocked, is let go.
        drop(open);
    }
}
