//! The thread that reads the kernel. It owns the running collector (a BPF
//! ring buffer is not `Send`: the thread that polls it must own it), polls
//! it, and hands the events each poll decoded, together, to a bounded
//! queue. Together: handed over one by one, each send woke the pipeline's
//! thread, which on a busy CPU took over at once and went back to sleep
//! after one event, and so did the writers behind it (perf, ebpf TCP
//! storm: half of the agent's CPU in context switches). It never waits on
//! anything else: enrichment, which may wait on /proc, runs on the other
//! side of the queue (the pipeline, on the run loop's thread). A full queue
//! loses the event, counted as `enrich_queue_full`, rather than stalling
//! the reader until the kernel's buffer fills (measured by
//! `auspex-bench slow-proc`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use auspex_collect::{Collector, Config, Degraded, Drops, Method};
use auspex_events::{Endpoint, Event};
use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};

/// How long one poll may wait; bounds how late a stop request is noticed.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Events waiting for the pipeline at most: a stall of 1.6 s at 10,000
/// events/s. The queue grows only as needed (an unbounded channel, held to
/// this by the reader, its only sender): a bounded one allocates its slots
/// up front, which cost 7 MiB of RSS at all times (auspex-bench
/// completeness, core_bpf peak RSS 24.8 → 31.8 MiB).
const QUEUE_CAPACITY: usize = 16384;

/// Events the run loop takes per poll at most before it looks at its timers.
const BATCH: usize = 4096;

/// Events of one poll handed over at most together: a poll that reads a
/// full ring buffer (tens of thousands of records) is handed over as it is
/// read, so that a pipeline on another CPU takes them in meanwhile rather
/// than the queue's limit cutting the poll short.
const CHUNK_MAX: usize = 1024;

/// How often the collector's drop counters are read (a BPF method reads
/// per-CPU maps for them).
const DROPS_INTERVAL: Duration = Duration::from_secs(1);

/// What the method said once it ran.
pub struct Started {
    pub degraded: Vec<Degraded>,
    pub reports_existing_sockets: bool,
    /// The BTF its probes were relocated against, if any.
    pub btf: Option<std::path::PathBuf>,
    /// The BPF programs it attached.
    pub programs: Vec<auspex_collect::Program>,
}

/// What the reader shares with the run loop.
#[derive(Default)]
struct Shared {
    /// The collector's drops, as last read.
    drops: Mutex<Drops>,
    /// Its BPF programs' run time and count, as last read.
    programs: Mutex<Vec<auspex_collect::ProgramRuns>>,
    /// How full its kernel buffer was, as last read.
    fill: Mutex<Option<auspex_collect::BufferFill>>,
    queue_full: AtomicU64,
    /// Events in the queue: added before a poll's events are sent, taken
    /// off when the run loop receives them.
    queued: AtomicU64,
    /// Rung when events are sent, and when the thread ends.
    sent: crate::doorbell::Doorbell,
    /// Events still queued when stopping passed its deadline.
    past_deadline: AtomicU64,
}

impl Shared {
    fn snapshot(&self) -> Drops {
        let mut drops = self.drops.lock().unwrap().clone();
        drops.push(("enrich_queue_full", self.queue_full.load(Ordering::Relaxed)));
        drops.push((
            "stop_deadline_passed",
            self.past_deadline.load(Ordering::Relaxed),
        ));
        drops
    }
}

/// What the run loop asks of the reader's thread, which owns the collector.
enum Command {
    /// Who owns the listeners that predate the method.
    Seed(Vec<Endpoint>, Sender<anyhow::Result<usize>>),
    /// Drop this thread's privileges (capabilities are per thread).
    LockDown(Sender<Result<(), String>>),
}

/// The reading side of a running method, as the run loop holds it.
pub struct Reader {
    source: Source,
    shared: Arc<Shared>,
}

enum Source {
    Thread {
        events: Receiver<Vec<Event>>,
        /// What is left of the last poll's events.
        rest: std::vec::IntoIter<Event>,
        commands: Sender<Command>,
        stop: Arc<AtomicBool>,
        /// Taken when the thread is joined.
        thread: Option<JoinHandle<anyhow::Result<()>>>,
    },
    /// The collector read on the run loop's thread, the pipeline right
    /// behind it: the arrangement before the reader had a thread, kept for
    /// `auspex-bench slow-proc` (chosen only by a test hook).
    Inline(Box<dyn Collector>),
}

