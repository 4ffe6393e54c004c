//! What the live tests share: a loaded probe that keeps every event it
//! delivered, waits scaled to the machine, and readable failures.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use auspex_events::Event;
use auspex_probe::{CoreBpf, LegacyBpf, ProbeConfig, ProbeError};

/// How much slower than here the machine runs: `AUSPEX_TEST_TIME_SCALE`,
/// 1 when unset (the kernel matrix sets it: emulated guests run many times
/// slower). As read by crates/auspex/tests/common.
pub fn time_scale() -> u32 {
    std::env::var("AUSPEX_TEST_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// How long a test waits for what it expects: 10 s, times the time scale.
pub fn deadline() -> Duration {
    Duration::from_secs(10) * time_scale()
}

/// Asks `state` until it says Ok, within the deadline; on timeout fails
/// with `what` and its last answer. Between asks it waits a little longer
/// each time: the waits end as soon as the state is reached.
pub fn wait_for_state<T>(what: &str, mut state: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match state() {
            Ok(done) => return done,
            Err(last) if start.elapsed() > deadline() => {
                panic!("{what}: not within {:?}; last: {last}", deadline())
            }
            Err(_) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
        }
    }
}

/// The probes' common surface, for one harness over both.
pub trait Probe {
    fn poll(
        &mut self,
        timeout: Duration,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<usize, ProbeError>;
}

impl Probe for CoreBpf {
    fn poll(
        &mut self,
        timeout: Duration,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<usize, ProbeError> {
        CoreBpf::poll(self, timeout, on_event)
    }
}

impl Probe for LegacyBpf {
    fn poll(
        &mut self,
        timeout: Duration,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<usize, ProbeError> {
        LegacyBpf::poll(self, timeout, on_event)
    }
}

/// A loaded probe and every event it delivered so far.
pub struct Harness<P = CoreBpf> {
    pub probe: P,
    pub seen: Vec<Event>,
}

impl Harness<CoreBpf> {
    pub fn start() -> Self {
        Self::with_config(&ProbeConfig::default())
    }

    pub fn with_config(config: &ProbeConfig) -> Self {
        let probe =
            CoreBpf::load(config).unwrap_or_else(|e| panic!("loading the probe failed: {e}"));
        Harness::of(probe)
    }
}

impl<P: Probe> Harness<P> {
    pub fn of(probe: P) -> Self {
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
            if start.elapsed() > deadline() {
                panic!(
                    "no {what} within {:?}.\n{}",
                    deadline(),
                    self.describe(related)
                );
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
