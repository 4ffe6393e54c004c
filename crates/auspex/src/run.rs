//! `auspex run`: wires the stages together and keeps the time. The method
//! selector (collect/select.rs) returns a proven method, read on a thread
//! of its own (collect/reader.rs); the pipeline (pipeline/) takes each event
//! through enrich → filter → track → sinks on this thread, each sink
//! written by a thread of its own; the loop below owns the timers:
//! heartbeat, deltas, published counters.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::canary::Heartbeat;
use crate::collect::reader::POLL_INTERVAL;
use crate::collect::{scrape, select, Reader, Selection};
use crate::config::values::Endpoint;
use crate::config::RunArgs;
use crate::metrics::Metrics;
use crate::pipeline::output::JsonLines;
use crate::pipeline::queue::SinkReport;
use crate::pipeline::sink::{Sink, Sinks};
use crate::pipeline::Pipeline;
use crate::reporter::{summary, Reporter};
use crate::server::tls::{self, TlsOptions};
use crate::server::Listening;

/// How often counters are copied into /status and /metrics.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install the signal handlers")?;
    }
    // Wrong settings fail here, before anything is loaded.
    if let Some(btf) = &args.btf {
        auspex_probe::btf::check_btf_file(btf).context("--btf")?;
    }
    let output: Box<dyn Sink> = match &args.output {
        Some(path) => match JsonLines::create(path, &stop)? {
            Some(file) => Box::new(file),
            // Stopped while waiting for a FIFO's reader.
            None => return Ok(()),
        },
        None => Box::new(JsonLines::stdout()?),
    };
    auspex_probe::btf::read_kernel_btf_at(&args.kernel_btf);
    let metrics = Arc::new(Metrics::new());
    metrics.start_at_zero(&crate::methods::order());
    let reporter = Reporter::new(Arc::clone(&metrics), args.termination_log.clone());
    let limits = crate::server::Limits {
        max_connections: args.api_max_connections,
        header_timeout: args.api_header_timeout,
        idle_timeout: args.api_idle_timeout,
    };
    if let Some(addr) = args.listen.0 {
        let endpoints = [Endpoint::Tcp(addr)];
        let listening = Listening {
            endpoints: &endpoints,
            limits,
            tls: tls::from_options(TlsOptions {
                api: "http",
                listen_flag: "--listen",
                endpoints: &endpoints,
                cert: args.http_tls_cert.as_deref(),
                key: args.http_tls_key.as_deref(),
                client_ca: args.http_tls_client_ca.as_deref(),
                insecure: args.http_insecure,
            })?,
        };
        let scheme = scheme(&listening);
        let bound = crate::http::serve(listening, reporter.shared(), Arc::clone(&metrics))?;
        tracing::info!("HTTP API on {scheme}://{bound} (/ready, /status, /metrics)");
    }
    let mut sinks = vec![("output", output)];
    if !args.grpc_listen.0.is_empty() {
        let listening = Listening {
            endpoints: &args.grpc_listen.0,
            limits,
            tls: tls::from_options(TlsOptions {
                api: "grpc",
                listen_flag: "--grpc-listen",
                endpoints: &args.grpc_listen.0,
                cert: args.grpc_tls_cert.as_deref(),
                key: args.grpc_tls_key.as_deref(),
                client_ca: args.grpc_tls_client_ca.as_deref(),
                insecure: args.grpc_insecure,
            })?,
        };
        let scheme = scheme(&listening);
        let server = crate::grpc::serve(listening, reporter.shared().0, Arc::clone(&metrics))?;
        for endpoint in &server.bound {
            tracing::info!(
                "gRPC event stream on {} (auspex.v1.Events/Subscribe, grpc.health.v1, reflection)",
                match endpoint {
                    Endpoint::Tcp(addr) => format!("{scheme}://{addr}"),
                    unix => unix.to_string(),
                }
            );
        }
        sinks.push(("grpc", Box::new(server)));
    }
    let sinks = Sinks::new(sinks, args.sink_queue, Arc::clone(&metrics))
        .context("cannot start the sinks' writers")?;
    let mut pipeline = Pipeline::new(args, sinks);
    let started = Instant::now();
    let Some(mut running) = select(&Selection::from(args), &mut pipeline, &reporter, &stop)? else {
        // A signal during startup is a request to stop, not a fault: no
        // termination log, exit status 0.
        tracing::info!("stopped during startup, before a method was proven");
        let deadline = Instant::now() + args.flush_timeout;
        return finish(pipeline, &[], started, deadline);
    };
    reporter.log_diagnostics();
    scrape::report_existing(&mut running, &mut pipeline);
    if args.lockdown {
        reporter.lockdown(running.reader.lock_down());
    }
    // Ready only now: the scrape told the probes who owns the listeners
    // that predate them, without which their connections have no owner.
    // The method's drop causes are in /metrics (at zero) once it is ready.
    publish(&reporter, &running.reader, &pipeline);
    reporter.running();
    let output = args
        .output
        .as_ref()
        .map_or("stdout".into(), |p| p.display().to_string());
    tracing::info!(
        method = running.method,
        output,
        "ready: probes attached, self-check passed; writing JSON lines"
    );

    collect(&mut running.reader, &mut pipeline, &reporter, args, &stop)?;
    // Everything from here on is bounded by the flush deadline: a sink
    // that does not take what it is owed is given up then, counted.
    let deadline = Instant::now() + args.flush_timeout;
    // What the kernel produced before the stop is still owed to the user.
    let drops = running.reader.stop(deadline, &mut |e| {
        pipeline.process(e);
    })?;
    pipeline.write_deltas();
    finish(pipeline, &drops, started, deadline)
}

