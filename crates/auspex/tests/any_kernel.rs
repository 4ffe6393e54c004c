//! What the kernel matrix (`scripts/kernel-matrix`) runs inside every kernel
//! it boots, and what runs here on the host too: `auto` must choose the
//! method `AUSPEX_EXPECT_METHOD` names (`core_bpf` when unset), and that
//! method must report an exec with its arguments and exit code, and both
//! ends of a TCP connection with their owner. Then every method, named
//! explicitly, runs every event type against two network namespaces joined
//! by veth and a cgroup tree shaped like a container runtime's
//! (tests/any_kernel/cells.rs): each (method, event type) cell is passed,
//! degraded (with the kernel feature or method limit that makes it so) or
//! failed, written to `AUSPEX_TEST_CELLS` for the matrix's table. With
//! `AUSPEX_TEST_STATUS_FILE` set, the agent's `/status` under `auto` is
//! saved there.

#[path = "any_kernel/cells.rs"]
mod cells;
mod common;
mod identity_checks;

use std::net::{TcpListener, TcpStream};

use common::{canonical, has_degraded, time_scale, Agent, HeldShell};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

fn expected_method() -> String {
    std::env::var("AUSPEX_EXPECT_METHOD").unwrap_or_else(|_| "core_bpf".to_string())
}

/// `auspex run --method <method>` with the canary timeout scaled, and its
/// `/status`, checked to name the method running.
fn agent_with(method: &str, expected: &str) -> (Agent, Value) {
    let canary = (5 * time_scale()).to_string();
    let agent = Agent::start(&[
        "--method",
        method,
        "--canary-timeout",
        &canary,
        "--scan-interval",
        "0.5",
    ]);
    let body = agent.http_get("/status").1;
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["method"], expected, "{s:#}");
    assert_eq!(s["method_requested"], method, "{s:#}");
    assert_eq!(s["canary"]["passed"], true, "{s:#}");
    (agent, s)
}

/// `auspex run --method auto`, checked to have chosen the expected method
/// after skipping only methods that could not run here.
fn auto_agent() -> (Agent, Value) {
    let expected = expected_method();
    let (agent, s) = agent_with("auto", &expected);
    // The kernel matrix's report: which method ran, what was degraded.
    if let Ok(path) = std::env::var("AUSPEX_TEST_STATUS_FILE") {
        std::fs::write(path, s.to_string()).unwrap();
    }
    let attempts = s["attempts"].as_array().unwrap();
    let (last, before) = attempts.split_last().unwrap();
    assert_eq!(last["method"], expected.as_str(), "{s:#}");
    assert_eq!(last["outcome"], "active", "{s:#}");
    // A method before it may only have been skipped for a missing feature:
    // one that loaded and then missed its canary is a failure of the probe.
    for a in before {
        assert_eq!(a["outcome"], "skipped", "{s:#}");
    }
    (agent, s)
}

/// An exec with its exact arguments, its parent and uid, and its exit code.
fn sees_a_process(agent: &Agent, status: &Value) {
    // It lives until its exec was seen: a method that reads its details
    // from /proc finds them.
    let shell = HeldShell::spawn("exit 7", &["any-kernel"]);
    let (pid, args) = (shell.pid(), shell.args.clone());
    let exec = agent.event("process_exec", pid);
    assert_eq!(shell.release().code(), Some(7));
    // Without any BTF the legacy probe cannot resolve the path in the
    // kernel and reports it as execve was given it.
    let exe = if has_degraded(status, "core_reads") {
        "/bin/sh".to_string()
    } else {
        canonical("/bin/sh")
    };
    assert_eq!(exec["process"]["exe"], exe.as_str(), "{exec}");
    assert_eq!(exec["process"]["args"], json!(args), "{exec}");
    assert_eq!(exec["process"]["ppid"], std::process::id(), "{exec}");
    assert_eq!(exec["process"]["uid"], 0, "{exec}");

    let exit = agent.event("process_exit", pid);
    assert_eq!(exit["exit_code"], 7, "{exit}");
}

/// Both ends of a loopback TCP connection, owned by this process, and the
/// client's close.
fn sees_both_ends_of_a_tcp_connection(agent: &Agent) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let client_port = client.local_addr().unwrap().port();
    let (server, _) = listener.accept().unwrap();
    drop((client, server, listener));

    let me = std::process::id();
    let exe = canonical("/proc/self/exe");
    let open = agent.event_where("connection_open", me, |e| {
        e["role"] == "client" && e["remote"]["port"] == port
    });
    assert_eq!(open["protocol"], "tcp", "{open}");
    assert_eq!(
        open["local"],
        json!({"ip": "127.0.0.1", "port": client_port})
    );
    assert_eq!(open["remote"], json!({"ip": "127.0.0.1", "port": port}));
    assert_eq!(open["process"]["exe"], exe.as_str(), "{open}");

    let accepted = agent.event_where("connection_open", me, |e| {
        e["role"] == "server" && e["local"]["port"] == port
    });
    assert_eq!(
        accepted["remote"],
        json!({"ip": "127.0.0.1", "port": client_port}),
        "{accepted}"
    );
    agent.event_where("connection_close", me, |e| {
        e["role"] == "client" && e["remote"]["port"] == port
    });
}

fn stop(agent: Agent) {
    let (code, stderr) = agent.stop(Signal::SIGTERM);
    assert!(code.success(), "{code}: {stderr:?}");
}

#[test]
fn auto_chooses_the_expected_method_and_sees_a_process() {
    let (agent, status) = auto_agent();
    sees_a_process(&agent, &status);
    stop(agent);
}

#[test]
fn auto_sees_both_ends_of_a_tcp_connection() {
    let (agent, _) = auto_agent();
    sees_both_ends_of_a_tcp_connection(&agent);
    stop(agent);
}

/// The legacy method on every kernel, not only where `auto` falls back to
/// it: with the kernel's BTF it runs its CO-RE reads.
#[test]
fn ebpf_sees_a_process_and_a_tcp_connection() {
    let (agent, status) = agent_with("ebpf", "ebpf");
    sees_a_process(&agent, &status);
    sees_both_ends_of_a_tcp_connection(&agent);
    stop(agent);
}

/// The last resort, with no BPF at all. Its scans see only connections that
/// outlive them, so only processes here (tests/proc_method.rs has the rest).
#[test]
fn proc_sees_a_process() {
    let (agent, status) = agent_with("proc", "proc");
    sees_a_process(&agent, &status);
    stop(agent);
}

#[test]
fn core_bpf_reports_every_event_type() {
    cells::every_event_type("core_bpf");
}

#[test]
fn ebpf_reports_every_event_type() {
    cells::every_event_type("ebpf");
}

#[test]
fn proc_reports_every_event_type() {
    cells::every_event_type("proc");
}

/// Process identity under every method: exec_ids across forced PID reuse
/// and through a chain of parents (tests/identity_checks).
#[test]
fn every_method_gives_exec_ids_across_pid_reuse_and_a_chain_of_parents() {
    for method in ["auto", "ebpf", "proc"] {
        let (agent, _) = match method {
            "auto" => auto_agent(),
            m => agent_with(m, m),
        };
        identity_checks::pid_reuse_gives_each_process_its_own_exec_id(&agent);
        identity_checks::parent_exec_ids_follow_a_chain_of_three(&agent);
        stop(agent);
    }
}
