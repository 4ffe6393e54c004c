//! `auspex run`: choose a method, prove it, then kernel events → decode →
//! enrich → sink until told to stop, with a heartbeat along the way.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use auspex_events::{Endpoint, EventKind};
use auspex_probe::features::{self, Check, FeatureReport};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::canary::{timed_out, Canary, CanaryEvents};
use crate::collector::Collector;
use crate::config::{Report, RunArgs};
use crate::grpc::Feed;
use crate::methods::{self, Method, MethodConfig};
use crate::metrics::{CauseLabel, FallbackLabels, Metrics};
use crate::pipeline::Pipeline;
use crate::sink::JsonLines;
use crate::status::{now_secs, Attempt, BtfUsed, CheckResult, Liveness, Outcome, SharedStatus};

/// How long one poll may wait; bounds how late a stop request is noticed.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Set (to anything) to report BPF ring buffers unavailable: a test-only
/// way to make `auto` take the perf-buffer path on a kernel that has both.
const NO_RING_BUFFER_ENV: &str = "AUSPEX_TEST_NO_RINGBUF";

/// How often counters are copied into /status and /metrics.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// What a run shares between its parts.
struct Agent {
    stop: Arc<AtomicBool>,
    status: SharedStatus,
    liveness: Liveness,
    metrics: Arc<Metrics>,
    pipeline: Pipeline,
    canaries: CanaryEvents,
    published_drops: HashMap<&'static str, u64>,
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install the signal handlers")?;
    }
    let sink = match &args.output {
        Some(path) => JsonLines::create(path)?,
        None => JsonLines::stdout(),
    };
    auspex_probe::btf::read_kernel_btf_at(&args.kernel_btf);
    let status = SharedStatus::default();
    let liveness = Liveness::default();
    let metrics = Arc::new(Metrics::new());
    let order: Vec<&str> = methods::registered().iter().map(|m| m.name()).collect();
    metrics.start_at_zero(&order);
    if let Some(addr) = args.listen.0 {
        let bound = crate::http::serve(
            addr,
            Arc::clone(&status),
            Arc::clone(&metrics),
            liveness.clone(),
        )?;
        tracing::info!("HTTP API on http://{bound} (/ready, /status, /metrics)");
    }
    let (feed, grpc) = match args.grpc_listen.0 {
        Some(addr) => {
            let feed = Feed::new();
            let server = crate::grpc::serve(addr, feed.clone(), Arc::clone(&metrics))?;
            tracing::info!(
                "gRPC event stream on http://{} (auspex.v1.Events/Subscribe)",
                server.addr
            );
            (Some(feed), Some(server))
        }
        None => (None, None),
    };
    let mut features = features::probe_all(
        args.btf.as_deref(),
        Check::from_result(auspex_proc::probe_connector()),
    );
    if std::env::var_os(NO_RING_BUFFER_ENV).is_some() {
        features.ring_buffer = Check::from_result(Err(format!(
            "reported unavailable for a test ({NO_RING_BUFFER_ENV})"
        )));
    }
    {
        let mut s = status.lock().unwrap();
        s.method_requested = args.method.clone();
        s.btf_source = match &args.btf {
            Some(path) => format!("file {}", path.display()),
            None => format!("kernel {}", args.kernel_btf.display()),
        };
        s.features = Some(features.clone());
        s.not_ready_reason = Some("choosing a collection method".into());
    }
    let mut agent = Agent {
        stop,
        status,
        liveness,
        metrics: Arc::clone(&metrics),
        pipeline: Pipeline::new(
            sink,
            metrics,
            tracker(args),
            args.report != Report::Deltas,
            feed,
        ),
        canaries: CanaryEvents::new(),
        published_drops: HashMap::new(),
    };

    let started = Instant::now();
    let (method, mut collector) = agent.choose(args, &features)?;
    agent.log_diagnostics();
    agent.report_btf(collector.as_ref(), args);
    agent.report_fallbacks(args);
    agent.scrape(method, collector.as_mut());
    if args.lockdown {
        let state = crate::lockdown::apply();
        tracing::info!(
            "locked down: capabilities {:?}, no_new_privs {}, seccomp {}",
            state.capabilities,
            state.no_new_privs,
            state.seccomp
        );
        agent.status.lock().unwrap().lockdown = Some(state);
    }
    // Ready only now: the scrape told the probes who owns the listeners
    // that predate them, without which their connections have no owner.
    // The method's drop causes are in /metrics (at zero) once it is ready.
    agent.publish(collector.as_ref())?;
    agent.set_ready(None);
    for d in collector.degraded() {
        tracing::warn!(feature = %d.feature, "running without it: {}", d.reason);
    }
    tracing::info!(
        method,
        output = %args.output.as_ref().map_or("stdout".into(), |p| p.display().to_string()),
        "ready: probes attached, self-check passed; writing JSON lines"
    );
    agent.collect(collector.as_mut(), args)?;
    // What the kernel produced before the stop is still owed to the reader.
    let (pipeline, canaries) = (&mut agent.pipeline, &agent.canaries);
    collector.drain(&mut |mut e| {
        pipeline.enrich(&mut e);
        if !canaries.claim(&e, None) {
            pipeline.emit(e)
        }
    })?;
    agent.pipeline.write_deltas();
    agent.pipeline.sink.flush();
    if let Some(server) = grpc {
        server.finish();
    }
    let drops = collector.drops()?;
    drop(collector);

    eprintln!(
        "auspex: {}",
        summary(&agent.pipeline, &drops, started.elapsed())
    );
    match agent.pipeline.sink.take_error() {
        // The reader went away (`auspex run | head`): a normal way to stop.
        Some(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Some(e) => Err(e).context("writing events failed"),
        None => Ok(()),
    }
}

