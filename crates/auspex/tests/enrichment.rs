//! Events as an operator reads them: container ids, lineage, and what
//! existed before the agent started.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::{canonical, Agent};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../auspex-probe/tests/peer.py");

/// Where cgroup v2 is mounted (/sys/fs/cgroup, or beside v1 on hybrid hosts).
fn cgroup2_root() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            right
                .starts_with("cgroup2 ")
                .then(|| PathBuf::from(left.split(' ').nth(4).unwrap()))
        })
        .expect("cgroup v2 is mounted")
}

/// A cgroup named like containerd's (systemd driver), removed on drop.
struct FakeContainer {
    slice: PathBuf,
    scope: PathBuf,
}

impl FakeContainer {
    fn create(id: &str) -> FakeContainer {
        let slice = cgroup2_root().join(format!("auspex-test-{}.slice", std::process::id()));
        let scope = slice.join(format!("cri-containerd-{id}.scope"));
        std::fs::create_dir_all(&scope).unwrap();
        FakeContainer { slice, scope }
    }

    fn enter(&self, pid: u32) {
        std::fs::write(self.scope.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for FakeContainer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.scope);
        let _ = std::fs::remove_dir(&self.slice);
    }
}

#[test]
fn a_process_moved_into_a_containerd_cgroup_gets_its_container_id() {
    let id = "c0ffee0123456789abcdef0123456789abcdef0123456789abcdef0123456789";
    let container = FakeContainer::create(id);
    let agent = Agent::start(&[]);
    // The shell waits until it is in the container's cgroup, then execs.
    let mut child = Command::new("/bin/sh")
        .args(["-c", "read go; exec /bin/true in-a-container"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    container.enter(child.id());
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    child.wait().unwrap();
    let exec = agent.event_where("process_exec", child.id(), |e| {
        e["process"]["args"] == json!(["/bin/true", "in-a-container"])
    });
    assert_eq!(exec["process"]["container_id"], "c0ffee012345", "{exec}");
    // Its lineage stops at the container boundary: the shell that moved in
    // was the container's first process, its parent (this test) is outside.
    assert_eq!(exec["process"]["lineage"], json!([]), "{exec}");
    let exit = agent.event("process_exit", child.id());
    assert_eq!(exit["process"]["container_id"], "c0ffee012345", "{exit}");
    // A host process has none.
    let mut host = Command::new("/bin/true")
        .arg("on-the-host")
        .spawn()
        .unwrap();
    host.wait().unwrap();
    let exec = agent.event("process_exec", host.id());
    assert!(exec["process"].get("container_id").is_none(), "{exec}");
    let (status, stderr) = agent.stop(Signal::SIGTERM);
    assert!(status.success(), "{status}: {stderr:?}");
}

/// Where the cgroup v1 hierarchy of the memory controller is mounted, on a
/// host that has one.
fn cgroup1_memory_root() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut fields = right.split(' ');
        let is_memory =
            fields.next() == Some("cgroup") && fields.nth(1)?.split(',').any(|o| o == "memory");
        is_memory.then(|| PathBuf::from(left.split(' ').nth(4).unwrap()))
    })
}

/// On a host with cgroup v1, where the v2 id tells no container apart and
/// the probe keys containers by the process's memory cgroup: a host
/// process first (its cgroup remembered as no container), then two
/// processes of one container, then the host again; for both BPF methods.
/// The container is read from /proc/PID/cgroup, so from a process alive
/// when its exec is enriched: the first lives a while, the second is gone
/// at once (/bin/true) and gets its container from what the first taught.
#[test]
fn on_cgroup_v1_processes_get_their_containers_by_their_memory_cgroup() {
    let Some(memory) = cgroup1_memory_root() else {
        eprintln!("skipped: this host has no cgroup v1 memory hierarchy");
        return;
    };
    let id = "feed0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab";
    let slice = memory.join(format!("auspex-test-{}.slice", std::process::id()));
    let scope = slice.join(format!("cri-containerd-{id}.scope"));
    std::fs::create_dir_all(&scope).unwrap();
    struct Remove(PathBuf, PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.1);
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _remove = Remove(slice, scope.clone());
    for method in ["core_bpf", "ebpf"] {
        let agent = Agent::start(&["--method", method]);
        let host = |marker: &str| {
            let mut host = Command::new("/bin/true").arg(marker).spawn().unwrap();
            host.wait().unwrap();
            let exec = agent.event("process_exec", host.id());
            assert!(
                exec["process"].get("container_id").is_none(),
                "{method}: {exec}"
            );
        };
        host("on-the-host");
        let programs = [
            "read go; exec /bin/sh -c 'sleep 0.5' in-a-v1-container",
            "read go; exec /bin/true in-a-v1-container",
        ];
        for (n, program) in programs.into_iter().enumerate() {
            let mut child = Command::new("/bin/sh")
                .args(["-c", program])
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            std::fs::write(scope.join("cgroup.procs"), child.id().to_string()).unwrap();
            child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
            child.wait().unwrap();
            let exec = agent.event_where("process_exec", child.id(), |e| {
                e["process"]["args"].as_array().and_then(|a| a.last())
                    == Some(&json!("in-a-v1-container"))
            });
            assert_eq!(
                exec["process"]["container_id"], "feed01234567",
                "{method}, process {n}: {exec}"
            );
        }
        host("on-the-host-again");
        let (status, stderr) = agent.stop(Signal::SIGTERM);
        assert!(status.success(), "{status}: {stderr:?}");
    }
}

