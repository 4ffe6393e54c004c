//! `auspex run` as a user runs it: real probe, real processes, JSON lines
//! out, clear errors for bad input. Needs root and kernel BTF.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    auspex_run, canonical, deadline, error_line, has_degraded, run_failing, Agent, HeldShell,
    AUSPEX,
};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

#[test]
fn run_writes_exact_exec_fork_exit_events_and_stops_cleanly() {
    let agent = Agent::start(&[]);
    let mut child = Command::new("/bin/sh")
        .args(["-c", "exit 5", "zero", "", "a b", "ünïcode"])
        .spawn()
        .unwrap();
    child.wait().unwrap();
    let pid = child.id();
    let me = std::process::id();
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();

    let fork = agent.event("process_fork", pid);
    let cgroup_id = fork["process"]["cgroup_id"].clone();
    assert!(cgroup_id.is_u64(), "{fork}");
    assert_eq!(fork["parent"]["pid"], me, "{fork}");
    assert_eq!(fork["thread"], false, "{fork}");

    let exec = agent.event("process_exec", pid);
    // Its lineage starts with this test (checked in tests/enrichment.rs).
    let mut process = exec["process"].clone();
    let lineage = process.as_object_mut().unwrap().remove("lineage").unwrap();
    assert_eq!(lineage[0]["exe"], canonical("/proc/self/exe"), "{exec}");
    // Its identity: the fork's start, its first image, this test its
    // parent (tests/identity.rs has the rest).
    let mut identity = |key| process.as_object_mut().unwrap().remove(key).unwrap();
    let (start_time, exec_id, parent_exec_id) = (
        identity("start_time"),
        identity("exec_id"),
        identity("parent_exec_id"),
    );
    assert_eq!(start_time, fork["process"]["start_time"], "{exec}\n{fork}");
    assert_eq!(parent_exec_id, lineage[0]["exec_id"], "{exec}");
    let parts = |id: &Value| auspex_events::ExecIdParts::parse(id.as_str().unwrap()).unwrap();
    let (image, forked) = (parts(&exec_id), parts(&fork["process"]["exec_id"]));
    assert_eq!(
        (image.pid, image.start_ticks, image.image),
        (pid, forked.start_ticks, 1),
        "{exec}"
    );
    assert_eq!(
        process,
        json!({
            "pid": pid, "tid": pid, "ppid": me, "uid": uid, "gid": gid, "comm": "sh",
            "exe": canonical("/bin/sh"),
            "args": ["/bin/sh", "-c", "exit 5", "zero", "", "a b", "ünïcode"],
            "args_truncated": false,
            "cgroup_id": cgroup_id,
        }),
        "{exec}"
    );
    assert!(exec["time"].as_str().unwrap().ends_with('Z'), "{exec}");

    let exit = agent.event("process_exit", pid);
    assert_eq!(exit["exit_code"], 5, "{exit}");
    assert_eq!(exit["process"]["comm"], "sh", "{exit}");
    assert!(exit.get("signal").is_none(), "{exit}");

    let (status, stderr) = agent.stop(Signal::SIGINT);
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        stderr.join("\n")
    );
    let summary = stderr.last().unwrap();
    assert!(
        summary.starts_with("auspex: ")
            && summary.contains(" events in ")
            && summary.contains("dropped or incomplete 0 ("),
        "summary line: {summary}"
    );
    assert!(!stderr.iter().any(|l| l.contains("panicked")), "{stderr:?}");
}

#[test]
fn sigterm_stops_cleanly_and_btf_file_copy_works() {
    let dir = tempfile::tempdir().unwrap();
    let btf = dir.path().join("vmlinux.btf");
    std::fs::copy("/sys/kernel/btf/vmlinux", &btf).unwrap();
    let agent = Agent::start(&["--btf", btf.to_str().unwrap()]);
    let mut child = Command::new("/bin/true")
        .arg("via-btf-file")
        .spawn()
        .unwrap();
    child.wait().unwrap();
    let exec = agent.event("process_exec", child.id());
    assert_eq!(
        exec["process"]["args"],
        json!(["/bin/true", "via-btf-file"])
    );
    let (status, stderr) = agent.stop(Signal::SIGTERM);
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        stderr.join("\n")
    );
}

