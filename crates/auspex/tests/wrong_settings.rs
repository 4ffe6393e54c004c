//! Wrong settings fail loudly and early, files are opened as a root daemon
//! must, and stopping during startup is not a fault (issue 16). Each test
//! reproduces what the agent did before: a garbage `--btf` under `auto`
//! made it run ebpf without any BTF; `--output` followed a symlink and
//! truncated its target; `--output /dev/full` failed only after loading
//! and the self-check; SIGTERM during the self-check exited 1 and wrote
//! "no collection method can run here ... interrupted" to the termination
//! log; as `nobody` it reported ready on proc with no warning, while
//! 3,894 of 3,895 execs had no exe. Needs root.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::{auspex_run, deadline, error_line, run_failing, Agent, AUSPEX};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// An empty file where the termination log would be (Kubernetes creates
/// it; the agent never does).
fn termination_log(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("termination-log");
    std::fs::write(&path, "").unwrap();
    path
}

#[test]
fn a_garbage_btf_file_under_auto_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("vmlinux.btf");
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    std::fs::write(&garbage, bytes).unwrap();
    let log = termination_log(dir.path());
    let (code, stderr) = run_failing(
        auspex_run(&["--btf", garbage.to_str().unwrap()])
            .arg("--termination-log")
            .arg(&log),
    );
    assert_eq!(code, 1, "{stderr}");
    let expected = format!(
        "--btf: BTF file {} cannot be used: not a BTF file (neither raw BTF nor an ELF with a \
         .BTF section)",
        garbage.display()
    );
    assert_eq!(error_line(&stderr), format!("auspex: error: {expected}"));
    // Refused before any method was tried: that line is all there is.
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), expected);
}

#[test]
fn a_symlinked_output_is_refused_and_its_target_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("precious");
    std::fs::write(&precious, "keep me\n").unwrap();
    let link = dir.path().join("events.jsonl");
    std::os::unix::fs::symlink(&precious, &link).unwrap();
    let (code, stderr) = run_failing(auspex_run(&[]).arg("--output").arg(&link));
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        error_line(&stderr),
        format!(
            "auspex: error: refusing to write events to {}: it is a symbolic link (the output is \
             never opened through one; give the path of the file itself)",
            link.display()
        )
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me\n");
}

#[test]
fn an_unwritable_output_fails_before_anything_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let log = termination_log(dir.path());
    let (code, stderr) = run_failing(
        auspex_run(&["--output", "/dev/full"])
            .arg("--termination-log")
            .arg(&log),
    );
    assert_eq!(code, 1, "{stderr}");
    let expected = "cannot write events to /dev/full: No space left on device (os error 28)";
    assert_eq!(error_line(&stderr), format!("auspex: error: {expected}"));
    // No method selection, no self-check: the error is the only line.
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), expected);
}

#[test]
fn a_new_output_is_created_0600_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("events.jsonl");
    // umask 000: a file created 0666 stays readable by every user.
    let mut run = Command::new("/bin/sh");
    run.args(["-c", "umask 000; exec \"$0\" \"$@\"", AUSPEX, "run"]);
    let agent = Agent::spawn(run, Some(output.clone()), &["--method", "proc"]);
    agent.wait_until("the output exists", |_| output.exists());
    let mode = std::fs::metadata(&output).unwrap().permissions().mode() & 0o777;
    let (exit, stderr) = agent.stop(Signal::SIGTERM);
    assert!(exit.success(), "{}", stderr.join("\n"));
    assert_eq!(mode, 0o600, "mode {mode:o}");
}

/// Whether a child of `parent` runs with `text` in its command line.
fn child_running(parent: u32, text: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .any(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ppid == Some(parent) && String::from_utf8_lossy(&cmdline).contains(text)
        })
}

#[test]
fn sigterm_during_the_self_check_exits_0_without_writing_the_termination_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = termination_log(dir.path());
    let mut run = Command::new(AUSPEX);
    // Every canary misses: the self-check waits for its whole timeout.
    run.arg("run").env("AUSPEX_TEST_CANARY_MISS", "1");
    let agent = Agent::spawn(
        run,
        None,
        &[
            "--canary-timeout",
            "600",
            "--termination-log",
            log.to_str().unwrap(),
        ],
    );
    let pid = agent.child.id();
    agent.wait_until("the self-check's canary runs", |_| {
        child_running(pid, "canary")
    });
    let stopping = Instant::now();
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let (exit, stderr) = agent
        .wait_for_exit(Some(stopping + deadline()))
        .unwrap_or_else(|log| panic!("SIGTERM during the self-check not acted on:\n{log}"));
    println!("SIGTERM to exit: {:?}", stopping.elapsed());
    let text = stderr.join("\n");
    assert_eq!(exit.code(), Some(0), "{text}");
    assert!(
        text.contains("interrupted: stopped by a signal during the self-check"),
        "{text}"
    );
    assert!(
        text.contains("stopped during startup, before a method was proven"),
        "{text}"
    );
    assert!(!text.contains("error"), "{text}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "", "{text}");
}

