//! What the kernel matrix (`scripts/kernel-matrix`) runs inside every kernel
//! it boots, and what runs here on the host too: `auto` must choose the
//! method `AUSPEX_EXPECT_METHOD` names (`core_bpf` when unset), and that
//! method must report an exec with its arguments and exit code, and both
//! ends of a TCP connection with their owner. With
//! `AUSPEX_TEST_STATUS_FILE` set, the agent's `/status` is saved there.

mod common;

use std::net::{TcpListener, TcpStream};
use std::process::Command;

use common::{canonical, Agent};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

fn expected_method() -> String {
    std::env::var("AUSPEX_EXPECT_METHOD").unwrap_or_else(|_| "core_bpf".to_string())
}

/// `auspex run --method auto`, checked to have chosen the expected method
/// after skipping only methods that could not run here.
fn auto_agent() -> (Agent, Value) {
    let scale: u32 = std::env::var("AUSPEX_TEST_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let canary = (5 * scale).to_string();
    let agent = Agent::start(&["--method", "auto", "--canary-timeout", &canary]);
    let body = agent.http_get("/status").1;
    // The kernel matrix's report: which method ran, what was degraded.
    if let Ok(path) = std::env::var("AUSPEX_TEST_STATUS_FILE") {
        std::fs::write(path, &body).unwrap();
    }
    let s: Value = serde_json::from_str(&body).unwrap();
    let expected = expected_method();
    assert_eq!(s["method"], expected.as_str(), "{s:#}");
    assert_eq!(s["method_requested"], "auto", "{s:#}");
    let attempts = s["attempts"].as_array().unwrap();
    let (last, before) = attempts.split_last().unwrap();
    assert_eq!(last["method"], expected.as_str(), "{s:#}");
    assert_eq!(last["outcome"], "active", "{s:#}");
    // A method before it may only have been skipped for a missing feature:
    // one that loaded and then missed its canary is a failure of the probe.
    for a in before {
        assert_eq!(a["outcome"], "skipped", "{s:#}");
    }
    assert_eq!(s["canary"]["passed"], true, "{s:#}");
    (agent, s)
}

fn has_degraded(status: &Value, feature: &str) -> bool {
    status["degraded"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["feature"] == feature)
}

#[test]
fn auto_chooses_the_expected_method_and_sees_a_process() {
    let (agent, status) = auto_agent();
    // The sleep keeps the process alive long enough for a method that reads
    // its details from /proc.
    let mut child = Command::new("/bin/sh")
        .args(["-c", "sleep 0.3; exit 7", "any-kernel"])
        .spawn()
        .unwrap();
    child.wait().unwrap();
    let pid = child.id();

    let exec = agent.event("process_exec", pid);
    // Without any BTF the legacy probe cannot resolve the path in the
    // kernel and reports it as execve was given it.
    let exe = if has_degraded(&status, "core_reads") {
        "/bin/sh".to_string()
    } else {
        canonical("/bin/sh")
    };
    assert_eq!(exec["process"]["exe"], exe.as_str(), "{exec}");
    assert_eq!(
        exec["process"]["args"],
        json!(["/bin/sh", "-c", "sleep 0.3; exit 7", "any-kernel"]),
        "{exec}"
    );
    assert_eq!(exec["process"]["ppid"], std::process::id(), "{exec}");
    assert_eq!(exec["process"]["uid"], 0, "{exec}");

    let exit = agent.event("process_exit", pid);
    assert_eq!(exit["exit_code"], 7, "{exit}");

    let (code, stderr) = agent.stop(Signal::SIGTERM);
    assert!(code.success(), "{code}: {stderr:?}");
}

#[test]
fn auto_sees_both_ends_of_a_tcp_connection() {
    let (agent, _) = auto_agent();
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
    assert_eq!(open["local"], json!({"ip": "127.0.0.1", "port": client_port}));
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

    let (code, stderr) = agent.stop(Signal::SIGTERM);
    assert!(code.success(), "{code}: {stderr:?}");
}
