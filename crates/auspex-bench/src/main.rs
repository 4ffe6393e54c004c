//! Auspex's benchmark suite. Everything is a ratio or a count measured in
//! the same run (never an absolute threshold): workloads without and with
//! the agent, alternating; exact counts of operations against what the
//! agent reported; the agent's own CPU and memory; in-kernel time per
//! program. `auspex-bench all --write docs/performance.md` regenerates the
//! document.
#![forbid(unsafe_code)]

mod agent;
mod cpu_per_event;
mod max_rate;
mod slow_proc;
mod workload;

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use serde_json::Value;

use crate::agent::{dropped, Agent, Cost};
use crate::workload::Mode;

#[derive(Debug, Parser)]
#[command(about = "Auspex benchmarks: overhead, completeness, cost, measured in one run")]
struct Args {
    #[command(subcommand)]
    command: Bench,
    /// The agent binary.
    #[arg(long, global = true, default_value = "target/release/auspex")]
    agent: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Workload throughput without and with the agent, per method.
    Overhead(OverheadArgs),
    /// Exact counts of execs, TCP connections and UDP peers against what
    /// the agent reported.
    Completeness {
        #[arg(long, default_value_t = 2000)]
        count: u32,
        /// Runs per method and agent, alternating (medians).
        #[arg(long, default_value_t = 1)]
        reps: usize,
        /// Another agent binary, run alternately with --agent.
        #[arg(long)]
        baseline: Option<PathBuf>,
    },
    /// The agent's CPU per event it reports, per method and workload
    /// (workload on CPU 0, agent on CPU 1).
    CpuPerEvent(cpu_per_event::CpuArgs),
    /// The agent's maximum sustained event rate on one core, and whether
    /// drops beyond it are counted exactly.
    MaxRate(max_rate::MaxRateArgs),
    /// In-kernel time per BPF program (kernel.bpf_stats_enabled).
    KernelCost {
        #[arg(long, default_value_t = 2000)]
        count: u32,
        /// Another agent binary, measured alternately with --agent: the
        /// table then compares the in-kernel time of all programs per
        /// operation (medians of --reps).
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// Also measure --agent with `--events LIST` (what it saves).
        #[arg(long, value_name = "LIST")]
        events: Option<String>,
        /// Rounds of the comparison, each agent once per round.
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// The proc method's /proc scan with 1,000 extra processes and 10,000
    /// extra sockets.
    ProcScan {
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
    /// Whether a slow /proc makes the agent lose kernel records: its
    /// pipeline on the reader's thread and behind its queue (needs an
    /// agent built with `--features test-hooks`).
    SlowProc(slow_proc::SlowProcArgs),
    /// One workload alone, pinned to CPU 0: ops/s (to measure by hand).
    Workload {
        #[arg(value_enum)]
        mode: Mode,
        #[arg(long, default_value = "2")]
        seconds: f64,
    },
    /// Everything, as a markdown report (written to --write too).
    All {
        #[arg(long)]
        write: Option<PathBuf>,
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Another agent binary (an earlier build): the overhead,
        /// completeness, CPU-per-event and in-kernel tables then show it
        /// and --agent side by side, measured alternately.
        #[arg(long)]
        baseline: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct OverheadArgs {
    /// Runs of each kind (without, with the agent), alternating.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// How long each run of a workload lasts.
    #[arg(long, default_value = "0.5")]
    seconds: f64,
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "core_bpf,ebpf,ebpf-nobtf,proc"
    )]
    methods: Vec<String>,
    #[arg(long, value_enum, value_delimiter = ',')]
    modes: Vec<Mode>,
    /// Another agent binary (an older build, say), run alternately with
    /// --agent in the same reps.
    #[arg(long)]
    baseline: Option<PathBuf>,
}

/// What the CPU-per-event table owes to what (issue 19), as profiled when
/// it changed: prose, not measured by this run.
const CPU_PER_EVENT_NOTES: &str = "What made it cheaper (issue 19, each step profiled with \
`perf record --call-graph dwarf` on the agent during a TCP or fork+exec storm): the events' \
JSON written by a writer of its own (`auspex-events` `json.rs`, held byte for byte to serde's \
form by its tests; serde_json was 40 % of the agent's CPU), each thread's `process` object \
written once and reused while it is the same process, `exec_id` computed once per process \
image (12 %); the events handed from the reader to the pipeline per poll (one at a time, each \
send woke the pipeline, which on the agent's one CPU ran and slept again per event) and from \
the pipeline to the sinks in batches of up to 256 (their reference counts, sends and buffer \
reuse were 21 % of the pipeline thread, copying into the output's buffer most of the writer \
thread's); the threads waking each other through a condition variable rather than in \
crossbeam's receive, which spins and yields (32 % of the agent's CPU went to `sched_yield` in \
an ebpf TCP storm); `comm` kept inline; and /proc read only where the kernel does not say: on \
a cgroup v1 (or hybrid) host such as this one, the exec probes send the id of the process's \
memory cgroup and each container is read once per such cgroup, not at every exec \
(/proc/PID/cgroup was 28 % of the pipeline thread in a fork+exec storm), and the ebpf method \
with BTF reads a forked child's start in the kernel (a raw tracepoint) instead of \
/proc/PID/stat (38 %). Without BTF, ebpf still reads both from /proc.\n";

/// A method's name in a table row, with the agent's label when there are two.
fn labelled(method: &str, label: &str) -> String {
    match label.is_empty() {
        true => method.to_string(),
        false => format!("{method} ({label})"),
    }
}

/// The agents a run compares: the baseline first, if any.
fn agents<'a>(agent: &'a Path, baseline: Option<&'a Path>) -> Vec<(&'static str, &'a Path)> {
    let mut agents: Vec<(&'static str, &Path)> =
        baseline.map(|b| ("baseline", b)).into_iter().collect();
    agents.push((if agents.is_empty() { "" } else { "this build" }, agent));
    agents
}

const METHODS: [&str; 4] = ["core_bpf", "ebpf", "ebpf-nobtf", "proc"];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn output_file(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("auspex-bench-{}-{tag}.jsonl", std::process::id()))
}

/// Overhead: per method and mode, (ops/s without, ops/s with), medians;
/// with a baseline, each rep runs without, with the baseline, with this
/// build.
fn overhead(binary: &Path, args: &OverheadArgs) -> anyhow::Result<String> {
    let mut cpus = CpuSet::new();
    cpus.set(0)?;
    sched_setaffinity(Pid::from_raw(0), &cpus).context("pinning the workload to CPU 0")?;
    let modes = if args.modes.is_empty() {
        workload::ALL.to_vec()
    } else {
        args.modes.clone()
    };
    let agents = agents(binary, args.baseline.as_deref());
    let duration = Duration::from_secs_f64(args.seconds);
    let mut table = String::from(
        "| method | workload | without agent (ops/s) | with agent (ops/s) | ratio | cost per op |\n\
         |---|---|---|---|---|---|\n",
    );
    for method in &args.methods {
        // [mode] -> (without, [agent] -> with)
        let mut samples: Vec<(Vec<f64>, Vec<Vec<f64>>)> =
            vec![(Vec::new(), vec![Vec::new(); agents.len()]); modes.len()];
        for rep in 0..args.reps {
            for (i, mode) in modes.iter().enumerate() {
                samples[i].0.push(workload::run(*mode, duration));
            }
            for (a, (_, agent_binary)) in agents.iter().enumerate() {
                // Events go to /dev/null: this measures what observing costs
                // the workload, not what storing 100,000s of events/s costs
                // the disk.
                let agent = Agent::start(agent_binary, method, Path::new("/dev/null"))?;
                for (i, mode) in modes.iter().enumerate() {
                    samples[i].1[a].push(workload::run(*mode, duration));
                }
                agent.stop()?;
            }
            eprintln!("overhead: {method} rep {} of {} done", rep + 1, args.reps);
        }
        for (mode, (without, with)) in modes.iter().zip(samples) {
            let a = median(without);
            for ((label, _), with) in agents.iter().zip(with) {
                let b = median(with);
                let added_ns = 1e9 / b - 1e9 / a;
                let method = labelled(method, label);
                writeln!(
                    table,
                    "| {method} | {mode:?} | {a:.0} | {b:.0} | {:.3}× | {added_ns:+.0} ns |",
                    b / a,
                )?;
            }
        }
    }
    Ok(table)
}

struct Counted {
    execs: usize,
    tcp: usize,
    udp: usize,
    dropped: Option<u64>,
    cost: Cost,
}

/// Makes exactly `count` execs, TCP connections and UDP peers while the
/// agent runs, then counts what it reported.
fn completeness_of(binary: &Path, method: &'static str, count: u32) -> anyhow::Result<Counted> {
    let out = output_file(method);
    let agent = Agent::start(binary, method, &out)?;
    let mut exec_pids = std::collections::HashSet::new();
    for _ in 0..count {
        let mut child = Command::new("/bin/true").spawn()?;
        exec_pids.insert(child.id());
        child.wait()?;
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let acceptor = std::thread::spawn(move || {
        for _ in 0..count {
            if listener.accept().is_err() {
                return;
            }
        }
    });
    for _ in 0..count {
        drop(TcpStream::connect(("127.0.0.1", port))?);
    }
    acceptor.join().unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0")?;
    let udp_port = udp.local_addr()?.port();
    for i in 0..count {
        let _ = udp.send_to(b"x", ("127.0.0.1", 20000 + (i % 40000) as u16));
    }
    drop(udp);
    // Let a scanning method scan once more, and the reader catch up.
    std::thread::sleep(Duration::from_millis(1500));
    let cost = agent.cost();
    let summary = agent.stop()?;
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let count_of = |f: &dyn Fn(&Value) -> bool| events.iter().filter(|e| f(e)).count();
    Ok(Counted {
        execs: count_of(&|e| {
            e["type"] == "process_exec"
                && e["process"]["pid"]
                    .as_u64()
                    .is_some_and(|pid| exec_pids.contains(&(pid as u32)))
        }),
        tcp: count_of(&|e| {
            e["type"] == "connection_open" && e["role"] == "client" && e["remote"]["port"] == port
        }),
        udp: count_of(&|e| {
            e["type"] == "connection_open"
                && e["protocol"] == "udp"
                && e["local"]["port"] == udp_port
        }),
        dropped: dropped(&summary),
        cost,
    })
}

/// Per method, each agent `reps` times, alternating; medians.
fn completeness(
    binary: &Path,
    baseline: Option<&Path>,
    count: u32,
    reps: usize,
) -> anyhow::Result<String> {
    let mut table = String::from(
        "| method | generated (each kind) | execs seen | TCP connections seen | UDP peers seen | dropped or incomplete | agent CPU | agent peak RSS |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let agents = agents(binary, baseline);
    for method in METHODS {
        let mut runs: Vec<Vec<Counted>> = agents.iter().map(|_| Vec::new()).collect();
        for _ in 0..reps {
            for (a, (_, agent)) in agents.iter().enumerate() {
                runs[a].push(completeness_of(agent, method, count)?);
            }
        }
        for ((label, _), runs) in agents.iter().zip(runs) {
            let m = |f: &dyn Fn(&Counted) -> f64| median(runs.iter().map(f).collect());
            let pct = |n: f64| format!("{n:.0} ({:.1} %)", 100.0 * n / f64::from(count));
            let dropped = match runs.iter().all(|c| c.dropped.is_some()) {
                true => format!("{:.0}", m(&|c| c.dropped.unwrap_or(0) as f64)),
                false => "?".into(),
            };
            let name = labelled(method, label);
            writeln!(
                table,
                "| {name} | {count} | {} | {} | {} | {dropped} | {:.2} s | {:.1} MiB |",
                pct(m(&|c| c.execs as f64)),
                pct(m(&|c| c.tcp as f64)),
                pct(m(&|c| c.udp as f64)),
                m(&|c| c.cost.cpu_seconds),
                m(&|c| c.cost.peak_rss_kib as f64) / 1024.0
            )?;
        }
        eprintln!("completeness: {method} done");
    }
    Ok(table)
}

/// Sum of (run time, runs) per program name, over the programs `ours`.
fn program_totals(
    ours: &std::collections::HashSet<u32>,
) -> std::collections::HashMap<String, (u64, u64)> {
    let mut totals = std::collections::HashMap::new();
    for p in auspex_probe::program_run_stats()
        .into_iter()
        .filter(|p| ours.contains(&p.id))
    {
        let t = totals.entry(p.name).or_insert((0u64, 0u64));
        t.0 += p.run_time_ns;
        t.1 += p.run_count;
    }
    totals
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

fn kernel_cost(binary: &Path, count: u32) -> anyhow::Result<String> {
    let previous = std::fs::read_to_string(BPF_STATS)?;
    std::fs::write(BPF_STATS, "1")?;
    let result = (|| -> anyhow::Result<String> {
        let out = output_file("kernel-cost");
        let agent = Agent::start(binary, "core_bpf", &out)?;
        let ours = agent.program_ids();
        let program_totals = || program_totals(&ours);
        let delta = |before: &std::collections::HashMap<String, (u64, u64)>, names: &[&str]| {
            let after = program_totals();
            names
                .iter()
                .map(|n| {
                    // The kernel keeps 15 characters of a program's name.
                    let key = &n[..n.len().min(15)];
                    let (t0, c0) = before.get(key).copied().unwrap_or_default();
                    let (t1, c1) = after.get(key).copied().unwrap_or_default();
                    (n.to_string(), t1.saturating_sub(t0), c1.saturating_sub(c0))
                })
                .collect::<Vec<_>>()
        };
        let mut table = String::from(
            "| operation | programs | runs | in-kernel time per operation |\n|---|---|---|---|\n",
        );
        let mut row = |what: &str, rows: Vec<(String, u64, u64)>| -> anyhow::Result<()> {
            let total: u64 = rows.iter().map(|r| r.1).sum();
            let runs: Vec<String> = rows
                .iter()
                .map(|r| {
                    let us = r.1 as f64 / f64::from(count) / 1000.0;
                    format!("{} {} ({us:.2} µs)", r.0, r.2)
                })
                .collect();
            writeln!(
                table,
                "| {what} | {} | {} | {:.2} µs |",
                rows.iter()
                    .map(|r| r.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                runs.join(", "),
                total as f64 / f64::from(count) / 1000.0
            )?;
            Ok(())
        };
        // The cgroup hooks of UDP run for TCP sockets too: connect4 at
        // connect(), sock_release at each end's close.
        let programs: [&[&str]; 3] = [
            PROCESS_PROGRAMS,
            &["handle_tcp_state", "udp_connect4", "udp_release"],
            &["udp_sendmsg4", "udp_release"],
        ];
        for ((what, names), run) in OPERATIONS.iter().zip(programs).zip(operations(count)) {
            let before = program_totals();
            run()?;
            row(what, delta(&before, names))?;
        }
        agent.stop()?;
        let _ = std::fs::remove_file(out);
        Ok(table)
    })();
    std::fs::write(BPF_STATS, previous.trim())?;
    result
}

/// The process probe's programs. Other processes on the machine (builds)
/// fork and exec while the network operations run: their runs are not the
/// network operations' cost, and left out of those.
const PROCESS_PROGRAMS: &[&str] = &["handle_fork", "handle_exec", "handle_exit"];

/// The operations kernel-cost times.
const OPERATIONS: [&str; 3] = [
    "fork + exec + exit",
    "TCP connection (both ends)",
    "UDP flow (first datagram to a peer, and the socket's close)",
];

/// In-kernel ns per operation of all the programs of the agent `binary`
/// started with `args`, for each of [`OPERATIONS`], `count` times each.
fn kernel_ns_per_operation(binary: &Path, args: &[&str], count: u32) -> anyhow::Result<[f64; 3]> {
    let out = output_file("kernel-cost");
    let agent = Agent::start_with(binary, "core_bpf", &out, args, &[])?;
    let ours = agent.program_ids();
    // Every program of the agent, but for a network operation not the
    // process probe's (see PROCESS_PROGRAMS).
    let total = |network: bool| -> u64 {
        program_totals(&ours)
            .iter()
            .filter(|(name, _)| !(network && PROCESS_PROGRAMS.contains(&name.as_str())))
            .map(|(_, t)| t.0)
            .sum()
    };
    let mut ns = [0.0; 3];
    for (op, (ns, run)) in ns.iter_mut().zip(operations(count)).enumerate() {
        let network = op > 0;
        let before = total(network);
        run()?;
        *ns = (total(network) - before) as f64 / f64::from(count);
    }
    agent.stop()?;
    let _ = std::fs::remove_file(out);
    Ok(ns)
}

/// Each of [`OPERATIONS`], done `count` times.
fn operations(count: u32) -> [Box<dyn Fn() -> anyhow::Result<()>>; 3] {
    [
        Box::new(move || {
            for _ in 0..count {
                Command::new("/bin/true").status()?;
            }
            Ok(())
        }),
        Box::new(move || {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            let acceptor = std::thread::spawn(move || {
                for _ in 0..count {
                    let _ = listener.accept();
                }
            });
            for _ in 0..count {
                drop(TcpStream::connect(addr)?);
            }
            acceptor.join().unwrap();
            // The last closes' state changes run after connect returns.
            std::thread::sleep(Duration::from_millis(200));
            Ok(())
        }),
        Box::new(move || {
            let udp = UdpSocket::bind("127.0.0.1:0")?;
            for i in 0..count {
                let _ = udp.send_to(b"x", ("127.0.0.1", 20000 + (i % 40000) as u16));
            }
            drop(udp);
            Ok(())
        }),
    ]
}

/// kernel-cost of several agents (a baseline binary, this one, this one
/// with `--events`), measured in alternation, `reps` rounds: the medians.
fn kernel_cost_compared(
    binary: &Path,
    baseline: Option<&Path>,
    events: Option<&str>,
    count: u32,
    reps: usize,
) -> anyhow::Result<String> {
    let mut configs: Vec<(String, &Path, Vec<&str>)> = Vec::new();
    if let Some(b) = baseline {
        configs.push(("baseline".into(), b, vec![]));
    }
    configs.push(("this build".into(), binary, vec![]));
    if let Some(e) = events {
        configs.push((
            format!("this build, --events {e}"),
            binary,
            vec!["--events", e],
        ));
    }
    let previous = std::fs::read_to_string(BPF_STATS)?;
    std::fs::write(BPF_STATS, "1")?;
    let mut samples = vec![Vec::new(); configs.len()];
    let result = (|| -> anyhow::Result<()> {
        for _ in 0..reps.max(1) {
            for (i, (_, path, args)) in configs.iter().enumerate() {
                samples[i].push(kernel_ns_per_operation(path, args, count)?);
            }
        }
        Ok(())
    })();
    std::fs::write(BPF_STATS, previous.trim())?;
    result?;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut table = format!(
        "In-kernel time of all the agent's programs per operation (the network operations: all \
         but the process probe's), µs (median of {} rounds, agents alternating; {count} \
         operations each):\n\n| operation |",
        reps.max(1)
    );
    for (label, _, _) in &configs {
        write!(table, " {label} |")?;
    }
    table.push_str("\n|---|");
    table.push_str(&"---|".repeat(configs.len()));
    table.push('\n');
    for (op, name) in OPERATIONS.iter().enumerate() {
        write!(table, "| {name} |")?;
        for s in &samples {
            let mut v: Vec<f64> = s.iter().map(|r| r[op]).collect();
            write!(table, " {:.2} |", median(&mut v) / 1000.0)?;
        }
        table.push('\n');
    }
    Ok(table)
}

fn proc_scan(reps: usize) -> anyhow::Result<String> {
    use nix::sys::resource::{getrlimit, getrusage, setrlimit, Resource, UsageWho};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    let mut sleepers = Vec::new();
    for _ in 0..1000 {
        sleepers.push(Command::new("sleep").arg("600").spawn()?);
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut sockets = Vec::new();
    for _ in 0..5000 {
        let client = TcpStream::connect(listener.local_addr()?)?;
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
    let mut scanner = auspex_proc::Scanner::new(auspex_procfs::ProcReader::new());
    let c0 = cpu()?;
    scanner.scan(chrono::Utc::now());
    let first = cpu()? - c0;
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
    drop(sockets);
    Ok(format!(
        "One scan with 1,000 extra processes and 10,000 extra sockets: {:.1} ms of CPU \
         (median of {reps}; {:.1} ms wall); the first scan, which reads every process's \
         details, {:.1} ms.\n",
        median(runs.iter().map(|r| r.0).collect()) * 1e3,
        median(runs.iter().map(|r| r.1).collect()) * 1e3,
        first.as_secs_f64() * 1e3,
    ))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    // (Not available_parallelism: this process is pinned to one CPU.)
    let cpus = std::fs::read_to_string("/proc/cpuinfo").map_or(0, |c| {
        c.lines().filter(|l| l.starts_with("processor")).count()
    });
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(str::to_string))
        .unwrap_or_default();
    format!("{cpus} × {cpu}; Linux {kernel}; {mem}")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let report = match &args.command {
        Bench::Overhead(o) => overhead(&args.agent, o)?,
        Bench::Completeness {
            count,
            reps,
            baseline,
        } => completeness(&args.agent, baseline.as_deref(), *count, *reps)?,
        Bench::CpuPerEvent(a) => cpu_per_event::cpu_per_event(&args.agent, a)?,
        Bench::MaxRate(a) => max_rate::max_rate(&args.agent, a)?,
        Bench::KernelCost {
            count,
            baseline: None,
            events: None,
            ..
        } => kernel_cost(&args.agent, *count)?,
        Bench::KernelCost {
            count,
            baseline,
            events,
            reps,
        } => kernel_cost_compared(
            &args.agent,
            baseline.as_deref(),
            events.as_deref(),
            *count,
            *reps,
        )?,
        Bench::ProcScan { reps } => proc_scan(*reps)?,
        Bench::SlowProc(a) => slow_proc::slow_proc(&args.agent, a)?,
        Bench::Workload { mode, seconds } => {
            let mut cpus = CpuSet::new();
            cpus.set(0)?;
            sched_setaffinity(Pid::from_raw(0), &cpus)?;
            let ops = workload::run(*mode, Duration::from_secs_f64(*seconds));
            format!("{mode:?}: {ops:.0} ops/s\n")
        }
        Bench::All {
            write,
            reps,
            baseline,
        } => {
            let overhead = overhead(
                &args.agent,
                &OverheadArgs {
                    reps: *reps,
                    seconds: 0.5,
                    methods: METHODS.iter().map(|m| m.to_string()).collect(),
                    modes: Vec::new(),
                    baseline: baseline.clone(),
                },
            )?;
            let compared = match baseline {
                Some(b) => format!(
                    "Against the baseline (`{}`), all the agent's programs, µs per \
                     operation:\n\n{}",
                    b.display(),
                    kernel_cost_compared(&args.agent, Some(b), None, 2000, *reps)?
                ),
                None => String::new(),
            };
            let doc = format!(
                "# Performance\n\n\
                 Measured by `target/release/auspex-bench all --write docs/performance.md` \
                 (after `cargo build --release`), as root, on: {}.\n\n\
                 Everything here is a ratio or a count from one run: workloads alternate \
                 without and with the agent (medians of {reps} runs each, pinned to CPU 0); \
                 counts are exact numbers of operations against what the agent reported. \
                 `ebpf-nobtf` is the ebpf method with the kernel's BTF hidden, as on a kernel \
                 built without it.\n\n\
                 Targets for `core_bpf` (set in the project's benchmark issue): `getppid` ≥ \
                 0.99×; ≤ 5 µs added per fork+exec+exit; ≤ 1 µs in kernel per TCP connection; \
                 UDP ≥ 0.95× with UDP flows reported; 100 % completeness with zero drops; ≥ 1 M \
                 events/s decode+track on one core; agent RSS ≤ 64 MiB. The tables say where \
                 it stands; nothing here is adjusted by hand.\n\n\
                 ## Overhead\n\n\
                 \"cost per op\" is the time added per operation (1/with − 1/without). The \
                 agent writes its events to /dev/null here (on this 2-vCPU machine, writing \
                 100,000s of events/s to a file competes with the workload for the other \
                 CPU).\n\n\
                 {overhead}\n\
                 ## Completeness and agent cost\n\n\
                 The same number of execs, TCP connections (each closed at once) and UDP peers \
                 (one datagram each) while the agent runs; agent CPU and peak RSS over that run. \
                 The proc method sees only what lives across a scan.\n\n{}\n\
                 ## Agent CPU per event\n\n\
                 `auspex-bench cpu-per-event`: the agent's CPU (every thread, pinned to CPU 1) \
                 over the events it reported while the workload ran on CPU 0, events to \
                 /dev/null; medians of {reps} runs. Startup is not counted. With `--baseline \
                 PATH` it runs another build alternately in the same reps: read the ratio, \
                 not the microseconds, on a shared machine.\n\n{}\n{CPU_PER_EVENT_NOTES}\n\
                 ## Maximum sustained rate\n\n{}\n\
                 ## In-kernel cost (core_bpf)\n\n\
                 `kernel.bpf_stats_enabled=1` during the run (restored afterwards): run time \
                 over run count of each program, per operation.\n\n{}\n{compared}\n\
                 ## The proc method's scan\n\n{}\n\
                 ## Userspace pipeline\n\n\
                 `cargo bench -p auspex-probe --features testing --bench pipeline` (decode → \
                 enrich → JSON) and `cargo bench -p auspex-track --bench tracker` (tracker \
                 updates with 10,000 active connections, memory per connection); see their \
                 output.\n",
                machine(),
                completeness(&args.agent, baseline.as_deref(), 2000, 1)?,
                cpu_per_event::cpu_per_event(
                    &args.agent,
                    &cpu_per_event::CpuArgs {
                        reps: *reps,
                        seconds: 2.0,
                        methods: vec!["core_bpf".into(), "ebpf".into()],
                        modes: vec![Mode::Tcp, Mode::ForkExec],
                        baseline: baseline.clone(),
                    },
                )?,
                max_rate::max_rate(&args.agent, &max_rate::MaxRateArgs::default())?,
                kernel_cost(&args.agent, 2000)?,
                proc_scan(3)?,
            );
            if let Some(path) = write {
                std::fs::write(path, &doc)?;
            }
            doc
        }
    };
    std::io::stdout().write_all(report.as_bytes())?;
    Ok(())
}
