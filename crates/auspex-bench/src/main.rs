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
    /// The proc method's /proc scan with 1,000 extra processes and 10,000
    /// sockets: CPU time per scan (no agent involved).
    ProcScan,
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
        Mode::ProcScan => unreachable!("not a workload"),
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

/// Times `Scanner::scan` with 1,000 sleeping processes and 5,000 loopback
/// TCP connections (10,000 sockets) alive.
fn proc_scan(reps: usize) -> anyhow::Result<()> {
    use nix::sys::resource::{getrlimit, getrusage, setrlimit, Resource, UsageWho};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    let mut sleepers = Vec::new();
    for _ in 0..1000 {
        sleepers.push(Command::new("sleep").arg("600").spawn()?);
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let mut sockets = Vec::new();
    for _ in 0..5000 {
        let client = std::net::TcpStream::connect(listener.local_addr()?)?;
        let (server, _) = listener.accept()?;
        sockets.push((client, server));
    }
    let cpu = || -> anyhow::Result<Duration> {
        let u = getrusage(UsageWho::RUSAGE_SELF)?;
        let t = |tv: nix::sys::time::TimeVal| {
            Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000)
        };
        Ok(t(u.user_time()) + t(u.system_time()))
    };
    let mut scanner = auspex_proc::Scanner::new(auspex_proc::ProcReader::new());
    // The first scan reads every process's details; later ones reuse them.
    let first_start = (cpu()?, Instant::now());
    let opened = scanner.scan(chrono::Utc::now()).len();
    let first = (cpu()? - first_start.0, first_start.1.elapsed());
    let mut runs = Vec::new();
    for _ in 0..reps {
        let (c0, w0) = (cpu()?, Instant::now());
        scanner.scan(chrono::Utc::now());
        runs.push(((cpu()? - c0).as_secs_f64(), w0.elapsed().as_secs_f64()));
    }
    for mut s in sleepers {
        let _ = s.kill();
        let _ = s.wait();
    }
    let cpu_median = median(runs.iter().map(|r| r.0).collect());
    let wall_median = median(runs.iter().map(|r| r.1).collect());
    println!(
        "ProcScan: first scan {:.1} ms CPU ({:.1} ms wall, {opened} opens); then median {:.1} ms \
         CPU, {:.1} ms wall per scan ({reps} scans; 1,000 extra processes, 10,000 extra sockets)",
        first.0.as_secs_f64() * 1e3,
        first.1.as_secs_f64() * 1e3,
        cpu_median * 1e3,
        wall_median * 1e3,
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Mode::ProcScan = args.mode {
        return proc_scan(args.reps);
    }
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
