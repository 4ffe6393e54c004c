//! Every event type through every method, as the kernel matrix's table
//! shows them: exec, fork, exit (with two threads exiting at once), TCP
//! over IPv4 and IPv6 between two network namespaces joined by veth, UDP
//! connected and unconnected between them, listening endpoints, network
//! namespace ids and container ids. Each check asserts the exact events its
//! actions must produce; where the method or the kernel cannot give them
//! (a documented limit, a missing kernel feature the agent reports as
//! degraded), the cell is `degraded` with the reason, and what the method
//! does give is still asserted.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;

use serde_json::{json, Value};

use crate::common::{canonical, deadline, has_degraded, time_scale, Agent, HeldShell};

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../auspex-probe/tests/peer.py");

/// What a check found for one event type.
enum Cell {
    Passed,
    Degraded(String),
}

struct Ctx<'a> {
    method: &'a str,
    agent: &'a Agent,
    status: &'a Value,
    ns: &'a Namespaces,
}

impl Ctx<'_> {
    fn degraded(&self, feature: &str) -> bool {
        has_degraded(self.status, feature)
    }

    /// Why `feature` is degraded, as the agent says.
    fn why(&self, feature: &str) -> String {
        self.status["degraded"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["feature"] == feature)
            .map_or_else(String::new, |d| {
                d["reason"].as_str().unwrap_or_default().to_string()
            })
    }
}

type Check = fn(&Ctx) -> Vec<(&'static str, Cell)>;

/// Each check and the cells it fills (all failed if it panics).
const CHECKS: [(&[&str], Check); 5] = [
    (&["exec", "fork", "exit"], processes),
    (&["tcp", "netns"], tcp),
    (&["udp"], udp),
    (&["endpoint"], endpoints),
    (&["container_id"], container_id),
];

/// Runs every check with `method`, records every cell, and fails if any
/// cell failed (after running the others).
pub fn every_event_type(method: &str) {
    if method == "core_bpf" && !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        let why = "no kernel BTF: the method cannot run (auto falls back to ebpf)";
        eprintln!("skipped: {why}");
        for (cells, _) in CHECKS {
            for cell in cells {
                record(method, cell, "unavailable", why);
            }
        }
        return;
    }
    let ns = Namespaces::create(method);
    let canary = (5 * time_scale()).to_string();
    let agent = Agent::start(&[
        "--method",
        method,
        "--canary-timeout",
        &canary,
        "--scan-interval",
        "0.5",
    ]);
    let status: Value = serde_json::from_str(&agent.http_get("/status").1).unwrap();
    assert_eq!(status["method"], method, "{status:#}");
    let ctx = Ctx {
        method,
        agent: &agent,
        status: &status,
        ns: &ns,
    };
    let mut failed = Vec::new();
    for (cells, check) in CHECKS {
        match catch_unwind(AssertUnwindSafe(|| check(&ctx))) {
            Ok(found) => {
                for (cell, result) in found {
                    match result {
                        Cell::Passed => record(method, cell, "passed", ""),
                        Cell::Degraded(why) => record(method, cell, "degraded", &why),
                    }
                }
            }
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let first = why.lines().next().unwrap_or_default().to_string();
                for cell in cells {
                    record(method, cell, "failed", &first);
                    failed.push(format!("{method} {cell}: {first}"));
                }
            }
        }
    }
    let (code, stderr) = agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert!(code.success(), "{code}: {stderr:?}");
    assert!(failed.is_empty(), "failed cells:\n{}", failed.join("\n"));
}

/// One line of `AUSPEX_TEST_CELLS`, when set (the kernel matrix reads it).
fn record(method: &str, event: &str, result: &str, why: &str) {
    eprintln!("cell {method} {event}: {result} {why}");
    let Ok(path) = std::env::var("AUSPEX_TEST_CELLS") else {
        return;
    };
    let line = json!({"method": method, "event": event, "result": result, "why": why});
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(f, "{line}").unwrap();
}

