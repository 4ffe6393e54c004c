//! Live processes, learned from process events (and the startup scrape), so
//! that every event carries its process's exe, args and container, and
//! execs carry their lineage.

use std::collections::HashMap;
use std::sync::Arc;

use auspex_events::{Ancestor, Event, EventKind, Identity, Process};
use auspex_procfs::ProcReader;

use crate::container_id;

/// Where what the events do not say is read (processes that started before
/// Auspex, cgroup paths): /proc in production, a fake in tests.
pub trait ProcFs {
    /// What /proc says about a process now; None when it is gone.
    fn process(&self, pid: u32) -> Option<Process>;
    /// Its parent and start (clock ticks since boot), when that is all
    /// that is needed: cheaper than all of it.
    fn parent_and_start(&self, pid: u32) -> Option<(u32, Option<u64>)> {
        self.process(pid).map(|p| (p.ppid, p.start_ticks))
    }
    /// The process's cgroup paths, the cgroup v2 one first.
    fn cgroups(&self, pid: u32) -> Vec<String>;
    /// The id and path of the process's cgroup in the v1 hierarchy the
    /// exec probes name in `cgroup1_id` (its memory, else pids, controller);
    /// None without one.
    fn cgroup1(&self, _pid: u32) -> Option<(u64, String)> {
        None
    }
    /// The path of the cgroup v2 directory whose id (inode) is `id`; None
    /// for the root or an unknown id.
    fn cgroup_path(&self, id: u64) -> Option<String>;
}

/// The real /proc (and cgroup v2 hierarchy).
#[derive(Default)]
pub struct SystemProc {
    reader: ProcReader,
}

impl ProcFs for SystemProc {
    fn process(&self, pid: u32) -> Option<Process> {
        self.reader
            .exists(pid)
            .then(|| self.reader.process(pid, pid))
    }

    fn parent_and_start(&self, pid: u32) -> Option<(u32, Option<u64>)> {
        let (ppid, start) = self.reader.parent_and_start(pid)?;
        Some((ppid, Some(start)))
    }

    fn cgroups(&self, pid: u32) -> Vec<String> {
        auspex_procfs::cgroup::paths(pid)
    }

    fn cgroup1(&self, pid: u32) -> Option<(u64, String)> {
        self.reader.cgroup1(pid)
    }

    fn cgroup_path(&self, id: u64) -> Option<String> {
        self.reader.cgroup_path(id)
    }
}

/// Ancestors a lineage holds at most.
const LINEAGE_MAX: usize = 10;
/// cgroup ids whose container is remembered.
const CGROUPS_REMEMBERED: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// Clock ticks since boot; None when unknown.
    start_ticks: Option<u64>,
    /// Which image of the process runs: 0 before its first exec (a forked
    /// child), n after its n-th; None when it was read from /proc without
    /// an event saying which (taken for 1, see docs/events.md).
    image: Option<u32>,
    /// The exec_id of that image of this process (from `start_ticks` and
    /// `image`), written once and shared with every event of it.
    exec_id: Option<Arc<str>>,
    ppid: u32,
    uid: u32,
    /// Shared with every event of the process (an `Arc` clone, no copy).
    exe: Option<Arc<str>>,
    args: Option<Arc<[String]>>,
    args_truncated: Option<bool>,
    cgroup_id: u64,
    container_id: Option<Arc<str>>,
}

/// Live processes by pid. Bounded: at capacity an arbitrary entry is
/// forgotten (it is read from /proc again if needed), and counted.
pub struct ProcessTable<P: ProcFs = SystemProc> {
    entries: HashMap<u32, Entry>,
    capacity: usize,
    evicted: u64,
    /// Container by cgroup id, for cgroup ids that tell containers apart
    /// (on hosts where processes sit in the cgroup v2 root, they do not).
    containers: HashMap<u64, Option<Arc<str>>>,
    /// cgroup ids without a path below the v2 root (the root itself).
    pathless: std::collections::HashSet<u64>,
    /// Container by the id of a cgroup in a v1 hierarchy (`cgroup1_id`).
    v1_containers: HashMap<u64, Option<Arc<str>>>,
    /// The node and boot, for start times and exec ids; without it events
    /// get neither.
    identity: Option<Identity>,
    proc: P,
}

