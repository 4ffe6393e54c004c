//! The cgroup v2 hierarchy: where it is mounted, a process's cgroups, and
//! the path of a cgroup known only by its id (the inode of its directory,
//! which is what the kernel reports as the cgroup id).

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

/// The controllers whose cgroup v1 hierarchy the exec probes name a
/// process's cgroup in (`cgroup1_id`, bpf/events.h), in the probes' order
/// of preference.
const V1_KEYED: [&str; 2] = ["memory", "pids"];

/// Where each v1 hierarchy of [`V1_KEYED`] is mounted, by controller.
pub fn cgroup1_mounts() -> Vec<(&'static str, PathBuf)> {
    let Some(mounts) = Process::myself().ok().and_then(|p| p.mountinfo().ok()) else {
        return Vec::new();
    };
    V1_KEYED
        .iter()
        .filter_map(|&controller| {
            let m = mounts.iter().find(|m| {
                m.fs_type == "cgroup" && m.root == "/" && m.super_options.contains_key(controller)
            })?;
            Some((controller, m.mount_point.clone()))
        })
        .collect()
}

/// The id (its directory's inode) and path of process `pid`'s cgroup in
/// the v1 hierarchy of the first controller of [`V1_KEYED`] it has a line
/// for, as /proc/PID/cgroup says now; None when there is none, or it
/// cannot be read. `mounts`: from [`cgroup1_mounts`].
pub fn cgroup1(pid: u32, mounts: &[(&'static str, PathBuf)]) -> Option<(u64, String)> {
    use procfs::FromRead;
    let cgroups = procfs::ProcessCGroups::from_file(format!("/proc/{pid}/cgroup")).ok()?;
    V1_KEYED.iter().find_map(|&controller| {
        let line = cgroups
            .0
            .iter()
            .find(|c| c.hierarchy != 0 && c.controllers.iter().any(|c| c == controller))?;
        let (_, root) = mounts.iter().find(|(c, _)| *c == controller)?;
        let dir = root.join(line.pathname.trim_start_matches('/'));
        let id = std::fs::metadata(dir).ok()?.ino();
        Some((id, line.pathname.clone()))
    })
}

/// The process's cgroup paths, the cgroup v2 one first; empty when the
/// process is gone.
pub fn paths(pid: u32) -> Vec<String> {
    // The file alone, not through `Process::new`, which opens and stats
    // /proc/PID first: on a cgroup v1 host this is read for every exec
    // (the v2 id tells no container apart there), and it was 28 % of the
    // pipeline's CPU in a fork+exec storm (perf, core_bpf).
    use procfs::FromRead;
    let Ok(cgroups) = procfs::ProcessCGroups::from_file(format!("/proc/{pid}/cgroup")) else {
        return Vec::new();
    };
    let mut paths: Vec<(bool, String)> = cgroups
        .0
        .into_iter()
        .map(|c| (c.hierarchy != 0, c.pathname))
        .collect();
    paths.sort_by_key(|(v1, _)| *v1);
    paths.into_iter().map(|(_, p)| p).collect()
}

/// The id of the process's cgroup v2 directory below `root` (the mount).
pub fn id_of(root: &Path, process: &Process) -> Option<u64> {
    let cgroups = process.cgroups().ok()?;
    let v2 = cgroups.0.iter().find(|c| c.hierarchy == 0)?;
    let dir = root.join(v2.pathname.trim_start_matches('/'));
    std::fs::metadata(dir).ok().map(|m| m.ino())
}

/// The path (from the hierarchy's root, `/` first) of the cgroup whose id
/// is `id`; `None` for the root itself or an id no directory has. Walks
/// the hierarchy breadth first: on a host with thousands of cgroups this
/// is the slowest read here, so callers remember the answer per id.
pub fn path_of(root: &Path, id: u64) -> Option<String> {
    let mut queue = std::collections::VecDeque::from([root.to_path_buf()]);
    while let Some(dir) = queue.pop_front() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                if entry.metadata().is_ok_and(|m| m.ino() == id) {
                    let relative = entry.path();
                    let relative = relative.strip_prefix(root).ok()?;
                    return Some(format!("/{}", relative.display()));
                }
                queue.push_back(entry.path());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_found_by_its_inode_and_named_from_the_root() {
        let root = std::env::temp_dir().join(format!("auspex-procfs-{}", std::process::id()));
        let deep = root.join("a.slice/b.scope");
        std::fs::create_dir_all(&deep).unwrap();
        let id = std::fs::metadata(&deep).unwrap().ino();
        let found = path_of(&root, id);
        let root_id = std::fs::metadata(&root).unwrap().ino();
        let at_root = path_of(&root, root_id);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(found.as_deref(), Some("/a.slice/b.scope"));
        assert_eq!(at_root, None, "the root has no path below itself");
    }

    #[test]
    fn this_process_has_cgroups_the_v2_one_first() {
        let paths = paths(std::process::id());
        assert!(!paths.is_empty(), "every process is in some cgroup");
        if let (Some(root), Ok(me)) = (cgroup2_mount(), Process::myself()) {
            let id = id_of(&root, &me).expect("a process under cgroup v2 has an id");
            let dir = root.join(paths[0].trim_start_matches('/'));
            assert_eq!(std::fs::metadata(dir).unwrap().ino(), id);
        } else {
            eprintln!("skipped the cgroup id check: cgroup v2 is not mounted here");
        }
    }
}
