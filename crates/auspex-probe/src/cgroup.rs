//! Where cgroup v2 is mounted: the cgroup socket hooks attach to its root.

use std::path::PathBuf;

use procfs::process::Process;

/// The mount point of the cgroup2 hierarchy that contains this process's
/// namespace root, if cgroup2 is mounted anywhere (on hybrid hosts it sits
/// beside the v1 controllers, e.g. at /sys/fs/cgroup/unified).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = Process::myself().ok()?.mountinfo().ok()?;
    mounts
        .into_iter()
        .filter(|m| m.fs_type == "cgroup2" && m.root == "/")
        .map(|m| m.mount_point)
        .next()
}
