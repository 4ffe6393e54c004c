//! The executables of live processes, learned from exec events, so that
//! fork, exit and network events carry their process's `exe` too.

use std::collections::HashMap;

use auspex_events::{Event, EventKind};

/// Where a process's executable is read when no exec was seen (processes
/// that started before Auspex): /proc in production, a fake in tests.
pub trait ProcFs {
    fn exe(&self, pid: u32) -> Option<String>;
}

/// The real /proc.
pub struct SystemProc;

impl ProcFs for SystemProc {
    fn exe(&self, pid: u32) -> Option<String> {
        let pid = i32::try_from(pid).ok()?;
        let exe = procfs::process::Process::new(pid).ok()?.exe().ok()?;
        Some(exe.to_string_lossy().into_owned())
    }
}

/// Live processes by pid. Bounded: at capacity an arbitrary entry is
/// forgotten (its process's exe is then read from /proc again), and counted.
pub struct ProcessTable<P: ProcFs = SystemProc> {
    exe_by_pid: HashMap<u32, Option<String>>,
    capacity: usize,
    evicted: u64,
    proc: P,
}

impl ProcessTable<SystemProc> {
    pub fn new(capacity: usize) -> Self {
        Self::with_proc(capacity, SystemProc)
    }
}

impl<P: ProcFs> ProcessTable<P> {
    pub fn with_proc(capacity: usize, proc: P) -> Self {
        ProcessTable {
            exe_by_pid: HashMap::new(),
            capacity,
            evicted: 0,
            proc,
        }
    }

    /// Learns from `event` and fills in its process's exe where missing.
    pub fn apply(&mut self, event: &mut Event) {
        match &mut event.kind {
            EventKind::ProcessExec { process } => {
                self.insert(process.pid, process.exe.clone());
                return;
            }
            EventKind::ProcessFork {
                process,
                parent,
                thread: false,
            } => {
                // A forked child runs its parent's image until it execs.
                let exe = self.lookup(parent.pid);
                self.insert(process.pid, exe);
            }
            _ => {}
        }
        let exiting = matches!(event.kind, EventKind::ProcessExit { .. });
        if let Some(process) = event.kind.process_mut() {
            if process.exe.is_none() {
                process.exe = self.lookup(process.pid);
            }
            if exiting {
                self.exe_by_pid.remove(&process.pid);
            }
        }
    }

    /// Processes forgotten because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn len(&self) -> usize {
        self.exe_by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.exe_by_pid.is_empty()
    }

    fn lookup(&mut self, pid: u32) -> Option<String> {
        if let Some(exe) = self.exe_by_pid.get(&pid) {
            return exe.clone();
        }
        let exe = self.proc.exe(pid);
        if exe.is_some() {
            self.insert(pid, exe.clone());
        }
        exe
    }

    fn insert(&mut self, pid: u32, exe: Option<String>) {
        if !self.exe_by_pid.contains_key(&pid) && self.exe_by_pid.len() >= self.capacity {
            if let Some(victim) = self.exe_by_pid.keys().next().copied() {
                self.exe_by_pid.remove(&victim);
                self.evicted += 1;
            }
        }
        self.exe_by_pid.insert(pid, exe);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use auspex_events::{Connection, ExitStatus, Process, Protocol, SockId, SocketAddr, TaskId};
    use std::cell::Cell;

    /// A /proc that knows pid 1 and counts how often it is asked.
    #[derive(Default)]
    struct FakeProc {
        reads: Cell<u32>,
    }

    impl ProcFs for &FakeProc {
        fn exe(&self, pid: u32) -> Option<String> {
            self.reads.set(self.reads.get() + 1);
            (pid == 1).then(|| "/sbin/init".to_string())
        }
    }

    fn at(kind: EventKind) -> Event {
        Event {
            time: chrono::DateTime::from_timestamp(0, 0).unwrap(),
            kind,
        }
    }

    fn process(pid: u32) -> Process {
        Process {
            pid,
            tid: pid,
            ..Process::default()
        }
    }

    fn exec(pid: u32, exe: &str) -> Event {
        at(EventKind::ProcessExec {
            process: Process {
                exe: Some(exe.into()),
                ..process(pid)
            },
        })
    }

    fn fork(parent: u32, child: u32) -> Event {
        at(EventKind::ProcessFork {
            process: process(child),
            parent: TaskId {
                pid: parent,
                tid: parent,
            },
            thread: false,
        })
    }

    fn exit(pid: u32) -> Event {
        at(EventKind::ProcessExit {
            process: process(pid),
            status: ExitStatus::Exited { exit_code: 0 },
        })
    }

    fn connection(pid: u32) -> Event {
        let addr = SocketAddr {
            ip: "127.0.0.1".parse().unwrap(),
            port: 1,
        };
        at(EventKind::ConnectionOpen(Connection {
            protocol: Protocol::Tcp,
            role: None,
            local: addr,
            remote: addr,
            netns: 1,
            sock_id: SockId(1),
            process: Some(process(pid)),
        }))
    }

    fn exe_of(event: &Event) -> Option<&str> {
        event.kind.process().and_then(|p| p.exe.as_deref())
    }

    #[test]
    fn exe_follows_fork_exec_and_leaves_on_exit() {
        let proc = FakeProc::default();
        let mut table = ProcessTable::with_proc(16, &proc);
        for mut e in [exec(10, "/usr/bin/bash"), fork(10, 11)] {
            table.apply(&mut e);
        }
        let mut child_conn = connection(11);
        table.apply(&mut child_conn);
        assert_eq!(
            exe_of(&child_conn),
            Some("/usr/bin/bash"),
            "inherited at fork"
        );

        let mut e = exec(11, "/usr/bin/curl");
        table.apply(&mut e);
        let mut child_conn = connection(11);
        table.apply(&mut child_conn);
        assert_eq!(
            exe_of(&child_conn),
            Some("/usr/bin/curl"),
            "replaced at exec"
        );

        let mut e = exit(11);
        table.apply(&mut e);
        assert_eq!(
            exe_of(&e),
            Some("/usr/bin/curl"),
            "the exit names what exited"
        );
        assert_eq!(table.len(), 1);
        assert_eq!(proc.reads.get(), 0, "/proc was not needed");
    }

    #[test]
    fn unknown_processes_are_read_from_proc_once() {
        let proc = FakeProc::default();
        let mut table = ProcessTable::with_proc(16, &proc);
        for _ in 0..3 {
            let mut e = connection(1);
            table.apply(&mut e);
            assert_eq!(exe_of(&e), Some("/sbin/init"));
        }
        assert_eq!(proc.reads.get(), 1);
        let mut gone = connection(999);
        table.apply(&mut gone);
        assert_eq!(exe_of(&gone), None);
    }

    #[test]
    fn the_table_is_bounded_and_counts_evictions() {
        let proc = FakeProc::default();
        let mut table = ProcessTable::with_proc(3, &proc);
        for pid in 100..110 {
            table.apply(&mut exec(pid, "/bin/true"));
        }
        assert_eq!(table.len(), 3);
        assert_eq!(table.evicted(), 7);
    }
}
