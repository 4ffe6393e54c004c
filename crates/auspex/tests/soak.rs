//! A bounded soak (issue 16): two minutes of exec and TCP load against a
//! running agent, asserting that its memory stays flat and that nothing is
//! lost uncounted: every exec and connection the test made is in the
//! output, or the agent counted a loss; every event reported was written.
//! `AUSPEX_SOAK_SECONDS` shortens it for a local run (CI runs the two
//! minutes). Needs root.

mod common;

use std::collections::HashSet;
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{number_after, Agent};
use nix::sys::signal::Signal;
use serde_json::Value;

fn soak_duration() -> Duration {
    let secs = std::env::var("AUSPEX_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    Duration::from_secs(secs)
}

/// The agent's resident set, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in\n{status}"))
}

/// Runs `f` every `period` until `stop`, starting now; how many times.
fn paced(period: Duration, stop: &AtomicBool, mut f: impl FnMut()) -> u64 {
    let start = Instant::now();
    let mut n: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        f();
        n += 1;
        let next = start + period * n;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    u64::from(n)
}

#[test]
fn two_minutes_of_exec_and_tcp_load_keep_memory_flat_and_lose_nothing_uncounted() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("events.jsonl");
    let agent = Agent::writing_to(output.clone(), &["--heartbeat-interval", "5"]);
    let pid = agent.child.id();
    let marker = format!("soak-{}", std::process::id());
    let stop = Arc::new(AtomicBool::new(false));

    // 100 execs/s and 200 connections/s: some 1,100 events/s.
    let execs = std::thread::spawn({
        let (stop, marker) = (Arc::clone(&stop), marker.clone());
        move || {
            let mut pids = HashSet::new();
            let made = paced(Duration::from_millis(10), &stop, || {
                let mut child = Command::new("/bin/true").arg(&marker).spawn().unwrap();
                pids.insert(child.id());
                child.wait().unwrap();
            });
            // Pids are reused (pid_max may be 32768): counted, not
            // taken from the set.
            (made, pids)
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = std::thread::spawn({
        let stop = Arc::clone(&stop);
        move || {
            paced(Duration::from_millis(5), &stop, || {
                let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
                let (server, _) = listener.accept().unwrap();
                drop((client, server));
            })
        }
    });

    let length = soak_duration();
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < length {
        std::thread::sleep(Duration::from_secs(5));
        samples.push((started.elapsed().as_secs(), rss_kib(pid)));
    }
    stop.store(true, Ordering::Relaxed);
    let (made, pids) = execs.join().unwrap();
    let connected = connections.join().unwrap();
    println!("RSS (s, KiB): {samples:?}");

    // The last of the load has reached the output before the stop.
    let mut last = Command::new("/bin/true").arg("soak-end").spawn().unwrap();
    last.wait().unwrap();
    agent.event("process_exit", last.id());
    let (exit, stderr) = agent.stop(Signal::SIGTERM);
    let log = stderr.join("\n");
    assert!(exit.success(), "{exit}: {log}");
    let summary = stderr.last().unwrap();
    println!("{summary}");

    let text = std::fs::read_to_string(&output).unwrap();
    let (mut execs_seen, mut exits_seen, mut opens_seen) = (0u64, 0u64, 0u64);
    let me = std::process::id();

    for line in text.lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        let p = &e["process"];
        // A child of this test running /bin/true.
        let mine = p["ppid"] == me
            && p["comm"] == "true"
            && p["pid"]
                .as_u64()
                .is_some_and(|pid| pids.contains(&(pid as u32)));
        match e["type"].as_str().unwrap() {
            "process_exec" if mine && p["args"][1] == marker.as_str() => execs_seen += 1,
            "process_exit" if mine => exits_seen += 1,
            "connection_open"
                if e["role"] == "client" && e["remote"]["port"] == port && p["pid"] == me =>
            {
                opens_seen += 1
            }
            _ => {}
        }
    }
    let lines = text.lines().count() as u64;
    let reported = number_after(summary, "auspex: ");
    let dropped = number_after(summary, "dropped or incomplete ");
    let missing = made.saturating_sub(execs_seen)
        + made.saturating_sub(exits_seen)
        + connected.saturating_sub(opens_seen);
    println!(
        "{made} execs ({execs_seen} exec and {exits_seen} exit events seen), {connected} \
         connections ({opens_seen} seen), {reported} events reported, {lines} written, \
         {dropped} counted as lost"
    );
    // Everything reported was written...
    assert_eq!(
        number_after(summary, "the output wrote "),
        reported,
        "{summary}"
    );
    assert_eq!(lines, reported, "{summary}");
    // ... and what the test made and did not find was counted as lost.
    assert!(
        missing <= dropped,
        "{missing} events missing, {dropped} counted: {summary}"
    );

    // Flat: after the first 30 s (the process table and allocator warm up),
    // the resident set grows by at most a tenth and 2 MiB.
    let warm: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| (30..45).contains(t))
        .map(|s| s.1)
        .collect();
    let end: Vec<u64> = samples.iter().rev().take(3).map(|s| s.1).collect();
    if let (Some(warm), Some(end)) = (warm.iter().max(), end.iter().max()) {
        assert!(
            *end <= warm + warm / 10 + 2048,
            "RSS grew from {warm} KiB to {end} KiB: {samples:?}"
        );
    } else {
        eprintln!("RSS not checked: the soak was shorter than 45 s ({samples:?})");
    }
}