#[test]
fn a_server_started_before_the_agent_is_a_scraped_endpoint_that_owns_what_it_accepts() {
    server_started_before_the_agent("core_bpf");
}

/// The legacy probe keys its listeners differently, so it is seeded apart.
#[test]
fn a_server_started_before_the_ebpf_method_owns_what_it_accepts() {
    server_started_before_the_agent("ebpf");
}

fn server_started_before_the_agent(method: &str) {
    let mut server = Command::new("python3")
        .args([PEER, "tcp-server", "127.0.0.1", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let listening: Value = serde_json::from_str(&line).unwrap();
    let port = listening["listening"][1].as_u64().unwrap();

    let agent = Agent::start(&["--method", method]);
    let endpoint = agent.event_where("endpoint_open", server.id(), |e| e["local"]["port"] == port);
    assert_eq!(endpoint["scraped"], true, "{endpoint}");
    assert_eq!(endpoint["protocol"], "tcp", "{endpoint}");
    // The process itself was scraped too, with its arguments.
    let exec = agent.event("process_exec", server.id());
    assert_eq!(exec["scraped"], true, "{exec}");
    assert_eq!(exec["process"]["args"][1], PEER, "{exec}");

    // The probe never saw it listen, yet a connection it accepts now is
    // its own: the scrape told the probe who owns the listener.
    let client = std::net::TcpStream::connect(("127.0.0.1", port as u16)).unwrap();
    let client_port = client.local_addr().unwrap().port();
    let accepted = agent.event_where("connection_open", server.id(), |e| {
        e["role"] == "server" && e["remote"]["port"] == client_port
    });
    assert_eq!(accepted["local"]["port"], port, "{accepted}");
    assert_eq!(accepted["process"]["args"][1], PEER, "{accepted}");
    drop(client);
    let _ = server.kill();
    let _ = server.wait();
    let (status, stderr) = agent.stop(Signal::SIGTERM);
    assert!(status.success(), "{status}: {stderr:?}");
}

#[test]
fn lineage_of_nested_shells() {
    let agent = Agent::start(&[]);
    // Neither shell ends with its command, so each forks: true's parent is
    // the inner shell, whose parent is the outer shell, whose parent is
    // this test.
    let mut outer = Command::new("/bin/sh")
        .args(["-c", "sh -c '/bin/true nested-lineage; true'; true"])
        .spawn()
        .unwrap();
    outer.wait().unwrap();
    let exec = agent.event_with("process_exec", |e| {
        e["process"]["args"] == json!(["/bin/true", "nested-lineage"])
    });
    let me = std::process::id();
    let test_exe = canonical("/proc/self/exe");
    let lineage = exec["process"]["lineage"].as_array().unwrap().clone();
    // Two shells in a row collapse into one entry.
    assert_eq!(
        (&lineage[0]["uid"], &lineage[0]["exe"]),
        (&json!(0), &json!(canonical("/bin/sh"))),
        "{exec}"
    );
    assert_eq!(
        lineage[0]["exec_id"], exec["process"]["parent_exec_id"],
        "{exec}"
    );
    assert_eq!(lineage[1]["exe"], test_exe, "{exec}");
    assert!(lineage.len() <= 10, "{exec}");
    // true's parent is the inner shell, not this test.
    assert_ne!(exec["process"]["ppid"], me, "{exec}");
    let (status, stderr) = agent.stop(Signal::SIGTERM);
    assert!(status.success(), "{status}: {stderr:?}");
}