/// exec with its arguments, the fork before it, the exit code; then
/// processes whose two threads exit at once, each reported exiting once.
fn processes(c: &Ctx) -> Vec<(&'static str, Cell)> {
    let shell = HeldShell::spawn("exit 7", &["every-event-type"]);
    let (pid, args) = (shell.pid(), shell.args.clone());
    let me = std::process::id();
    let fork = c.agent.event("process_fork", pid);
    assert_eq!(fork["process"]["ppid"], me, "{fork}");
    assert_eq!(fork["thread"], false, "{fork}");
    let exec = c.agent.event("process_exec", pid);
    assert_eq!(shell.release().code(), Some(7));
    let verbatim = c.degraded("core_reads");
    let exe = if verbatim {
        "/bin/sh".to_string()
    } else {
        canonical("/bin/sh")
    };
    assert_eq!(exec["process"]["exe"], exe.as_str(), "{exec}");
    assert_eq!(exec["process"]["args"], json!(args), "{exec}");
    assert_eq!(exec["process"]["ppid"], me, "{exec}");
    let exit = c.agent.event("process_exit", pid);
    assert_eq!(exit["exit_code"], 7, "{exit}");

    // The exit-once race: both threads call exit_group together.
    let racers: Vec<u32> = (0..3)
        .map(|_| {
            let status = Command::new("python3")
                .args([
                    "-c",
                    "import os, threading\n\
                     b = threading.Barrier(2)\n\
                     def go():\n    b.wait(); os._exit(3)\n\
                     threading.Thread(target=go).start()\n\
                     go()\n",
                ])
                .spawn()
                .expect("python3 runs");
            let pid = status.id();
            let mut status = status;
            assert_eq!(status.wait().unwrap().code(), Some(3));
            pid
        })
        .collect();
    for &pid in &racers {
        let exit = c.agent.event("process_exit", pid);
        assert_eq!(exit["exit_code"], 3, "{exit}");
    }
    // A later exit marks the end of what the racers could have produced.
    let marker = HeldShell::spawn("exit 0", &["marker"]);
    let marker_pid = marker.pid();
    marker.release();
    c.agent.event("process_exit", marker_pid);
    let events = c.agent.events();
    for &pid in &racers {
        let exits: Vec<&Value> = events
            .iter()
            .filter(|e| e["type"] == "process_exit" && e["process"]["pid"] == pid)
            .collect();
        assert_eq!(exits.len(), 1, "exits of racer {pid}: {exits:?}");
    }

    let exec_cell = if verbatim {
        Cell::Degraded(format!("exe as given to execve: {}", c.why("core_reads")))
    } else {
        Cell::Passed
    };
    vec![
        ("exec", exec_cell),
        ("fork", Cell::Passed),
        ("exit", Cell::Passed),
    ]
}

