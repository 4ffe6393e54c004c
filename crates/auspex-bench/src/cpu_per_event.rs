//! The agent's own CPU per event it reports (issue 19): agent CPU seconds
//! over events handed to its sinks, while a workload runs, per method and
//! workload. The workload is pinned to CPU 0 and every thread of the agent
//! to CPU 1, so that the two do not take turns on one CPU; events go to
//! /dev/null (what this counts is the agent's work, not a disk's). With
//! `--baseline`, each rep runs the baseline and this build one after the
//! other, so that both see the same machine (other engineers building on
//! it, say): what to read is the ratio of medians, not the microseconds.
//!
//! Events are counted by the agent's `/metrics` (`auspex_events_total`)
//! before the workload and once the count has settled after it, and CPU
//! from `/proc/PID/stat` at the same moments: startup (loading, the
//! self-check, the scrape of what exists) is not in the figure.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;

use crate::agent::{dropped, pin_threads, Agent};
use crate::workload::{self, Mode};
use crate::{agents, labelled, median};

#[derive(Debug, clap::Args)]
pub struct CpuArgs {
    /// Runs of each agent per method, alternating.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// How long each workload runs.
    #[arg(long, default_value = "2")]
    pub seconds: f64,
    #[arg(long, value_delimiter = ',', default_value = "core_bpf,ebpf")]
    pub methods: Vec<String>,
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "tcp,fork-exec"
    )]
    pub modes: Vec<Mode>,
    /// Another agent binary (main's build, say), run alternately with
    /// --agent in the same reps.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
}

/// One workload under one agent.
#[derive(Debug, Clone, Copy)]
struct Sample {
    events: u64,
    cpu_seconds: f64,
    dropped: u64,
}

impl Sample {
    fn us_per_event(&self) -> f64 {
        self.cpu_seconds * 1e6 / self.events.max(1) as f64
    }
}

/// A port nobody listens on now.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// The sum of `auspex_events_total` in the agent's /metrics.
fn events_reported(port: u16) -> anyhow::Result<u64> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let total = text
        .lines()
        .filter(|l| l.starts_with("auspex_events_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    if !text.contains("auspex_events_total{") {
        bail!("no auspex_events_total in the agent's /metrics: {text}");
    }
    Ok(total)
}

/// Events per 300 ms below which the agent counts as caught up: what the
/// rest of a shared machine does (compilers forking) never stops.
const QUIET: u64 = 200;

/// Waits until the agent's event count moves no more than the machine's
/// background (it has caught up with the kernel's buffer): the count then.
fn settled(port: u16) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = events_reported(port)?;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = events_reported(port)?;
        if now - last <= QUIET || Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

/// Each mode in turn under one agent.
fn run_agent(
    binary: &Path,
    method: &str,
    modes: &[Mode],
    duration: Duration,
) -> anyhow::Result<Vec<Sample>> {
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let agent = Agent::start_with(
        binary,
        method,
        Path::new("/dev/null"),
        &["--listen", &listen],
        &[],
    )?;
    pin_threads(agent.pid(), 1)?;
    let mut samples = Vec::new();
    for mode in modes {
        let (e0, c0) = (settled(port)?, agent.cost().cpu_seconds);
        workload::run(*mode, duration);
        let e1 = settled(port)?;
        let c1 = agent.cost().cpu_seconds;
        samples.push(Sample {
            events: e1 - e0,
            cpu_seconds: c1 - c0,
            dropped: 0,
        });
    }
    let summary = agent.stop()?;
    // Drops are the run's (any workload's): none is expected at these rates.
    let lost = dropped(&summary).unwrap_or(u64::MAX);
    samples.iter_mut().for_each(|s| s.dropped = lost);
    Ok(samples)
}

pub fn cpu_per_event(binary: &Path, args: &CpuArgs) -> anyhow::Result<String> {
    let mut cpus = CpuSet::new();
    cpus.set(0)?;
    sched_setaffinity(Pid::from_raw(0), &cpus).context("pinning the workload to CPU 0")?;
    let agents = agents(binary, args.baseline.as_deref());
    let duration = Duration::from_secs_f64(args.seconds);
    let mut table = String::from(
        "| method | workload | events per run | agent CPU per event | each rep | ratio to the first row | dropped |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for method in &args.methods {
        // [agent][mode] -> samples
        let mut samples = vec![vec![Vec::<Sample>::new(); args.modes.len()]; agents.len()];
        for rep in 0..args.reps {
            for (a, (_, binary)) in agents.iter().enumerate() {
                for (m, s) in run_agent(binary, method, &args.modes, duration)?
                    .into_iter()
                    .enumerate()
                {
                    samples[a][m].push(s);
                }
            }
            eprintln!(
                "cpu-per-event: {method} rep {} of {} done",
                rep + 1,
                args.reps
            );
        }
        for (m, mode) in args.modes.iter().enumerate() {
            let first = median(samples[0][m].iter().map(Sample::us_per_event).collect());
            for (a, (label, _)) in agents.iter().enumerate() {
                let runs = &samples[a][m];
                let us = median(runs.iter().map(Sample::us_per_event).collect());
                let events = median(runs.iter().map(|s| s.events as f64).collect());
                let dropped = runs.iter().map(|s| s.dropped).max().unwrap_or(0);
                let dropped = match dropped {
                    u64::MAX => "?".to_string(),
                    n => n.to_string(),
                };
                let each: Vec<String> = runs
                    .iter()
                    .map(|s| format!("{:.2}", s.us_per_event()))
                    .collect();
                writeln!(
                    table,
                    "| {} | {mode:?} | {events:.0} | {us:.2} µs | {} | {:.2}× | {dropped} |",
                    labelled(method, label),
                    each.join(", "),
                    us / first,
                )?;
            }
        }
    }
    Ok(table)
}