#[test]
fn network_events_name_the_owning_processes_and_their_executables() {
    let agent = Agent::start(&[]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // The client says which executable it runs (python3 may be a wrapper).
    let script = format!(
        "import os, socket; print(os.readlink('/proc/self/exe'), flush=True); \
         s = socket.create_connection(('127.0.0.1', {port})); s.recv(1); s.close()"
    );
    let mut client = Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut client_exe = String::new();
    BufReader::new(client.stdout.take().unwrap())
        .read_line(&mut client_exe)
        .unwrap();
    let (conn, _) = listener.accept().unwrap();
    drop(conn);
    client.wait().unwrap();

    let client_open = agent.event("connection_open", client.id());
    assert_eq!(client_open["protocol"], "tcp", "{client_open}");
    assert_eq!(client_open["role"], "client", "{client_open}");
    assert_eq!(
        client_open["remote"],
        json!({"ip": "127.0.0.1", "port": port}),
        "{client_open}"
    );
    assert_eq!(
        client_open["process"]["exe"],
        client_exe.trim_end(),
        "{client_open}"
    );

    // The server side belongs to this test process, which started before
    // the agent: its exe comes from /proc.
    let me = std::process::id();
    // (Other tests in this process make connections too: pick ours.)
    let server_open = agent.event_where("connection_open", me, |e| e["local"]["port"] == port);
    assert_eq!(server_open["role"], "server", "{server_open}");
    assert_eq!(server_open["local"]["port"], port, "{server_open}");
    let test_exe = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
    assert_eq!(
        server_open["process"]["exe"],
        test_exe.to_str().unwrap(),
        "{server_open}"
    );
    let (status, stderr) = agent.stop(Signal::SIGTERM);
    assert!(status.success(), "{status}: {stderr:?}");
}

#[test]
fn missing_btf_file_is_one_clear_line_whatever_the_method() {
    // A setting that cannot be used is an error under every method, not a
    // reason for `auto` to pick another (it used to run ebpf without BTF).
    for method in ["auto", "core_bpf", "ebpf", "proc"] {
        let (code, stderr) = run_failing(&mut auspex_run(&[
            "--method",
            method,
            "--btf",
            "/nonexistent/vmlinux",
        ]));
        assert_eq!(code, 1, "{method}: {stderr}");
        assert_eq!(
            error_line(&stderr),
            "auspex: error: --btf: BTF file /nonexistent/vmlinux does not exist",
            "{method}"
        );
        // Refused before anything was tried.
        assert_eq!(stderr.lines().count(), 1, "{method}: {stderr}");
    }
}

#[test]
fn corrupt_btf_files_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let random = dir.path().join("random.btf");
    let bytes: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(&random, bytes).unwrap();
    let core_bpf = |btf: &str| auspex_run(&["--method", "core_bpf", "--btf", btf]);
    let (code, stderr) = run_failing(&mut core_bpf(random.to_str().unwrap()));
    assert_eq!(code, 1);
    assert!(
        error_line(&stderr).ends_with(&format!(
            "--btf: BTF file {} cannot be used: not a BTF file (neither raw BTF nor an ELF with \
             a .BTF section)",
            random.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("Unknown error"), "{stderr}");

    let truncated = dir.path().join("truncated.btf");
    let kernel = std::fs::read("/sys/kernel/btf/vmlinux").unwrap();
    std::fs::write(&truncated, &kernel[..kernel.len() / 3]).unwrap();
    let (code, stderr) = run_failing(&mut core_bpf(truncated.to_str().unwrap()));
    assert_eq!(code, 1);
    assert!(
        error_line(&stderr).ends_with("corrupt or truncated BTF"),
        "{stderr}"
    );
}

#[test]
fn without_capabilities_core_bpf_fails_naming_them() {
    // Root, but with every capability dropped from the bounding set, so the
    // exec'd agent has none. (auto would move on to the proc method.)
    let (code, stderr) = run_failing(Command::new("setpriv").args([
        "--bounding-set=-all",
        "--inh-caps=-all",
        "--",
        AUSPEX,
        "run",
        "--listen",
        "off",
        "--method",
        "core_bpf",
    ]));
    assert_eq!(code, 1);
    assert!(
        error_line(&stderr).starts_with(
            "auspex: error: the core_bpf method cannot run here: core_bpf (skipped): privileges: \
             needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN"
        ),
        "{stderr}"
    );
}

/// `sh -c SCRIPT AUSPEX` in a private mount namespace: what the script
/// mounts or unmounts there hides things from the agent only.
fn in_private_mount_namespace(script: &str) -> Command {
    let mut command = Command::new("unshare");
    command.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        AUSPEX,
    ]);
    command
}