/// TCP over IPv4 and IPv6 from one namespace to the other: both ends with
/// their addresses, owners and namespaces, and the client's close.
fn tcp(c: &Ctx) -> Vec<(&'static str, Cell)> {
    let mut netns_cell = Cell::Passed;
    for host in [Namespaces::SERVER_V4, Namespaces::SERVER_V6] {
        let mut server = Peer::spawn_in(&c.ns.names[0], &["tcp-server", host, "0"]);
        let listening = server.read()["listening"].clone();
        let port = listening[1].as_u64().unwrap();
        let mut client = Peer::spawn_in(&c.ns.names[1], &["tcp-client", host, &port.to_string()]);
        let cl = client.read();
        let sv = server.read();
        let (spid, cpid) = (server.pid(), client.pid());
        // Held open until seen: the proc method sees only what lives
        // across one of its scans.
        let open = c.agent.event_where("connection_open", cpid, |e| {
            e["role"] == "client" && e["remote"]["port"] == port
        });
        assert_eq!(open["protocol"], "tcp", "{open}");
        assert_eq!(open["local"], addr(&cl["local"]), "{open}");
        assert_eq!(open["remote"], addr(&cl["remote"]), "{open}");
        let accepted = c.agent.event_where("connection_open", spid, |e| {
            e["role"] == "server" && e["local"]["port"] == port
        });
        assert_eq!(accepted["local"], addr(&sv["local"]), "{accepted}");
        assert_eq!(accepted["remote"], addr(&sv["accepted"]), "{accepted}");
        client.go();
        assert_eq!(client.read()["done"], true);
        assert_eq!(server.read()["closed"], true);
        server.go();
        assert_eq!(server.read()["done"], true);
        client.finish();
        server.finish();
        c.agent.event_where("connection_close", cpid, |e| {
            e["role"] == "client" && e["remote"]["port"] == port
        });

        if open["netns"].is_null() && c.degraded("netns") {
            assert!(accepted["netns"].is_null(), "{accepted}");
            netns_cell = Cell::Degraded(c.why("netns"));
        } else {
            assert_eq!(open["netns"], c.ns.ids[1], "{open}");
            assert_eq!(accepted["netns"], c.ns.ids[0], "{accepted}");
        }
    }
    vec![("tcp", Cell::Passed), ("netns", netns_cell)]
}

/// UDP from one namespace to the other: a connected socket, and an
/// unconnected one, each with the server's side of the flow.
fn udp(c: &Ctx) -> Vec<(&'static str, Cell)> {
    let (a, b) = (&c.ns.names[0], &c.ns.names[1]);
    let host = Namespaces::SERVER_V4;
    let mut notes = Vec::new();
    // The proc method reads flows from the socket tables: only a connected
    // socket has a peer there.
    let scans = c.method == "proc";
    let at_release = c.degraded("udp_connected");

    let mut server = Peer::spawn_in(a, &["udp-echo", host, "0", "1"]);
    let bound = server.read()["bound"].clone();
    let port = bound[1].as_u64().unwrap();
    let mut client = Peer::spawn_in(b, &["udp-connected", host, &port.to_string()]);
    let cl = client.read();
    let (spid, cpid) = (server.pid(), client.pid());
    if at_release {
        // Reported once the socket is released: close it first.
        client.go();
        assert_eq!(client.read()["done"], true);
    }
    let open = c.agent.event_where("connection_open", cpid, |e| {
        e["protocol"] == "udp" && e["remote"]["port"] == port
    });
    assert_eq!(open["role"], "client", "{open}");
    assert_eq!(open["remote"], addr(&cl["remote"]), "{open}");
    if at_release && c.why("udp_connected").contains("without its local address") {
        // Degraded as said: the unspecified address, port 0.
        assert_eq!(open["local"]["port"], 0, "{open}");
        let ip = open["local"]["ip"].as_str().unwrap_or_default();
        assert!(ip == "0.0.0.0" || ip == "::", "{open}");
        notes.push(c.why("udp_connected"));
    } else {
        assert_eq!(open["local"], addr(&cl["local"]), "{open}");
        if at_release {
            notes.push(c.why("udp_connected"));
        }
    }
    if !scans {
        let seen = c.agent.event_where("connection_open", spid, |e| {
            e["protocol"] == "udp" && e["role"] == "server"
        });
        assert_eq!(seen["local"], addr(&bound), "{seen}");
        assert_eq!(seen["remote"], addr(&cl["local"]), "{seen}");
    }
    if !at_release {
        client.go();
        assert_eq!(client.read()["done"], true);
    }
    client.finish();
    c.agent.event_where("connection_close", cpid, |e| {
        e["protocol"] == "udp" && e["remote"]["port"] == port
    });
    server.go();
    assert_eq!(server.read()["done"], true);
    server.finish();

    // Unconnected: one socket, datagrams to a server with sendto.
    if scans {
        notes.push(
            "the proc method sees UDP flows only on connected sockets (an unconnected \
             socket has no peer in /proc/net/udp)"
                .into(),
        );
    } else {
        let mut server = Peer::spawn_in(a, &["udp-echo", host, "0", "3"]);
        let bound = server.read()["bound"].clone();
        let port = bound[1].as_u64().unwrap();
        let mut talker = Peer::spawn_in(b, &["udp-talk", host, "3", &port.to_string()]);
        let local = talker.read()["local"].clone();
        let tpid = talker.pid();
        let open = c.agent.event_where("connection_open", tpid, |e| {
            e["protocol"] == "udp" && e["remote"]["port"] == port
        });
        assert_eq!(open["role"], "client", "{open}");
        assert_eq!(open["local"]["port"], local[1], "{open}");
        assert_eq!(open["remote"], addr(&bound), "{open}");
        let seen = c.agent.event_where("connection_open", server.pid(), |e| {
            e["protocol"] == "udp" && e["role"] == "server"
        });
        assert_eq!(seen["remote"]["port"], local[1], "{seen}");
        talker.go();
        assert_eq!(talker.read()["done"], true);
        talker.finish();
        server.go();
        assert_eq!(server.read()["done"], true);
        server.finish();
        let closes = |pid: u32| {
            c.agent.event_where("connection_close", pid, |e| {
                e["protocol"] == "udp" && e["remote"]["port"] == port
            })
        };
        closes(tpid);
        // One open per (socket, peer), not one per datagram.
        let opens = c
            .agent
            .events()
            .into_iter()
            .filter(|e| e["type"] == "connection_open" && e["process"]["pid"] == tpid)
            .count();
        assert_eq!(opens, 1, "opens of the talker");
    }
    let cell = if notes.is_empty() {
        Cell::Passed
    } else {
        Cell::Degraded(notes.join("; "))
    };
    vec![("udp", cell)]
}