/// Whether an entry and an event's process are the same process (not an
/// earlier one whose pid was reused), as far as their start times tell.
fn same_process(entry: Option<u64>, event: Option<u64>) -> bool {
    match (entry, event) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

impl ProcessTable<SystemProc> {
    pub fn new(capacity: usize) -> Self {
        Self::with_proc(capacity, SystemProc::default())
    }
}

impl<P: ProcFs> ProcessTable<P> {
    pub fn with_proc(capacity: usize, proc: P) -> Self {
        ProcessTable {
            entries: HashMap::new(),
            capacity,
            evicted: 0,
            containers: HashMap::new(),
            pathless: std::collections::HashSet::new(),
            v1_containers: HashMap::new(),
            identity: None,
            proc,
        }
    }

    /// Gives events start times and exec ids of this node and boot.
    pub fn with_identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// The exec_id of image `image` of process `pid`, if its start is known.
    fn exec_id(&self, pid: u32, start_ticks: Option<u64>, image: Option<u32>) -> Option<Arc<str>> {
        let identity = self.identity.as_ref()?;
        Some(
            identity
                .exec_id(pid, start_ticks?, image.unwrap_or(1))
                .into(),
        )
    }

    /// The current exec_id of process `pid` (read from /proc if unknown).
    fn exec_id_of(&mut self, pid: u32) -> Option<Arc<str>> {
        if pid == 0 {
            return None;
        }
        self.lookup(pid)?.exec_id
    }

    fn start_time(&self, start_ticks: Option<u64>) -> Option<chrono::DateTime<chrono::Utc>> {
        Some(self.identity.as_ref()?.start_time(start_ticks?))
    }

    /// Learns from `event` and fills in what its process lacks.
    pub fn apply(&mut self, event: &mut Event) {
        let scraped = event.scraped;
        match &mut event.kind {
            EventKind::ProcessExec { process } => {
                // Methods that cannot read the new image from the kernel
                // leave args (and the parent, and the start) to /proc,
                // read now.
                if process.args.is_none() || process.ppid == 0 || process.start_ticks.is_none() {
                    if let Some(now) = self.proc.process(process.pid) {
                        if process.args.is_none() {
                            process.args = now.args;
                            process.args_truncated = now.args_truncated;
                        }
                        if process.ppid == 0 {
                            process.ppid = now.ppid;
                        }
                        if process.start_ticks.is_none() {
                            process.start_ticks = now.start_ticks;
                        }
                    }
                }
                // The image after the one the table knows this process to
                // run; the first exec of a process the table did not see
                // fork (or found at startup) is taken for its first.
                let image = match self.entries.get(&process.pid) {
                    Some(e) if !scraped && same_process(e.start_ticks, process.start_ticks) => {
                        e.image.map_or(1, |i| i + 1)
                    }
                    _ => 1,
                };
                let exec_id = self.exec_id(process.pid, process.start_ticks, Some(image));
                process.exec_id = exec_id.clone();
                process.start_time = self.start_time(process.start_ticks);
                process.parent_exec_id = self.exec_id_of(process.ppid);
                let container =
                    self.resolve_container(process.pid, process.cgroup_id, process.cgroup1_id);
                self.insert(
                    process.pid,
                    Entry {
                        start_ticks: process.start_ticks,
                        image: Some(image),
                        exec_id,
                        ppid: process.ppid,
                        uid: process.uid,
                        exe: process.exe.clone(),
                        args: process.args.clone(),
                        args_truncated: process.args_truncated,
                        cgroup_id: process.cgroup_id,
                        container_id: container.clone(),
                    },
                );
                process.lineage = Some(self.lineage(process.ppid, &container));
                process.container_id = container;
                return;
            }
            EventKind::ProcessFork {
                process,
                parent,
                thread: false,
            } => {
                // Methods without BTF leave the start, and the parent under
                // CLONE_PARENT, to /proc.
                if process.start_ticks.is_none() || process.ppid == 0 {
                    if let Some((ppid, start)) = self.proc.parent_and_start(process.pid) {
                        process.start_ticks = process.start_ticks.or(start);
                        if process.ppid == 0 {
                            process.ppid = ppid;
                        }
                    }
                }
                // The real parent: the caller's parent under CLONE_PARENT.
                let real_parent = if process.ppid != 0 {
                    process.ppid
                } else {
                    parent.pid
                };
                process.parent_exec_id = self.exec_id_of(real_parent);
                // A forked child runs its caller's image (image 0 of its
                // own), in its cgroup unless it was cloned into another.
                let mut entry = self.lookup(parent.pid).unwrap_or(Entry {
                    start_ticks: None,
                    image: None,
                    exec_id: None,
                    ppid: 0,
                    uid: process.uid,
                    exe: None,
                    args: None,
                    args_truncated: None,
                    cgroup_id: process.cgroup_id,
                    container_id: None,
                });
                entry.ppid = real_parent;
                entry.uid = process.uid;
                entry.start_ticks = process.start_ticks;
                entry.image = Some(0);
                entry.exec_id = self.exec_id(process.pid, process.start_ticks, Some(0));
                if entry.cgroup_id != process.cgroup_id && process.cgroup_id != 0 {
                    entry.container_id = self.resolve_container(process.pid, process.cgroup_id, 0);
                    entry.cgroup_id = process.cgroup_id;
                }
                self.insert(process.pid, entry);
            }
            _ => {}
        }
        let exiting = matches!(event.kind, EventKind::ProcessExit { .. });
        let Some(process) = event.kind.process_mut() else {
            return;
        };
        let mut entry = self.lookup(process.pid);
        if let Some(e) = &entry {
            // The table's entry is of an earlier process of this pid, whose
            // end was not seen: forget it, and read this one from /proc.
            if e.start_ticks < process.start_ticks
                && !same_process(e.start_ticks, process.start_ticks)
            {
                self.entries.remove(&process.pid);
                entry = self.lookup(process.pid);
            }
        }
        if let Some(entry) = entry {
            // An entry of a later process of this pid (the event was
            // queued before the pid's reuse was seen) tells nothing of it.
            if !same_process(entry.start_ticks, process.start_ticks) {
                // Nor is an exit of that earlier process the end of this
                // one: the entry stays.
                process.start_time = self.start_time(process.start_ticks);
                return;
            }
            process.exec_id = if process
                .start_ticks
                .is_none_or(|t| entry.start_ticks == Some(t))
            {
                entry.exec_id
            } else {
                self.exec_id(process.pid, process.start_ticks, entry.image)
            };
            process.start_ticks = process.start_ticks.or(entry.start_ticks);
            process.start_time = self.start_time(process.start_ticks);
            if process.ppid == 0 {
                process.ppid = entry.ppid;
            }
            if process.exe.is_none() {
                process.exe = entry.exe;
            }
            if process.args.is_none() {
                process.args = entry.args;
                process.args_truncated = entry.args_truncated;
            }
            process.container_id = if entry.cgroup_id == process.cgroup_id || process.cgroup_id == 0
            {
                entry.container_id
            } else {
                self.resolve_container(process.pid, process.cgroup_id, 0)
            };
        } else {
            // Gone before /proc was read, and never seen to fork or exec:
            // taken for its first image, as a process found at startup is.
            process.start_time = self.start_time(process.start_ticks);
            process.exec_id = self.exec_id(process.pid, process.start_ticks, None);
        }
        if exiting {
            self.entries.remove(&process.pid);
        }
    }

    /// Processes forgotten because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The ancestors from `ppid` up, nearest first, while they are in
    /// `container`; consecutive identical executables collapsed.
    fn lineage(&mut self, ppid: u32, container: &Option<Arc<str>>) -> Vec<Ancestor> {
        let mut lineage: Vec<Ancestor> = Vec::new();
        let mut pid = ppid;
        // Bounded twice: by the lineage's size, and by the steps taken (a
        // run of identical executables collapses into one entry).
        for _ in 0..64 {
            if pid == 0 || lineage.len() == LINEAGE_MAX {
                break;
            }
            let Some(entry) = self.lookup(pid) else { break };
            if entry.container_id != *container {
                break;
            }
            if lineage.last().is_none_or(|a| a.exe != entry.exe) {
                lineage.push(Ancestor {
                    uid: entry.uid,
                    start_time: self.start_time(entry.start_ticks),
                    exec_id: entry.exec_id,
                    exe: entry.exe,
                });
            }
            pid = entry.ppid;
        }
        lineage
    }

    /// A process's entry, read from /proc (and remembered) when unknown.
    fn lookup(&mut self, pid: u32) -> Option<Entry> {
        if let Some(entry) = self.entries.get(&pid) {
            return Some(entry.clone());
        }
        let p = self.proc.process(pid)?;
        let entry = Entry {
            start_ticks: p.start_ticks,
            image: None,
            exec_id: self.exec_id(pid, p.start_ticks, None),
            ppid: p.ppid,
            uid: p.uid,
            container_id: self.resolve_container(pid, p.cgroup_id, 0),
            exe: p.exe,
            args: p.args,
            args_truncated: p.args_truncated,
            cgroup_id: p.cgroup_id,
        };
        self.insert(pid, entry.clone());
        Some(entry)
    }

    /// The container of process `pid`, which is in cgroup `cgroup_id`:
    /// known for that cgroup, else found from the cgroup's path (by its id:
    /// the process may be gone already), else from the process's cgroup
    /// paths (cgroup v1, or processes in the v2 root, where the id tells
    /// containers apart not at all). There, a `cgroup1_id` (its cgroup in
    /// a v1 hierarchy, from the probe) other than 0 remembers the answer:
    /// read at every exec, /proc/PID/cgroup was 28 % of the pipeline's CPU
    /// in a fork+exec storm on a host with cgroup v1 (perf, issue 19).
    fn resolve_container(&mut self, pid: u32, cgroup_id: u64, cgroup1_id: u64) -> Option<Arc<str>> {
        if let Some(known) = self.containers.get(&cgroup_id) {
            return known.clone();
        }
        if !self.pathless.contains(&cgroup_id) {
            if self.containers.len() + self.pathless.len() >= CGROUPS_REMEMBERED {
                self.containers.clear();
                self.pathless.clear();
            }
            match self.proc.cgroup_path(cgroup_id) {
                Some(path) => {
                    let container = container_id::from_cgroup_path(&path).map(Arc::from);
                    self.containers.insert(cgroup_id, container.clone());
                    return container;
                }
                // The root, or a cgroup gone already: never searched again.
                None => {
                    self.pathless.insert(cgroup_id);
                }
            }
        }
        if cgroup1_id != 0 {
            if let Some(known) = self.v1_containers.get(&cgroup1_id) {
                return known.clone();
            }
        }
        let container = self
            .proc
            .cgroups(pid)
            .iter()
            .find_map(|p| container_id::from_cgroup_path(p))
            .map(Arc::from);
        // Remembered only when the process is still in the cgroup it
        // exec'd in (it may have been moved since: runc moves its init
        // after the exec), and that cgroup's own path names the container
        // found: else the answer is this event's alone.
        if cgroup1_id != 0 {
            if let Some((now, path)) = self.proc.cgroup1(pid) {
                let own = container_id::from_cgroup_path(&path).map(Arc::from);
                if now == cgroup1_id && own == container {
                    if self.v1_containers.len() >= CGROUPS_REMEMBERED {
                        self.v1_containers.clear();
                    }
                    self.v1_containers.insert(cgroup1_id, container.clone());
                }
            }
        }
        container
    }

    fn insert(&mut self, pid: u32, entry: Entry) {
        if !self.entries.contains_key(&pid) && self.entries.len() >= self.capacity {
            if let Some(victim) = self.entries.keys().next().copied() {
                self.entries.remove(&victim);
                self.evicted += 1;
            }
        }
        self.entries.insert(pid, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use auspex_events::{Connection, ExitStatus, Protocol, SockId, SocketAddr, TaskId};
    use std::cell::Cell;

    const CONTAINER: &str = "/kubepods/besteffort/pod1/3b1a8c2d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcdef";

    /// A /proc with a few processes: 1 (init) → 50 (containerd-shim) →
    /// 60 (the container's init, in the container) → 70 (a shell in it).
    #[derive(Default)]
    struct FakeProc {
        reads: Cell<u32>,
        cgroup_reads: Cell<u32>,
    }

    impl ProcFs for &FakeProc {
        fn process(&self, pid: u32) -> Option<Process> {
            self.reads.set(self.reads.get() + 1);
            let (ppid, exe, cgroup_id) = match pid {
                1 => (0, "/sbin/init", 1),
                50 => (1, "/usr/bin/containerd-shim", 1),
                60 => (50, "/pause", 9),
                70 => (60, "/bin/sh", 9),
                _ => return None,
            };
            Some(Process {
                pid,
                tid: pid,
                ppid,
                exe: Some(exe.into()),
                cgroup_id,
                ..Process::default()
            })
        }

        fn cgroups(&self, pid: u32) -> Vec<String> {
            self.cgroup_reads.set(self.cgroup_reads.get() + 1);
            match pid {
                60 | 70 | 80 | 81 | 82 => vec![CONTAINER.into()],
                _ => vec!["/".into(), "/init.scope".into()],
            }
        }

        /// On cgroup v1: 80 and 81 in the container's memory cgroup (500),
        /// 30 to 32 on the host (7); 82 exec'd in the host's cgroup 900
        /// and was moved into the container's before it was read.
        fn cgroup1(&self, pid: u32) -> Option<(u64, String)> {
            match pid {
                80..=82 => Some((500, CONTAINER.into())),
                30..=32 => Some((7, "/init.scope".into())),
                _ => None,
            }
        }

        fn cgroup_path(&self, id: u64) -> Option<String> {
            self.cgroup_reads.set(self.cgroup_reads.get() + 1);
            (id == 9).then(|| CONTAINER.to_string())
        }
    }

    fn at(kind: EventKind) -> Event {
        Event::new(chrono::DateTime::from_timestamp(0, 0).unwrap(), kind)
    }

    fn process(pid: u32, ppid: u32, cgroup_id: u64) -> Process {
        Process {
            pid,
            tid: pid,
            ppid,
            cgroup_id,
            ..Process::default()
        }
    }

    fn exec(pid: u32, ppid: u32, exe: &str, cgroup_id: u64) -> Event {
        at(EventKind::ProcessExec {
            process: Process {
                exe: Some(exe.into()),
                args: Some(vec![exe.into(), "arg".into()].into()),
                args_truncated: Some(false),
                ..process(pid, ppid, cgroup_id)
            },
        })
    }

    fn fork(parent: u32, child: u32, cgroup_id: u64) -> Event {
        at(EventKind::ProcessFork {
            process: process(child, parent, cgroup_id),
            parent: TaskId {
                pid: parent,
                tid: parent,
            },
            thread: false,
        })
    }

    fn exit(pid: u32, cgroup_id: u64) -> Event {
        at(EventKind::ProcessExit {
            process: process(pid, 1, cgroup_id),
            status: Some(ExitStatus::Exited { exit_code: 0 }),
        })
    }

    fn connection(pid: u32, cgroup_id: u64) -> Event {
        let addr = SocketAddr {
            ip: "127.0.0.1".parse().unwrap(),
            port: 1,
        };
        at(EventKind::ConnectionOpen(Connection {
            protocol: Protocol::Tcp,
            role: None,
            local: addr,
            remote: addr,
            netns: Some(1),
            sock_id: SockId(1),
            process: Some(process(pid, 1, cgroup_id)),
        }))
    }

    fn p(event: &Event) -> &Process {
        event.kind.process().unwrap()
    }

    fn exes(lineage: &[Ancestor]) -> Vec<&str> {
        lineage
            .iter()
            .map(|a| a.exe.as_deref().unwrap_or("?"))
            .collect()
    }

    fn started(mut e: Event, ticks: u64) -> Event {
        e.kind.process_mut().unwrap().start_ticks = Some(ticks);
        e
    }

    fn image_of(e: &Event) -> (u32, u64, u32) {
        let id = p(e).exec_id.as_deref().expect("an exec_id");
        let parts = auspex_events::ExecIdParts::parse(id).unwrap();
        assert_eq!((parts.node.as_str(), parts.boot_id.as_str()), ("n1", "b1"));
        (parts.pid, parts.start_ticks, parts.image)
    }

    #[test]
    fn exec_ids_count_images_from_fork_and_follow_pid_reuse() {
        let proc = FakeProc::default();
        let mut table =
            ProcessTable::with_proc(16, &proc).with_identity(Identity::new("n1", "b1", 0));
        let mut sh = started(exec(10, 1, "/bin/sh", 1), 100);
        table.apply(&mut sh);
        assert_eq!(image_of(&sh), (10, 100, 1), "first seen at exec: image 1");
        assert_eq!(
            p(&sh).start_time.unwrap().to_rfc3339(),
            "1970-01-01T00:00:01+00:00"
        );
        let mut f = started(fork(10, 11, 1), 105);
        table.apply(&mut f);
        assert_eq!(image_of(&f), (11, 105, 0), "a forked child runs image 0");
        assert_eq!(p(&f).parent_exec_id, p(&sh).exec_id);
        let mut c = connection(11, 1);
        table.apply(&mut c);
        assert_eq!(p(&c).exec_id, p(&f).exec_id, "its events carry it");
        let mut e1 = started(exec(11, 10, "/bin/sh", 1), 105);
        table.apply(&mut e1);
        assert_eq!(image_of(&e1), (11, 105, 1));
        assert_eq!(p(&e1).parent_exec_id, p(&sh).exec_id);
        let mut e2 = started(exec(11, 10, "/bin/true", 1), 105);
        table.apply(&mut e2);
        assert_eq!(image_of(&e2), (11, 105, 2), "every exec a new one");
        let lineage = p(&e2).lineage.as_ref().unwrap();
        assert_eq!(lineage[0].exec_id, p(&sh).exec_id);
        assert_eq!(lineage[0].start_time, p(&sh).start_time);
        let mut x = exit(11, 1);
        table.apply(&mut x);
        assert_eq!(p(&x).exec_id, p(&e2).exec_id);
        // The pid again, for another process: a connection event of the
        // old one queued behind the new one's fork gets no wrong id.
        let mut f2 = started(fork(10, 11, 1), 300);
        table.apply(&mut f2);
        assert_eq!(image_of(&f2), (11, 300, 0));
        let mut late = started(connection(11, 1), 105);
        table.apply(&mut late);
        assert_eq!(p(&late).exec_id, None);
        let mut now = started(connection(11, 1), 300);
        table.apply(&mut now);
        assert_eq!(p(&now).exec_id, p(&f2).exec_id);
        // A scraped process is taken for image 1 whatever the table knew.
        let mut scraped = started(exec(11, 10, "/bin/sh", 1), 300);
        scraped.scraped = true;
        table.apply(&mut scraped);
        assert_eq!(image_of(&scraped), (11, 300, 1));
    }

    #[test]
    fn exe_and_args_follow_fork_exec_and_leave_on_exit() {
        let proc = FakeProc::default();
        let mut table = ProcessTable::with_proc(16, &proc);
        let mut e = exec(10, 1, "/usr/bin/bash", 1);
        table.apply(&mut e);
        let mut e = fork(10, 11, 1);
        table.apply(&mut e);
        assert_eq!(
            p(&e).exe.as_deref(),
            Some("/usr/bin/bash"),
            "inherited at fork"
        );
        let mut c = connection(11, 1);
        table.apply(&mut c);
        assert_eq!(p(&c).exe.as_deref(), Some("/usr/bin/bash"));
        assert_eq!(
            p(&c).args.as_deref(),
            Some(&["/usr/bin/bash".to_string(), "arg".into()][..])
        );

        let mut e = exec(11, 10, "/usr/bin/curl", 1);
        table.apply(&mut e);
        let mut c = connection(11, 1);
        table.apply(&mut c);
        assert_eq!(
            p(&c).exe.as_deref(),
            Some("/usr/bin/curl"),
            "replaced at exec"
        );

        let mut e = exit(11, 1);
        table.apply(&mut e);
        assert_eq!(
            p(&e).exe.as_deref(),
            Some("/usr/bin/curl"),
            "the exit names what exited"
        );
        assert!(!table.entries.contains_key(&11));
    }

    #[test]
    fn lineage_walks_up_collapsing_repeats_and_stops_at_the_container() {
        let proc = FakeProc::default();
        let mut table = ProcessTable::with_proc(64, &proc);
        // On the host: sh → sh → sh → curl under init.
        for (pid, ppid) in [(20, 1), (21, 20), (22, 21)] {
            table.apply(&mut exec(pid, ppid, "/bin/sh", 1));
        }
        let mut e = exec(23, 22, "/usr/bin/curl", 1);
        table.apply(&mut e);
        let lineage = p(&e).lineage.clone().unwrap();
        assert_eq!(
            exes(&lineage),
            ["/bin/sh", "/sbin/init"],
            "repeats collapse; init read from /proc"
        );
        assert_eq!(p(&e).container_id, None);

        // In a container: 70 (sh, in it) execs; its parent 60 is in the
        // container, 60's parent (the shim) is not: the lineage stops there.
        let mut e = exec(80, 70, "/usr/bin/wget", 9);
        table.apply(&mut e);
        assert_eq!(p(&e).container_id.as_deref(), Some("3b1a8c2d4e5f"));
        assert_eq!(exes(p(&e).lineage.as_ref().unwrap()), ["/bin/sh", "/pause"]);
    }

    #[test]
    fn lineage_is_at_most_ten() {
        let proc = FakeProc::default();
        let mut table = ProcessTable::with_proc(64, &proc);
        for pid in 100..130u32 {
            table.apply(&mut exec(pid, pid - 1, &format!("/bin/step{pid}"), 1));
        }
        let mut e = exec(130, 129, "/bin/last", 1);
        table.apply(&mut e);
        let lineage = p(&e).lineage.clone().unwrap();
        assert_eq!(lineage.len(), 10);
        assert_eq!(lineage[0].exe.as_deref(), Some("/bin/step129"));
    }

    #[test]
    fn containers_resolve_once_per_cgroup_and_every_event_gets_one() {
        let proc = FakeProc::default();
        let mut table = ProcessTable::with_proc(64, &proc);
        let mut e = exec(80, 70, "/usr/bin/wget", 9);
        table.apply(&mut e);
        let reads = proc.cgroup_reads.get();
        // Another process of the same cgroup: no /proc read needed.
        let mut e = exec(81, 70, "/usr/bin/wget", 9);
        table.apply(&mut e);
        assert_eq!(p(&e).container_id.as_deref(), Some("3b1a8c2d4e5f"));
        let mut c = connection(81, 9);
        table.apply(&mut c);
        assert_eq!(p(&c).container_id.as_deref(), Some("3b1a8c2d4e5f"));
        let mut x = exit(81, 9);
        table.apply(&mut x);
        assert_eq!(p(&x).container_id.as_deref(), Some("3b1a8c2d4e5f"));
        assert_eq!(proc.cgroup_reads.get(), reads, "cgroup 9 was resolved once");
        // Host processes in the v2 root: the cgroup id (1) says nothing,
        // each process is resolved on its own.
        let mut h = exec(30, 1, "/bin/true", 1);
        table.apply(&mut h);
        assert_eq!(p(&h).container_id, None);
    }

    /// A host with cgroup v1: every process in the v2 root (id 1), the
    /// probe giving each exec its cgroup's id in a v1 hierarchy: /proc is
    /// read once per v1 cgroup, not once per exec.
    #[test]
    fn on_cgroup_v1_containers_resolve_once_per_v1_cgroup() {
        let proc = FakeProc::default();
        let mut table = ProcessTable::with_proc(64, &proc);
        let v1_exec = |pid, cgroup1_id| {
            let mut e = exec(pid, 1, "/bin/x", 1);
            if let EventKind::ProcessExec { process } = &mut e.kind {
                process.cgroup1_id = cgroup1_id;
            }
            e
        };
        let mut first = v1_exec(80, 500);
        table.apply(&mut first);
        assert_eq!(p(&first).container_id.as_deref(), Some("3b1a8c2d4e5f"));
        let reads = proc.cgroup_reads.get();
        let mut second = v1_exec(81, 500);
        table.apply(&mut second);
        assert_eq!(p(&second).container_id.as_deref(), Some("3b1a8c2d4e5f"));
        let mut host = v1_exec(30, 7);
        table.apply(&mut host);
        assert_eq!(p(&host).container_id, None);
        assert_eq!(proc.cgroup_reads.get(), reads + 1, "one read for cgroup 7");
        let mut host = v1_exec(31, 7);
        table.apply(&mut host);
        assert_eq!(p(&host).container_id, None);
        // Without the id (the ebpf method without BTF): read each time.
        let mut unknown = v1_exec(70, 0);
        table.apply(&mut unknown);
        assert_eq!(p(&unknown).container_id.as_deref(), Some("3b1a8c2d4e5f"));
        assert_eq!(proc.cgroup_reads.get(), reads + 2);
        // Moved after its exec (as runc moves its init): its own event
        // says what /proc says, but cgroup 900 is not taken for the
        // container's, and a host process exec'd there is on the host.
        let mut moved = v1_exec(82, 900);
        table.apply(&mut moved);
        assert_eq!(p(&moved).container_id.as_deref(), Some("3b1a8c2d4e5f"));
        let mut host = v1_exec(32, 900);
        table.apply(&mut host);
        assert_eq!(p(&host).container_id, None, "{host:?}");
    }

    #[test]
    fn the_table_is_bounded_and_counts_evictions() {
        let proc = FakeProc::default();
        let mut table = ProcessTable::with_proc(3, &proc);
        for pid in 200..210 {
            table.apply(&mut exec(pid, 0, "/bin/true", 1));
        }
        assert_eq!(table.len(), 3);
        assert_eq!(table.evicted(), 7);
    }
}
