//! The proc method as one collector: process events from the connector as
//! they come, network events from a scan every interval.

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use auspex_collect::{Collector, Config, Degraded, Drops, Method, Need};
use auspex_events::{Event, EventKind, ExitStatus, Process, TaskId};
use auspex_procfs::ProcReader;
use chrono::{DateTime, Utc};
use nix::time::{clock_gettime, ClockId};

use crate::connector::{Connector, ProcEvent, Stamped};
use crate::scan::Scanner;

/// No BPF: the netlink process connector and /proc scans.
pub struct ProcMethod;

impl Method for ProcMethod {
    fn name(&self) -> &'static str {
        "proc"
    }

    fn needs(&self) -> &'static [Need] {
        &[Need::ProcConnector]
    }

    fn start(&self, config: &Config) -> anyhow::Result<Box<dyn Collector>> {
        let collector = ProcCollector::start(config.scan_interval)
            .map_err(|e| anyhow::anyhow!("subscribing to the process connector failed: {e}"))?;
        Ok(Box::new(collector))
    }

    fn canary_allowance(&self, config: &Config) -> Duration {
        config.scan_interval
    }
}

/// Processes whose details are remembered for their exit (when /proc no
/// longer has them).
const REMEMBERED_PROCESSES: usize = 65536;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcStats {
    /// Times the kernel dropped connector messages because we read too
    /// slowly (ENOBUFS): an unknown number of process events was lost.
    pub connector_overruns: u64,
    /// Processes forgotten because the table was full.
    pub processes_forgotten: u64,
}

pub struct ProcCollector {
    connector: Connector,
    reader: ProcReader,
    scanner: Scanner,
    scan_every: Duration,
    next_scan: Instant,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, in ns: the connector stamps
    /// events with the monotonic clock.
    realtime_offset_ns: i128,
    known: HashMap<u32, Process>,
    scanned: bool,
    stats: ProcStats,
}

fn clock_ns(id: ClockId) -> i128 {
    let t = clock_gettime(id).expect("the standard clocks exist");
    i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
}

impl ProcCollector {
    /// Subscribes to the connector; the first scan runs at the first poll.
    pub fn start(scan_every: Duration) -> io::Result<Self> {
        let connector = Connector::subscribe()?;
        let reader = ProcReader::new();
        Ok(ProcCollector {
            connector,
            scanner: Scanner::new(reader.clone()),
            reader,
            scan_every,
            next_scan: Instant::now(),
            realtime_offset_ns: clock_ns(ClockId::CLOCK_REALTIME)
                - clock_ns(ClockId::CLOCK_MONOTONIC),
            known: HashMap::new(),
            scanned: false,
            stats: ProcStats::default(),
        })
    }

    pub fn stats(&self) -> ProcStats {
        self.stats
    }

    /// Waits up to `timeout` for process events, scanning when a scan is due.
    fn receive(&mut self, timeout: Duration, on_event: &mut dyn FnMut(Event)) -> io::Result<()> {
        let wait = timeout.min(self.next_scan.saturating_duration_since(Instant::now()));
        match self.connector.receive(wait) {
            Ok(events) => {
                for stamped in events {
                    if let Some(event) = self.event(stamped) {
                        on_event(event);
                    }
                }
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                self.stats.connector_overruns += 1;
            }
            Err(e) => return Err(e),
        }
        if Instant::now() >= self.next_scan {
            // The first scan finds what existed before: scraped.
            let scraped = !self.scanned;
            for mut event in self.scanner.scan(Utc::now()) {
                event.scraped = scraped;
                on_event(event);
            }
            self.scanned = true;
            self.next_scan = Instant::now() + self.scan_every;
        }
        Ok(())
    }

    fn time(&self, monotonic_ns: u64) -> DateTime<Utc> {
        let ns = i128::from(monotonic_ns) + self.realtime_offset_ns;
        DateTime::from_timestamp_nanos(i64::try_from(ns).unwrap_or(i64::MAX))
    }

    fn remember(&mut self, process: &Process) {
        if self.known.len() >= REMEMBERED_PROCESSES && !self.known.contains_key(&process.pid) {
            if let Some(victim) = self.known.keys().next().copied() {
                self.known.remove(&victim);
                self.stats.processes_forgotten += 1;
            }
        }
        self.known.insert(process.pid, process.clone());
    }

    fn event(&mut self, stamped: Stamped) -> Option<Event> {
        let kind = match stamped.event {
            ProcEvent::Fork {
                parent_pid,
                parent_tgid,
                child_pid,
                child_tgid,
            } => {
                let mut process = self.reader.process(child_tgid, child_pid);
                if process.ppid == 0 {
                    process.ppid = parent_tgid;
                }
                // The child may have exec'd already: what /proc shows now is
                // not what was forked. (The kernel-side methods do not send
                // them either; enrichment gives the parent's exe.)
                process.exe = None;
                process.args = None;
                process.args_truncated = None;
                let thread = child_pid != child_tgid;
                if !thread {
                    self.remember(&process);
                }
                EventKind::ProcessFork {
                    process,
                    parent: TaskId {
                        pid: parent_tgid,
                        tid: parent_pid,
                    },
                    thread,
                }
            }
            ProcEvent::Exec { pid, tgid } => {
                let process = self.reader.process(tgid, pid);
                self.remember(&process);
                EventKind::ProcessExec { process }
            }
            // Every thread's exit comes through; the leader's stands for the
            // process.
            ProcEvent::Exit {
                pid,
                tgid,
                exit_code,
            } if pid == tgid => {
                let process = self
                    .known
                    .remove(&tgid)
                    .unwrap_or_else(|| self.reader.process(tgid, pid));
                EventKind::ProcessExit {
                    process: Process {
                        args: None,
                        args_truncated: None,
                        ..process
                    },
                    status: Some(ExitStatus::from_wait_status(exit_code)),
                }
            }
            ProcEvent::Exit { .. } | ProcEvent::Ack { .. } => return None,
        };
        Some(Event::new(self.time(stamped.monotonic_ns), kind))
    }
}

impl Collector for ProcCollector {
    fn poll(&mut self, timeout: Duration, on_event: &mut dyn FnMut(Event)) -> anyhow::Result<()> {
        Ok(self.receive(timeout, on_event)?)
    }

    fn drain(&mut self, on_event: &mut dyn FnMut(Event)) -> anyhow::Result<()> {
        Ok(self.receive(Duration::ZERO, on_event)?)
    }

    fn drops(&self) -> anyhow::Result<Drops> {
        Ok(vec![
            ("proc_connector_overrun", self.stats.connector_overruns),
            ("process_forgotten", self.stats.processes_forgotten),
        ])
    }

    fn degraded(&self) -> Vec<Degraded> {
        Vec::new()
    }

    /// Its first scan reports every socket, flagged `scraped`.
    fn reports_existing_sockets(&self) -> bool {
        true
    }
}
