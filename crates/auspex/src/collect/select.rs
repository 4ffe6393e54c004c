//! The method selector: tries the methods in order until one runs and
//! passes its self-check (canary.rs), and returns it running. A method that
//! cannot run here is skipped with the reason; one that fails to start or
//! misses its canary is unloaded, and the next is tried. Every attempt is
//! reported (status.rs). A signal meanwhile ends the selection without a
//! verdict: stopping during startup is not a fault.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use auspex_collect::{Config, Degraded, Method};
use auspex_probe::features::{self, Check, FeatureReport};

use super::reader::{Reader, Started, POLL_INTERVAL};
use crate::canary::Canary;
use crate::config::RunArgs;
use crate::pipeline::Pipeline;
use crate::reporter::Reporter;
use crate::status::{Attempt, BtfUsed, CheckResult, Outcome};

/// What the command line asked for.
pub struct Selection<'a> {
    /// `auto`, or a method's name.
    pub requested: &'a str,
    pub config: Config,
    pub canary_timeout: Duration,
    /// Where the kernel's BTF is read, for the report.
    pub kernel_btf: &'a Path,
}

impl<'a> From<&'a RunArgs> for Selection<'a> {
    fn from(args: &'a RunArgs) -> Self {
        Selection {
            requested: &args.method,
            config: Config {
                btf_file: args.btf.clone(),
                ring_buffer_bytes: args.ring_buffer_size,
                scan_interval: args.scan_interval,
                events: args.events,
            },
            canary_timeout: args.canary_timeout,
            kernel_btf: &args.kernel_btf,
        }
    }
}

/// A method that passed its self-check, running.
pub struct Running {
    pub method: &'static str,
    pub reader: Reader,
    /// The method's first reading reports the sockets that exist already.
    pub reports_existing_sockets: bool,
}

/// The events the candidates deliver meanwhile go through `pipeline` (and
/// are reported, except the canaries'). `None` when `stop` was set first.
pub fn select(
    selection: &Selection,
    pipeline: &mut Pipeline,
    reporter: &Reporter,
    stop: &AtomicBool,
) -> anyhow::Result<Option<Running>> {
    let connector = Check::from_result(auspex_proc::probe_connector());
    let mut features = features::probe_all(selection.config.btf_file.as_deref(), connector);
    crate::hooks::adjust(&mut features);
    let btf_source = match &selection.config.btf_file {
        Some(path) => format!("file {}", path.display()),
        None => format!("kernel {}", selection.kernel_btf.display()),
    };
    reporter.starting(
        selection.requested,
        btf_source,
        &features,
        &selection.config.events,
    );
    let candidates = crate::methods::candidates(selection.requested)?;
    for (i, method) in candidates.iter().enumerate() {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let begun = Instant::now();
        let result = attempt(*method, selection, &features, pipeline, reporter, stop);
        let (outcome, reason) = match &result {
            Ok(_) => (Outcome::Active, "self-check passed".to_string()),
            Err((outcome, reason)) => (*outcome, reason.clone()),
        };
        let attempt = Attempt {
            method: method.name(),
            outcome,
            reason,
            duration_ms: begun.elapsed().as_millis() as u64,
        };
        reporter.attempt(attempt, candidates.get(i + 1).map_or("none", |m| m.name()));
        if let Ok((reader, started)) = result {
            let btf = btf_used(started.btf.as_deref(), &selection.config);
            let mut degraded = started.degraded;
            degraded.extend(blind_spots(selection.requested, method.name(), &features));
            reporter.chosen(method.name(), degraded, btf, started.programs);
            return Ok(Some(Running {
                method: method.name(),
                reader,
                reports_existing_sockets: started.reports_existing_sockets,
            }));
        }
        if outcome == Outcome::Interrupted {
            return Ok(None);
        }
    }
    reporter.log_diagnostics();
    let attempts = reporter.attempts().join("; ");
    match selection.requested {
        "auto" => bail!("no collection method can run here: {attempts}"),
        name => bail!("the {name} method cannot run here: {attempts}"),
    }
}