/// How a listener's TCP endpoints are reached, for the log.
fn scheme(listening: &Listening<'_>) -> &'static str {
    match &listening.tls {
        None => "http",
        Some(tls) if tls.mutual() => {
            tracing::info!("TLS: clients need a certificate from the client CA");
            "https"
        }
        Some(_) => "https",
    }
}

/// Ends the sinks by `deadline`, prints the summary, and says whether
/// every event was delivered.
fn finish(
    mut pipeline: Pipeline,
    reader_drops: &[(&'static str, u64)],
    started: Instant,
    deadline: Instant,
) -> anyhow::Result<()> {
    // The last batch handed over first: a full queue loses (and counts)
    // its oldest then, before the drops are read.
    pipeline.flush();
    let reported = pipeline.reported().clone();
    let evicted = pipeline.processes_evicted();
    let drops = [reader_drops.to_vec(), pipeline.drops()].concat();
    let sinks = pipeline.finish(deadline);
    eprintln!(
        "auspex: {}",
        summary(&reported, &drops, &sinks, evicted, started.elapsed())
    );
    delivered(sinks)
}

/// The run's result from what the sinks did: a sink's error, or the
/// events a sink did not get.
fn delivered(sinks: Vec<SinkReport>) -> anyhow::Result<()> {
    let mut failed = sinks
        .iter()
        .filter_map(|s| Some((s.name, s.error.as_ref()?)));
    match failed.next() {
        // The reader went away (`auspex run | head`): a normal way to stop.
        Some((_, e)) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        Some((name, e)) => {
            return Err(anyhow!("{e}")).with_context(|| format!("writing events to {name} failed"))
        }
        None => {}
    }
    let short: Vec<String> = sinks
        .iter()
        .filter(|s| s.undelivered() > 0)
        .map(|s| {
            format!(
                "{} did not get {} events ({} lost while it could not keep up, {} still \
                 unwritten at the flush deadline)",
                s.name,
                s.undelivered(),
                s.lost,
                s.left
            )
        })
        .collect();
    match short.is_empty() {
        true => Ok(()),
        false => Err(anyhow!("{}", short.join("; "))),
    }
}

/// Counters, drops and the sinks' state into /status and /metrics.
fn publish(reporter: &Reporter, reader: &Reader, pipeline: &Pipeline) {
    reporter.counters(
        pipeline.reported(),
        &[reader.drops(), pipeline.drops()].concat(),
    );
    reporter.sinks(pipeline.sinks());
    reporter.table_sizes(pipeline.table_sizes());
    reporter.program_runs(&reader.program_runs());
    reporter.buffer_fill(reader.buffer_fill());
}

/// The main loop: deliver events, and keep the heartbeat, the deltas and
/// the published counters on time.
fn collect(
    reader: &mut Reader,
    pipeline: &mut Pipeline,
    reporter: &Reporter,
    args: &RunArgs,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    // The heartbeat is an exec: without exec events there is none to see.
    let every = if args.events.exec() {
        args.heartbeat_interval
    } else {
        Duration::ZERO
    };
    let mut heartbeat = Heartbeat::new(every, args.canary_timeout);
    let mut next_delta = Instant::now() + args.delta_interval;
    let mut next_publish = Instant::now();
    while !stop.load(Ordering::Relaxed) && !pipeline.failed() {
        reporter.beat();
        reader.poll(POLL_INTERVAL, &mut |e| {
            if let Some(own) = pipeline.process(e) {
                heartbeat.observe(&own);
            }
        })?;
        if reader.caught_up() {
            pipeline.flush();
        }
        for result in heartbeat.tick(|beat| pipeline.own_activity().remember(beat)) {
            reporter.heartbeat(result);
        }
        if Instant::now() >= next_delta {
            pipeline.write_deltas();
            pipeline.flush();
            next_delta += args.delta_interval;
        }
        if Instant::now() >= next_publish {
            publish(reporter, reader, pipeline);
            next_publish = Instant::now() + PUBLISH_INTERVAL;
        }
    }
    publish(reporter, reader, pipeline);
    Ok(())
}
