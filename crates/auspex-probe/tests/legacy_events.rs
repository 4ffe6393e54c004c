//! Live tests of the legacy (ebpf) probe: the same actions as for core_bpf,
//! asserting the fields this probe can know (see docs/events.md). This
//! kernel has BTF, so the probe runs with its CO-RE reads; the CLI tests
//! run it with the kernel's BTF hidden.

mod common;

use std::net::{TcpListener, TcpStream};
use std::process::Command;

use auspex_events::{Event, EventKind, ExitStatus, Protocol, Role};
use auspex_probe::LegacyBpf;

type Harness = common::Harness<LegacyBpf>;

fn start() -> Harness {
    let probe = LegacyBpf::load(None).unwrap_or_else(|e| panic!("loading the legacy probe: {e}"));
    assert!(
        !probe.degraded().iter().any(|d| d.feature == "core_reads"),
        "this kernel has BTF: {:?}",
        probe.degraded()
    );
    Harness::of(probe)
}

/// Waits for an event `found` selects, showing every event of `related`
/// kind on failure.
fn wait(h: &mut Harness, what: &str, related: &str, found: impl Fn(&Event) -> bool) -> Event {
    h.wait_until(what, found, |e| e.kind.name() == related)
}

#[test]
fn exec_fork_exit_and_threads() {
    let mut h = start();
    let mut child = Command::new("/bin/sh")
        .args(["-c", "exit 7"])
        .spawn()
        .unwrap();
    child.wait().unwrap();
    let pid = child.id();
    let me = std::process::id();

    let fork = h.wait_for("process_fork", pid, None);
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

    let exec = h.wait_for("process_exec", pid, None);
    let p = exec.kind.process().unwrap();
    let sh = std::fs::canonicalize("/bin/sh").unwrap();
    assert_eq!(p.exe.as_deref(), sh.to_str(), "{exec:?}");
    assert_eq!(
        p.args,
        Some(vec!["/bin/sh".into(), "-c".into(), "exit 7".into()].into())
    );
    assert_eq!(p.ppid, me);
    assert_eq!(p.comm, "sh");
    assert_eq!((p.uid, p.gid), (0, 0));

    let exit = h.wait_for("process_exit", pid, None);
    let EventKind::ProcessExit { status, .. } = exit.kind else {
        unreachable!()
    };
    assert_eq!(status, Some(ExitStatus::Exited { exit_code: 7 }));

    // Killed: the signal, read from the task.
    let mut sleeper = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    h.wait_for("process_exec", sleeper.id(), None);
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    let exit = h.wait_for("process_exit", sleeper.id(), None);
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
    let fork = wait(&mut h, "the thread's creation", "process_fork", |e| {
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
    let mut h = start();
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
    let client_open = wait(
        &mut h,
        "the client's open",
        "connection_open",
        conn(Role::Client),
    );
    let EventKind::ConnectionOpen(c) = &client_open.kind else {
        unreachable!()
    };
    assert_eq!((c.local.port, c.remote.port), (client_port, port));
    assert_eq!(c.process.as_ref().map(|p| p.pid), Some(me));
    let server_open = wait(
        &mut h,
        "the server's open",
        "connection_open",
        conn(Role::Server),
    );
    let EventKind::ConnectionOpen(s) = &server_open.kind else {
        unreachable!()
    };
    assert_eq!((s.local.port, s.remote.port), (port, client_port));
    assert_eq!(
        s.process.as_ref().map(|p| p.pid),
        Some(me),
        "owned by the listener's owner"
    );
    let closed = wait(
        &mut h,
        "the listener's close",
        "endpoint_close",
        |e| matches!(&e.kind, EventKind::EndpointClose(ep) if ep.local.port == port),
    );
    let EventKind::EndpointClose(ep) = &closed.kind else {
        unreachable!()
    };
    assert_eq!(
        ep.process.as_ref().map(|p| p.pid),
        Some(me),
        "owned by who listened: {closed:?}"
    );
    wait(
        &mut h,
        "both closes",
        "connection_close",
        |e| matches!(&e.kind, EventKind::ConnectionClose(c) if c.role == Some(Role::Server) && c.local.port == port),
    );
}
