//! Starting and stopping the agent under test, and what it cost.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub struct Agent {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// CPU time and peak memory of the agent over its life.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    pub cpu_seconds: f64,
    pub peak_rss_kib: u64,
}

impl Agent {
    /// Starts `auspex run --method METHOD` writing to `output`, and waits
    /// until its self-check passed.
    /// `ebpf-nobtf` is the ebpf method with the kernel's BTF hidden (a
    /// private mount namespace), as on a kernel built without it.
    pub fn start(binary: &Path, method: &str, output: &Path) -> anyhow::Result<Agent> {
        Self::start_with(binary, method, output, &[], &[])
    }

    /// `start`, with more arguments and environment variables.
    pub fn start_with(
        binary: &Path,
        method: &str,
        output: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Agent> {
        let mut command = match method.strip_suffix("-nobtf") {
            Some(_) => {
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg("mount -t tmpfs none /sys/kernel/btf && exec \"$0\" \"$@\"")
                    .arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let method_arg = method.strip_suffix("-nobtf").unwrap_or(method);
        // No HTTP API unless `args` asks for one.
        let listen: &[&str] = match args.contains(&"--listen") {
            true => &[],
            false => &["--listen", "off"],
        };
        let mut child = command
            .args(["run", "--method", method_arg, "--scan-interval", "1"])
            .args(listen)
            .arg("--output")
            .arg(output)
            .args(args)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        loop {
            match lines.next() {
                Some(line) => {
                    let line = line?;
                    let ready = line.contains("probes attached");
                    stderr.lock().unwrap().push(line);
                    if ready {
                        break;
                    }
                }
                None => bail!(
                    "the agent ({method}) exited before it was ready:\n{}",
                    stderr.lock().unwrap().join("\n")
                ),
            }
        }
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Ok(Agent { child, stderr })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds used so far and peak RSS, from /proc.
    pub fn cost(&self) -> Cost {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name, which may hold spaces.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as f64;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let peak_rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        Cost {
            // utime and stime are fields 14 and 15; 12 and 13 after ')'.
            cpu_seconds: (ticks(11) + ticks(12)) / hz,
            peak_rss_kib,
        }
    }

    /// Kernel ids of the BPF programs it holds (the `prog_id` of its
    /// program and link fds): on a shared machine other agents run
    /// programs of the same names.
    pub fn program_ids(&self) -> std::collections::HashSet<u32> {
        let dir = format!("/proc/{}/fdinfo", self.child.id());
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|fd| std::fs::read_to_string(fd.ok()?.path()).ok())
            .filter_map(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("prog_id:"))
                    .and_then(|id| id.trim().parse().ok())
            })
            .collect()
    }

    /// Stops it (SIGTERM) and returns its summary line.
    pub fn stop(mut self) -> anyhow::Result<String> {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM)?;
        self.child.wait()?;
        std::thread::sleep(std::time::Duration::from_millis(100));
        let lines = self.stderr.lock().unwrap().clone();
        Ok(lines
            .iter()
            .rev()
            .find(|l| l.starts_with("auspex: "))
            .cloned()
            .unwrap_or_default())
    }
}

/// The number of lost or incomplete events in a summary line.
pub fn dropped(summary: &str) -> Option<u64> {
    summary
        .split("dropped or incomplete ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The count of one cause in a summary line (`cause N`), if it is there.
pub fn cause(summary: &str, name: &str) -> Option<u64> {
    let (_, rest) = summary.split_once(&format!("{name} "))?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Records the kernel could not queue because its buffer was full.
pub fn kernel_drops(summary: &str) -> u64 {
    [
        "buffer_full_exec",
        "buffer_full_fork",
        "buffer_full_exit",
        "buffer_full_network",
    ]
    .iter()
    .filter_map(|c| cause(summary, c))
    .sum()
}

/// Pins every thread of `pid` to `cpu` (threads inherit it from the one
/// that creates them; the agent's exist once it is ready).
pub fn pin_threads(pid: u32, cpu: usize) -> anyhow::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid: i32 = task?.file_name().to_string_lossy().parse()?;
        sched_setaffinity(Pid::from_raw(tid), &set)
            .with_context(|| format!("pinning the agent's thread {tid} to CPU {cpu}"))?;
    }
    Ok(())
}
