//! `auspex run` configured by a file and the environment, and told where
//! the kernel's BTF is (as in a container, where it is the host's, mounted):
//! what it used is named in /status with its checksum, and a missing mount
//! is a fallback that the termination log shows. Needs root and kernel BTF.

mod common;

use std::process::Command;

use common::{error_line, run_failing, Agent, AUSPEX};
use serde_json::Value;

const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// sha256sum's answer, not the agent's code.
fn sha256(path: &str) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {path}");
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn status(agent: &Agent) -> Value {
    serde_json::from_str(&agent.http_get("/status").1).unwrap()
}

#[test]
fn a_bad_config_file_fails_before_anything_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("auspex.yaml");
    std::fs::write(&config, "method: ebpf\nheartbeat_intervall: 5\n").unwrap();
    let termination = dir.path().join("termination-log");
    std::fs::write(&termination, "").unwrap();
    let (code, stderr) = run_failing(
        Command::new(AUSPEX)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--termination-log")
            .arg(&termination),
    );
    assert_eq!(code, 1, "{stderr}");
    let expected = format!(
        "config file {}: unknown key `heartbeat_intervall` (see auspex run --help)",
        config.display()
    );
    assert_eq!(error_line(&stderr), format!("auspex: error: {expected}"));
    // Nothing ran: the error is all it printed.
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(std::fs::read_to_string(&termination).unwrap(), expected);
}

#[test]
fn the_file_sets_what_the_environment_and_flags_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("auspex.yaml");
    std::fs::write(
        &config,
        "method: proc\nheartbeat_interval: 7\nreport: both\n",
    )
    .unwrap();
    let mut command = Command::new(AUSPEX);
    command
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("AUSPEX_METHOD", "ebpf")
        .env("AUSPEX_REPORT", "raw");
    let agent = Agent::launch(command, &["--report", "deltas", "--delta-interval", "0.5"]);
    let s = status(&agent);
    // The environment over the file; the flag over both.
    assert_eq!(s["method_requested"], "ebpf", "{s:#}");
    assert_eq!(s["method"], "ebpf", "{s:#}");
    agent.event_with("connections_delta", |_| true);
    assert!(
        !agent.events().iter().any(|e| e["type"] == "process_exec"),
        "--report deltas writes no raw events"
    );
}

#[test]
fn the_kernel_btf_read_elsewhere_is_named_with_its_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("vmlinux");
    std::fs::copy(KERNEL_BTF, &copy).unwrap();
    let agent = Agent::start(&[
        "--method",
        "core_bpf",
        "--kernel-btf",
        copy.to_str().unwrap(),
    ]);
    let s = status(&agent);
    assert_eq!(s["method"], "core_bpf", "{s:#}");
    let btf = &s["btf"];
    assert_eq!(btf["path"], copy.to_str().unwrap(), "{s:#}");
    assert_eq!(btf["origin"], "kernel", "{s:#}");
    assert_eq!(btf["sha256"], sha256(KERNEL_BTF), "{s:#}");
    assert_eq!(
        btf["bytes"],
        std::fs::metadata(KERNEL_BTF).unwrap().len(),
        "{s:#}"
    );
    assert_eq!(agent.http_get("/live"), (200, "alive\n".to_string()));
}

#[test]
fn the_default_kernel_btf_is_named_too() {
    let agent = Agent::start(&["--method", "core_bpf"]);
    let s = status(&agent);
    assert_eq!(s["btf"]["path"], KERNEL_BTF, "{s:#}");
    assert_eq!(s["btf"]["sha256"], sha256(KERNEL_BTF), "{s:#}");
}

#[test]
fn a_missing_kernel_btf_mount_is_a_fallback_the_termination_log_shows() {
    let dir = tempfile::tempdir().unwrap();
    let termination = dir.path().join("termination-log");
    std::fs::write(&termination, "").unwrap();
    let missing = dir.path().join("host/sys/kernel/btf/vmlinux");
    let agent = Agent::start(&[
        "--kernel-btf",
        missing.to_str().unwrap(),
        "--termination-log",
        termination.to_str().unwrap(),
    ]);
    let s = status(&agent);
    assert_eq!(s["method"], "ebpf", "{s:#}");
    let expected = format!(
        "kernel BTF: {} is missing: the host's {KERNEL_BTF} is not mounted there, or the \
         kernel was built without CONFIG_DEBUG_INFO_BTF",
        missing.display()
    );
    assert_eq!(s["attempts"][0]["outcome"], "skipped", "{s:#}");
    let reason = s["attempts"][0]["reason"].as_str().unwrap();
    assert!(reason.starts_with(&expected), "{s:#}");
    // Without the kernel's BTF, ebpf runs without CO-RE reads.
    assert_eq!(s["btf"], Value::Null, "{s:#}");
    assert_eq!(
        std::fs::read_to_string(&termination).unwrap(),
        format!("running ebpf after: core_bpf (skipped): {reason}")
    );
}

/// Every numeric option at the top of its range (the largest values the
/// parsers accept) runs, reports, and stops on SIGTERM: no arithmetic on
/// them overflows (`--heartbeat-interval 1e19` used to panic once loaded).
#[test]
fn the_largest_accepted_values_run_and_stop_cleanly() {
    let agent = Agent::start(&[
        "--method",
        "core_bpf",
        "--report",
        "both",
        "--scan-interval",
        "86400",
        "--canary-timeout",
        "86400",
        "--heartbeat-interval",
        "86400",
        "--delta-interval",
        "86400",
        "--afterglow",
        "86400",
        "--connection-rate-limit",
        "4294967295",
        "--flush-timeout",
        "86400",
        "--sink-queue",
        "1048576",
        "--api-max-connections",
        "16384",
        "--api-header-timeout",
        "86400",
        "--api-idle-timeout",
        "86400",
    ]);
    let mut child = Command::new("/bin/true").arg("largest").spawn().unwrap();
    child.wait().unwrap();
    agent.event("process_exec", child.id());
    let (status, stderr) = agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{status}: {}", stderr.join("\n"));
    assert!(!stderr.iter().any(|l| l.contains("panicked")), "{stderr:?}");
}
