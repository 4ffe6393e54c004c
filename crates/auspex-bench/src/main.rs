//! Measures what the agent costs a workload: the same workload runs
//! alternately without and with `auspex run` attached, several times, and
//! the medians are compared. Ratios measured in one run, never absolute
//! thresholds.

use std::hint::black_box;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[derive(Debug, Parser)]
#[command(about = "Workload throughput with and without the Auspex agent")]
struct Args {
    /// The workload.
    #[arg(value_enum, default_value = "getppid")]
    mode: Mode,
    /// The agent binary.
    #[arg(long, default_value = "target/release/auspex")]
    agent: PathBuf,
    /// Runs of each kind (without, with the agent), alternating.
    #[arg(long, default_value_t = 7)]
    reps: usize,
    /// How long each run lasts.
    #[arg(long, default_value = "1.0")]
    seconds: f64,
    /// The CPU the workload is pinned to.
    #[arg(long, default_value_t = 0)]
    cpu: usize,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    /// A syscall the agent has no interest in: must not slow down.
    Getppid,
}

/// Runs the workload for `seconds` and returns operations per second.
fn run(mode: Mode, seconds: f64) -> f64 {
    let deadline = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut ops = 0u64;
    match mode {
        Mode::Getppid => {
            while start.elapsed() < deadline {
                for _ in 0..1000 {
                    black_box(nix::unistd::getppid());
                }
                ops += 1000;
            }
        }
    }
    ops as f64 / start.elapsed().as_secs_f64()
}

/// Starts the agent and waits until its probes are attached.
fn start_agent(agent: &PathBuf) -> anyhow::Result<Child> {
    let mut child = Command::new(agent)
        .args(["run", "--output", "/dev/null"])
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", agent.display()))?;
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(line) => {
                if line?.contains("probes attached") {
                    break;
                }
            }
            None => bail!("the agent exited before attaching"),
        }
    }
    // Keep draining its stderr so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Ok(child)
}

fn stop_agent(mut child: Child) -> anyhow::Result<()> {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM)?;
    child.wait()?;
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut cpus = CpuSet::new();
    cpus.set(args.cpu)?;
    sched_setaffinity(Pid::from_raw(0), &cpus).context("pinning the workload")?;

    let (mut without, mut with) = (Vec::new(), Vec::new());
    for rep in 0..args.reps {
        let base = run(args.mode, args.seconds);
        let agent = start_agent(&args.agent)?;
        let attached = run(args.mode, args.seconds);
        stop_agent(agent)?;
        eprintln!(
            "rep {}: without {:.0} ops/s, with agent {:.0} ops/s",
            rep + 1,
            base,
            attached
        );
        without.push(base);
        with.push(attached);
    }
    let (without, with) = (median(without), median(with));
    println!(
        "{:?}: without agent {:.1} ns/op, with agent {:.1} ns/op, throughput ratio {:.3} \
         (median of {} alternating runs of {} s)",
        args.mode,
        1e9 / without,
        1e9 / with,
        with / without,
        args.reps,
        args.seconds
    );
    Ok(())
}