impl Agent {
    /// Tries the methods in order until one runs and passes its canary.
    fn choose(
        &mut self,
        args: &RunArgs,
        features: &FeatureReport,
    ) -> anyhow::Result<(&'static str, Box<dyn Collector>)> {
        let candidates: Vec<Box<dyn Method>> = match args.method.as_str() {
            "auto" => methods::registered(),
            name => {
                let chosen: Vec<_> = methods::registered()
                    .into_iter()
                    .filter(|m| m.name() == name)
                    .collect();
                if chosen.is_empty() {
                    bail!("the {name} method is not available in this build yet");
                }
                chosen
            }
        };
        let config = MethodConfig {
            btf_file: args.btf.clone(),
            ring_buffer_bytes: args.ring_buffer_size,
            scan_interval: args.scan_interval,
        };
        let names: Vec<&'static str> = candidates.iter().map(|m| m.name()).collect();
        for (i, method) in candidates.iter().enumerate() {
            let begun = Instant::now();
            let result = self.attempt(method.as_ref(), features, &config, args.canary_timeout);
            let (outcome, reason) = match &result {
                Ok(_) => (Outcome::Active, "self-check passed".to_string()),
                Err((outcome, reason)) => (*outcome, reason.clone()),
            };
            self.status.lock().unwrap().attempts.push(Attempt {
                method: method.name(),
                outcome,
                reason: reason.clone(),
                duration_ms: begun.elapsed().as_millis() as u64,
            });
            match result {
                Ok(collector) => {
                    self.metrics.set_method(method.name());
                    let mut s = self.status.lock().unwrap();
                    s.not_ready_reason = Some("reading what exists already".into());
                    s.method = Some(method.name());
                    s.degraded = collector.degraded();
                    return Ok((method.name(), collector));
                }
                Err((outcome, _)) => {
                    let to = names.get(i + 1).copied().unwrap_or("none");
                    tracing::warn!(method = method.name(), next = to, "{outcome}: {reason}");
                    self.metrics
                        .fallbacks
                        .get_or_create(&FallbackLabels {
                            from: method.name().into(),
                            to: to.into(),
                            reason: outcome.label().into(),
                        })
                        .inc();
                }
            }
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
        }
        self.log_diagnostics();
        let attempts: Vec<String> = self
            .status
            .lock()
            .unwrap()
            .attempts
            .iter()
            .map(|a| format!("{} ({}): {}", a.method, a.outcome, a.reason))
            .collect();
        match args.method.as_str() {
            "auto" => bail!("no collection method can run here: {}", attempts.join("; ")),
            name => bail!("the {name} method cannot run here: {}", attempts.join("; ")),
        }
    }

    /// Starts one method and proves it with the canary.
    fn attempt(
        &mut self,
        method: &dyn Method,
        features: &FeatureReport,
        config: &MethodConfig,
        canary_timeout: Duration,
    ) -> Result<Box<dyn Collector>, (Outcome, String)> {
        if let Some(unmet) = method.unmet(features) {
            return Err((Outcome::Skipped, unmet));
        }
        let mut collector = method
            .start(config)
            .map_err(|e| (Outcome::Failed, format!("{e:#}")))?;
        let check = self.canary(
            collector.as_mut(),
            canary_timeout + method.canary_allowance(config),
        );
        let passed = check.passed;
        let detail = check.detail.clone();
        self.status.lock().unwrap().canary = Some(check);
        if passed {
            Ok(collector)
        } else {
            // Dropping the collector unloads the method.
            Err((Outcome::CanaryMissed, detail))
        }
    }

