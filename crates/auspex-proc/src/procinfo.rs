//! What /proc says about a process, read at the moment of an event.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use auspex_events::Process;
use procfs::process::Process as ProcProcess;

/// Reads process details from /proc. Knows where cgroup v2 is mounted, to
/// turn a cgroup path into the cgroup id the BPF methods report.
#[derive(Debug, Clone)]
pub struct ProcReader {
    cgroup2: Option<PathBuf>,
}

impl Default for ProcReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcReader {
    pub fn new() -> Self {
        // The hierarchy's root is inode 1 on cgroup2; prefer it over a
        // mount whose mountinfo root is `/` (in a container with its own
        // cgroup namespace, that is the container's own cgroup), as
        // auspex_probe::cgroup::cgroup2_mount does.
        let cgroup2 = ProcProcess::myself()
            .and_then(|p| p.mountinfo())
            .ok()
            .and_then(|mounts| {
                let v2: Vec<_> = mounts
                    .into_iter()
                    .filter(|m| m.fs_type == "cgroup2")
                    .collect();
                let is_root =
                    |p: &std::path::Path| std::fs::metadata(p).is_ok_and(|m| m.ino() == 1);
                v2.iter()
                    .find(|m| is_root(&m.mount_point))
                    .or_else(|| v2.iter().find(|m| m.root == "/"))
                    .map(|m| m.mount_point.clone())
            });
        ProcReader { cgroup2 }
    }

    /// Where cgroup v2 is mounted, if it is.
    pub fn cgroup2_root(&self) -> Option<&std::path::Path> {
        self.cgroup2.as_deref()
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
            process.comm = stat.comm;
        }
        if let Ok(status) = p.status() {
            process.uid = status.ruid;
            process.gid = status.rgid;
        }
        process.exe = p.exe().ok().map(|e| e.to_string_lossy().into_owned());
        if let Some(args) = cmdline(pid) {
            process.args = Some(args);
            process.args_truncated = Some(false);
        }
        process.cgroup_id = self.cgroup_id(&p).unwrap_or(0);
        process
    }

    /// The inode of the process's cgroup v2 directory: what the kernel
    /// reports as the cgroup id.
    fn cgroup_id(&self, p: &ProcProcess) -> Option<u64> {
        let root = self.cgroup2.as_ref()?;
        let cgroups = p.cgroups().ok()?;
        let v2 = cgroups.0.iter().find(|c| c.hierarchy == 0)?;
        let dir = root.join(v2.pathname.trim_start_matches('/'));
        std::fs::metadata(dir).ok().map(|m| m.ino())
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