/// A TCP listener and a UDP socket bound to a port: each an endpoint,
/// opened and closed.
fn endpoints(c: &Ctx) -> Vec<(&'static str, Cell)> {
    let me = std::process::id();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let open = c.agent.event_where("endpoint_open", me, |e| {
        e["protocol"] == "tcp" && e["local"]["port"] == port
    });
    assert_eq!(open["local"], json!({"ip": "127.0.0.1", "port": port}));
    drop(listener);
    c.agent.event_where("endpoint_close", me, |e| {
        e["protocol"] == "tcp" && e["local"]["port"] == port
    });
    // Below the ephemeral range: the proc method counts such a bound,
    // unconnected socket as an endpoint.
    let udp = (20000..32000)
        .map(|p| p + (me % 997) as u16)
        .find_map(|p| std::net::UdpSocket::bind(("127.0.0.1", p)).ok())
        .unwrap();
    let uport = udp.local_addr().unwrap().port();
    let open = c.agent.event_where("endpoint_open", me, |e| {
        e["protocol"] == "udp" && e["local"]["port"] == uport
    });
    assert_eq!(open["local"], json!({"ip": "127.0.0.1", "port": uport}));
    drop(udp);
    c.agent.event_where("endpoint_close", me, |e| {
        e["protocol"] == "udp" && e["local"]["port"] == uport
    });
    vec![("endpoint", Cell::Passed)]
}

