//! What the agent tells about itself: which method runs, what was tried and
//! why it failed, the kernel's features, the canary and heartbeat, and the
//! counters. Written only through the `Reporter` (reporter.rs), read by the
//! HTTP server.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use auspex_collect::Degraded;
use auspex_probe::features::FeatureReport;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The feature probes said it cannot run here.
    Skipped,
    /// Loading or attaching failed.
    Failed,
    /// It ran but did not see the canary in time.
    CanaryMissed,
    /// A signal stopped the agent while the method was being tried: no
    /// verdict on the method.
    Interrupted,
    /// It runs.
    Active,
}

impl Outcome {
    /// The outcomes that make `auto` move to the next method.
    pub const FALLBACK_REASONS: [Outcome; 3] =
        [Outcome::Skipped, Outcome::Failed, Outcome::CanaryMissed];

    /// As in /status (and the fallback metric's reason label).
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
            Outcome::CanaryMissed => "canary_missed",
            Outcome::Interrupted => "interrupted",
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
            Outcome::Interrupted => "interrupted",
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
    /// The BTF the running method was relocated against; None when it
    /// runs without (proc, or ebpf without CO-RE reads).
    pub btf: Option<BtfUsed>,
    pub features: Option<FeatureReport>,
    pub degraded: Vec<Degraded>,
    /// What `--events` selected.
    pub events_selected: String,
    /// The BPF programs the running method attached (none for `proc`):
    /// what is not selected is not among them.
    pub programs: Vec<auspex_collect::Program>,
    /// What the agent keeps of its privileges once running; None until
    /// then, or when --lockdown=false.
    pub lockdown: Option<crate::lockdown::Lockdown>,
    pub canary: Option<CheckResult>,
    pub heartbeat: Heartbeat,
    /// Events reported, by type: handed to every sink (each sink's own
    /// count of what it wrote is in `sinks`).
    pub events: BTreeMap<&'static str, u64>,
    pub drops: BTreeMap<&'static str, u64>,
    /// Each sink: what it wrote, what waits in its queue, what it lost, and
    /// whether it is stalled.
    pub sinks: Vec<SinkStatus>,
}

/// One sink (pipeline/queue.rs), as /status shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SinkStatus {
    /// `output` or `grpc`.
    pub sink: &'static str,
    /// Events written and flushed.
    pub written: u64,
    /// Events waiting in its queue.
    pub queued: u64,
    /// The most its queue holds.
    pub capacity: u64,
    /// Events lost because its queue was full (the oldest first).
    pub lost: u64,
    /// Why it is stalled, when it is: a write that has not returned for
    /// long, or a queue so full that it loses events.
    pub stalled: Option<String>,
    /// Since when (seconds since the Unix epoch) and for how long.
    pub stalled_since: Option<u64>,
    pub stalled_for_s: Option<u64>,
    /// The error that ended it.
    pub error: Option<String>,
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

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A BTF file in use, identified by its checksum: in a container, it shows
/// whether the mounted file is the running kernel's.
#[derive(Debug, Clone, Serialize)]
pub struct BtfUsed {
    pub path: PathBuf,
    /// `kernel`: the running kernel's own BTF (wherever it was read);
    /// `file`: a `--btf` file.
    pub origin: &'static str,
    pub sha256: String,
    pub bytes: u64,
}

impl BtfUsed {
    pub fn read(path: &Path, origin: &'static str) -> io::Result<BtfUsed> {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        let bytes = io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
        let sha256 = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(BtfUsed {
            path: path.to_path_buf(),
            origin,
            sha256,
            bytes,
        })
    }
}

/// Whether the agent's loop still turns: the run loop beats on every poll,
/// /live answers from it. A loop stuck (on a stalled output, say) is not
/// alive, even if the HTTP server on its own thread still answers.
#[derive(Debug, Clone, Default)]
pub struct Liveness(Arc<AtomicU64>);

/// How long the loop may go without a beat before /live fails. Polls return
/// within 100 ms; loading a probe (the verifier) takes about a second here.
pub const LIVENESS_STALL: Duration = Duration::from_secs(30);

/// Milliseconds on a monotonic clock, never 0 (which callers use for
/// "none").
pub fn monotonic_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    // +1: zero means "no beat yet".
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl Liveness {
    pub fn beat(&self) {
        self.0.store(monotonic_ms(), Ordering::Relaxed);
    }

    /// How long since the last beat; None before the first.
    pub fn since_last_beat(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            last => Some(Duration::from_millis(monotonic_ms().saturating_sub(last))),
        }
    }
}
