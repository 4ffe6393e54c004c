//! What /proc says about a process, read at the moment it is asked.

use std::path::PathBuf;

use auspex_events::Process;
use procfs::process::Process as ProcProcess;

use crate::cgroup;

/// Reads process details from /proc. Knows where cgroup v2 is mounted, to
/// turn a cgroup path into the cgroup id the BPF methods report.
#[derive(Debug, Clone)]
pub struct ProcReader {
    cgroup2: Option<PathBuf>,
    /// The v1 hierarchies the exec probes key containers by.
    cgroup1: Vec<(&'static str, PathBuf)>,
}

impl Default for ProcReader {
    fn default() -> Self {
        Self::new()
    }
}

/// Every process's pid, in ascending order (parents mostly before their
/// children).
pub fn all_pids() -> Vec<u32> {
    let mut pids: Vec<u32> = procfs::process::all_processes()
        .map(|ps| ps.flatten().map(|p| p.pid as u32).collect())
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

impl ProcReader {
    pub fn new() -> Self {
        ProcReader {
            cgroup2: cgroup::cgroup2_mount(),
            cgroup1: cgroup::cgroup1_mounts(),
        }
    }

    /// Where cgroup v2 is mounted, if it is.
    pub fn cgroup2_root(&self) -> Option<&std::path::Path> {
        self.cgroup2.as_deref()
    }

    /// The id and path of process `pid`'s cgroup in the v1 hierarchy the
    /// exec probes name (`cgroup::cgroup1`).
    pub fn cgroup1(&self, pid: u32) -> Option<(u64, String)> {
        cgroup::cgroup1(pid, &self.cgroup1)
    }

    /// Whether the process exists now.
    pub fn exists(&self, pid: u32) -> bool {
        ProcProcess::new(pid as i32).is_ok()
    }

    /// The parent and start (clock ticks since boot) of process `pid`, from
    /// /proc/PID/stat alone: what a fork event of a method without BTF
    /// lacks. Reading the whole process for it (seven files) was a quarter
    /// of the ebpf method's pipeline CPU in a fork+exec storm (perf).
    pub fn parent_and_start(&self, pid: u32) -> Option<(u32, u64)> {
        use procfs::FromRead;
        let stat = procfs::process::Stat::from_file(format!("/proc/{pid}/stat")).ok()?;
        Some((stat.ppid as u32, stat.starttime))
    }

    /// The process `pid` as /proc shows it now, thread `tid`. Whatever cannot
    /// be read (the process is gone, or a zombie) is left empty.
    pub fn process(&self, pid: u32, tid: u32) -> Process {
        let mut process = Process {
            pid,
            tid,
            ..Process::default()
        };
        let Ok(p) = ProcProcess::new(pid as i32) else {
            return process;
        };
        if let Ok(stat) = p.stat() {
            process.ppid = stat.ppid as u32;
            process.comm = stat.comm.into();
            // Clock ticks since boot; the BPF methods round the kernel's
            // nanoseconds down to the same unit.
            process.start_ticks = Some(stat.starttime);
        }
        if let Ok(status) = p.status() {
            process.uid = status.ruid;
            process.gid = status.rgid;
        }
        process.exe = p.exe().ok().map(|e| e.to_string_lossy().into());
        if let Some(args) = cmdline(pid) {
            process.args = Some(args.into());
            process.args_truncated = Some(false);
        }
        process.cgroup_id = self
            .cgroup2
            .as_deref()
            .and_then(|root| cgroup::id_of(root, &p))
            .unwrap_or(0);
        process
    }

    /// The path of the cgroup v2 directory whose id is `id`; `None` for the
    /// root, an unknown id, or without cgroup v2.
    pub fn cgroup_path(&self, id: u64) -> Option<String> {
        cgroup::path_of(self.cgroup2.as_deref()?, id)
    }
}

/// The argument vector, empty arguments included (procfs's `cmdline()`
/// drops them). None for a process without one (a kernel thread, a zombie).
fn cmdline(pid: u32) -> Option<Vec<String>> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if bytes.is_empty() {
        return None;
    }
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(&bytes);
    Some(
        bytes
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads_as_itself() {
        let me = std::process::id();
        let p = ProcReader::new().process(me, me);
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(p.exe.as_deref(), Some(exe.to_str().unwrap()));
        assert_eq!(
            p.args.as_deref().map(<[String]>::len),
            Some(std::env::args().count())
        );
        assert_eq!(p.ppid, std::os::unix::process::parent_id());
        assert!(p.start_ticks.is_some_and(|t| t > 0));
        // The unit every method rounds start times to.
        assert_eq!(
            procfs::ticks_per_second(),
            1_000_000_000 / auspex_events::NS_PER_TICK
        );
        assert!(all_pids().contains(&me));
    }

    #[test]
    fn a_process_that_is_gone_reads_as_empty() {
        let mut child = std::process::Command::new("/bin/true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let reader = ProcReader::new();
        assert!(!reader.exists(pid));
        assert_eq!(reader.process(pid, pid).exe, None);
    }
}
