//! The one way to change what the agent tells about itself: each change
//! to /status, the metrics, the log and the termination log, in one place.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use auspex_collect::{Degraded, Drops};
use auspex_probe::features::FeatureReport;

use crate::metrics::{CauseLabel, FallbackLabels, Metrics, SinkLabel};
use crate::pipeline::queue::SinkReport;
use crate::status::{
    Attempt, BtfUsed, CheckResult, Liveness, Outcome, SharedStatus, SinkStatus, Status,
};

/// Every change to what the agent tells about itself, each in one place.
pub struct Reporter {
    status: SharedStatus,
    metrics: Arc<Metrics>,
    liveness: Liveness,
    /// Where the pod's status is written (termination.rs).
    termination_log: PathBuf,
    /// Drop counts last added to the metrics (the collectors' are
    /// cumulative, the metrics count increments).
    published_drops: Mutex<HashMap<&'static str, u64>>,
    /// The same for what each sink wrote.
    published_written: Mutex<HashMap<&'static str, u64>>,
    /// The programs' totals last published: (run time ns, runs).
    published_runs: Mutex<HashMap<String, (u64, u64)>>,
    /// What readiness depends on.
    readiness: Mutex<Readiness>,
}

/// Ready: a method runs, its last heartbeat passed, and no sink is stalled.
#[derive(Default)]
struct Readiness {
    running: bool,
    heartbeat_missed: Option<String>,
    stalled: Option<String>,
}

impl Readiness {
    /// Why the agent is not ready, if it is not.
    fn not_ready(&self) -> Option<String> {
        match self {
            Readiness { running: false, .. } => Some("starting".into()),
            Readiness {
                heartbeat_missed: Some(why),
                ..
            } => Some(format!("heartbeat missed: {why}")),
            Readiness {
                stalled: Some(why), ..
            } => Some(why.clone()),
            _ => None,
        }
    }
}

impl Reporter {
    pub fn new(metrics: Arc<Metrics>, termination_log: PathBuf) -> Self {
        Reporter {
            status: SharedStatus::default(),
            metrics,
            liveness: Liveness::default(),
            termination_log,
            published_drops: Mutex::default(),
            published_written: Mutex::default(),
            published_runs: Mutex::default(),
            readiness: Mutex::default(),
        }
    }

    /// For the HTTP API, which reads them.
    pub fn shared(&self) -> (SharedStatus, Liveness) {
        (Arc::clone(&self.status), self.liveness.clone())
    }

    /// The run loop turned (for /live).
    pub fn beat(&self) {
        self.liveness.beat();
    }

    fn update<T>(&self, change: impl FnOnce(&mut Status) -> T) -> T {
        // The only lock site.
        change(&mut self.status.lock().unwrap())
    }

    pub fn starting(
        &self,
        requested: &str,
        btf_source: String,
        features: &FeatureReport,
        events: &auspex_events::EventSelection,
    ) {
        self.update(|s| {
            s.events_selected = events.to_string();
            s.method_requested = requested.to_string();
            s.btf_source = btf_source;
            s.features = Some(features.clone());
            s.not_ready_reason = Some("choosing a collection method".into());
        });
    }

    pub fn canary(&self, check: &CheckResult) {
        self.update(|s| s.canary = Some(check.clone()));
    }

    /// One method tried; when it was given up, for `next`.
    pub fn attempt(&self, attempt: Attempt, next: &str) {
        if attempt.outcome == Outcome::Interrupted {
            // Not a fallback: the agent is stopping.
            tracing::info!(method = attempt.method, "interrupted: {}", attempt.reason);
        } else if attempt.outcome != Outcome::Active {
            tracing::warn!(
                method = attempt.method,
                next,
                "{}: {}",
                attempt.outcome,
                attempt.reason
            );
            self.metrics
                .fallbacks
                .get_or_create(&FallbackLabels {
                    from: attempt.method.into(),
                    to: next.into(),
                    reason: attempt.outcome.label().into(),
                })
                .inc();
        }
        self.update(|s| s.attempts.push(attempt));
    }

    /// Every attempt so far, one line each, for an error message.
    pub fn attempts(&self) -> Vec<String> {
        self.update(|s| {
            s.attempts
                .iter()
                .map(|a| format!("{} ({}): {}", a.method, a.outcome, a.reason))
                .collect()
        })
    }