/// Starts one method and proves it with the canary.
fn attempt(
    method: &'static dyn Method,
    selection: &Selection,
    features: &FeatureReport,
    pipeline: &mut Pipeline,
    reporter: &Reporter,
    stop: &AtomicBool,
) -> Result<(Reader, Started), (Outcome, String)> {
    if let Some(unmet) = auspex_collect::unmet(method, features) {
        return Err((Outcome::Skipped, unmet));
    }
    let (mut reader, started) = Reader::start(method, &selection.config)
        .map_err(|e| (Outcome::Failed, format!("{e:#}")))?;
    let timeout = selection.canary_timeout + method.canary_allowance(&selection.config);
    let check = prove(
        &mut reader,
        pipeline,
        timeout,
        &selection.config.events,
        reporter,
        stop,
    );
    if let Some(check) = &check {
        reporter.canary(check);
    }
    if check.as_ref().is_some_and(|c| c.passed) {
        return Ok((reader, started));
    }
    // Unloads the method; what it saw until then is reported all the same.
    let _ = reader.stop(Instant::now() + UNLOAD_DEADLINE, &mut |e| {
        pipeline.process(e);
    });
    match check {
        Some(check) => Err((Outcome::CanaryMissed, check.detail)),
        None => Err((
            Outcome::Interrupted,
            "stopped by a signal during the self-check".into(),
        )),
    }
}

/// How long unloading a method that missed its canary may take to report
/// what it saw (a slow /proc may make enrichment slow).
const UNLOAD_DEADLINE: Duration = Duration::from_secs(5);

/// Runs the canary (what `events` can show of it) through `reader`, delivering every other event
/// meanwhile; `None` when `stop` was set before a verdict.
fn prove(
    reader: &mut Reader,
    pipeline: &mut Pipeline,
    timeout: Duration,
    events: &auspex_events::EventSelection,
    reporter: &Reporter,
    stop: &AtomicBool,
) -> Option<CheckResult> {
    let mut canary = match Canary::launch(events.exec(), events.tcp_connections()) {
        Ok(c) => c,
        Err(e) => {
            return Some(CheckResult::failed(format!(
                "could not start the self-check: {e}"
            )))
        }
    };
    pipeline.own_activity().remember(&canary);
    loop {
        reporter.beat();
        let polled = reader.poll(POLL_INTERVAL, &mut |e| {
            if let Some(own) = pipeline.process(e) {
                canary.observe(&own);
            }
        });
        pipeline.flush();
        if let Err(e) = polled {
            return Some(canary.interrupted(format!("reading events failed: {e:#}")));
        }
        if let Some(verdict) = canary.verdict(timeout) {
            return Some(verdict);
        }
        if stop.load(Ordering::Relaxed) {
            return None;
        }
    }
}

/// What the chosen method cannot see for want of privileges, which the
/// feature probes and method needs do not say: as a user without
/// capabilities, `auto` runs `proc`, whose events then lack most of what
/// /proc would tell (measured as `nobody`: 3,894 of 3,895 execs without
/// `exe`, and only the agent's own processes found by the startup scrape).
fn blind_spots(requested: &str, chosen: &str, features: &FeatureReport) -> Vec<Degraded> {
    use caps::{CapSet, Capability};
    let has = |cap| caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false);
    let uid = nix::unistd::geteuid();
    let mut blind = Vec::new();
    if requested == "auto" && chosen == "proc" && !features.privileges.can_trace() {
        blind.push(Degraded {
            feature: "bpf".into(),
            reason: format!(
                "running as uid {uid} without CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN): no BPF \
                 method can run, and proc sees only what /proc and the process connector show"
            ),
        });
    }
    if !has(Capability::CAP_SYS_PTRACE) {
        blind.push(Degraded {
            feature: "other_users_exe".into(),
            reason: format!(
                "running as uid {uid} without CAP_SYS_PTRACE: /proc/PID/exe of other users' \
                 processes cannot be read, so their exe is missing wherever it comes from /proc \
                 (lineage, processes that predate the agent; every exec with proc)"
            ),
        });
    }
    if !has(Capability::CAP_DAC_READ_SEARCH) && !has(Capability::CAP_DAC_OVERRIDE) {
        blind.push(Degraded {
            feature: "other_users_sockets".into(),
            reason: format!(
                "running as uid {uid} without CAP_DAC_READ_SEARCH: /proc/PID/fd of other users' \
                 processes cannot be read, so their sockets found in /proc have no owner \
                 (listeners that predate the agent; every connection with proc)"
            ),
        });
    }
    blind
}

/// The BTF the method was relocated against, with its checksum.
fn btf_used(path: Option<&Path>, config: &Config) -> Option<BtfUsed> {
    let path = path?;
    let origin = match config.btf_file.as_deref() == Some(path) {
        true => "file",
        false => "kernel",
    };
    BtfUsed::read(path, origin)
        .inspect_err(|e| tracing::warn!("cannot checksum {}: {e}", path.display()))
        .ok()
}