/// A process that execs inside a cgroup shaped like containerd's under
/// the systemd driver carries the container's id.
fn container_id(c: &Ctx) -> Vec<(&'static str, Cell)> {
    let root = cgroup2_root().expect("cgroup v2 is mounted");
    let id = format!("{:08x}{}", std::process::id(), "c0ffee".repeat(10));
    let id = &id[..64];
    let pod = root
        .join(format!("auspex-{}.slice", c.method))
        .join(format!(
            "kubepods-besteffort-pod{}.slice",
            std::process::id()
        ));
    let scope = pod.join(format!("cri-containerd-{id}.scope"));
    std::fs::create_dir_all(&scope).unwrap();
    let cleanup = Cleanup(vec![
        scope.clone(),
        pod.clone(),
        pod.parent().unwrap().to_path_buf(),
    ]);
    // Moved into the container's cgroup, then it execs, and lives until
    // its exec was seen (the proc method reads it from /proc).
    let mut shell = Command::new("/bin/sh")
        .args([
            "-c",
            "read go; exec /bin/sh -c 'read done; exit 5' in-container",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = shell.id();
    std::fs::write(scope.join("cgroup.procs"), pid.to_string()).unwrap();
    let mut stdin = shell.stdin.take().unwrap();
    stdin.write_all(b"\n").unwrap();
    stdin.flush().unwrap();
    let exec = c.agent.event_where("process_exec", pid, |e| {
        e["process"]["args"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "in-container"))
    });
    drop(stdin);
    assert_eq!(shell.wait().unwrap().code(), Some(5));
    assert_eq!(exec["process"]["container_id"], &id[..12], "{exec}");
    c.agent.event("process_exit", pid);
    drop(cleanup);
    vec![("container_id", Cell::Passed)]
}

fn cgroup2_root() -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| f[1].into())
}

/// Removes the cgroup directories, leaf first.
struct Cleanup(Vec<std::path::PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for dir in &self.0 {
            // The shell may take a moment to leave the cgroup.
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

/// peer.py's [ip, port] as the agent writes an address.
fn addr(v: &Value) -> Value {
    json!({"ip": v[0], "port": v[1]})
}

/// Two network namespaces joined by a veth pair, with IPv4 and IPv6
/// addresses; removed on drop.
struct Namespaces {
    names: [String; 2],
    ids: [u64; 2],
}

impl Namespaces {
    const SERVER_V4: &'static str = "10.77.0.1";
    const SERVER_V6: &'static str = "fd77::1";

    fn create(tag: &str) -> Namespaces {
        let names = [0, 1].map(|i| format!("ak-{tag}-{}-{i}", std::process::id()));
        let ip = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .output()
                .expect("ip (iproute2) runs");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for ns in &names {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
        }
        let (a, b) = (&names[0], &names[1]);
        ip(&[
            "link", "add", "ak-a", "netns", a, "type", "veth", "peer", "name", "ak-b", "netns", b,
        ]);
        for (ns, dev, n) in [(a, "ak-a", 1), (b, "ak-b", 2)] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.77.0.{n}/24"),
                "dev",
                dev,
            ]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("fd77::{n}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let ids = [0, 1].map(|i| {
            std::fs::metadata(format!("/run/netns/{}", names[i]))
                .unwrap()
                .ino()
        });
        Namespaces { names, ids }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A peer process running one action of peer.py in a namespace. Its
/// reports are read with a deadline, and it is killed if dropped early: a
/// peer that hangs fails its cell instead of the whole run.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    args: Vec<String>,
}

impl Peer {
    fn spawn_in(netns: &str, args: &[&str]) -> Peer {
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "python3", PEER])
            .args(args)
            .env("AUSPEX_TEST_TIME_SCALE", time_scale().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("ip netns exec runs python3");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Peer {
            stdin: child.stdin.take().unwrap(),
            lines,
            child,
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn read(&mut self) -> Value {
        let line = self.lines.recv_timeout(deadline()).unwrap_or_else(|e| {
            panic!(
                "peer {:?} said nothing within {:?}: {e}",
                self.args,
                deadline()
            )
        });
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("peer said {line:?}: {e}"))
    }

    fn go(&mut self) {
        self.stdin.write_all(b"\n").unwrap();
        self.stdin.flush().unwrap();
    }

    fn finish(mut self) {
        let status = self.child.wait().unwrap();
        assert!(status.success(), "peer {:?} failed: {status}", self.args);
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
