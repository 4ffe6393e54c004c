//! `auspex run`: wires the stages together and keeps the time. The method
//! selector (collect/select.rs) returns a proven method, read on a thread
//! of its own (collect/reader.rs); the pipeline (pipeline/) takes each event
//! through enrich → filter → track → sinks on this thread; the loop below
//! owns the timers: heartbeat, deltas, published counters.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::canary::Heartbeat;
use crate::collect::reader::POLL_INTERVAL;
use crate::collect::{scrape, select, Reader, Selection};
use crate::config::RunArgs;
use crate::metrics::Metrics;
use crate::pipeline::sink::{JsonLines, Sink, Sinks};
use crate::pipeline::Pipeline;
use crate::reporter::{summary, Reporter};

/// How often counters are copied into /status and /metrics.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install the signal handlers")?;
    }
    let output: Box<dyn Sink> = match &args.output {
        Some(path) => Box::new(JsonLines::create(path)?),
        None => Box::new(JsonLines::stdout()),
    };
    auspex_probe::btf::read_kernel_btf_at(&args.kernel_btf);
    let metrics = Arc::new(Metrics::new());
    metrics.start_at_zero(&crate::methods::order());
    let reporter = Reporter::new(Arc::clone(&metrics), args.termination_log.clone());
    if let Some(addr) = args.listen.0 {
        let bound = crate::http::serve(addr, reporter.shared(), Arc::clone(&metrics))?;
        tracing::info!("HTTP API on http://{bound} (/ready, /status, /metrics)");
    }
    let mut sinks = vec![output];
    if let Some(addr) = args.grpc_listen.0 {
        let server = crate::grpc::serve(addr, Arc::clone(&metrics))?;
        tracing::info!(
            "gRPC event stream on http://{} (auspex.v1.Events/Subscribe)",
            server.addr
        );
        sinks.push(Box::new(server));
    }
    let mut pipeline = Pipeline::new(args, Sinks::new(sinks, Arc::clone(&metrics)));
    let started = Instant::now();
    let mut running = select(&Selection::from(args), &mut pipeline, &reporter, &stop)?;
    reporter.log_diagnostics();
    scrape::report_existing(&mut running, &mut pipeline);
    if args.lockdown {
        reporter.lockdown(running.reader.lock_down());
    }
    // Ready only now: the scrape told the probes who owns the listeners
    // that predate them, without which their connections have no owner.
    // The method's drop causes are in /metrics (at zero) once it is ready.
    reporter.counters(
        pipeline.written(),
        &[running.reader.drops(), pipeline.drops()].concat(),
    );
    reporter.ready(None);
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
    // What the kernel produced before the stop is still owed to the user.
    let drops = running.reader.stop(&mut |e| {
        pipeline.process(e);
    })?;
    pipeline.write_deltas();
    let (written, evicted) = (pipeline.written().clone(), pipeline.processes_evicted());
    let failure = pipeline.finish();
    eprintln!(
        "auspex: {}",
        summary(&written, &drops, evicted, started.elapsed())
    );
    match failure {
        // The reader went away (`auspex run | head`): a normal way to stop.
        Some((_, e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Some((sink, e)) => Err(e).with_context(|| format!("writing events to {sink} failed")),
        None => Ok(()),
    }
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
    let mut heartbeat = Heartbeat::new(args.heartbeat_interval, args.canary_timeout);
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
            reporter.counters(
                pipeline.written(),
                &[reader.drops(), pipeline.drops()].concat(),
            );
            next_publish = Instant::now() + PUBLISH_INTERVAL;
        }
    }
    reporter.counters(
        pipeline.written(),
        &[reader.drops(), pipeline.drops()].concat(),
    );
    Ok(())
}
