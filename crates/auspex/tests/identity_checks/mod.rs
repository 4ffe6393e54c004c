//! Checks of process identity (start_time, exec_id, parent_exec_id) that
//! run under every method and, through tests/any_kernel.rs, in every kernel
//! of the matrix.
#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use auspex_events::ExecIdParts;
use serde_json::Value;

use crate::common::Agent;

/// /proc/PID/stat's starttime (clock ticks since boot).
pub fn stat_start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the comm, which may hold spaces: starttime is the 22nd.
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    after_comm.split(' ').nth(19).unwrap().parse().unwrap()
}

/// The exec_id of an event's process, taken apart.
pub fn exec_id_of(e: &Value) -> ExecIdParts {
    let id = e["process"]["exec_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no exec_id: {e}"));
    ExecIdParts::parse(id).unwrap_or_else(|| panic!("an exec_id that does not parse: {e}"))
}

fn args_have(e: &Value, arg: &str) -> bool {
    e["process"]["args"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == arg))
}

/// A child of this test holding stdin open, which it may feed line by line.
pub struct Fed(pub Child);

impl Fed {
    pub fn spawn(command: &mut Command) -> Fed {
        Fed(command
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap())
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    pub fn line(&mut self) {
        let stdin = self.0.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    pub fn finish(mut self) -> std::process::ExitStatus {
        drop(self.0.stdin.take());
        self.0.wait().unwrap()
    }
}

/// Where `ns_last_pid` can be written (root in the initial pid namespace),
/// so that the next process gets the pid after the one written.
const NS_LAST_PID: &str = "/proc/sys/kernel/ns_last_pid";

/// PID reuse, forced: two successive processes with the same pid, running
/// different commands (bash, then perl), each connecting to a listener of
/// this test. Their execs and their connections must carry two different
/// exec_ids, each connection the one of the process that made it, and the
/// second's start_time must be later.
pub fn pid_reuse_gives_each_process_its_own_exec_id(agent: &Agent) {
    if std::fs::OpenOptions::new()
        .write(true)
        .open(NS_LAST_PID)
        .is_err()
    {
        eprintln!("skipped: {NS_LAST_PID} is not writable here");
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    // Each connects, then waits for its stdin to close.
    let first_command = || {
        let mut c = Command::new("/bin/bash");
        c.args([
            "-c",
            "exec 3<>/dev/tcp/127.0.0.1/$1; read held; exit 0",
            "pid-reuse-1",
            &port,
        ]);
        c
    };
    let second_command = || {
        let mut c = Command::new("perl");
        c.args([
            "-MIO::Socket::INET",
            "-e",
            "$s = IO::Socket::INET->new(PeerAddr => \"127.0.0.1:$ARGV[0]\") or die; <STDIN>",
            &port,
            "pid-reuse-2",
        ]);
        c
    };
    let run = |child: Fed, marker: &str| -> (Value, Value, u64) {
        let pid = child.pid();
        let (_server, peer) = listener.accept().unwrap();
        let exec = agent.event_where("process_exec", pid, |e| args_have(e, marker));
        let open = agent.event_where("connection_open", pid, |e| {
            e["role"] == "client" && e["local"]["port"] == peer.port()
        });
        let ticks = stat_start_ticks(pid);
        assert!(child.finish().success());
        (exec, open, ticks)
    };

    let first = Fed::spawn(&mut first_command());
    let pid = first.pid();
    let (exec1, open1, ticks1) = run(first, "pid-reuse-1");
    // Others fork too: retry until the pid is ours again.
    let mut second = None;
    for _ in 0..50 {
        std::fs::write(NS_LAST_PID, (pid - 1).to_string()).unwrap();
        let child = Fed::spawn(&mut second_command());
        if child.pid() == pid {
            second = Some(child);
            break;
        }
        let _ = child.finish();
        let _ = listener.accept();
    }
    let second = second.unwrap_or_else(|| panic!("pid {pid} was never given again"));
    let (exec2, open2, ticks2) = run(second, "pid-reuse-2");

    let (id1, id2) = (exec_id_of(&exec1), exec_id_of(&exec2));
    assert_ne!(
        exec1["process"]["exec_id"], exec2["process"]["exec_id"],
        "{exec1}\n{exec2}"
    );
    assert_eq!(
        (id1.pid, id1.start_ticks, id1.image),
        (pid, ticks1, 1),
        "{exec1}"
    );
    assert_eq!(
        (id2.pid, id2.start_ticks, id2.image),
        (pid, ticks2, 1),
        "{exec2}"
    );
    let (start1, start2) = (
        exec1["process"]["start_time"].as_str().unwrap(),
        exec2["process"]["start_time"].as_str().unwrap(),
    );
    assert!(start2 > start1, "{exec1}\n{exec2}");
    assert_eq!(
        open1["process"]["exec_id"], exec1["process"]["exec_id"],
        "{open1}\n{exec1}"
    );
    assert_eq!(
        open2["process"]["exec_id"], exec2["process"]["exec_id"],
        "{open2}\n{exec2}"
    );
    assert_eq!(open2["process"]["start_time"], start2, "{open2}");
}

/// A chain of three processes, each the parent of the next (sh → sh →
/// head), each alive until the agent has seen its exec: every exec's
/// parent_exec_id is its parent's exec_id, the fork between carries the
/// parent's as well and an exec_id of its own (image 0), and the lineage
/// names the parent by its exec_id.
pub fn parent_exec_ids_follow_a_chain_of_three(agent: &Agent) {
    let mut sh1 = Fed::spawn(Command::new("/bin/sh").args([
        "-c",
        "read a; sh -c 'read b; head -n1; :' lineage-2; :",
        "lineage-1",
    ]));
    let sh1_pid = sh1.pid();
    let e1 = agent.event_where("process_exec", sh1_pid, |e| args_have(e, "lineage-1"));
    sh1.line();
    let e2 = agent.event_with("process_exec", |e| {
        e["process"]["ppid"] == sh1.pid() && args_have(e, "lineage-2")
    });
    let sh2 = e2["process"]["pid"].as_u64().unwrap();
    sh1.line();
    let e3 = agent.event_with("process_exec", |e| {
        e["process"]["ppid"] == sh2 && e["process"]["comm"] == "head"
    });
    sh1.line();
    assert!(sh1.finish().success());

    let id = |e: &Value| e["process"]["exec_id"].clone();
    assert!(id(&e1).is_string(), "{e1}");
    assert_eq!(e2["process"]["parent_exec_id"], id(&e1), "{e1}\n{e2}");
    assert_eq!(e3["process"]["parent_exec_id"], id(&e2), "{e2}\n{e3}");
    assert_eq!(e3["process"]["lineage"][0]["exec_id"], id(&e2), "{e3}");
    assert_eq!(
        e3["process"]["lineage"][0]["start_time"], e2["process"]["start_time"],
        "{e3}"
    );
    // Of this sh2, not of an earlier process its pid had (the machine may
    // cycle through pids quickly).
    let fork = agent.event_where("process_fork", sh2 as u32, |f| {
        f["parent"]["pid"] == sh1_pid && f["process"]["start_time"] == e2["process"]["start_time"]
    });
    assert_eq!(fork["process"]["parent_exec_id"], id(&e1), "{fork}\n{e1}");
    let (forked, exec) = (exec_id_of(&fork), exec_id_of(&e2));
    assert_eq!(forked.image, 0, "{fork}");
    assert_eq!(
        (forked.pid, forked.start_ticks, exec.image),
        (exec.pid, exec.start_ticks, 1),
        "{fork}\n{e2}"
    );
    assert_eq!(fork["process"]["start_time"], e2["process"]["start_time"]);
}
