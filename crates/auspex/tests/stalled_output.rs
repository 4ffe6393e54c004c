//! An output that stops taking events (a FIFO whose reader stopped
//! reading) must not blind the agent nor let it lie: the kernel buffer
//! keeps being drained, the events the output cannot take are counted,
//! /ready and /status say which sink is stalled, SIGTERM stops it within
//! the flush deadline, and the summary and exit status say how many events
//! were not delivered. Before (issue 16): SIGTERM was ignored while the
//! FIFO's reader lived, /ready said 200, and the agent exited 0 claiming
//! the events it had merely buffered as written. Needs root.

mod common;

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;
use std::time::Instant;

use common::{deadline, number_after, Agent};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

fn status(agent: &Agent) -> Value {
    serde_json::from_str(&agent.http_get("/status").1).unwrap()
}

/// Runs `/bin/true` `n` times: three events each (fork, exec, exit).
fn execs(n: usize) {
    for _ in 0..n {
        Command::new("/bin/true").status().unwrap();
    }
}

#[test]
fn a_stalled_output_loses_counted_events_and_sigterm_still_stops_the_agent() {
    const QUEUE: u64 = 64;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("events.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // The reader opens the FIFO and never reads (until the end).
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(&fifo)
        .unwrap();
    let queue = QUEUE.to_string();
    let agent = Agent::writing_to(
        fifo.clone(),
        &[
            "--sink-queue",
            &queue,
            "--flush-timeout",
            "1",
            "--heartbeat-interval",
            "1",
        ],
    );
    // More than the pipe (64 KiB, some 200 events) and the queue hold.
    execs(500);
    agent.wait_until("/ready says the output is stalled", |a| {
        let (code, body) = a.http_get("/ready");
        code == 503 && body.starts_with("not ready: the output sink is stalled since ")
    });
    assert_eq!(agent.http_get("/live"), (200, "alive\n".to_string()));
    let stalled = status(&agent);
    let sink = &stalled["sinks"][0];
    assert_eq!(sink["sink"], "output", "{stalled:#}");
    assert_eq!(sink["capacity"], QUEUE, "{stalled:#}");
    assert!(sink["stalled_since"].is_u64(), "{stalled:#}");
    let since = sink["stalled_since"].as_u64().unwrap();

    // The agent goes on: the reader drains the kernel (more load, no
    // kernel drop), the heartbeat passes, the losses are counted.
    execs(500);
    agent.wait_until("two heartbeats pass after the stall", |a| {
        let s = status(a);
        let last = &s["heartbeat"]["last"];
        last["passed"] == true && last["at"].as_u64().unwrap_or(0) >= since + 2
    });
    let s = status(&agent);
    assert_eq!(s["heartbeat"]["misses"], 0, "{s:#}");
    assert!(
        s["drops"]["output_queue_full"].as_u64().unwrap() > 0,
        "{s:#}"
    );
    // Full: batches (a quarter of the queue at most) are handed over and
    // lost whole, so a full queue holds more than three quarters of it.
    let queued = s["sinks"][0]["queued"].as_u64().unwrap();
    assert!(queued <= QUEUE && queued > QUEUE - QUEUE / 4, "{s:#}");
    assert_eq!(
        s["sinks"][0]["lost"], s["drops"]["output_queue_full"],
        "{s:#}"
    );
    let metrics = agent.http_get("/metrics").1;
    assert!(
        metrics.contains("auspex_sink_stalled_seconds{sink=\"output\"} ")
            && !metrics.contains("auspex_sink_stalled_seconds{sink=\"output\"} 0\n"),
        "{metrics}"
    );

    let stopping = Instant::now();
    kill(Pid::from_raw(agent.child.id() as i32), Signal::SIGTERM).unwrap();
    let (exit, stderr) = agent
        .wait_for_exit(Some(stopping + deadline()))
        .unwrap_or_else(|log| panic!("SIGTERM not acted on within {:?}:\n{log}", deadline()));
    let took = stopping.elapsed();
    println!("SIGTERM to exit: {took:?}");
    let log = stderr.join("\n");
    assert_eq!(exit.code(), Some(1), "{log}");

    // What reached the FIFO: every complete line.
    let mut written = Vec::new();
    match reader.read_to_end(&mut written) {
        Ok(_) => {}
        Err(e) => panic!("reading the FIFO: {e}"),
    }
    let lines = written.iter().filter(|b| **b == b'\n').count() as u64;

    let summary = stderr
        .iter()
        .find(|l| l.starts_with("auspex: ") && l.contains(" events in "))
        .unwrap_or_else(|| panic!("no summary:\n{log}"));
    let reported = number_after(summary, "auspex: ");
    let wrote = number_after(summary, "the output wrote ");
    let missed = number_after(summary, " and did not get ");
    let lost = number_after(summary, &format!("did not get {missed} ("));
    let left = number_after(summary, "lost to its full queue, ");
    println!("reported {reported}, written {wrote}, lost {lost}, left {left}, lines {lines}");
    // Every event reported is written, lost or left: none unaccounted.
    assert_eq!(reported, wrote + lost + left, "{summary}");
    assert_eq!(missed, lost + left, "{summary}");
    assert!(lost > 0, "{summary}");
    assert_eq!(
        number_after(summary, "output_queue_full "),
        lost,
        "{summary}"
    );
    assert_eq!(
        number_after(summary, "output_undelivered "),
        left,
        "{summary}"
    );
    // Written means flushed: at least that much reached the reader, and
    // no more than was not given up on.
    assert!(
        wrote <= lines && lines <= wrote + left,
        "{lines} lines: {summary}"
    );
    // The kernel buffer was drained all along.
    for cause in ["exec", "fork", "exit", "network"] {
        assert_eq!(
            number_after(summary, &format!("buffer_full_{cause} ")),
            0,
            "{summary}"
        );
    }
    assert_eq!(
        stderr.last().unwrap(),
        &format!(
            "auspex: error: the output did not get {missed} events ({lost} lost while it could \
             not keep up, {left} still unwritten at the flush deadline)"
        ),
        "{log}"
    );
}

#[test]
fn an_output_that_keeps_up_gets_every_event_reported_and_the_summary_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("events.jsonl");
    let agent = Agent::writing_to(output.clone(), &["--sink-queue", "1024"]);
    execs(300);
    let mut child = Command::new("/bin/true").arg("last").spawn().unwrap();
    child.wait().unwrap();
    agent.event("process_exit", child.id());
    let (exit, stderr) = agent.stop(Signal::SIGTERM);
    let log = stderr.join("\n");
    assert!(exit.success(), "{log}");
    let summary = stderr.last().unwrap();
    let reported = number_after(summary, "auspex: ");
    let lines = std::fs::read_to_string(output).unwrap().lines().count() as u64;
    assert_eq!(
        number_after(summary, "the output wrote "),
        reported,
        "{summary}"
    );
    assert_eq!(lines, reported, "{summary}");
    assert!(!summary.contains("did not get"), "{summary}");
}
