//! What the live tests share: a loaded probe that keeps every event it
//! delivered, and readable failures.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use auspex_events::Event;
use auspex_probe::{CoreBpf, ProbeConfig};

pub const DEADLINE: Duration = Duration::from_secs(10);

/// A loaded probe and every event it delivered so far.
pub struct Harness {
    pub probe: CoreBpf,
    pub seen: Vec<Event>,
}

impl Harness {
    pub fn start() -> Self {
        Self::with_config(&ProbeConfig::default())
    }

    pub fn with_config(config: &ProbeConfig) -> Self {
        let probe =
            CoreBpf::load(config).unwrap_or_else(|e| panic!("loading the probe failed: {e}"));
        Harness {
            probe,
            seen: Vec::new(),
        }
    }

    /// Polls until an event matching `found` has arrived and returns it; on
    /// timeout, fails showing the events `related` selects.
    pub fn wait_until(
        &mut self,
        what: &str,
        found: impl Fn(&Event) -> bool,
        related: impl Fn(&Event) -> bool,
    ) -> Event {
        let start = Instant::now();
        loop {
            if let Some(e) = self.seen.iter().find(|e| found(e)) {
                return e.clone();
            }
            if start.elapsed() > DEADLINE {
                panic!("no {what} within {DEADLINE:?}.\n{}", self.describe(related));
            }
            let seen = &mut self.seen;
            self.probe
                .poll(Duration::from_millis(100), &mut |e| seen.push(e))
                .unwrap();
        }
    }

    /// Polls until an event of type `kind` about `pid` (and, if given,
    /// thread `tid`) has arrived.
    pub fn wait_for(&mut self, kind: &str, pid: u32, tid: Option<u32>) -> Event {
        self.wait_until(
            &format!("{kind} event for pid {pid} tid {tid:?}"),
            |e| {
                e.kind.name() == kind
                    && e.kind
                        .process()
                        .is_some_and(|p| p.pid == pid && tid.is_none_or(|t| t == p.tid))
            },
            |e| {
                e.kind
                    .process()
                    .is_some_and(|p| p.pid == pid || p.ppid == pid)
            },
        )
    }

    /// The events `related` selects, one JSON line each.
    pub fn describe(&self, related: impl Fn(&Event) -> bool) -> String {
        let lines: Vec<String> = self
            .seen
            .iter()
            .filter(|e| related(e))
            .map(|e| serde_json::to_string(e).unwrap())
            .collect();
        format!(
            "{} events seen in all; the related ones:\n  {}",
            self.seen.len(),
            if lines.is_empty() {
                "(none)".to_string()
            } else {
                lines.join("\n  ")
            }
        )
    }
}
