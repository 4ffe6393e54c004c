//! Where cgroup v2 is mounted: the cgroup socket hooks attach to its root.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use procfs::process::Process;

/// The mount point of the cgroup2 hierarchy's root, if cgroup2 is mounted
/// anywhere (on hybrid hosts it sits beside the v1 controllers, e.g. at
/// /sys/fs/cgroup/unified). The root's directory is inode 1 on cgroup2: in a
/// container with its own cgroup namespace (containerd and CRI-O on cgroup v2
/// nodes), the container's own /sys/fs/cgroup also shows a mountinfo root of
/// `/` but holds only its own cgroup, while the host's hierarchy mounted into
/// it (the Helm chart's /host/sys/fs/cgroup) shows a root of `/../..`. Without
/// an inode-1 mount, the first whose mountinfo root is `/`.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts: Vec<_> = Process::myself()
        .ok()?
        .mountinfo()
        .ok()?
        .into_iter()
        .filter(|m| m.fs_type == "cgroup2")
        .collect();
    let is_root = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.ino() == 1);
    mounts
        .iter()
        .find(|m| is_root(&m.mount_point))
        .or_else(|| mounts.iter().find(|m| m.root == "/"))
        .map(|m| m.mount_point.clone())
}