    /// The method that runs, what it runs without, and the BTF it was
    /// relocated against. A method given up for it is also written to the
    /// termination log, so that the pod's status shows it (a fatal error
    /// later overwrites it).
    pub fn chosen(
        &self,
        method: &'static str,
        degraded: Vec<Degraded>,
        btf: Option<BtfUsed>,
        programs: Vec<auspex_collect::Program>,
    ) {
        self.metrics.set_method(method);
        for d in &degraded {
            tracing::warn!(feature = %d.feature, "running without it: {}", d.reason);
        }
        if let Some(b) = &btf {
            tracing::info!(
                "BTF: {} ({}), sha256 {}",
                b.path.display(),
                b.origin,
                b.sha256
            );
        }
        let given_up = self.update(|s| {
            s.not_ready_reason = Some("reading what exists already".into());
            s.method = Some(method);
            s.degraded = degraded;
            s.btf = btf;
            s.programs = programs;
            s.attempts.len().saturating_sub(1)
        });
        if given_up > 0 {
            let reasons = self.attempts()[..given_up].join("; ");
            let message = format!("running {method} after: {reasons}");
            crate::termination::write(&self.termination_log, &message);
        }
    }

    pub fn lockdown(&self, state: crate::lockdown::Lockdown) {
        tracing::info!(
            "locked down: capabilities {:?}, no_new_privs {}, seccomp {}",
            state.capabilities,
            state.no_new_privs,
            state.seccomp
        );
        self.update(|s| s.lockdown = Some(state));
    }

    /// Readiness changed: into /status, /ready and the metric.
    fn settle(&self, change: impl FnOnce(&mut Readiness)) {
        let mut readiness = self.readiness.lock().unwrap();
        change(&mut readiness);
        let not_ready = readiness.not_ready();
        self.metrics.ready.set(i64::from(not_ready.is_none()));
        self.update(|s| {
            s.ready = not_ready.is_none();
            s.not_ready_reason = not_ready;
        });
    }

    /// The method runs and was proven: ready, unless something else says
    /// otherwise.
    pub fn running(&self) {
        self.settle(|r| r.running = true);
    }

    pub fn heartbeat(&self, check: CheckResult) {
        if !check.passed {
            tracing::warn!("heartbeat missed: {}", check.detail);
            self.metrics.heartbeat_misses.inc();
        }
        self.settle(|r| r.heartbeat_missed = (!check.passed).then(|| check.detail.clone()));
        self.update(|s| {
            s.heartbeat.misses += u64::from(!check.passed);
            s.heartbeat.last = Some(check);
        });
    }

    /// Events written and everything lost or incomplete, into /status and
    /// /metrics.
    pub fn counters(&self, events: &BTreeMap<&'static str, u64>, drops: &Drops) {
        let mut published = self.published_drops.lock().unwrap();
        for (cause, value) in drops {
            let last = published.insert(cause, *value).unwrap_or(0);
            self.metrics
                .drops
                .get_or_create(&CauseLabel {
                    cause: cause.to_string(),
                })
                .inc_by(value.saturating_sub(last));
        }
        self.update(|s| {
            s.events = events.clone();
            s.drops = drops.iter().copied().collect();
        });
    }

    /// The method's BPF programs' run time and runs, into /metrics: the
    /// kernel's totals, published as counters by what they grew (a
    /// program name shared by two programs adds up).
    pub fn program_runs(&self, runs: &[auspex_collect::ProgramRuns]) {
        let mut totals: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for r in runs {
            let t = totals.entry(&r.program).or_default();
            t.0 += r.run_time_ns;
            t.1 += r.run_count;
        }
        let mut published = self.published_runs.lock().unwrap();
        for (program, (ns, count)) in totals {
            let label = crate::metrics::ProgramLabel {
                program: program.to_string(),
            };
            let (last_ns, last_count) = published
                .insert(program.to_string(), (ns, count))
                .unwrap_or((0, 0));
            self.metrics
                .bpf_run_seconds
                .get_or_create(&label)
                .inc_by(ns.saturating_sub(last_ns) as f64 / 1e9);
            self.metrics
                .bpf_runs
                .get_or_create(&label)
                .inc_by(count.saturating_sub(last_count));
        }
    }

