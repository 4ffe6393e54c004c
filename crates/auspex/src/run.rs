//! `auspex run`: kernel events → decode → sink, until told to stop.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use auspex_probe::{CoreBpf, ProbeConfig, ProbeStats};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::cli::RunArgs;
use crate::pipeline::Pipeline;
use crate::sink::JsonLines;

/// How long one poll may wait; bounds how late a stop request is noticed.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

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
    let mut probe = CoreBpf::load(&ProbeConfig {
        btf_file: args.btf.clone(),
        ring_buffer_bytes: args.ring_buffer_size,
    })?;
    for d in probe.degraded() {
        tracing::warn!(feature = d.feature, "running without it: {}", d.reason);
    }
    tracing::info!(
        method = "core_bpf",
        programs = probe.attached(),
        btf = %args.btf.as_ref().map_or("kernel".into(), |p| p.display().to_string()),
        output = %args.output.as_ref().map_or("stdout".into(), |p| p.display().to_string()),
        "probes attached; writing JSON lines"
    );
    let started = Instant::now();

    let mut pipeline = Pipeline::new(sink);
    while !stop.load(Ordering::Relaxed) && !pipeline.sink.failed() {
        probe.poll(POLL_INTERVAL, &mut |e| pipeline.deliver(e))?;
        pipeline.sink.flush();
    }
    // What the kernel produced before the stop is still owed to the reader.
    probe.drain(&mut |e| pipeline.deliver(e))?;
    pipeline.sink.flush();
    let stats = probe.stats()?;
    drop(probe);

    eprintln!("auspex: {}", summary(&pipeline, &stats, started.elapsed()));
    match pipeline.sink.take_error() {
        // The reader went away (`auspex run | head`): a normal way to stop.
        Some(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Some(e) => Err(e).context("writing events failed"),
        None => Ok(()),
    }
}

fn summary(pipeline: &Pipeline, stats: &ProbeStats, elapsed: Duration) -> String {
    let written = pipeline.sink.written();
    let total: u64 = written.values().sum();
    let by_type: Vec<String> = written.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let k = &stats.kernel_drops;
    format!(
        "{total} events in {:.1} s ({}); dropped {}: ring buffer full {} (exec {}, fork {}, \
         exit {}, network {}), undecodable records {}; incomplete: socket maps full {}, \
         connected UDP unresolved {}, UDP sockets forgotten {}, processes forgotten {}",
        elapsed.as_secs_f64(),
        if by_type.is_empty() {
            "none".to_string()
        } else {
            by_type.join(", ")
        },
        k.records() + stats.decode.rejected(),
        k.records(),
        k.exec,
        k.fork,
        k.exit,
        k.network,
        stats.decode.rejected(),
        k.socket_maps_full,
        k.udp_connect_unresolved,
        stats.udp_sockets_forgotten,
        pipeline.processes_evicted(),
    )
}