    /// Names the BTF the method relocated against, with its checksum.
    fn report_btf(&self, collector: &dyn Collector, args: &RunArgs) {
        let used = collector.relocated_against().and_then(|path| {
            let origin = if args.btf.as_deref() == Some(path.as_path()) {
                "file"
            } else {
                "kernel"
            };
            BtfUsed::read(&path, origin)
                .inspect_err(|e| tracing::warn!("cannot checksum {}: {e}", path.display()))
                .ok()
        });
        if let Some(b) = &used {
            tracing::info!(
                "BTF: {} ({}), sha256 {}",
                b.path.display(),
                b.origin,
                b.sha256
            );
        }
        self.status.lock().unwrap().btf = used;
    }

    /// A method given up for the next is also written to the termination
    /// log, so that the pod's status shows it (a fatal error later
    /// overwrites it).
    fn report_fallbacks(&self, args: &RunArgs) {
        let s = self.status.lock().unwrap();
        let (Some(method), Some((_, given_up))) = (s.method, s.attempts.split_last()) else {
            return;
        };
        if given_up.is_empty() {
            return;
        }
        let reasons: Vec<String> = given_up
            .iter()
            .map(|a| format!("{} ({}): {}", a.method, a.outcome, a.reason))
            .collect();
        crate::termination::write(
            &args.termination_log,
            &format!("running {method} after: {}", reasons.join("; ")),
        );
    }

