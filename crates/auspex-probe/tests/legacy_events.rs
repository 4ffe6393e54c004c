//! Live tests of the legacy (ebpf) probe: the same actions as for core_bpf,
//! asserting the fields this probe can know (see docs/events.md). This
//! kernel has BTF, so the probe runs with its CO-RE reads; the CLI tests
//! run it with the kernel's BTF hidden.

use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use auspex_events::{Event, EventKind, ExitStatus, Protocol, Role};
use auspex_probe::LegacyBpf;

struct Harness {
    probe: LegacyBpf,
    seen: Vec<Event>,
}

impl Harness {
    fn start() -> Harness {
        let probe =
            LegacyBpf::load(None).unwrap_or_else(|e| panic!("loading the legacy probe: {e}"));
        assert!(
            !probe.degraded().iter().any(|d| d.feature == "core_reads"),
            "this kernel has BTF: {:?}",
            probe.degraded()
        );
        Harness {
            probe,
            seen: Vec::new(),
        }
    }

    fn wait(&mut self, what: &str, found: impl Fn(&Event) -> bool) -> Event {
        let start = Instant::now();
        loop {
            if let Some(e) = self.seen.iter().find(|e| found(e)) {
                return e.clone();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no {what}; {} events seen",
                self.seen.len()
            );
            let seen = &mut self.seen;
            self.probe
                .poll(Duration::from_millis(100), &mut |e| seen.push(e))
                .unwrap();
        }
    }

    fn about(&mut self, kind: &str, pid: u32) -> Event {
        self.wait(&format!("{kind} of {pid}"), |e| {
            e.kind.name() == kind && e.kind.process().is_some_and(|p| p.pid == pid)
        })
    }
}

#[test]
fn exec_fork_exit_and_threads() {
    let mut h = Harness::start();
    let mut child = Command::new("/bin/sh")
        .args(["-c", "exit 7"])
        .spawn()
        .unwrap();
    child.wait().unwrap();
    let pid = child.id();
    let me = std::process::id();

    let fork = h.about("process_fork", pid);
    let EventKind::ProcessFork {
        process,
        parent,
        thread,
    } = &fork.kind
    else {
        unreachable!()
    };
    assert_eq!(
        (process.pid, process.tid, process.ppid),
        (pid, pid, me),
        "{fork:?}"
    );
    assert_eq!(parent.pid, me);
    assert!(!thread);

    let exec = h.about("process_exec", pid);
    let p = exec.kind.process().unwrap();
    let sh = std::fs::canonicalize("/bin/sh").unwrap();
    assert_eq!(p.exe.as_deref(), sh.to_str(), "{exec:?}");
    assert_eq!(
        p.args,
        Some(vec!["/bin/sh".into(), "-c".into(), "exit 7".into()])
    );
    assert_eq!(p.ppid, me);
    assert_eq!(p.comm, "sh");
    assert_eq!((p.uid, p.gid), (0, 0));

    let exit = h.about("process_exit", pid);
    let EventKind::ProcessExit { status, .. } = exit.kind else {
        unreachable!()
    };
    assert_eq!(status, Some(ExitStatus::Exited { exit_code: 7 }));

    // Killed: the signal, read from the task.
    let mut sleeper = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    h.about("process_exec", sleeper.id());
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    let exit = h.about("process_exit", sleeper.id());
    let EventKind::ProcessExit { status, .. } = exit.kind else {
        unreachable!()
    };
    assert_eq!(
        status,
        Some(ExitStatus::Signaled {
            signal: 9,
            core_dumped: false
        })
    );

    // A thread is a thread.
    let tid = std::thread::spawn(|| nix::unistd::gettid().as_raw() as u32)
        .join()
        .unwrap();
    let fork = h.wait("the thread's creation", |e| {
        e.kind.name() == "process_fork" && e.kind.process().is_some_and(|p| p.tid == tid)
    });
    let EventKind::ProcessFork {
        process, thread, ..
    } = fork.kind
    else {
        unreachable!()
    };
    assert!(thread);
    assert_eq!(process.pid, me);
}

#[test]
fn tcp_connections_with_roles_and_owners() {
    let mut h = Harness::start();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    let client_port = client.local_addr().unwrap().port();
    drop((client, server, listener));
    let me = std::process::id();
    let conn = |role: Role| {
        move |e: &Event| match &e.kind {
            EventKind::ConnectionOpen(c) => {
                c.protocol == Protocol::Tcp
                    && c.role == Some(role)
                    && (c.local.port == port || c.remote.port == port)
            }
            _ => false,
        }
    };
    let client_open = h.wait("the client's open", conn(Role::Client));
    let EventKind::ConnectionOpen(c) = &client_open.kind else {
        unreachable!()
    };
    assert_eq!((c.local.port, c.remote.port), (client_port, port));
    assert_eq!(c.process.as_ref().map(|p| p.pid), Some(me));
    let server_open = h.wait("the server's open", conn(Role::Server));
    let EventKind::ConnectionOpen(s) = &server_open.kind else {
        unreachable!()
    };
    assert_eq!((s.local.port, s.remote.port), (port, client_port));
    assert_eq!(
        s.process.as_ref().map(|p| p.pid),
        Some(me),
        "owned by the listener's owner"
    );
    h.wait(
        "the listener's close",
        |e| matches!(&e.kind, EventKind::EndpointClose(ep) if ep.local.port == port),
    );
    h.wait("both closes", |e| {
        matches!(&e.kind, EventKind::ConnectionClose(c) if c.role == Some(Role::Server) && c.local.port == port)
    });
}
