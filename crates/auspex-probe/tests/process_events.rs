//! Live tests of the core_bpf process probe: each triggers real process
//! activity and asserts the exact events it must produce. They need root
//! and a kernel with BTF (CI has both).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use auspex_events::{Event, EventKind, ExitStatus, Process, TaskId};
use auspex_probe::{CoreBpf, ProbeConfig, ARGS_MAX};
use common::Harness;

/// Compares an event's process with what it must be, naming every field that
/// differs.
#[track_caller]
fn assert_process(actual: &Process, expected: &Process, context: &str) {
    let mut diffs = Vec::new();
    macro_rules! check {
        ($($field:ident),*) => {$(
            if actual.$field != expected.$field {
                diffs.push(format!(
                    "  {}: found {:?}, expected {:?}",
                    stringify!($field), actual.$field, expected.$field
                ));
            }
        )*};
    }
    check!(
        pid,
        tid,
        ppid,
        uid,
        gid,
        comm,
        exe,
        exe_truncated,
        args,
        args_truncated,
        cgroup_id
    );
    assert!(
        diffs.is_empty(),
        "{context}: fields differ:\n{}\nevent process: {actual:#?}",
        diffs.join("\n")
    );
}

fn own_ids() -> (u32, u32) {
    (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    )
}

/// The cgroup v2 id of this process: the inode of its cgroup directory in
/// the cgroup2 hierarchy, wherever that is mounted.
fn own_cgroup_id() -> u64 {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 entry in /proc/self/cgroup");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount = mountinfo
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            right
                .starts_with("cgroup2 ")
                .then(|| left.split(' ').nth(4).unwrap().to_string())
        })
        .expect("cgroup2 is mounted");
    let dir = PathBuf::from(mount).join(path.trim_start_matches('/'));
    std::fs::metadata(&dir).unwrap().ino()
}

fn base_process(child: &Child, comm: &str) -> Process {
    let (uid, gid) = own_ids();
    Process {
        pid: child.id(),
        tid: child.id(),
        ppid: std::process::id(),
        uid,
        gid,
        comm: comm.into(),
        cgroup_id: own_cgroup_id(),
        ..Process::default()
    }
}

fn canonical(path: &str) -> String {
    std::fs::canonicalize(path)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn exec_fork_exit_with_unusual_arguments() {
    let mut h = Harness::start();
    let args = ["-c", "exit 7", "name", "", "with space", "héllo wörld ✓"];
    let mut child = Command::new("/bin/sh").args(args).spawn().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(7));
    let pid = child.id();

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
        *parent,
        TaskId {
            pid: std::process::id(),
            tid: parent.tid
        }
    );
    assert!(!*thread, "{fork:?}");
    assert_eq!(
        (process.pid, process.tid, process.ppid),
        (pid, pid, std::process::id())
    );

    let exec = h.wait_for("process_exec", pid, None);
    let mut expected_args = vec!["/bin/sh".to_string()];
    expected_args.extend(args.iter().map(|a| a.to_string()));
    assert_process(
        exec.kind.process().unwrap(),
        &Process {
            exe: Some(canonical("/bin/sh").into()),
            args: Some(expected_args.into()),
            args_truncated: Some(false),
            ..base_process(&child, "sh")
        },
        "exec",
    );

    let exit = h.wait_for("process_exit", pid, None);
    let EventKind::ProcessExit { status, process } = &exit.kind else {
        unreachable!()
    };
    assert_eq!(*status, Some(ExitStatus::Exited { exit_code: 7 }));
    assert_process(process, &base_process(&child, "sh"), "exit");
    assert!(fork.time <= exec.time && exec.time <= exit.time);
    let now = chrono::Utc::now();
    assert!(
        (now - exit.time).num_seconds().abs() < 5,
        "event time {} is not near now {now}",
        exit.time
    );
}

#[test]
fn long_argument_vector_is_truncated_and_flagged() {
    let mut h = Harness::start();
    let args: Vec<String> = (0..600).map(|i| format!("argument-{i:04}")).collect();
    let mut child = Command::new("/bin/true").args(&args).spawn().unwrap();
    child.wait().unwrap();

    // What the probe must have copied: argv as NUL-terminated strings,
    // cut at ARGS_MAX bytes.
    let mut argv = vec!["/bin/true".to_string()];
    argv.extend(args);
    let mut bytes: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    assert!(bytes.len() > ARGS_MAX);
    bytes.truncate(ARGS_MAX);
    let expected: Vec<String> = bytes
        .split(|&b| b == 0)
        .map(|a| String::from_utf8(a.to_vec()).unwrap())
        .collect();

    let exec = h.wait_for("process_exec", child.id(), None);
    assert_process(
        exec.kind.process().unwrap(),
        &Process {
            exe: Some(canonical("/bin/true").into()),
            args: Some(expected.into()),
            args_truncated: Some(true),
            ..base_process(&child, "true")
        },
        "exec",
    );
}

