//! Whether a slow /proc stalls the reader of the kernel's buffer. A steady
//! stream of fork + exec + exit, and now and then a process in a cgroup the
//! agent has not seen (a container starting: enrichment reads the cgroup's
//! path once, the slowest read it makes). The agent is a `test-hooks` build
//! (`cargo build --release -p auspex --features test-hooks`): it makes each
//! enrichment read of /proc slower by `--delay-ms`, and runs its pipeline
//! either behind the reader's queue (as it does) or on the reader's thread
//! (as before the reader had one). Both, with and without the delay,
//! alternating, in one run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::agent::{cause, kernel_drops, Agent};
use crate::median;

#[derive(Debug, clap::Args)]
pub struct SlowProcArgs {
    /// Rounds of the four runs.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// How long each run's workload lasts.
    #[arg(long, default_value = "3")]
    seconds: f64,
    /// How much longer each enrichment read of /proc takes.
    #[arg(long, default_value_t = 100)]
    delay_ms: u64,
    /// How often a process starts in a new cgroup.
    #[arg(long, default_value = "0.25")]
    new_cgroup_every: f64,
    /// The agent's kernel buffer: small, so that a stall shows in seconds.
    #[arg(long, default_value = "64K")]
    ring_buffer_size: String,
}

struct Run {
    spawned: u64,
    kernel_drops: u64,
    queue_full: u64,
}

/// Spawns /bin/true for `seconds`, and a process in a new cgroup below
/// `parent` every `every`; returns how many it spawned.
fn workload(parent: &Path, seconds: f64, every: Duration) -> anyhow::Result<u64> {
    let start = Instant::now();
    let mut next_cgroup = start;
    let (mut spawned, mut cgroups) = (0u64, 0u32);
    while start.elapsed().as_secs_f64() < seconds {
        if Instant::now() >= next_cgroup {
            let dir = parent.join(format!("c{cgroups}"));
            std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let procs = dir.join("cgroup.procs");
            Command::new("/bin/sh")
                .arg("-c")
                .arg("echo $$ > \"$0\" && exec /bin/true")
                .arg(&procs)
                .status()?;
            std::fs::remove_dir(&dir)?;
            cgroups += 1;
            spawned += 1;
            next_cgroup += every;
        }
        Command::new("/bin/true").status()?;
        spawned += 1;
    }
    Ok(spawned)
}

fn one_run(
    binary: &Path,
    args: &SlowProcArgs,
    on_reader: bool,
    delay: bool,
) -> anyhow::Result<Run> {
    let parent: PathBuf = auspex_procfs::cgroup::cgroup2_mount()
        .context("cgroup v2 is not mounted: the benchmark makes cgroups")?
        .join(format!("auspex-bench-{}", std::process::id()));
    std::fs::create_dir_all(&parent)?;
    let delay_ms = if delay { args.delay_ms } else { 0 }.to_string();
    let mut env = vec![("AUSPEX_TEST_SLOW_PROC_MS", delay_ms.as_str())];
    if on_reader {
        env.push(("AUSPEX_TEST_STAGES_ON_READER", "1"));
    }
    let extra = [
        "--ring-buffer-size",
        &args.ring_buffer_size,
        "--heartbeat-interval",
        "0",
    ];
    let agent = Agent::start_with(binary, "core_bpf", Path::new("/dev/null"), &extra, &env)?;
    let every = Duration::from_secs_f64(args.new_cgroup_every);
    let spawned = workload(&parent, args.seconds, every);
    // The reader catches up before the counts are read.
    std::thread::sleep(Duration::from_millis(500));
    let summary = agent.stop()?;
    std::fs::remove_dir(&parent)?;
    Ok(Run {
        spawned: spawned?,
        kernel_drops: kernel_drops(&summary),
        queue_full: cause(&summary, "enrich_queue_full").unwrap_or(0),
    })
}

pub fn slow_proc(binary: &Path, args: &SlowProcArgs) -> anyhow::Result<String> {
    let kinds = [
        ("on the reader's thread (before)", true, false),
        ("on the reader's thread (before)", true, true),
        ("behind the reader's queue (now)", false, false),
        ("behind the reader's queue (now)", false, true),
    ];
    let mut runs: Vec<Vec<Run>> = kinds.iter().map(|_| Vec::new()).collect();
    for rep in 0..args.reps {
        for (i, (_, on_reader, delay)) in kinds.iter().enumerate() {
            runs[i].push(one_run(binary, args, *on_reader, *delay)?);
        }
        eprintln!("slow-proc: rep {} of {} done", rep + 1, args.reps);
    }
    let mut table = format!(
        "Kernel buffer {}, a process in a new cgroup every {} s among back-to-back \
         /bin/true spawns for {} s; median (range) of {} runs each, alternating.\n\n\
         | pipeline | each /proc read of enrichment | processes spawned | kernel buffer full (records lost) | reader's queue full (events lost) |\n\
         |---|---|---|---|---|\n",
        args.ring_buffer_size, args.new_cgroup_every, args.seconds, args.reps
    );
    for ((what, _, delay), runs) in kinds.iter().zip(runs) {
        // Median, and the range over the runs.
        let m = |f: fn(&Run) -> u64| {
            let values: Vec<u64> = runs.iter().map(f).collect();
            let (lo, hi) = (values.iter().min(), values.iter().max());
            let mid = median(values.iter().map(|v| *v as f64).collect());
            format!("{mid:.0} ({}–{})", lo.unwrap_or(&0), hi.unwrap_or(&0))
        };
        let read = match delay {
            true => format!("+{} ms", args.delay_ms),
            false => "as is".to_string(),
        };
        writeln!(
            table,
            "| {what} | {read} | {} | {} | {} |",
            m(|r| r.spawned),
            m(|r| r.kernel_drops),
            m(|r| r.queue_full)
        )?;
    }
    Ok(table)
}