/// `auspex run` with the kernel's BTF hidden by a tmpfs in a private mount
/// namespace.
fn run_without_kernel_btf_command() -> Command {
    in_private_mount_namespace("mount -t tmpfs none /sys/kernel/btf && exec \"$0\" run \"$@\"")
}

/// Runs `auspex run ARGS` with the kernel's BTF hidden (it must fail).
fn run_without_kernel_btf(args: &[&str]) -> (i32, String) {
    run_failing(
        run_without_kernel_btf_command()
            .args(["--listen", "off"])
            .args(args),
    )
}

const NO_KERNEL_BTF: &str = "core_bpf (skipped): kernel BTF: /sys/kernel/btf/vmlinux is missing: \
                             the kernel was built without CONFIG_DEBUG_INFO_BTF";

#[test]
fn kernel_without_btf_skips_core_bpf_and_auto_moves_on() {
    // auto: core_bpf is skipped with the reason, and the next method runs.
    let agent = Agent::launch(
        run_without_kernel_btf_command(),
        &["--scan-interval", "0.5"],
    );
    let s: Value = serde_json::from_str(&agent.http_get("/status").1).unwrap();
    assert_eq!(s["method"], "ebpf", "{s:#}");
    assert_eq!(s["attempts"][0]["method"], "core_bpf", "{s:#}");
    assert_eq!(s["attempts"][0]["outcome"], "skipped", "{s:#}");
    let reason = s["attempts"][0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&NO_KERNEL_BTF["core_bpf (skipped): ".len()..]),
        "{reason}"
    );
    assert_eq!(s["attempts"][1]["method"], "ebpf", "{s:#}");
    assert_eq!(s["attempts"][1]["outcome"], "active", "{s:#}");
    // Without any BTF, it runs without its CO-RE reads, and says so.
    assert!(has_degraded(&s, "core_reads"), "{s:#}");
    // Without BTF, the legacy probe still sees processes: an exec with its
    // arguments (read from /proc) and its exit code.
    let shell = HeldShell::spawn("exit 6", &["no-btf"]);
    let pid = shell.pid();
    let exec = agent.event("process_exec", pid);
    assert_eq!(shell.release().code(), Some(6));
    assert_eq!(exec["process"]["exe"], "/bin/sh", "{exec}");
    assert_eq!(exec["process"]["args"][3], "no-btf", "{exec}");
    assert_eq!(agent.event("process_exit", pid)["exit_code"], 6);
    // And TCP connections, with their owner.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    drop((client, server, listener));
    let me = std::process::id();
    let open = agent.event_where("connection_open", me, |e| {
        e["role"] == "client" && e["remote"]["port"] == port
    });
    assert_eq!(open["protocol"], "tcp", "{open}");
    assert_eq!(s["features"]["kernel_btf"]["ok"], false, "{s:#}");
    // The startup diagnostics name each attempt, its outcome and the BTF source.
    let log = agent.stderr_text();
    assert!(
        log.contains("method selection (requested: auto; BTF: kernel /sys/kernel/btf/vmlinux)"),
        "{log}"
    );
    assert!(log.contains("core_bpf: skipped after "), "{log}");
    assert!(log.contains("ebpf: active after "), "{log}");
    let (status, stderr) = agent.stop(Signal::SIGTERM);
    assert!(status.success(), "{status}: {stderr:?}");
}