#[test]
fn relative_path_and_other_mount_resolve_to_the_absolute_exe() {
    let mut h = Harness::start();
    // A relative filename: the probe must resolve it, not echo "./true".
    let mut child = Command::new("./true")
        .current_dir("/usr/bin")
        .spawn()
        .unwrap();
    child.wait().unwrap();
    let exec = h.wait_for("process_exec", child.id(), None);
    assert_eq!(
        exec.kind.process().unwrap().exe,
        Some(canonical("/usr/bin/true").into())
    );

    // A binary on another mount (tmpfs): the walk must cross the mount point.
    let dir = tempfile::Builder::new()
        .prefix("auspex-exe-")
        .tempdir_in("/dev/shm")
        .unwrap();
    let copy = dir.path().join("copied true");
    std::fs::copy("/bin/true", &copy).unwrap();
    let mut child = Command::new(&copy).spawn().unwrap();
    child.wait().unwrap();
    let exec = h.wait_for("process_exec", child.id(), None);
    assert_eq!(
        exec.kind.process().unwrap().exe.as_deref(),
        Some(copy.to_str().unwrap()),
        "{}",
        h.describe(|e| e.kind.name() == "process_exec")
    );
}

#[test]
fn killed_process_reports_the_signal() {
    let mut h = Harness::start();
    let mut child = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    let pid = child.id();
    // Kill it only once it runs sleep, so the exit is sleep's own.
    h.wait_for("process_exec", pid, None);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    child.wait().unwrap();
    let exit = h.wait_for("process_exit", pid, None);
    let EventKind::ProcessExit { status, .. } = exit.kind else {
        unreachable!()
    };
    assert_eq!(
        status,
        Some(ExitStatus::Signaled {
            signal: 15,
            core_dumped: false
        })
    );
}

#[test]
fn threads_fork_as_threads_and_do_not_exit_the_process() {
    let mut h = Harness::start();
    let tid = std::thread::spawn(|| nix::unistd::gettid().as_raw() as u32)
        .join()
        .unwrap();
    let me = std::process::id();
    let fork = h.wait_for("process_fork", me, Some(tid));
    let EventKind::ProcessFork { thread, .. } = fork.kind else {
        unreachable!()
    };
    assert!(thread, "{fork:?}");

    // A later process's exit is a marker: the thread's exit, had it been
    // reported, would have arrived before it.
    let mut marker = Command::new("/bin/true").spawn().unwrap();
    marker.wait().unwrap();
    h.wait_for("process_exit", marker.id(), None);
    let thread_exits: Vec<&Event> = h
        .seen
        .iter()
        .filter(|e| e.kind.name() == "process_exit" && e.kind.process().unwrap().tid == tid)
        .collect();
    assert!(
        thread_exits.is_empty(),
        "a thread exit was reported: {thread_exits:?}"
    );
}

/// Forks `argv[1]` processes one after another and prints their pids. In
/// each, the main thread exits while a second thread runs: both threads
/// exit at once, on different CPUs.
const THREADS_EXIT_TOGETHER: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void *spin(void *arg) { for (;;) ; return arg; }
int main(int argc, char **argv) {
    for (int i = atoi(argv[1]); i > 0; i--) {
        pid_t pid = fork();
        if (pid == 0) {
            pthread_t t;
            pthread_create(&t, 0, spin, 0);
            usleep(100);
            _exit(3);
        }
        int status;
        waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 3)
            return 1;
        printf("%d\n", pid);
    }
    return 0;
}
"#;

