//! What the agent tells about itself: which method runs, what was tried and
//! why it failed, the kernel's features, the canary and heartbeat, and the
//! counters. Written only through a [`Reporter`] (which keeps /status, the
//! metrics and the log in step), read by the HTTP server.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use auspex_collect::{Degraded, Drops};
use auspex_probe::features::FeatureReport;
use serde::Serialize;

use crate::metrics::{CauseLabel, FallbackLabels, Metrics};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The feature probes said it cannot run here.
    Skipped,
    /// Loading or attaching failed.
    Failed,
    /// It ran but did not see the canary in time.
    CanaryMissed,
    /// It runs.
    Active,
}

impl Outcome {
    /// As in /status (and the fallback metric's reason label).
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
            Outcome::CanaryMissed => "canary_missed",
            Outcome::Active => "active",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
            Outcome::CanaryMissed => "canary missed",
            Outcome::Active => "active",
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub method: &'static str,
    pub outcome: Outcome,
    pub reason: String,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckResult {
    pub passed: bool,
    pub detail: String,
    pub duration_ms: u64,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Heartbeat {
    pub last: Option<CheckResult>,
    pub misses: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub ready: bool,
    /// Why the agent is not ready, when it is not.
    pub not_ready_reason: Option<String>,
    pub method: Option<&'static str>,
    pub method_requested: String,
    pub attempts: Vec<Attempt>,
    pub btf_source: String,
    pub features: Option<FeatureReport>,
    pub degraded: Vec<Degraded>,
    pub canary: Option<CheckResult>,
    pub heartbeat: Heartbeat,
    pub events: BTreeMap<&'static str, u64>,
    pub drops: BTreeMap<&'static str, u64>,
}

pub type SharedStatus = Arc<Mutex<Status>>;

impl CheckResult {
    pub fn failed(detail: String) -> Self {
        CheckResult {
            passed: false,
            detail,
            duration_ms: 0,
            at: now_secs(),
        }
    }
}

/// Every change to what the agent tells about itself, each in one place.
pub struct Reporter {
    status: SharedStatus,
    metrics: Arc<Metrics>,
    /// Drop counts last added to the metrics (the collectors' are
    /// cumulative, the metrics count increments).
    published_drops: Mutex<HashMap<&'static str, u64>>,
}

impl Reporter {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Reporter {
            status: SharedStatus::default(),
            metrics,
            published_drops: Mutex::default(),
        }
    }

    /// For the HTTP API, which reads it.
    pub fn shared(&self) -> SharedStatus {
        Arc::clone(&self.status)
    }

    fn update<T>(&self, change: impl FnOnce(&mut Status) -> T) -> T {
        change(&mut self.status.lock().unwrap())
    }

    pub fn starting(&self, requested: &str, btf_source: String, features: &FeatureReport) {
        self.update(|s| {
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
        if attempt.outcome != Outcome::Active {
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

    pub fn chosen(&self, method: &'static str, degraded: Vec<Degraded>) {
        self.metrics.set_method(method);
        for d in &degraded {
            tracing::warn!(feature = %d.feature, "running without it: {}", d.reason);
        }
        self.update(|s| {
            s.not_ready_reason = Some("reading what exists already".into());
            s.method = Some(method);
            s.degraded = degraded;
        });
    }

    pub fn ready(&self, not_ready: Option<String>) {
        self.metrics.ready.set(i64::from(not_ready.is_none()));
        self.update(|s| {
            s.ready = not_ready.is_none();
            s.not_ready_reason = not_ready;
        });
    }

    pub fn heartbeat(&self, check: CheckResult) {
        if !check.passed {
            tracing::warn!("heartbeat missed: {}", check.detail);
            self.metrics.heartbeat_misses.inc();
        }
        self.ready((!check.passed).then(|| format!("heartbeat missed: {}", check.detail)));
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

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The line `auspex run` prints on exit: events by type, and every loss.
pub fn summary(
    written: &BTreeMap<&'static str, u64>,
    drops: &Drops,
    processes_evicted: u64,
    elapsed: std::time::Duration,
) -> String {
    let total: u64 = written.values().sum();
    let by_type: Vec<String> = written.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let lost: u64 = drops.iter().map(|(_, v)| v).sum();
    let by_cause: Vec<String> = drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!(
        "{total} events in {:.1} s ({}); dropped or incomplete {lost} ({}, processes forgotten {processes_evicted})",
        elapsed.as_secs_f64(),
        if by_type.is_empty() {
            "none".to_string()
        } else {
            by_type.join(", ")
        },
        by_cause.join(", "),
    )
}