    /// How full the kernel buffer is, into /metrics.
    pub fn buffer_fill(&self, fill: Option<auspex_collect::BufferFill>) {
        let fill = fill.unwrap_or_default();
        self.metrics.ring_used.set(fill.used as i64);
        self.metrics.ring_size.set(fill.size as i64);
    }

    /// The sizes of the pipeline's tables, into /metrics.
    pub fn table_sizes(&self, (processes, tracked): (usize, usize)) {
        self.metrics.process_table_entries.set(processes as i64);
        self.metrics.tracker_entries.set(tracked as i64);
    }

    /// Each sink's state, into /status and /metrics; a stalled sink makes
    /// the agent not ready (and is logged when it stalls and recovers).
    pub fn sinks(&self, sinks: Vec<SinkStatus>) {
        let mut published = self.published_written.lock().unwrap();
        for sink in &sinks {
            let label = SinkLabel {
                sink: sink.sink.to_string(),
            };
            let last = published.insert(sink.sink, sink.written).unwrap_or(0);
            self.metrics
                .sink_written
                .get_or_create(&label)
                .inc_by(sink.written.saturating_sub(last));
            self.metrics
                .sink_queued
                .get_or_create(&label)
                .set(sink.queued as i64);
            self.metrics
                .sink_stalled
                .get_or_create(&label)
                .set(sink.stalled_for_s.unwrap_or(0) as i64);
        }
        drop(published);
        let stalled = sinks.iter().find_map(|s| {
            let (why, since) = (s.stalled.as_ref()?, s.stalled_since?);
            let since = chrono::DateTime::from_timestamp(since as i64, 0)
                .map_or(since.to_string(), |t| {
                    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                });
            Some(format!(
                "the {} sink is stalled since {since}: {why} ({} events lost so far)",
                s.sink, s.lost
            ))
        });
        let was = self.readiness.lock().unwrap().stalled.is_some();
        match (&stalled, was) {
            (Some(why), false) => tracing::warn!("{why}"),
            (None, true) => tracing::info!("no sink is stalled any more"),
            _ => {}
        }
        self.update(|s| s.sinks = sinks);
        self.settle(|r| r.stalled = stalled);
    }

    /// The startup diagnostics block: every attempt, its outcome and time.
    pub fn log_diagnostics(&self) {
        self.update(|s| {
            tracing::info!(
                "method selection (requested: {}; BTF: {}):",
                s.method_requested,
                s.btf_source
            );
            for a in &s.attempts {
                tracing::info!(
                    "  {}: {} after {} ms: {}",
                    a.method,
                    a.outcome,
                    a.duration_ms,
                    a.reason
                );
            }
        });
    }
}

/// The line `auspex run` prints on exit: events reported by type, what
/// each sink wrote (flushed, not merely buffered) and did not, and every
/// loss. Events a sink still held when it was given up at the flush
/// deadline count among the losses too, as `<sink>_undelivered`.
pub fn summary(
    reported: &BTreeMap<&'static str, u64>,
    drops: &Drops,
    sinks: &[SinkReport],
    processes_evicted: u64,
    elapsed: std::time::Duration,
) -> String {
    let total: u64 = reported.values().sum();
    let by_type: Vec<String> = reported.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let left: Vec<(String, u64)> = sinks
        .iter()
        .map(|s| (format!("{}_undelivered", s.id), s.left))
        .collect();
    let lost: u64 =
        drops.iter().map(|(_, v)| v).sum::<u64>() + left.iter().map(|(_, v)| v).sum::<u64>();
    let by_cause: Vec<String> = drops
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .chain(left.iter().map(|(k, v)| format!("{k} {v}")))
        .collect();
    let by_sink: Vec<String> = sinks
        .iter()
        .map(|s| match s.undelivered() {
            0 => format!("{} wrote {}", s.name, s.written),
            n => format!(
                "{} wrote {} and did not get {n} ({} lost to its full queue, {} left at the end)",
                s.name, s.written, s.lost, s.left
            ),
        })
        .collect();
    format!(
        "{total} events in {:.1} s ({}); {}; dropped or incomplete {lost} ({}, processes forgotten {processes_evicted})",
        elapsed.as_secs_f64(),
        if by_type.is_empty() {
            "none".to_string()
        } else {
            by_type.join(", ")
        },
        by_sink.join(", "),
        by_cause.join(", "),
    )
}
