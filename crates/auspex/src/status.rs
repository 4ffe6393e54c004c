//! What the agent tells about itself: which method runs, what was tried and
//! why it failed, the kernel's features, the canary and heartbeat, and the
//! counters. Shared between the run loop (which writes) and the HTTP server
//! (which reads).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use auspex_probe::features::FeatureReport;
use serde::Serialize;

use crate::collector::Degraded;

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

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