impl Reader {
    /// Starts `method` on a thread of its own; returns once it runs, or
    /// with the reason it cannot.
    pub fn start(
        method: &'static dyn Method,
        config: &Config,
    ) -> anyhow::Result<(Reader, Started)> {
        let shared = Arc::new(Shared::default());
        if crate::hooks::stages_on_reader() {
            let collector = method.start(config)?;
            let started = started(collector.as_ref(), &shared);
            let source = Source::Inline(collector);
            return Ok((Reader { source, shared }, started));
        }
        let (queue, events) = crossbeam_channel::unbounded();
        let (commands, requests) = crossbeam_channel::unbounded::<Command>();
        let (report, answer) = bounded(1);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("collector".into())
            .spawn({
                let (config, shared, stop) =
                    (config.clone(), Arc::clone(&shared), Arc::clone(&stop));
                move || {
                    let mut collector = match method.start(&config) {
                        Ok(c) => c,
                        Err(e) => return report.send(Err(e)).map_err(|_| anyhow!("nobody waited")),
                    };
                    let _ = report.send(Ok(started(collector.as_ref(), &shared)));
                    let result = read(collector.as_mut(), &queue, &requests, &shared, &stop);
                    // The run loop sees the channel disconnected at once.
                    drop(queue);
                    shared.sent.ring();
                    result
                }
            })?;
        match answer.recv() {
            Ok(Ok(started)) => {
                let source = Source::Thread {
                    events,
                    rest: Vec::new().into_iter(),
                    commands,
                    stop,
                    thread: Some(thread),
                };
                Ok((Reader { source, shared }, started))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => {
                joined(thread).context("the collector thread ended as it started")?;
                Err(anyhow!("the collector thread ended as it started"))
            }
        }
    }

    /// Waits up to `timeout` for events, then hands over those waiting (at
    /// most a batch). Fails once the collector failed.
    pub fn poll(
        &mut self,
        timeout: Duration,
        on_event: &mut dyn FnMut(Event),
    ) -> anyhow::Result<()> {
        let (events, rest, thread) = match &mut self.source {
            Source::Inline(collector) => return collector.poll(timeout, on_event),
            Source::Thread {
                events,
                rest,
                thread,
                ..
            } => (events, rest, thread),
        };
        let queued = &self.shared.queued;
        let take = |chunk: Vec<Event>| {
            queued.fetch_sub(chunk.len() as u64, Ordering::Relaxed);
            chunk.into_iter()
        };
        if rest.len() == 0 {
            // Waits on the doorbell, not in the channel's receive, which
            // spins and yields first (doorbell.rs).
            let mut waited = false;
            loop {
                match events.try_recv() {
                    Ok(chunk) => {
                        *rest = take(chunk);
                        break;
                    }
                    Err(TryRecvError::Empty) if !waited => {
                        self.shared.sent.wait(Some(timeout));
                        waited = true;
                    }
                    Err(TryRecvError::Empty) => return Ok(()),
                    // The thread ended on its own: its error says why.
                    Err(TryRecvError::Disconnected) => {
                        if let Some(thread) = thread.take() {
                            joined(thread)?;
                        }
                        return Err(anyhow!("the collector stopped"));
                    }
                }
            }
        }
        let mut handed = 0;
        loop {
            rest.by_ref().take(BATCH - handed).for_each(|e| {
                handed += 1;
                on_event(e)
            });
            if handed >= BATCH {
                break;
            }
            match events.try_recv() {
                Ok(chunk) => *rest = take(chunk),
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// Whether every event delivered so far has been handed over: the end
    /// of a batch, when the sinks are flushed.
    pub fn caught_up(&self) -> bool {
        match &self.source {
            Source::Inline(_) => true,
            Source::Thread { events, rest, .. } => rest.len() == 0 && events.is_empty(),
        }
    }

    /// Tells the method who owns the listeners that predate it.
    pub fn seed_listeners(&mut self, endpoints: Vec<Endpoint>) -> anyhow::Result<usize> {
        match &mut self.source {
            Source::Inline(collector) => collector.seed_listeners(&endpoints),
            Source::Thread { commands, .. } => {
                let (reply, answer) = bounded(1);
                commands.send(Command::Seed(endpoints, reply))?;
                answer.recv()?
            }
        }
    }

    /// Locks the agent down (lockdown.rs). The reader's thread first:
    /// capabilities are per thread, and the seccomp filter the calling
    /// thread installs then covers every thread.
    pub fn lock_down(&self) -> crate::lockdown::Lockdown {
        let reader = match &self.source {
            Source::Inline(_) => Ok(()),
            Source::Thread { commands, .. } => {
                let (reply, answer) = bounded(1);
                let _ = commands.send(Command::LockDown(reply));
                answer
                    .recv()
                    .unwrap_or_else(|_| Err("the collector thread is gone".into()))
            }
        };
        let mut state = crate::lockdown::apply();
        if let Err(problem) = reader {
            tracing::warn!("lockdown incomplete on the collector thread: {problem}");
            state.problems.push(format!("collector thread: {problem}"));
        }
        state
    }

    /// The method's BPF programs' run time and count, as last read (none
    /// for the proc method).
    pub fn program_runs(&self) -> Vec<auspex_collect::ProgramRuns> {
        if let Source::Inline(collector) = &self.source {
            return collector.program_runs();
        }
        self.shared.programs.lock().unwrap().clone()
    }

    /// How full the method's kernel buffer was at the last look, where
    /// the method can tell.
    pub fn buffer_fill(&self) -> Option<auspex_collect::BufferFill> {
        if let Source::Inline(collector) = &self.source {
            return collector.buffer_fill();
        }
        *self.shared.fill.lock().unwrap()
    }

    /// Everything lost or incomplete so far, by cause.
    pub fn drops(&self) -> Drops {
        if let Source::Inline(collector) = &self.source {
            *self.shared.drops.lock().unwrap() = collector.drops().unwrap_or_default();
        }
        self.shared.snapshot()
    }

    /// Stops the method, handing over what it still delivers (what the
    /// kernel produced before the stop is owed to the user too) until
    /// `deadline`; what comes after it is counted, not handed over
    /// (`stop_deadline_passed`: enrichment may be slow). Returns the final
    /// drops. Unloads the method.
    pub fn stop(self, deadline: Instant, on_event: &mut dyn FnMut(Event)) -> anyhow::Result<Drops> {
        let past_deadline = &self.shared.past_deadline;
        let mut on_event = |e| match Instant::now() < deadline {
            true => on_event(e),
            false => {
                past_deadline.fetch_add(1, Ordering::Relaxed);
            }
        };
        match self.source {
            Source::Inline(mut collector) => {
                collector.drain(&mut on_event)?;
                *self.shared.drops.lock().unwrap() = collector.drops()?;
            }
            Source::Thread {
                events,
                rest,
                stop,
                thread,
                ..
            } => {
                stop.store(true, Ordering::Relaxed);
                rest.for_each(&mut on_event);
                // Ends when the thread has drained the collector and gone;
                // each chunk taken off the count, for the final drain's.
                let queued = &self.shared.queued;
                for chunk in events.iter() {
                    queued.fetch_sub(chunk.len() as u64, Ordering::Relaxed);
                    chunk.into_iter().for_each(&mut on_event);
                }
                if let Some(thread) = thread {
                    joined(thread)?;
                }
            }
        }
        Ok(self.shared.snapshot())
    }
}

/// The thread's result.
fn joined(thread: JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    thread
        .join()
        .map_err(|_| anyhow!("the collector thread panicked"))?
}

fn started(collector: &dyn Collector, shared: &Shared) -> Started {
    *shared.drops.lock().unwrap() = collector.drops().unwrap_or_default();
    Started {
        degraded: collector.degraded(),
        reports_existing_sockets: collector.reports_existing_sockets(),
        btf: collector.relocated_against(),
        programs: collector.programs(),
    }
}

/// The collector thread: poll, queue, answer, until told to stop.
fn read(
    collector: &mut dyn Collector,
    queue: &Sender<Vec<Event>>,
    commands: &Receiver<Command>,
    shared: &Shared,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut chunk = Vec::new();
    // A poll's events, handed over together (or by CHUNK_MAX, so that a
    // poll that brings a whole kernel buffer is taken in as it is read).
    let send = |chunk: &mut Vec<Event>| {
        if !chunk.is_empty() {
            shared
                .queued
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            // Fails only once the run loop has gone: nobody to hand it to.
            let _ = queue.send(std::mem::take(chunk));
            shared.sent.ring();
        }
    };
    let push = |chunk: &mut Vec<Event>, event| {
        let queued = shared.queued.load(Ordering::Relaxed) as usize;
        if queued + chunk.len() >= QUEUE_CAPACITY {
            shared.queue_full.fetch_add(1, Ordering::Relaxed);
        } else {
            chunk.push(event);
            if chunk.len() >= CHUNK_MAX {
                send(chunk);
            }
        }
    };
    let mut next_drops = Instant::now() + DROPS_INTERVAL;
    while !stop.load(Ordering::Relaxed) {
        collector.poll(POLL_INTERVAL, &mut |e| push(&mut chunk, e))?;
        send(&mut chunk);
        for command in commands.try_iter() {
            match command {
                Command::Seed(endpoints, reply) => {
                    let _ = reply.send(collector.seed_listeners(&endpoints));
                }
                Command::LockDown(reply) => {
                    let _ = reply.send(crate::lockdown::keep_for_this_thread());
                }
            }
        }
        if Instant::now() >= next_drops {
            *shared.drops.lock().unwrap() = collector.drops()?;
            *shared.programs.lock().unwrap() = collector.program_runs();
            *shared.fill.lock().unwrap() = collector.buffer_fill();
            next_drops = Instant::now() + DROPS_INTERVAL;
        }
    }
    collector.drain(&mut |e| push(&mut chunk, e))?;
    send(&mut chunk);
    *shared.drops.lock().unwrap() = collector.drops()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use auspex_collect::Need;
    use auspex_events::{EventKind, Process};

    /// Delivers `BURST` events at its first poll, then nothing.
    struct Burst;

    const BURST: usize = QUEUE_CAPACITY + 1000;

    impl Method for Burst {
        fn name(&self) -> &'static str {
            "burst"
        }
        fn needs(&self) -> &'static [Need] {
            &[]
        }
        fn start(&self, _: &Config) -> anyhow::Result<Box<dyn Collector>> {
            Ok(Box::new(BurstCollector { sent: false }))
        }
    }

    struct BurstCollector {
        sent: bool,
    }

    impl Collector for BurstCollector {
        fn poll(
            &mut self,
            timeout: Duration,
            on_event: &mut dyn FnMut(Event),
        ) -> anyhow::Result<()> {
            if std::mem::replace(&mut self.sent, true) {
                std::thread::sleep(timeout);
                return Ok(());
            }
            for pid in 0..BURST as u32 {
                let process = Process {
                    pid,
                    ..Process::default()
                };
                let time = chrono::DateTime::from_timestamp(0, 0).unwrap();
                on_event(Event::new(time, EventKind::ProcessExec { process }));
            }
            Ok(())
        }
        fn drain(&mut self, _: &mut dyn FnMut(Event)) -> anyhow::Result<()> {
            Ok(())
        }
        fn drops(&self) -> anyhow::Result<Drops> {
            Ok(vec![("burst_lost", 7)])
        }
        fn degraded(&self) -> Vec<Degraded> {
            Vec::new()
        }
    }

    fn config() -> Config {
        Config {
            btf_file: None,
            ring_buffer_bytes: 4096,
            scan_interval: Duration::from_secs(1),
            events: auspex_events::EventSelection::all(),
        }
    }

    #[test]
    fn a_reader_nobody_takes_from_loses_what_its_queue_cannot_hold_counted() {
        let (reader, _) = Reader::start(&Burst, &config()).unwrap();
        // Nobody takes events: the reader goes on polling regardless.
        let lost = (BURST - QUEUE_CAPACITY) as u64;
        let start = Instant::now();
        while !reader.drops().contains(&("enrich_queue_full", lost)) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{:?}",
                reader.drops()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut pids = Vec::new();
        let drops = reader
            .stop(far(), &mut |e| pids.push(e.kind.process().unwrap().pid))
            .unwrap();
        assert_eq!(
            pids,
            (0..QUEUE_CAPACITY as u32).collect::<Vec<_>>(),
            "the first ones, in order"
        );
        assert_eq!(
            drops,
            [
                ("burst_lost", 7),
                ("enrich_queue_full", lost),
                ("stop_deadline_passed", 0)
            ]
        );
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[test]
    fn what_is_still_queued_when_the_stop_deadline_has_passed_is_counted() {
        let (reader, _) = Reader::start(&Burst, &config()).unwrap();
        let lost = (BURST - QUEUE_CAPACITY) as u64;
        let start = Instant::now();
        while !reader.drops().contains(&("enrich_queue_full", lost)) {
            assert!(start.elapsed() < Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut handed = 0;
        let drops = reader.stop(Instant::now(), &mut |_| handed += 1).unwrap();
        assert_eq!(handed, 0);
        assert_eq!(
            drops[2],
            ("stop_deadline_passed", QUEUE_CAPACITY as u64),
            "{drops:?}"
        );
    }

    #[test]
    fn events_are_handed_over_in_batches_in_order() {
        let (mut reader, started) = Reader::start(&Burst, &config()).unwrap();
        assert!(started.degraded.is_empty());
        let mut pids = Vec::new();
        let start = Instant::now();
        while pids.len() < QUEUE_CAPACITY {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{} events",
                pids.len()
            );
            let before = pids.len();
            reader
                .poll(POLL_INTERVAL, &mut |e| {
                    pids.push(e.kind.process().unwrap().pid)
                })
                .unwrap();
            assert!(pids.len() - before <= BATCH + 1);
        }
        reader
            .stop(far(), &mut |e| pids.push(e.kind.process().unwrap().pid))
            .unwrap();
        assert!(pids.windows(2).all(|w| w[0] < w[1]), "in order");
    }
}
