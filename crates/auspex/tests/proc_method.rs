//! The proc method, live: no BPF, the process connector and /proc scans.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::{Agent, HeldShell, AUSPEX};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../auspex-probe/tests/peer.py");

fn proc_agent() -> Agent {
    let mut command = Command::new(AUSPEX);
    command.arg("run");
    Agent::launch(command, &["--method", "proc", "--scan-interval", "0.3"])
}

#[test]
fn exec_and_exit_with_known_args_and_exit_code() {
    let agent = proc_agent();
    // It lives until its exec was seen: the proc method reads a process's
    // details when it hears of it, not from the kernel event.
    let shell = HeldShell::spawn("exit 7", &["name", "", "a b"]);
    let (pid, args) = (shell.pid(), shell.args.clone());
    let exec = agent.event("process_exec", pid);
    assert_eq!(shell.release().code(), Some(7));
    assert_eq!(exec["process"]["args"], json!(args), "{exec}");
    assert_eq!(
        exec["process"]["exe"],
        common::canonical("/bin/sh"),
        "{exec}"
    );
    assert_eq!(exec["process"]["ppid"], std::process::id(), "{exec}");
    let exit = agent.event("process_exit", pid);
    assert_eq!(exit["exit_code"], 7, "{exit}");
    assert_eq!(exit["process"]["comm"], "sh", "{exit}");
    let fork = agent.event("process_fork", pid);
    assert_eq!(fork["thread"], false, "{fork}");
    assert_eq!(fork["parent"]["pid"], std::process::id(), "{fork}");
    let (status, stderr) = agent.stop(Signal::SIGTERM);
    assert!(status.success(), "{status}: {stderr:?}");
}

/// A peer.py process, talking through JSON lines.
struct Peer {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Peer {
    fn spawn(args: &[&str]) -> Peer {
        let mut child = Command::new("python3")
            .arg(PEER)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Peer { child, out }
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("peer said {line:?}: {e}"))
    }

    fn go(&mut self) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }
}

#[test]
fn a_connection_held_across_a_scan_has_both_roles_and_the_listener_comes_and_goes() {
    let agent = proc_agent();
    let mut server = Peer::spawn(&["tcp-server", "127.0.0.1", "0"]);
    let listening = server.read()["listening"].clone();
    let port = listening[1].as_u64().unwrap();
    let mut client = Peer::spawn(&["tcp-client", "127.0.0.1", &port.to_string()]);
    let local = client.read()["local"].clone();
    server.read();
    let (server_pid, client_pid) = (server.child.id(), client.child.id());

    let at = |ip_port: &Value| json!({"ip": ip_port[0], "port": ip_port[1]});
    let listen = agent.event_where("endpoint_open", server_pid, |e| e["local"]["port"] == port);
    assert_eq!(listen["protocol"], "tcp", "{listen}");
    let c = agent.event_where("connection_open", client_pid, |e| {
        e["remote"]["port"] == port
    });
    assert_eq!(c["role"], "client", "{c}");
    assert_eq!(c["local"], at(&local), "{c}");
    let s = agent.event_where("connection_open", server_pid, |e| {
        e["local"]["port"] == port
    });
    assert_eq!(s["role"], "server", "{s}");
    assert_eq!(s["remote"], at(&local), "{s}");

    client.go();
    client.read();
    server.read();
    server.go();
    server.read();
    client.child.wait().unwrap();
    server.child.wait().unwrap();
    let closed = agent.event_where("endpoint_close", server_pid, |e| e["local"]["port"] == port);
    assert_eq!(closed["sock_id"], listen["sock_id"], "{closed}");
    agent.event_where("connection_close", client_pid, |e| {
        e["remote"]["port"] == port
    });
    agent.event_where("connection_close", server_pid, |e| {
        e["local"]["port"] == port
    });
    let (status, stderr) = agent.stop(Signal::SIGTERM);
    assert!(status.success(), "{status}: {stderr:?}");
}

#[test]
fn auto_without_bpf_privileges_picks_proc_and_says_why() {
    // Root without the capabilities BPF needs, but with those the proc
    // method needs (the connector wants CAP_NET_ADMIN; reading other
    // processes' /proc/<pid>/fd wants CAP_SYS_PTRACE).
    let mut command = Command::new("setpriv");
    command.args([
        "--bounding-set=-all,+net_admin,+sys_ptrace,+dac_read_search",
        "--inh-caps=-all",
        "--",
        AUSPEX,
        "run",
    ]);
    let agent = Agent::launch(command, &["--scan-interval", "0.5"]);
    let s: Value = serde_json::from_str(&agent.http_get("/status").1).unwrap();
    assert_eq!(s["method"], "proc", "{s:#}");
    assert_eq!(s["attempts"][0]["method"], "core_bpf", "{s:#}");
    assert_eq!(s["attempts"][0]["outcome"], "skipped", "{s:#}");
    assert!(
        s["attempts"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("privileges: needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN"),
        "{s:#}"
    );
    // ebpf needs the same capabilities: skipped too.
    assert_eq!(s["attempts"][1]["method"], "ebpf", "{s:#}");
    assert_eq!(s["attempts"][1]["outcome"], "skipped", "{s:#}");
    assert_eq!(s["attempts"][2]["method"], "proc", "{s:#}");
    assert_eq!(s["attempts"][2]["outcome"], "active", "{s:#}");
    assert_eq!(s["ready"], true, "{s:#}");
    let (status, stderr) = agent.stop(Signal::SIGTERM);
    assert!(status.success(), "{status}: {stderr:?}");
}