#[test]
fn a_process_whose_threads_exit_together_exits_once() {
    // Both threads can read the process's live-thread count at zero. Before
    // the probe claimed each exit once, about 1 process in 10,000 of these
    // was reported twice here: without the claim, 7 runs in 10 (of 3,000 to
    // 20,000 processes) failed. With it, one duplicate is a failure.
    const PROCESSES: usize = 20000;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        cpus >= 2,
        "this test needs two CPUs for two threads to exit at once; {cpus} here"
    );
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("together.c");
    let binary = dir.path().join("together");
    std::fs::write(&source, THREADS_EXIT_TOGETHER).unwrap();
    let cc = Command::new("cc")
        .args(["-O2", "-pthread", "-o"])
        .args([&binary, &source])
        .status()
        .expect("a C compiler (cc) is needed to build the test's helper");
    assert!(cc.success(), "compiling the helper failed");

    let mut h = Harness::start();
    let mut helper = Command::new(&binary)
        .arg(PROCESSES.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    // Reading while polling keeps the ring buffer from filling.
    let stdout = helper.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        std::io::Read::read_to_string(&mut { stdout }, &mut out).unwrap();
        out
    });
    while !reader.is_finished() {
        let seen = &mut h.seen;
        h.probe
            .poll(Duration::from_millis(50), &mut |e| seen.push(e))
            .unwrap();
    }
    assert!(
        helper.wait().unwrap().success(),
        "a helper's process did not exit with 3"
    );
    let pids: Vec<u32> = reader
        .join()
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), PROCESSES);
    // The last exit is a marker: every other has arrived before it.
    h.wait_for("process_exit", *pids.last().unwrap(), None);
    let mut exits = std::collections::HashMap::<u32, usize>::new();
    for e in &h.seen {
        // Other tests' processes may have had the same pids before.
        if let EventKind::ProcessExit { process, .. } = &e.kind {
            if process.ppid == helper.id() {
                *exits.entry(process.pid).or_default() += 1;
            }
        }
    }
    // 20,000 processes may wrap the pids around: a pid can stand for
    // several of the helper's children, each with its own exit.
    let mut expected = std::collections::HashMap::<u32, usize>::new();
    for p in &pids {
        *expected.entry(*p).or_default() += 1;
    }
    let mut missing = Vec::new();
    let mut twice = Vec::new();
    for (pid, n) in &expected {
        let found = exits.get(pid).copied().unwrap_or(0);
        if found < *n {
            missing.push(*pid);
        } else if found > *n {
            twice.push((*pid, found - n));
        }
    }
    assert!(
        missing.is_empty() && twice.is_empty(),
        "of {PROCESSES} processes, {} exits missing ({missing:?}) and {} reported more than once \
         (pid, extra reports): {twice:?}",
        missing.len(),
        twice.len()
    );
    assert_eq!(
        h.probe.stats().unwrap().kernel_drops.records(),
        0,
        "records were dropped"
    );
}

#[test]
fn custom_btf_file_relocates_and_works() {
    let copy = tempfile::NamedTempFile::new().unwrap();
    std::fs::copy(auspex_probe::btf::KERNEL_BTF, copy.path()).unwrap();
    let mut h = Harness::with_config(&ProbeConfig {
        btf_file: Some(copy.path().to_path_buf()),
        ..ProbeConfig::default()
    });
    let mut child = Command::new("/bin/true").arg("btf").spawn().unwrap();
    child.wait().unwrap();
    let exec = h.wait_for("process_exec", child.id(), None);
    assert_eq!(
        exec.kind.process().unwrap().args,
        Some(vec!["/bin/true".into(), "btf".into()].into())
    );
}

#[test]
fn no_drops_and_no_decode_errors_under_normal_load() {
    let mut h = Harness::start();
    for _ in 0..50 {
        Command::new("/bin/true").spawn().unwrap().wait().unwrap();
    }
    let mut last = Command::new("/bin/true").spawn().unwrap();
    last.wait().unwrap();
    h.wait_for("process_exit", last.id(), None);
    let stats = h.probe.stats().unwrap();
    assert_eq!(stats.kernel_drops, Default::default(), "{stats:?}");
    assert_eq!(stats.decode.rejected(), 0, "{stats:?}");
    assert!(stats.decode.decoded >= 153, "{stats:?}");
}

#[test]
fn a_full_ring_buffer_counts_every_lost_record() {
    // The smallest ring buffer, not read while 50 processes come and go:
    // most of their 150 records cannot fit, and each one lost is counted.
    let mut probe = CoreBpf::load(&ProbeConfig {
        ring_buffer_bytes: 4096,
        ..ProbeConfig::default()
    })
    .unwrap();
    let children: Vec<u32> = (0..50)
        .map(|_| {
            let mut c = Command::new("/bin/true").spawn().unwrap();
            c.wait().unwrap();
            c.id()
        })
        .collect();
    let mut ours = 0u64;
    probe
        .drain(&mut |e| {
            if e.kind.process().is_some_and(|p| children.contains(&p.pid)) {
                ours += 1;
            }
        })
        .unwrap();
    let stats = probe.stats().unwrap();
    let drops = stats.kernel_drops;
    assert!(
        drops.exec > 0 && drops.fork > 0 && drops.exit > 0,
        "{stats:?}"
    );
    // Other processes on the machine may add records and drops, never
    // remove ours: every one of our 150 is delivered or counted as dropped.
    assert!(
        ours + drops.exec + drops.fork + drops.exit >= 150,
        "ours {ours}, {stats:?}"
    );
    assert!(
        ours < 150,
        "a 4 KiB buffer cannot have held them all: {ours}"
    );
    assert_eq!(stats.decode.rejected(), 0, "{stats:?}");
}