/// The agent's binary, where user `nobody` can run it (the build's target
/// directory may be under a home it cannot enter), in a directory it may
/// write to.
fn for_nobody(dir: &Path) -> std::path::PathBuf {
    let bin = dir.join("auspex");
    std::fs::copy(AUSPEX, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    bin
}

#[test]
fn as_nobody_auto_runs_proc_and_says_what_it_cannot_see() {
    if !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipped: setpriv (util-linux) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = for_nobody(dir.path());
    let mut run = Command::new("setpriv");
    run.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .arg("run");
    let agent = Agent::spawn(run, Some(dir.path().join("events.jsonl")), &[]);
    agent.wait_until("it runs or gives up", |a| {
        let text = a.stderr_text();
        text.contains("probes attached") || text.contains("auspex: error:")
    });
    let log = agent.stderr_text();
    if log.contains("proc (skipped)") && log.contains("CAP_NET_ADMIN is needed") {
        // Before Linux 6.6 the process connector refuses other users.
        eprintln!("skipped: this kernel's process connector refuses an unprivileged user");
        return;
    }
    let s: Value = serde_json::from_str(&agent.http_get("/status").1).unwrap();
    assert_eq!(s["method"], "proc", "{s:#}");
    assert_eq!(agent.http_get("/ready").0, 200, "{s:#}");
    let degraded: Vec<(String, String)> = s["degraded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["feature"].as_str().unwrap().to_string(),
                d["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [
        (
            "bpf",
            "running as uid 65534 without CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN): no BPF \
             method can run, and proc sees only what /proc and the process connector show",
        ),
        (
            "other_users_exe",
            "running as uid 65534 without CAP_SYS_PTRACE: /proc/PID/exe of other users' \
             processes cannot be read, so their exe is missing wherever it comes from /proc \
             (lineage, processes that predate the agent; every exec with proc)",
        ),
        (
            "other_users_sockets",
            "running as uid 65534 without CAP_DAC_READ_SEARCH: /proc/PID/fd of other users' \
             processes cannot be read, so their sockets found in /proc have no owner \
             (listeners that predate the agent; every connection with proc)",
        ),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(f, r)| (f.to_string(), r.to_string()))
        .collect();
    assert_eq!(degraded, expected, "{s:#}");
    for (feature, reason) in &expected {
        assert!(
            log.contains(&format!(
                "WARN auspex::reporter: running without it: {reason} feature={feature}"
            )),
            "{log}"
        );
    }
    // What that means: root's exec of /bin/true has no exe.
    let mut child = Command::new("/bin/true").arg("as-root").spawn().unwrap();
    child.wait().unwrap();
    let exec = agent.event("process_exec", child.id());
    assert!(exec["process"].get("exe").is_none(), "{exec}");
    let (exit, stderr) = agent.stop(Signal::SIGTERM);
    assert!(exit.success(), "{}", stderr.join("\n"));
}

#[test]
fn as_root_nothing_is_marked_blind() {
    let agent = Agent::start(&[]);
    let s: Value = serde_json::from_str(&agent.http_get("/status").1).unwrap();
    for feature in ["bpf", "other_users_exe", "other_users_sockets"] {
        assert!(!common::has_degraded(&s, feature), "{s:#}");
    }
}

#[test]
fn a_fifo_without_a_reader_is_waited_for_and_sigterm_still_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("events.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut run = Command::new(AUSPEX);
    run.arg("run");
    let agent = Agent::spawn(run, Some(fifo.clone()), &[]);
    agent.wait_until("it waits for a reader", |a| {
        a.stderr_text().contains(&format!(
            "waiting for a reader of the FIFO {}",
            fifo.display()
        ))
    });
    let stopping = Instant::now();
    kill(Pid::from_raw(agent.child.id() as i32), Signal::SIGTERM).unwrap();
    let (exit, stderr) = agent
        .wait_for_exit(Some(stopping + deadline()))
        .unwrap_or_else(|log| panic!("SIGTERM while waiting for the FIFO not acted on:\n{log}"));
    assert_eq!(exit.code(), Some(0), "{}", stderr.join("\n"));
}
