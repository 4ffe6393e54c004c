//! Process and node identity, and choosing what to collect, on this host:
//! every method (core_bpf, ebpf with and without BTF, proc, and the startup
//! scrape) gives one process the same start_time and exec_id, as
//! /proc/PID/stat says; `node` comes from the flag, then NODE_NAME, then
//! the host name; `--events` loads only what it selects.

mod common;
mod identity_checks;

use std::net::{TcpListener, TcpStream};
use std::process::Command;

use common::{time_scale, Agent, HeldShell, AUSPEX};
use identity_checks::{exec_id_of, stat_start_ticks};
use nix::sys::signal::Signal;
use serde_json::Value;

fn canary_timeout() -> String {
    (5 * time_scale()).to_string()
}

fn status(agent: &Agent) -> Value {
    serde_json::from_str(&agent.http_get("/status").1).unwrap()
}

/// `auspex run` with the kernel's BTF hidden, so that `ebpf` runs without
/// any BTF, as on a kernel built without it.
fn without_btf() -> Command {
    let mut command = Command::new("unshare");
    command.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t tmpfs none /sys/kernel/btf && exec \"$0\" run \"$@\"",
        AUSPEX,
    ]);
    command
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_string()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn every_method_and_the_scrape_give_one_process_the_same_start_time_and_exec_id() {
    let canary = canary_timeout();
    let common = [
        "--canary-timeout",
        canary.as_str(),
        "--scan-interval",
        "0.5",
    ];
    let with = |method: &str| {
        let mut args = vec!["--method", method];
        args.extend(common);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    fn refs(a: &[String]) -> Vec<&str> {
        a.iter().map(String::as_str).collect()
    }
    let mut agents = Vec::new();
    for method in ["core_bpf", "ebpf", "proc"] {
        agents.push((method, Agent::start(&refs(&with(method)))));
    }
    agents.push((
        "ebpf without BTF",
        Agent::launch(without_btf(), &refs(&with("ebpf"))),
    ));
    let s = status(&agents[3].1);
    assert!(common::has_degraded(&s, "core_reads"), "{s:#}");

    let shell = HeldShell::spawn("exit 0", &["same-everywhere"]);
    let pid = shell.pid();
    let ticks = stat_start_ticks(pid);
    let mut seen: Vec<(String, Value)> = agents
        .iter()
        .map(|(m, a)| (m.to_string(), a.event("process_exec", pid)))
        .collect();
    // Started after the process: the startup scrape reports it.
    let late = Agent::start(&refs(&with("core_bpf")));
    let scraped = late.event_where("process_exec", pid, |e| e["scraped"] == true);
    seen.push(("the scrape".into(), scraped));
    assert!(shell.release().success());

    let (_, first) = &seen[0];
    let id = exec_id_of(first);
    assert_eq!(
        (id.node, id.boot_id, id.pid, id.start_ticks, id.image),
        (hostname(), boot_id(), pid, ticks, 1),
        "{first}"
    );
    for (method, e) in &seen {
        assert_eq!(
            e["process"]["exec_id"], first["process"]["exec_id"],
            "{method}: {e}\ncore_bpf: {first}"
        );
        assert_eq!(
            e["process"]["start_time"], first["process"]["start_time"],
            "{method}: {e}\ncore_bpf: {first}"
        );
        assert_eq!(e["node"], hostname(), "{method}: {e}");
    }
    for (_, agent) in agents {
        agent.stop(Signal::SIGTERM);
    }
    late.stop(Signal::SIGTERM);
}

/// An exec's `node`, as an agent started with `args` and `env` reports it.
fn node_of(args: &[&str], env: Option<&str>) -> Value {
    let mut run = Command::new(AUSPEX);
    run.arg("run");
    match env {
        Some(name) => run.env("NODE_NAME", name),
        None => run.env_remove("NODE_NAME"),
    };
    run.env_remove("AUSPEX_NODE_NAME");
    let agent = Agent::launch(run, args);
    let shell = HeldShell::spawn("exit 0", &["node"]);
    let exec = agent.event("process_exec", shell.pid());
    shell.release();
    agent.stop(Signal::SIGTERM);
    assert_eq!(
        exec_id_of(&exec).node.as_str(),
        exec["node"].as_str().unwrap(),
        "{exec}"
    );
    exec["node"].clone()
}

#[test]
fn node_comes_from_the_flag_then_node_name_then_the_host_name() {
    assert_eq!(
        node_of(&["--node-name", "from-flag"], Some("from-env")),
        "from-flag"
    );
    assert_eq!(node_of(&[], Some("from-env")), "from-env");
    assert_eq!(node_of(&[], None), hostname().as_str());
}

/// The names of the programs /status lists as attached.
fn attached(agent: &Agent) -> Vec<String> {
    status(agent)["programs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

/// A loopback TCP connection of this process; its client port.
fn connect() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let port = client.local_addr().unwrap().port();
    drop((listener.accept().unwrap(), client));
    port
}

#[test]
fn events_process_loads_no_network_program_and_reports_no_connection() {
    let canary = canary_timeout();
    for method in ["core_bpf", "ebpf"] {
        let agent = Agent::start(&[
            "--method",
            method,
            "--events",
            "process",
            "--canary-timeout",
            &canary,
        ]);
        let s = status(&agent);
        assert_eq!(s["events_selected"], "process", "{s:#}");
        let programs = attached(&agent);
        let expected: &[&str] = match method {
            "core_bpf" => &["handle_exec", "handle_fork", "handle_exit"],
            _ => &["legacy_fork_btf", "legacy_exec_btf", "legacy_exit_btf"],
        };
        assert_eq!(programs, expected, "{method}: {s:#}");
        let me = std::process::id();
        connect();
        // The exec after the connection is the marker: once it is in, the
        // connection would have been too.
        let shell = HeldShell::spawn("exit 0", &["after-the-connection"]);
        agent.event("process_exec", shell.pid());
        shell.release();
        let network: Vec<_> = agent
            .events()
            .into_iter()
            .filter(|e| e["type"].as_str().unwrap().starts_with("connection"))
            .filter(|e| e["process"]["pid"] == me)
            .collect();
        assert!(network.is_empty(), "{method}: {network:?}");
        agent.stop(Signal::SIGTERM);
    }
}

#[test]
fn events_tcp_reports_connections_and_no_exec() {
    let canary = canary_timeout();
    for method in ["core_bpf", "ebpf", "proc"] {
        let agent = Agent::start(&[
            "--method",
            method,
            "--events",
            "tcp",
            "--canary-timeout",
            &canary,
            "--scan-interval",
            "0.5",
        ]);
        let programs = attached(&agent);
        let expected: &[&str] = match method {
            "core_bpf" => &["handle_tcp_state"],
            "ebpf" => &["legacy_tcp_state_btf"],
            _ => &[],
        };
        assert_eq!(programs, expected, "{method}");
        let shell = HeldShell::spawn("exit 0", &["not-wanted"]);
        // Held open so that the proc method's scan finds it.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _server = listener.accept().unwrap();
        let open = agent.event_where("connection_open", std::process::id(), |e| {
            e["role"] == "client" && e["remote"]["port"] == port
        });
        assert!(open["process"]["exec_id"].is_string(), "{open}");
        shell.release();
        drop(client);
        let execs: Vec<_> = agent
            .events()
            .into_iter()
            .filter(|e| e["type"].as_str().unwrap().starts_with("process"))
            .collect();
        assert!(execs.is_empty(), "{method}: {execs:?}");
        agent.stop(Signal::SIGTERM);
    }
}

#[test]
fn an_unknown_event_name_is_an_error_listing_the_valid_ones() {
    let (code, stderr) =
        common::run_failing(&mut common::auspex_run(&["--events", "process,tcpp"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("'tcpp' is not an event group or type (valid: all, process, tcp, udp, endpoints, process_exec"),
        "{stderr}"
    );
    let (code, stderr) = common::run_failing(common::auspex_run(&[]).env("AUSPEX_EVENTS", "udpp"));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("AUSPEX_EVENTS"), "{stderr}");
    assert!(
        stderr.contains("'udpp' is not an event group or type"),
        "{stderr}"
    );
}

/// A child cloned with CLONE_PARENT (by perl, through the raw syscall) is
/// its caller's sibling: its fork's `ppid` and `parent_exec_id` are those
/// of the caller's parent, this test, under every method.
#[test]
fn a_clone_parent_child_names_its_real_parent() {
    use std::io::BufRead;
    let canary = canary_timeout();
    let me = std::process::id();
    let my_ticks = stat_start_ticks(me);
    for (method, mut run) in [
        ("core_bpf", Command::new(AUSPEX)),
        ("ebpf", Command::new(AUSPEX)),
        ("ebpf without BTF", without_btf()),
        ("proc", Command::new(AUSPEX)),
    ] {
        if !method.contains("BTF") {
            run.arg("run");
        }
        let m = method.split(' ').next().unwrap();
        let agent = Agent::launch(run, &["--method", m, "--canary-timeout", &canary]);
        // x86_64: clone is syscall 56; CLONE_PARENT | SIGCHLD, no new stack.
        let mut perl = Command::new("perl")
            .args([
                "-e",
                "$| = 1; my $pid = syscall(56, 0x8000 | 17, 0, 0, 0, 0); \
                 if ($pid == 0) { <STDIN>; exit 0 } print \"$pid\\n\"; exit 0",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let caller = perl.id();
        let mut line = String::new();
        std::io::BufReader::new(perl.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let child: u32 = line.trim().parse().unwrap();
        let fork = agent.event_where("process_fork", child, |e| e["thread"] == false);
        drop(perl.stdin.take());
        perl.wait().unwrap();
        // The sibling is this test's child now: reap it.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child as i32), None);
        agent.stop(Signal::SIGTERM);
        // The process connector names the real parent, not the caller.
        let named = if method == "proc" { me } else { caller };
        assert_eq!(fork["parent"]["pid"], named, "{method}: {fork}");
        assert_eq!(fork["process"]["ppid"], me, "{method}: {fork}");
        let parent = fork["process"]["parent_exec_id"]
            .as_str()
            .and_then(auspex_events::ExecIdParts::parse)
            .unwrap_or_else(|| panic!("{method}: no parent_exec_id: {fork}"));
        assert_eq!(
            (parent.pid, parent.start_ticks),
            (me, my_ticks),
            "{method}: {fork}"
        );
    }
}