#[test]
fn without_kernel_btf_a_btf_file_gives_ebpf_its_core_reads() {
    // A BTFHub-style file for a kernel that lacks BTF: here, a copy of this
    // kernel's, with the original hidden.
    let dir = tempfile::tempdir().unwrap();
    let btf = dir.path().join("vmlinux.btf");
    std::fs::copy("/sys/kernel/btf/vmlinux", &btf).unwrap();
    let agent = Agent::launch(
        run_without_kernel_btf_command(),
        &["--method", "ebpf", "--btf", btf.to_str().unwrap()],
    );
    let s: Value = serde_json::from_str(&agent.http_get("/status").1).unwrap();
    assert_eq!(s["method"], "ebpf", "{s:#}");
    assert!(!has_degraded(&s, "core_reads"), "{s:#}");
    let mut child = Command::new("/bin/sh")
        .args(["-c", "exit 4", "with-btf-file"])
        .spawn()
        .unwrap();
    child.wait().unwrap();
    let exec = agent.event("process_exec", child.id());
    // Resolved by the kernel-side walk, not as given to execve.
    assert_eq!(exec["process"]["exe"], canonical("/bin/sh"), "{exec}");
    assert_eq!(exec["process"]["args"][3], "with-btf-file", "{exec}");
    assert_eq!(agent.event("process_exit", child.id())["exit_code"], 4);
    let (status, stderr) = agent.stop(Signal::SIGTERM);
    assert!(status.success(), "{status}: {stderr:?}");
}

