//! /metrics as the ecosystem's tools read it: Debian's promtool (which reads
//! only the classic text format) checks the default answer with no warning,
//! OpenMetrics comes when asked for, and every family a dashboard binds to
//! is there, at zero, before anything happened. Needs root and promtool
//! (scripts/setup.sh installs Debian's prometheus package for it).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::Agent;

/// GET /metrics with an Accept header: (content type, body).
fn scrape(agent: &Agent, accept: Option<&str>) -> (String, String) {
    let addr = agent.http_addr();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        stream,
        "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n"
    )
    .unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    (content_type, body.to_string())
}

#[test]
fn promtool_checks_the_default_answer_without_a_warning() {
    let agent = Agent::start(&["--method", "core_bpf"]);
    let (content_type, text) = scrape(&agent, None);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is needed: scripts/setup.sh installs it (Debian's prometheus package)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool: {said}\n{text}");
    assert_eq!(said.trim(), "", "promtool warned:\n{text}");

    // Plain text/plain (curl's */* too) gets the same.
    assert_eq!(
        scrape(&agent, Some("text/plain")).1.lines().next(),
        text.lines().next()
    );
}

#[test]
fn openmetrics_when_asked_for() {
    let agent = Agent::start(&["--method", "core_bpf"]);
    // What Prometheus sends.
    let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                  version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (content_type, text) = scrape(&agent, Some(accept));
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("# TYPE auspex_method info\n"), "{text}");
}

#[test]
fn every_family_is_there_before_anything_happened() {
    // The agent asked for one method: a fallback from it goes to none.
    let agent = Agent::start(&["--method", "core_bpf"]);
    let (_, text) = scrape(&agent, None);
    let has = |series: &str| text.lines().any(|l| l.starts_with(series));
    for kind in [
        "process_exec",
        "process_fork",
        "process_exit",
        "connection_open",
        "connection_close",
        "endpoint_open",
        "endpoint_close",
        "connections_delta",
        "endpoints_delta",
    ] {
        assert!(
            has(&format!("auspex_events_total{{type=\"{kind}\"}}")),
            "{kind}:\n{text}"
        );
    }
    for (from, to) in [
        ("core_bpf", "ebpf"),
        ("core_bpf", "none"),
        ("ebpf", "proc"),
        ("ebpf", "none"),
        ("proc", "none"),
    ] {
        for reason in ["skipped", "failed", "canary_missed"] {
            let series = format!(
                "auspex_fallbacks_total{{from=\"{from}\",to=\"{to}\",reason=\"{reason}\"}} 0"
            );
            assert!(has(&series), "{series}:\n{text}");
        }
    }
    for cause in [
        "buffer_full_exec",
        "undecodable_record",
        "process_table_evicted",
    ] {
        assert!(
            has(&format!("auspex_drops_total{{cause=\"{cause}\"}} 0")),
            "{cause}:\n{text}"
        );
    }
    assert!(has("auspex_heartbeat_misses_total 0"), "{text}");
    assert!(has("auspex_grpc_events_dropped_total 0"), "{text}");
    for api in ["http", "grpc"] {
        for reason in ["idle", "evicted", "refused", "tls_failed"] {
            assert!(
                has(&format!(
                    "auspex_api_connections_closed_total{{api=\"{api}\",reason=\"{reason}\"}} 0"
                )),
                "{api} {reason}:\n{text}"
            );
        }
        assert!(
            has(&format!(
                "auspex_api_accept_errors_total{{api=\"{api}\"}} 0"
            )),
            "{text}"
        );
    }
}

/// A gauge's value in the classic text.
fn gauge(text: &str, name: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[test]
fn the_table_sizes_are_gauges() {
    // Deltas: the tracker runs. The startup scrape fills both tables: every
    // running process, and the endpoints listening (this agent's HTTP API
    // among them).
    let agent = Agent::start(&["--report", "both"]);
    let (_, text) = scrape(&agent, None);
    // At least this test, cargo, its shell and the agent (kernel threads
    // are not in the table, so /proc's count is no bound).
    let processes = gauge(&text, "auspex_process_table_entries");
    assert!(
        (4..=65536).contains(&processes),
        "{processes} processes in the table\n{text}"
    );
    assert!(gauge(&text, "auspex_tracker_entries") >= 1, "{text}");
    // Without deltas the tracker does not run.
    let raw = Agent::start(&[]);
    let (_, text) = scrape(&raw, None);
    assert_eq!(gauge(&text, "auspex_tracker_entries"), 0, "{text}");
}

/// Sets kernel.bpf_stats_enabled for as long as it lives, then puts the
/// previous value back.
struct BpfStats(String);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Option<BpfStats> {
        let previous = std::fs::read_to_string(BPF_STATS).ok()?;
        std::fs::write(BPF_STATS, "1").ok()?;
        Some(BpfStats(previous))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, self.0.trim());
    }
}

#[test]
fn bpf_program_run_time_is_counted_when_the_kernel_counts_it() {
    let Some(_stats) = BpfStats::enable() else {
        eprintln!("skipped: cannot set {BPF_STATS}");
        return;
    };
    // Locked down (the default): the run time is read through the
    // programs' descriptors, which the seccomp filter allows.
    let agent = Agent::start(&["--method", "core_bpf"]);
    for _ in 0..20 {
        std::process::Command::new("/bin/true").status().unwrap();
    }
    let start = std::time::Instant::now();
    loop {
        let (_, text) = scrape(&agent, None);
        let value = |line: &str| line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        let runs: Vec<(&str, f64)> = text
            .lines()
            .filter(|l| l.starts_with("auspex_bpf_program_runs_total{program=\""))
            .filter_map(|l| Some((l, value(l)?)))
            .collect();
        let seconds: f64 = text
            .lines()
            .filter(|l| l.starts_with("auspex_bpf_program_run_seconds_total{program=\""))
            .filter_map(value)
            .sum();
        let exec = runs
            .iter()
            .find(|(l, _)| l.contains("exec"))
            .map_or(0.0, |(_, v)| *v);
        if exec >= 20.0 && seconds > 0.0 {
            break;
        }
        assert!(
            start.elapsed() < common::deadline(),
            "no exec program runs counted ({exec}), {seconds} s in all:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn the_ring_buffer_fill_is_a_gauge_under_core_bpf() {
    let agent = Agent::start(&["--method", "core_bpf", "--ring-buffer-size", "64K"]);
    let start = std::time::Instant::now();
    loop {
        let (_, text) = scrape(&agent, None);
        let size = gauge(&text, "auspex_ring_buffer_size_bytes");
        if size == 65536 {
            let used = gauge(&text, "auspex_ring_buffer_used_bytes");
            assert!((0..=size).contains(&used), "{text}");
            break;
        }
        assert!(start.elapsed() < common::deadline(), "{text}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The proc method has no ring buffer to tell of.
    let proc = Agent::start(&["--method", "proc"]);
    let (_, text) = scrape(&proc, None);
    assert_eq!(gauge(&text, "auspex_ring_buffer_size_bytes"), 0, "{text}");
}