    /// Reports what existed before the method ran (its own canaries
    /// excepted), and hands the method the listeners' owners. The proc
    /// method's first scan reports sockets itself.
    fn scrape(&mut self, method: &str, collector: &mut dyn Collector) {
        let events = auspex_enrich::scrape::startup(method != "proc");
        let n = events.len();
        let listeners: Vec<Endpoint> = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::EndpointOpen(endpoint) => Some(endpoint.clone()),
                _ => None,
            })
            .collect();
        match collector.seed_listeners(&listeners) {
            Ok(seeded) => tracing::debug!("{seeded} listeners that predate the probes seeded"),
            // Their accepted connections lack an owner, as without seeding.
            Err(e) => tracing::warn!("could not tell the probes about existing listeners: {e:#}"),
        }
        for mut e in events {
            self.pipeline.enrich(&mut e);
            if !self.canaries.claim(&e, None) {
                self.pipeline.emit(e);
            }
        }
        tracing::info!("startup scrape: {n} processes, endpoints and connections");
    }

    /// Runs the full canary through `collector`, delivering every other
    /// event meanwhile.
    fn canary(&mut self, collector: &mut dyn Collector, timeout: Duration) -> CheckResult {
        let mut canary = match Canary::launch(true) {
            Ok(c) => c,
            Err(e) => {
                return CheckResult {
                    passed: false,
                    detail: format!("could not start the self-check: {e}"),
                    duration_ms: 0,
                    at: now_secs(),
                }
            }
        };
        self.canaries.remember(&canary);
        loop {
            self.liveness.beat();
            let (pipeline, canaries) = (&mut self.pipeline, &self.canaries);
            let polled = collector.poll(POLL_INTERVAL, &mut |mut e| {
                pipeline.enrich(&mut e);
                if !canaries.claim(&e, Some(&mut canary)) {
                    pipeline.emit(e);
                }
            });
            let took = canary.started.elapsed();
            let result = |passed, detail| CheckResult {
                passed,
                detail,
                duration_ms: took.as_millis() as u64,
                at: now_secs(),
            };
            if let Err(e) = polled {
                return result(false, format!("reading events failed: {e:#}"));
            }
            if canary.passed() {
                return result(true, format!("saw its exec and TCP connection in {took:?}"));
            }
            if timed_out(&canary, timeout) {
                return result(
                    false,
                    format!("did not see {} within {timeout:?}", canary.missing()),
                );
            }
            if self.stop.load(Ordering::Relaxed) {
                return result(false, "interrupted".into());
            }
        }
    }

    /// The main loop: deliver events, keep the heartbeat, publish counters.
    fn collect(&mut self, collector: &mut dyn Collector, args: &RunArgs) -> anyhow::Result<()> {
        let (heartbeat_every, heartbeat_timeout) = (args.heartbeat_interval, args.canary_timeout);
        let mut next_heartbeat =
            (!heartbeat_every.is_zero()).then(|| Instant::now() + heartbeat_every);
        let mut next_delta = Instant::now() + args.delta_interval;
        let mut heartbeat: Option<Canary> = None;
        let mut next_publish = Instant::now();
        while !self.stop.load(Ordering::Relaxed) && !self.pipeline.sink.failed() {
            self.liveness.beat();
            let (pipeline, canaries) = (&mut self.pipeline, &self.canaries);
            collector.poll(POLL_INTERVAL, &mut |mut e| {
                pipeline.enrich(&mut e);
                if !canaries.claim(&e, heartbeat.as_mut()) {
                    pipeline.emit(e);
                }
            })?;
            self.pipeline.sink.flush();

            if let Some(beat) = heartbeat.take() {
                let took = beat.started.elapsed();
                if beat.passed() {
                    self.record_heartbeat(true, format!("saw its exec in {took:?}"), took);
                } else if timed_out(&beat, heartbeat_timeout) {
                    let detail = format!(
                        "did not see {} within {heartbeat_timeout:?}",
                        beat.missing()
                    );
                    self.record_heartbeat(false, detail, took);
                } else {
                    heartbeat = Some(beat);
                }
            }
            if let Some(due) = next_heartbeat.filter(|due| Instant::now() >= *due) {
                if heartbeat.is_none() {
                    match Canary::launch(false) {
                        Ok(beat) => {
                            self.canaries.remember(&beat);
                            heartbeat = Some(beat);
                        }
                        Err(e) => self.record_heartbeat(
                            false,
                            format!("could not start: {e}"),
                            Duration::ZERO,
                        ),
                    }
                }
                next_heartbeat = Some(due + heartbeat_every);
            }
            if Instant::now() >= next_delta {
                self.pipeline.write_deltas();
                self.pipeline.sink.flush();
                next_delta += args.delta_interval;
            }
            if Instant::now() >= next_publish {
                self.publish(collector)?;
                next_publish = Instant::now() + PUBLISH_INTERVAL;
            }
        }
        self.publish(collector)
    }

    fn record_heartbeat(&mut self, passed: bool, detail: String, took: Duration) {
        if !passed {
            tracing::warn!("heartbeat missed: {detail}");
            self.metrics.heartbeat_misses.inc();
        }
        self.set_ready((!passed).then(|| format!("heartbeat missed: {detail}")));
        let mut s = self.status.lock().unwrap();
        s.heartbeat.misses += u64::from(!passed);
        s.heartbeat.last = Some(CheckResult {
            passed,
            detail,
            duration_ms: took.as_millis() as u64,
            at: now_secs(),
        });
    }

    fn set_ready(&self, not_ready: Option<String>) {
        self.metrics.ready.set(i64::from(not_ready.is_none()));
        let mut s = self.status.lock().unwrap();
        s.ready = not_ready.is_none();
        s.not_ready_reason = not_ready;
    }

    /// Copies event and drop counters into /status and /metrics.
    fn publish(&mut self, collector: &dyn Collector) -> anyhow::Result<()> {
        let mut drops = collector.drops()?;
        drops.push(("process_table_evicted", self.pipeline.processes_evicted()));
        if let Some(t) = self.pipeline.tracker_stats() {
            drops.push(("connection_rate_limited", t.rate_limited));
            drops.push(("tracker_evicted", t.evicted));
        }
        for (cause, value) in &drops {
            let last = self.published_drops.insert(cause, *value).unwrap_or(0);
            self.metrics
                .drops
                .get_or_create(&CauseLabel {
                    cause: cause.to_string(),
                })
                .inc_by(value.saturating_sub(last));
        }
        let mut s = self.status.lock().unwrap();
        s.events = self.pipeline.sink.written().clone();
        s.drops = drops.into_iter().collect();
        Ok(())
    }

    /// The startup diagnostics block: every attempt, its outcome and time.
    fn log_diagnostics(&self) {
        let s = self.status.lock().unwrap();
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
    }
}

/// The connection tracker the arguments ask for, if deltas are reported.
fn tracker(args: &RunArgs) -> Option<auspex_track::Tracker> {
    (args.report != Report::Raw).then(|| {
        auspex_track::Tracker::new(auspex_track::TrackerConfig {
            afterglow: args.afterglow,
            rate_limit_per_minute: args.connection_rate_limit,
            capacity: 65536,
            normaliser: auspex_track::Normaliser {
                aggregate_public: args.aggregate_public,
                never_aggregate: args.never_aggregate.clone(),
            },
        })
    })
}

fn summary(pipeline: &Pipeline, drops: &[(&'static str, u64)], elapsed: Duration) -> String {
    let written = pipeline.sink.written();
    let total: u64 = written.values().sum();
    let by_type: Vec<String> = written.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let lost: u64 = drops.iter().map(|(_, v)| v).sum();
    let by_cause: Vec<String> = drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!(
        "{total} events in {:.1} s ({}); dropped or incomplete {lost} ({}, processes forgotten {})",
        elapsed.as_secs_f64(),
        if by_type.is_empty() {
            "none".to_string()
        } else {
            by_type.join(", ")
        },
        by_cause.join(", "),
        pipeline.processes_evicted(),
    )
}