#[test]
fn without_kernel_btf_a_btf_file_cannot_stand_in_for_core_bpf() {
    // A --btf file cannot replace the kernel's BTF (tp_btf attaches through
    // it), and the error says so; a missing or corrupt one is refused first.
    let dir = tempfile::tempdir().unwrap();
    let btf = dir.path().join("vmlinux.btf");
    std::fs::copy("/sys/kernel/btf/vmlinux", &btf).unwrap();
    let (code, stderr) =
        run_without_kernel_btf(&["--method", "core_bpf", "--btf", btf.to_str().unwrap()]);
    assert_eq!(code, 1);
    let error = error_line(&stderr);
    assert!(error.contains(NO_KERNEL_BTF), "{stderr}");
    assert!(
        error.contains("tp_btf programs attach through it; --btf cannot replace it"),
        "{stderr}"
    );

    let corrupt = dir.path().join("corrupt.btf");
    std::fs::write(&corrupt, vec![0x5a; 4096]).unwrap();
    let (code, stderr) =
        run_without_kernel_btf(&["--method", "core_bpf", "--btf", corrupt.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(
        error_line(&stderr),
        format!(
            "auspex: error: --btf: BTF file {} cannot be used: not a BTF file (neither raw BTF \
             nor an ELF with a .BTF section)",
            corrupt.display()
        )
    );
}

#[test]
fn explicit_core_bpf_without_btf_fails_with_the_reason() {
    let (code, stderr) = run_without_kernel_btf(&["--method", "core_bpf"]);
    assert_eq!(code, 1);
    assert!(
        error_line(&stderr).starts_with(&format!(
            "auspex: error: the core_bpf method cannot run here: {NO_KERNEL_BTF}"
        )),
        "{stderr}"
    );
}

#[test]
fn a_method_whose_canary_misses_is_unloaded_with_the_reason() {
    // Every canary misses: each method is given up in turn, with its reason.
    let (code, stderr) = run_failing(
        auspex_run(&[
            "--canary-timeout",
            "1",
            "--scan-interval",
            "0.5",
            "--output",
            "/dev/null",
        ])
        .env("AUSPEX_TEST_CANARY_MISS", "1"),
    );
    assert_eq!(code, 1);
    let error = error_line(&stderr);
    assert!(
        error.starts_with(
            "auspex: error: no collection method can run here: core_bpf (canary missed): did not \
             see the exec of pid "
        ) && error.contains("with its nonce within 1s; ebpf (canary missed): did not see the exec")
            && error.contains("; proc (canary missed): did not see the exec")
            && error.ends_with("within 1.5s"),
        "{stderr}"
    );
    assert!(
        stderr.contains("method=\"core_bpf\" next=\"ebpf\""),
        "{stderr}"
    );
    assert!(stderr.contains("method=\"ebpf\" next=\"proc\""), "{stderr}");
    assert!(stderr.contains("method=\"proc\" next=\"none\""), "{stderr}");
}

#[test]
fn unknown_methods_are_refused() {
    let (code, stderr) = run_failing(&mut auspex_run(&["--method", "dtrace"]));
    assert_eq!(code, 2, "usage errors exit with 2: {stderr}");
    assert!(stderr.contains("invalid value 'dtrace'"), "{stderr}");
}

#[test]
fn auto_picks_core_bpf_and_every_report_says_so() {
    let agent = Agent::start(&["--heartbeat-interval", "0.3"]);
    let (code, body) = agent.http_get("/ready");
    assert_eq!((code, body.as_str()), (200, "ready\n"));

    // The heartbeat runs again and again; wait until one has passed.
    let status = || serde_json::from_str::<Value>(&agent.http_get("/status").1).unwrap();
    agent.wait_until("a heartbeat has passed", |_| {
        status()["heartbeat"]["last"]["passed"] == true
    });
    let s = status();
    assert_eq!(s["ready"], true, "{s:#}");
    assert_eq!(s["method"], "core_bpf", "{s:#}");
    assert_eq!(s["method_requested"], "auto", "{s:#}");
    assert_eq!(s["attempts"].as_array().unwrap().len(), 1, "{s:#}");
    assert_eq!(s["attempts"][0]["method"], "core_bpf", "{s:#}");
    assert_eq!(s["attempts"][0]["outcome"], "active", "{s:#}");
    assert_eq!(s["canary"]["passed"], true, "{s:#}");
    assert_eq!(s["btf_source"], "kernel /sys/kernel/btf/vmlinux", "{s:#}");
    assert_eq!(s["features"]["tp_btf"]["ok"], true, "{s:#}");
    assert_eq!(s["degraded"], json!([]), "{s:#}");
    assert_eq!(s["heartbeat"]["misses"], 0, "{s:#}");
    assert!(s["drops"]["buffer_full_exec"].is_u64(), "{s:#}");

    let (code, text) = agent.http_get("/metrics");
    assert_eq!(code, 200);
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines)
        .unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{text}"));
    let value = |name: &str, label: Option<(&str, &str)>| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(
        value("auspex_method_info", Some(("method", "core_bpf"))),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value("auspex_ready", None), Some(1.0), "{text}");
    assert_eq!(
        value("auspex_heartbeat_misses_total", None),
        Some(0.0),
        "{text}"
    );
    assert!(
        value("auspex_events_total", Some(("type", "process_exec"))).is_some(),
        "{text}"
    );
    assert_eq!(
        value("auspex_drops_total", Some(("cause", "buffer_full_exec"))),
        Some(0.0),
        "{text}"
    );

    // None of its own canary activity (the agent starts no other process
    // and makes no other connection) leaks into its events. Connections to
    // its HTTP API (this test's requests) are real and reported: its
    // listener predates the probes, and the startup scrape names its owner.
    let agent_pid = agent.child.id();
    let api_port = agent.http_addr().port();
    let own: Vec<String> = agent
        .events()
        .iter()
        .filter(|e| {
            e["process"]["ppid"] == agent_pid
                || (e["type"].as_str().unwrap().starts_with("connection")
                    && e["process"]["pid"] == agent_pid
                    && e["local"]["port"] != api_port)
        })
        .map(Value::to_string)
        .collect();
    assert!(
        own.is_empty(),
        "the agent reported its own canaries: {own:#?}"
    );
    let api = agent.event_with("connection_open", |e| e["local"]["port"] == api_port);
    assert_eq!(api["process"]["pid"], agent_pid, "{api}");
    assert_eq!(api["role"], "server", "{api}");
    let (status, stderr) = agent.stop(Signal::SIGTERM);
    assert!(status.success(), "{status}: {stderr:?}");
}

#[test]
fn a_method_that_misses_its_canary_gives_way_to_the_next() {
    // A test-only method that sees nothing is put first in line.
    let mut command = Command::new(AUSPEX);
    command.arg("run").env("AUSPEX_TEST_BLIND_METHOD", "1");
    let agent = Agent::launch(command, &["--canary-timeout", "1"]);
    let s: Value = serde_json::from_str(&agent.http_get("/status").1).unwrap();
    assert_eq!(s["method"], "core_bpf", "{s:#}");
    let attempts = s["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{s:#}");
    assert_eq!(attempts[0]["method"], "test_blind", "{s:#}");
    assert_eq!(attempts[0]["outcome"], "canary_missed", "{s:#}");
    let reason = attempts[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("did not see the exec of pid ")
            && reason.contains(" with its nonce and the loopback TCP connection to port ")
            && reason.ends_with("within 1s"),
        "{reason}"
    );
    assert_eq!(attempts[1]["method"], "core_bpf", "{s:#}");
    assert_eq!(attempts[1]["outcome"], "active", "{s:#}");
    let (_, metrics) = agent.http_get("/metrics");
    assert!(
        metrics.contains(
            "auspex_fallbacks_total{from=\"test_blind\",to=\"core_bpf\",reason=\"canary_missed\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        agent
            .stderr_text()
            .contains("test_blind: canary missed after "),
        "{}",
        agent.stderr_text()
    );
    let (status, stderr) = agent.stop(Signal::SIGTERM);
    assert!(status.success(), "{status}: {stderr:?}");
}

#[test]
fn without_ring_buffers_auto_takes_the_perf_buffer_path() {
    let mut command = Command::new(AUSPEX);
    command.arg("run").env("AUSPEX_TEST_NO_RINGBUF", "1");
    let agent = Agent::launch(command, &[]);
    let s: Value = serde_json::from_str(&agent.http_get("/status").1).unwrap();
    assert_eq!(s["method"], "ebpf", "{s:#}");
    assert_eq!(s["attempts"][0]["outcome"], "skipped", "{s:#}");
    assert!(
        s["attempts"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("ring buffer: reported unavailable for a test"),
        "{s:#}"
    );
    // Events still arrive, through the perf event array.
    let mut child = Command::new("/bin/true").arg("perf-path").spawn().unwrap();
    child.wait().unwrap();
    let exec = agent.event("process_exec", child.id());
    assert_eq!(exec["process"]["exe"], canonical("/bin/true"), "{exec}");
    let (status, stderr) = agent.stop(Signal::SIGTERM);
    assert!(status.success(), "{status}: {stderr:?}");
}

#[test]
fn a_missed_heartbeat_makes_the_agent_not_ready() {
    let mut command = Command::new(AUSPEX);
    command
        .arg("run")
        .env("AUSPEX_TEST_CANARY_MISS", "heartbeat");
    let agent = Agent::launch(
        command,
        &["--heartbeat-interval", "0.2", "--canary-timeout", "0.5"],
    );
    agent.wait_until("a heartbeat has missed", |a| a.http_get("/ready").0 == 503);
    let (_, body) = agent.http_get("/ready");
    assert!(
        body.starts_with("not ready: heartbeat missed: did not see the exec of pid "),
        "{body}"
    );
    let s: Value = serde_json::from_str(&agent.http_get("/status").1).unwrap();
    assert_eq!(s["ready"], false, "{s:#}");
    assert_eq!(s["canary"]["passed"], true, "{s:#}");
    assert!(s["heartbeat"]["misses"].as_u64().unwrap() >= 1, "{s:#}");
    assert_eq!(s["heartbeat"]["last"]["passed"], false, "{s:#}");
    let (_, metrics) = agent.http_get("/metrics");
    assert!(metrics.contains("\nauspex_ready 0\n"), "{metrics}");
    let (status, stderr) = agent.stop(Signal::SIGTERM);
    assert!(status.success(), "{status}: {stderr:?}");
}

#[test]
fn without_cgroup_v2_udp_is_degraded_and_the_rest_runs() {
    // A private mount namespace where no cgroup2 hierarchy is mounted.
    let script = "for m in $(awk '$9 == \"cgroup2\" {print $5}' /proc/self/mountinfo); do \
                  umount -l \"$m\"; done; exec \"$0\" run \"$@\"";
    let command = in_private_mount_namespace(script);
    let agent = Agent::launch(command, &[]);
    let (code, _) = agent.http_get("/ready");
    assert_eq!(code, 200);
    let s: Value = serde_json::from_str(&agent.http_get("/status").1).unwrap();
    assert_eq!(s["method"], "core_bpf", "{s:#}");
    assert_eq!(s["features"]["cgroup2"]["ok"], false, "{s:#}");
    assert_eq!(
        s["degraded"],
        json!([{
            "feature": "udp",
            "reason": "cgroup v2 is not mounted: the UDP socket hooks attach to its root"
        }]),
        "{s:#}"
    );
    assert!(
        agent.stderr_text().contains("running without it"),
        "{}",
        agent.stderr_text()
    );
    let (status, stderr) = agent.stop(Signal::SIGTERM);
    assert!(status.success(), "{status}: {stderr:?}");
}

#[test]
fn a_fatal_error_is_written_to_the_termination_log() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let path = log.path().to_str().unwrap();
    let (code, stderr) = run_failing(&mut auspex_run(&[
        "--method",
        "core_bpf",
        "--btf",
        "/nonexistent/vmlinux",
        "--termination-log",
        path,
    ]));
    assert_eq!(code, 1);
    let written = std::fs::read_to_string(path).unwrap();
    assert_eq!(
        format!("auspex: error: {written}"),
        error_line(&stderr),
        "the termination log holds the error"
    );
}

#[test]
fn check_tells_the_truth_about_this_kernel() {
    let out = Command::new(AUSPEX)
        .args(["check", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let f = &report["features"];
    // What this test needs of any machine it runs on (root, kernel BTF):
    // tp_btf attaches, the kernel's BTF parses.
    assert_eq!(f["tp_btf"]["ok"], true, "{report:#}");
    assert_eq!(
        f["kernel_btf"]["ok"],
        std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
        "{report:#}"
    );
    assert_eq!(f["kernel_btf"]["ok"], true, "{report:#}");
    assert_eq!(f["ring_buffer"]["ok"], true, "{report:#}");
    assert_eq!(f["proc_connector"]["ok"], true, "{report:#}");
    assert_eq!(
        report["methods"][0],
        json!({"method": "core_bpf", "can_run": true, "reason": null})
    );

    let out = Command::new(AUSPEX).arg("check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok   tp_btf"), "{text}");
    assert!(text.contains("core_bpf  can run"), "{text}");
    // fentry is informational (no method needs it): some kernels refuse it
    // and accept tp_btf, others take both. Whichever this one does, both
    // forms of the report say the same, and a refusal says why.
    let fentry = &f["fentry"];
    let detail = fentry["detail"].as_str().unwrap();
    match fentry["ok"].as_bool().unwrap() {
        true => assert!(
            text.contains(&format!("ok   fentry             {detail}")),
            "{text}"
        ),
        false => {
            assert!(!detail.is_empty(), "{report:#}");
            assert!(
                text.contains(&format!("FAIL fentry             {detail}")),
                "{text}"
            );
        }
    }
}

#[test]
fn bad_output_path_and_bad_sizes_are_refused() {
    let (code, stderr) = run_failing(&mut auspex_run(&[
        "--output",
        "/nonexistent/dir/events.jsonl",
    ]));
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with(
            "auspex: error: cannot create output file /nonexistent/dir/events.jsonl: "
        ),
        "{stderr}"
    );
    let (code, stderr) = run_failing(&mut auspex_run(&["--ring-buffer-size", "3M"]));
    assert_eq!(code, 2, "usage errors exit with 2: {stderr}");
    assert!(stderr.contains("must be a power of two"), "{stderr}");
}

#[test]
fn stdout_reader_going_away_ends_the_run_quietly() {
    let mut agent = Command::new(AUSPEX)
        .arg("run")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(agent.stdout.take().unwrap());
    // Make events until the agent has written one, then hang up.
    let mut first = String::new();
    let reader = std::thread::spawn(move || {
        stdout.read_line(&mut first).unwrap();
        first
    });
    let start = Instant::now();
    while !reader.is_finished() {
        assert!(start.elapsed() < deadline(), "the agent wrote nothing");
        Command::new("/bin/true").status().unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let first = reader.join().unwrap();
    serde_json::from_str::<Value>(&first).unwrap();
    // The pipe is now closed; more events make the agent's write fail.
    let start = Instant::now();
    while agent.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < deadline(),
            "the agent kept running with no reader"
        );
        Command::new("/bin/true").status().unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = agent.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    assert!(!stderr.contains("error"), "{stderr}");
}
