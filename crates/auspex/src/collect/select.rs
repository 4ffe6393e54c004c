//! The method selector: tries the methods in order until one runs and
//! passes its self-check (canary.rs), and returns it running. A method that
//! cannot run here is skipped with the reason; one that fails to start or
//! misses its canary is unloaded, and the next is tried. Every attempt is
//! reported (status.rs).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use auspex_collect::{Config, Method};
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
/// are reported, except the canaries').
pub fn select(
    selection: &Selection,
    pipeline: &mut Pipeline,
    reporter: &Reporter,
    stop: &AtomicBool,
) -> anyhow::Result<Running> {
    let connector = Check::from_result(auspex_proc::probe_connector());
    let mut features = features::probe_all(selection.config.btf_file.as_deref(), connector);
    crate::hooks::adjust(&mut features);
    let btf_source = match &selection.config.btf_file {
        Some(path) => format!("file {}", path.display()),
        None => format!("kernel {}", selection.kernel_btf.display()),
    };
    reporter.starting(selection.requested, btf_source, &features);
    let candidates = crate::methods::candidates(selection.requested)?;
    for (i, method) in candidates.iter().enumerate() {
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
            reporter.chosen(method.name(), started.degraded, btf);
            return Ok(Running {
                method: method.name(),
                reader,
                reports_existing_sockets: started.reports_existing_sockets,
            });
        }
        if stop.load(Ordering::Relaxed) {
            break;
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
    let check = prove(&mut reader, pipeline, timeout, reporter, stop);
    reporter.canary(&check);
    if check.passed {
        return Ok((reader, started));
    }
    // Unloads the method; what it saw until then is reported all the same.
    let _ = reader.stop(&mut |e| {
        pipeline.process(e);
    });
    Err((Outcome::CanaryMissed, check.detail))
}

/// Runs the full canary through `reader`, delivering every other event
/// meanwhile.
fn prove(
    reader: &mut Reader,
    pipeline: &mut Pipeline,
    timeout: Duration,
    reporter: &Reporter,
    stop: &AtomicBool,
) -> CheckResult {
    let mut canary = match Canary::launch(true) {
        Ok(c) => c,
        Err(e) => return CheckResult::failed(format!("could not start the self-check: {e}")),
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
            return canary.interrupted(format!("reading events failed: {e:#}"));
        }
        if let Some(verdict) = canary.verdict(timeout) {
            return verdict;
        }
        if stop.load(Ordering::Relaxed) {
            return canary.interrupted("interrupted".into());
        }
    }
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
