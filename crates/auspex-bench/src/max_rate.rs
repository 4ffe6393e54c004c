//! The maximum sustained event rate of the agent on one core, and whether
//! drops beyond it are counted exactly (issue 19, goal 2).
//!
//! Three measurements, all with the agent's threads pinned to CPU 1 and
//! the workload on CPU 0 (events to /dev/null unless said otherwise):
//!
//! 1. **Offered rate in steps.** Loopback TCP connections (each one is
//!    exactly four records: the client's and the server's open and close)
//!    at fractions of the workload's own maximum, one step after the other,
//!    with the agent's drops at each. On this 2-CPU machine the workload
//!    alone cannot offer the target rate (one CPU makes ~70 k connections/s
//!    without an agent, ~280 k events/s), so a last step adds a second
//!    worker on CPU 1, where it competes with the agent.
//! 2. **Drain rate.** The agent is stopped (SIGSTOP) while a known backlog
//!    that fits the kernel buffer is generated, then continued (SIGCONT):
//!    events reported over the wall time until it has caught up, and over
//!    the agent's CPU seconds in that time. That is the rate one core of
//!    the agent sustains when it never waits for work.
//! 3. **Exact drop counting.** The same with more records than the default
//!    buffer holds and the events written to a file: the workload's own
//!    events (those of its listener's port) plus the kernel's
//!    `buffer_full_network` count must equal the records generated. Every
//!    record of the workload is a network record and every network record
//!    of the workload is an event, so the two counts are comparable.
//!    Background network activity of the machine (other engineers' tests)
//!    that the full buffer also dropped would add to the kernel's count; the
//!    table says how many of the machine's other network events were
//!    reported in the same run, as a measure of that noise.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::agent::{cause, dropped, pin_threads, Agent};

/// Events the agent's queue from its reader to its pipeline holds (past
/// that they are lost as `enrich_queue_full`; docs/events.md).
const AGENT_QUEUE: u64 = 16_384;

/// Records per TCP connection: client open, server open, two closes.
const EVENTS_PER_CONNECTION: u64 = 4;

#[derive(Debug, clap::Args)]
pub struct MaxRateArgs {
    #[arg(long, value_delimiter = ',', default_value = "core_bpf,ebpf")]
    pub methods: Vec<String>,
    /// Offered rates, as fractions of the workload's maximum with the agent
    /// running (1 is flat out).
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,0.75,1")]
    pub steps: Vec<f64>,
    /// How long each step lasts.
    #[arg(long, default_value = "1")]
    pub seconds: f64,
    /// Connections per drain round (default: half of what the buffer holds).
    #[arg(long)]
    pub drain_connections: Option<u64>,
}

impl Default for MaxRateArgs {
    fn default() -> Self {
        MaxRateArgs {
            methods: vec!["core_bpf".into(), "ebpf".into()],
            steps: vec![0.25, 0.5, 0.75, 1.0],
            seconds: 1.0,
            drain_connections: None,
        }
    }
}

/// A value of `/metrics`: the sum of the samples of `family` whose labels
/// contain `label` (all of them for `None`); `None` if there is none.
pub fn metric(text: &str, family: &str, label: Option<&str>) -> Option<u64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(family) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue, // another family with this prefix
            },
        };
        if label.is_some_and(|want| !labels.split(',').any(|l| l == want)) {
            continue;
        }
        // Counters may be written as floats.
        let Ok(v) = value.split_whitespace().next().unwrap_or("").parse::<f64>() else {
            continue;
        };
        *found.get_or_insert(0) += v as u64;
    }
    found
}

/// The causes of a summary line's drops that are not zero, but `except`:
/// `enrich_queue_full 12, process_forgotten 1`, or `none`.
pub fn other_causes(summary: &str, except: &str) -> String {
    let list = summary
        .split_once("dropped or incomplete ")
        .and_then(|(_, rest)| rest.split_once('(')?.1.split_once(')'))
        .map_or("", |(list, _)| list);
    let nonzero: Vec<&str> = list
        .split(", ")
        .filter(|c| {
            c.rsplit_once(' ')
                .is_some_and(|(name, n)| name != except && n != "0")
        })
        .collect();
    match nonzero.is_empty() {
        true => "none".into(),
        false => nonzero.join(", "),
    }
}

/// `auspex_drops_total` by cause.
pub fn drops_by_cause(text: &str) -> std::collections::BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("auspex_drops_total{cause=\""))
        .filter_map(|l| {
            let (cause, rest) = l.split_once("\"}")?;
            let n = rest.trim().parse::<f64>().ok()?;
            Some((cause.to_string(), n as u64))
        })
        .collect()
}

/// The causes that grew from `before` to `after`: `cause n, ...`, or
/// `none`.
pub fn grown_causes(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> String {
    let grown: Vec<String> = after
        .iter()
        .filter_map(|(cause, &n)| {
            let d = n.saturating_sub(before.get(cause).copied().unwrap_or(0));
            (d > 0).then(|| format!("{cause} {d}"))
        })
        .collect();
    match grown.is_empty() {
        true => "none".into(),
        false => grown.join(", "),
    }
}

/// Connections due after `elapsed` at `rate` per second.
pub fn due(elapsed: Duration, rate: f64) -> u64 {
    (elapsed.as_secs_f64() * rate) as u64
}

/// The first step's index whose drops are not zero.
pub fn first_drop(drops: &[u64]) -> Option<usize> {
    drops.iter().position(|&d| d > 0)
}

struct Scraper {
    port: u16,
}

impl Scraper {
    fn text(&self) -> anyhow::Result<String> {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    }

    /// (events reported, drops of every cause).
    fn counts(&self) -> anyhow::Result<(u64, u64)> {
        let text = self.text()?;
        let events = metric(&text, "auspex_events_total", None)
            .context("no auspex_events_total in /metrics")?;
        let drops = metric(&text, "auspex_drops_total", None)
            .context("no auspex_drops_total in /metrics")?;
        Ok((events, drops))
    }

    /// Waits until the event count moves by no more than the machine's
    /// background (compilers forking) over 300 ms: the counts then.
    fn settled(&self) -> anyhow::Result<(u64, u64)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = self.counts()?;
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = self.counts()?;
            if now.0 - last.0 <= 200 || Instant::now() > deadline {
                return Ok(now);
            }
            last = now;
        }
    }
}

/// A loopback listener of the workload: its port tells its events apart.
struct Tcp {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Tcp {
    fn new() -> anyhow::Result<Tcp> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        Ok(Tcp { listener, addr })
    }

    /// One connection, accepted and reset at once (no TIME_WAIT, so that
    /// 100,000s of them never run out of ephemeral ports).
    fn connection(&self) -> anyhow::Result<()> {
        let client = TcpStream::connect(self.addr)?;
        let (server, _) = self.listener.accept()?;
        let linger = nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        nix::sys::socket::setsockopt(&client, nix::sys::socket::sockopt::Linger, &linger)?;
        drop((client, server));
        Ok(())
    }

    /// Connections for `duration`, at most `rate` per second (flat out for
    /// `None`): how many.
    fn run(&self, rate: Option<f64>, duration: Duration) -> anyhow::Result<u64> {
        let start = Instant::now();
        let mut done = 0u64;
        while start.elapsed() < duration {
            let target = match rate {
                Some(r) => due(start.elapsed(), r),
                None => done + 100,
            };
            while done < target {
                self.connection()?;
                done += 1;
            }
            if rate.is_some() {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        Ok(done)
    }

    /// Exactly `n` connections.
    fn make(&self, n: u64) -> anyhow::Result<()> {
        (0..n).try_for_each(|_| self.connection())
    }
}

fn pin_self(cpu: usize) -> anyhow::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(0), &set).with_context(|| format!("pinning to CPU {cpu}"))
}

/// The agent under test, pinned to CPU 1, with /metrics on a free port and
/// no heartbeat (an exec the stopped agent would miss).
fn start(
    binary: &Path,
    method: &str,
    output: &Path,
    ring: Option<&str>,
) -> anyhow::Result<(Agent, Scraper)> {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port();
    let listen = format!("127.0.0.1:{port}");
    // Only TCP: the programs of the other kinds are not loaded, so that the
    // machine's background (compilers forking; other engineers' UDP tests
    // flooded the buffer with 12,733 network events in a 2-second run) stays
    // out of the buffer the workload fills.
    let mut args = vec![
        "--listen",
        &listen,
        "--heartbeat-interval",
        "0",
        "--events",
        "tcp",
    ];
    if let (Some(ring), "core_bpf") = (ring, method) {
        args.extend(["--ring-buffer-size", ring]);
    }
    let agent = Agent::start_with(binary, method, output, &args, &[])?;
    pin_threads(agent.pid(), 1)?;
    Ok((agent, Scraper { port }))
}

/// Stops or continues the agent, and waits until /proc says it is.
fn signal(agent: &Agent, sig: Signal) -> anyhow::Result<()> {
    kill(Pid::from_raw(agent.pid() as i32), sig)?;
    let want = if sig == Signal::SIGSTOP { 'T' } else { 'S' };
    for _ in 0..1000 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", agent.pid()))?;
        let state = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
        if (want == 'T') == (state == Some('T')) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    bail!("the agent did not take {sig}")
}

struct Step {
    label: String,
    connections_per_s: f64,
    reported_per_s: f64,
    agent_cpu: f64,
    dropped: u64,
    causes: String,
}

/// Measurement 1 for one method.
fn steps(binary: &Path, method: &str, args: &MaxRateArgs) -> anyhow::Result<Vec<Step>> {
    let (agent, scraper) = start(binary, method, Path::new("/dev/null"), None)?;
    let result = steps_of(&agent, &scraper, args);
    agent.stop()?;
    result
}

fn steps_of(agent: &Agent, scraper: &Scraper, args: &MaxRateArgs) -> anyhow::Result<Vec<Step>> {
    let duration = Duration::from_secs_f64(args.seconds);
    let tcp = Tcp::new()?;
    let mut out = Vec::new();
    let mut measure = |label: String, run: &dyn Fn() -> anyhow::Result<u64>| {
        let (e0, d0) = scraper.settled()?;
        let causes0 = drops_by_cause(&scraper.text()?);
        let c0 = cpu_ns(agent.pid())?;
        let w0 = Instant::now();
        let connections = run()?;
        let wall = w0.elapsed().as_secs_f64();
        let (e1, d1) = scraper.settled()?;
        // After it caught up: the CPU of the step's every event (and of
        // the two or three scrapes that tell it caught up).
        let c1 = cpu_ns(agent.pid())?;
        let causes = grown_causes(&causes0, &drops_by_cause(&scraper.text()?));
        out.push(Step {
            causes,
            label,
            connections_per_s: connections as f64 / wall,
            reported_per_s: (e1 - e0) as f64 / wall,
            // Per second of the step: what keeping up with that rate takes.
            agent_cpu: (c1 - c0) / wall,
            dropped: d1 - d0,
        });
        anyhow::Ok(())
    };
    // The workload's maximum with this agent running.
    let max = tcp.run(None, duration)? as f64 / duration.as_secs_f64();
    for &fraction in &args.steps {
        let rate = (fraction < 1.0).then_some(fraction * max);
        let label = match rate {
            Some(_) => format!("{:.0} % of the maximum", fraction * 100.0),
            None => "flat out (CPU 0)".to_string(),
        };
        measure(label, &|| tcp.run(rate, duration))?;
    }
    // A second worker on CPU 1, where the agent runs too.
    measure("flat out, a worker on each CPU".into(), &|| {
        let second = std::thread::spawn(move || -> anyhow::Result<u64> {
            pin_self(1)?;
            Tcp::new()?.run(None, duration)
        });
        let first = tcp.run(None, duration)?;
        Ok(first + second.join().expect("the worker on CPU 1 panicked")?)
    })?;
    Ok(out)
}

struct Drain {
    backlog: u64,
    reported: u64,
    wall: f64,
    cpu: f64,
    dropped: u64,
    /// The summary's drops that are not zero, by cause.
    causes: String,
}

/// CPU time of every thread of `pid` so far, in seconds, to the
/// nanosecond (`/proc/PID/task/*/schedstat`; `/proc/PID/stat` counts in
/// 10 ms ticks, as long as a perf buffer's drain).
fn cpu_ns(pid: u32) -> anyhow::Result<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(ns as f64 / 1e9)
}

/// Measurement 2: `rounds` times, a backlog of `connections` made while the
/// agent is stopped, and how fast it catches up; the sums.
fn drain(binary: &Path, method: &str, connections: u64, rounds: u32) -> anyhow::Result<Drain> {
    let (agent, scraper) = start(binary, method, Path::new("/dev/null"), None)?;
    let result = (|| {
        let tcp = Tcp::new()?;
        let (first_e, first_d) = scraper.settled()?;
        let backlog = connections * EVENTS_PER_CONNECTION;
        let (mut wall, mut cpu, mut reported) = (0.0, 0.0, 0);
        for _ in 0..rounds {
            let (e0, d0) = scraper.counts()?;
            signal(&agent, Signal::SIGSTOP)?;
            tcp.make(connections)?;
            let c0 = cpu_ns(agent.pid())?;
            let w0 = Instant::now();
            signal(&agent, Signal::SIGCONT)?;
            // Polled every 5 ms: each poll is a scrape the agent serves on
            // the same core, and the figure is within that of the true
            // drain time. Caught up at the last poll that saw the count
            // move, once every record is reported or counted as dropped,
            // or the count stood still for 300 ms (drops reach /metrics
            // only each second).
            let (mut last, mut moved, mut cpu_then) = (e0, w0, c0);
            loop {
                let (e, d) = scraper.counts()?;
                let now = Instant::now();
                if e != last {
                    (last, moved, cpu_then) = (e, now, cpu_ns(agent.pid())?);
                }
                let still = now - moved > Duration::from_millis(300);
                if (e - e0) + (d - d0) >= backlog || (still && e > e0) {
                    wall += (moved - w0).as_secs_f64();
                    cpu += cpu_then - c0;
                    reported += last - e0;
                    break;
                }
                if w0.elapsed() > Duration::from_secs(30) {
                    bail!(
                        "{method} reported {} and dropped {} of a backlog of {backlog} in 30 s",
                        e - e0,
                        d - d0
                    );
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let (last_e, last_d) = scraper.settled()?;
        // The rounds' events, and what came after (the machine's) in the
        // same count.
        debug_assert!(last_e - first_e >= reported);
        Ok(Drain {
            backlog: backlog * u64::from(rounds),
            reported,
            wall,
            cpu,
            dropped: last_d - first_d,
            causes: String::new(),
        })
    })();
    // Continued whatever happened: a stopped agent left behind would hold
    // the terminal's pipes.
    let _ = kill(Pid::from_raw(agent.pid() as i32), Signal::SIGCONT);
    let summary = agent.stop()?;
    result.map(|d| Drain {
        causes: other_causes(&summary, ""),
        ..d
    })
}

struct Exact {
    connections: u64,
    reported: u64,
    kernel_dropped: u64,
    other_dropped: u64,
    other_causes: String,
    other_network: u64,
}

/// Waits until the file at `path` has not grown for a second (30 s at
/// most): the agent has written what it had.
fn grown(path: &Path) -> anyhow::Result<()> {
    let size = || std::fs::metadata(path).map_or(0, |m| m.len());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = size();
    let mut still = 0;
    while still < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = size();
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    Ok(())
}

/// Measurement 3: more records than the default buffer holds, made while
/// the agent is stopped; the workload's events in its output against the
/// kernel's count of what it dropped.
fn exact(binary: &Path, method: &str, connections: u64) -> anyhow::Result<Exact> {
    let out = crate::output_file(&format!("max-rate-{method}"));
    let (agent, _) = start(binary, method, &out, None)?;
    // No /metrics here: a scrape is a TCP connection, four records that
    // would be counted as the machine's.
    let made = (|| {
        let tcp = Tcp::new()?;
        grown(&out)?;
        signal(&agent, Signal::SIGSTOP)?;
        tcp.make(connections)?;
        signal(&agent, Signal::SIGCONT)?;
        grown(&out)?;
        anyhow::Ok(tcp.addr.port())
    })();
    let _ = kill(Pid::from_raw(agent.pid() as i32), Signal::SIGCONT);
    let summary = agent.stop()?;
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    let port = u64::from(made?);
    let me = u64::from(std::process::id());
    let (mut ours, mut others) = (0, 0);
    for event in text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        if !matches!(
            event["type"].as_str(),
            Some("connection_open" | "connection_close")
        ) {
            continue;
        }
        // By port, or by owner: core_bpf reports a reset connection's close
        // with local port 0 (the kernel released the port before the state
        // change), so a server-side close has neither end at the port.
        let ends = [&event["local"]["port"], &event["remote"]["port"]];
        if ends.iter().any(|p| p.as_u64() == Some(port))
            || event["process"]["pid"].as_u64() == Some(me)
        {
            ours += 1;
        } else {
            others += 1;
        }
    }
    let kernel_dropped = cause(&summary, "buffer_full_network")
        .with_context(|| format!("no buffer_full_network in the summary: {summary}"))?;
    let all = dropped(&summary).with_context(|| format!("no drops in the summary: {summary}"))?;
    Ok(Exact {
        connections,
        reported: ours,
        kernel_dropped,
        other_dropped: all - kernel_dropped,
        other_causes: other_causes(&summary, "buffer_full_network"),
        other_network: others,
    })
}

/// The markdown section: three tables and what they say.
pub fn max_rate(binary: &Path, args: &MaxRateArgs) -> anyhow::Result<String> {
    pin_self(0)?;
    let mut steps_table = String::from(
        "| method | offered | connections/s | events/s offered | events/s reported | agent CPU (of one core) | reported per agent CPU-second | dropped |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let mut drain_table = String::from(
        "| method | kernel buffer | rounds × backlog (events) | caught up in (sum) | reported | events/s reported (wall) | agent CPU | reported per agent CPU-second | dropped |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    let mut exact_table = String::from(
        "| method | connections while stopped | events generated | reported (the workload's) | dropped in the kernel (`buffer_full_network`) | dropped in the agent (other causes) | reported + dropped − generated | the machine's TCP events reported |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let mut verdicts = Vec::new();
    for method in &args.methods {
        let steps = steps(binary, method, args)?;
        for s in &steps {
            writeln!(
                steps_table,
                "| {method} | {} | {:.0} | {:.0} | {:.0} | {:.0} % | {:.0} | {} ({}) |",
                s.label,
                s.connections_per_s,
                s.connections_per_s * EVENTS_PER_CONNECTION as f64,
                s.reported_per_s,
                s.agent_cpu * 100.0,
                s.reported_per_s / s.agent_cpu.max(1e-3),
                s.dropped,
                s.causes,
            )?;
        }
        let drops: Vec<u64> = steps.iter().map(|s| s.dropped).collect();
        let peak = steps
            .iter()
            .map(|s| s.connections_per_s * EVENTS_PER_CONNECTION as f64)
            .fold(0.0, f64::max);
        verdicts.push(match first_drop(&drops) {
            Some(i) => format!(
                "{method} first dropped at {} ({:.0} events/s offered)",
                steps[i].label,
                steps[i].connections_per_s * EVENTS_PER_CONNECTION as f64
            ),
            None => {
                format!("{method} dropped nothing up to the workload's maximum, {peak:.0} events/s")
            }
        });
        // The most a step says one core would report at 100 %.
        let capacity = steps
            .iter()
            .map(|s| s.reported_per_s / s.agent_cpu.max(1e-3))
            .fold(0.0, f64::max);
        verdicts.push(format!(
            "{method}: at most {:.0} events reported per agent CPU-second in a step",
            capacity
        ));
        eprint!("max-rate: {method} steps done:\n{steps_table}");

        // What the default buffer holds: 61,680 records of a 8 MiB ring,
        // 7,489 of a 1 MiB perf buffer (the workload's CPU's; loopback
        // runs both ends there).
        let held = buffer_records(method);
        // Twice that: the buffer overflows by as much as it holds.
        let e = exact(binary, method, 2 * held / EVENTS_PER_CONNECTION)?;
        let generated = e.connections * EVENTS_PER_CONNECTION;
        writeln!(
            exact_table,
            "| {method} | {} | {generated} | {} | {} | {} ({}) | {:+} | {} |",
            e.connections,
            e.reported,
            e.kernel_dropped,
            e.other_dropped,
            e.other_causes,
            (e.reported + e.kernel_dropped + e.other_dropped) as i64 - generated as i64,
            e.other_network,
        )?;
        eprint!("max-rate: {method} exact drops done:\n{exact_table}");

        // Backlogs of half the buffer (room for the machine's own records),
        // in rounds: a perf buffer drains in ~20 ms, too short to time once.
        // core_bpf's half ring (30,840 records) is more than the agent's
        // queue between its reader and the pipeline (16,384 events), so it
        // also drains the perf buffer's backlog, which fits the queue: the
        // two differ (measured: 4 × 14,976 in 196 ms, no drop; 4 × 30,840
        // in 1,395 ms, 47,801 lost to enrich_queue_full).
        let rounds = match method.as_str() {
            "core_bpf" => 4,
            _ => 16,
        };
        let half = held / 2 / EVENTS_PER_CONNECTION;
        let backlogs = match (args.drain_connections, method.as_str()) {
            (Some(n), _) => vec![n],
            (None, "core_bpf") => vec![AGENT_QUEUE * 9 / 10 / EVENTS_PER_CONNECTION, half],
            (None, _) => vec![half],
        };
        let ring_label = match method.as_str() {
            "core_bpf" => "ring, 8 MiB".to_string(),
            _ => "perf, 1 MiB per CPU".into(),
        };
        for per_round in backlogs {
            let d = drain(binary, method, per_round, rounds)?;
            writeln!(
                drain_table,
                "| {method} | {ring_label} | {rounds} × {} | {:.0} ms | {} | {:.0} | {:.3} s | {:.0} | {} ({}) |",
                d.backlog / u64::from(rounds),
                d.wall * 1e3,
                d.reported,
                d.reported as f64 / d.wall,
                d.cpu,
                d.reported as f64 / d.cpu.max(1e-3),
                d.dropped,
                d.causes,
            )?;
        }
        eprint!("max-rate: {method} drain done:\n{drain_table}");
    }
    Ok(format!(
        "`auspex-bench max-rate`: the agent's threads pinned to CPU 1 (one core), with the \
         default kernel buffer (an 8 MiB ring for core_bpf, a perf buffer of 1 MiB per CPU for \
         ebpf) and `--events tcp` (the programs of other kinds not loaded, so that the \
         machine's forks stay out of the buffer); the workload is loopback TCP connections, \
         each exactly four records (both ends' open and close), on CPU 0. One CPU cannot \
         offer much more than 100,000 events/s this way, so the steps end with a second \
         worker on CPU 1, sharing it with the agent; \"reported per agent CPU-second\" is the \
         rate one core would reach at 100 %. The drain and the exact count stop the agent \
         (SIGSTOP) while the records are made, so that the kernel buffer takes all of them, \
         then continue it (SIGCONT).\n\n\
         Offered rate in steps (each {:.1} s; the workload's maximum is measured with the \
         agent running, then offered at fractions of it; \"events/s reported\" includes the \
         machine's background):\n\n{steps_table}\n{}.\n\n\
         Draining a backlog: the agent stopped (SIGSTOP) while the backlog is made, then \
         continued; \"caught up in\" is the wall time until it has reported as many events \
         (polled every 5 ms: the last poll that saw the count move), \"agent CPU\" its CPU time over the same span:\n\n{drain_table}\n\
         Exact drop counting beyond the buffer: the default buffer, the agent stopped while \
         more connections are made than it holds, events written to a file. The workload's \
         events are those with its listener's port at either end or owned by the bench's \
         process (a reset connection's close once had local port 0 with core_bpf); the \
         identity is exact when the last column is 0 (the machine made no TCP connection of \
         its own meanwhile, which the full buffer would have dropped too):\n\n{exact_table}",
        args.seconds,
        verdicts.join("; "),
    ))
}

/// Bytes of a TCP record: a 128-byte `struct sock_event`, behind the ring
/// buffer's 8-byte header (core_bpf) or the perf buffer's 8-byte header and
/// 4-byte size (ebpf).
fn record_bytes(method: &str) -> u64 {
    match method {
        "core_bpf" => 128 + 8,
        _ => 128 + 8 + 4,
    }
}

/// TCP records the default kernel buffer holds: a 8 MiB ring (core_bpf),
/// one CPU's perf buffer of 256 pages (ebpf).
fn buffer_records(method: &str) -> u64 {
    let bytes: u64 = match method {
        "core_bpf" => 8 << 20,
        _ => 256 * 4096,
    };
    bytes / record_bytes(method)
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "\
# HELP auspex_events_total Events reported.
# TYPE auspex_events_total counter
auspex_events_total{type=\"process_exec\"} 12
auspex_events_total{type=\"connection_open\"} 30
auspex_events_total_created 1700000000
auspex_drops_total{cause=\"buffer_full_network\"} 7
auspex_drops_total{cause=\"enrich_queue_full\"} 2.0
auspex_ready 1
";

    #[test]
    fn sums_a_family_and_picks_a_label() {
        assert_eq!(metric(METRICS, "auspex_events_total", None), Some(42));
        assert_eq!(metric(METRICS, "auspex_drops_total", None), Some(9));
        assert_eq!(
            metric(
                METRICS,
                "auspex_drops_total",
                Some("cause=\"buffer_full_network\"")
            ),
            Some(7)
        );
        assert_eq!(metric(METRICS, "auspex_ready", None), Some(1));
        assert_eq!(metric(METRICS, "auspex_missing", None), None);
        assert_eq!(
            metric(METRICS, "auspex_drops_total", Some("cause=\"nothing\"")),
            None
        );
    }

    #[test]
    fn the_causes_that_are_not_zero() {
        let summary =
            "auspex: 18473 events in 9.1 s (connection_close 9000, connection_open 9473); \
            the output wrote 18473; dropped or incomplete 104910 (buffer_full_exec 0, \
            buffer_full_network 61706, enrich_queue_full 43204, processes forgotten 3)";
        assert_eq!(
            other_causes(summary, "buffer_full_network"),
            "enrich_queue_full 43204, processes forgotten 3"
        );
        assert_eq!(
            other_causes(summary, "enrich_queue_full"),
            "buffer_full_network 61706, processes forgotten 3"
        );
        let quiet = "auspex: 4 events in 1.0 s (connection_open 4); the output wrote 4; \
            dropped or incomplete 0 (buffer_full_exec 0, enrich_queue_full 0)";
        assert_eq!(other_causes(quiet, "buffer_full_network"), "none");
        assert_eq!(other_causes("no summary", "x"), "none");
    }

    #[test]
    fn drops_that_grew_by_cause() {
        let before = drops_by_cause(METRICS);
        assert_eq!(before.get("buffer_full_network"), Some(&7));
        assert_eq!(before.get("enrich_queue_full"), Some(&2));
        assert_eq!(before.len(), 2);
        let after = drops_by_cause(&METRICS.replace("} 2.0", "} 12").replace(
            "auspex_ready",
            "auspex_drops_total{cause=\"output_queue_full\"} 1\nauspex_ready",
        ));
        assert_eq!(
            grown_causes(&before, &after),
            "enrich_queue_full 10, output_queue_full 1"
        );
        assert_eq!(grown_causes(&after, &after), "none");
    }

    #[test]
    fn due_connections_follow_the_rate() {
        assert_eq!(due(Duration::from_millis(0), 1000.0), 0);
        assert_eq!(due(Duration::from_millis(250), 1000.0), 250);
        assert_eq!(due(Duration::from_millis(1500), 20_000.0), 30_000);
    }

    #[test]
    fn the_first_step_with_a_drop() {
        assert_eq!(first_drop(&[0, 0, 3, 0]), Some(2));
        assert_eq!(first_drop(&[0, 0]), None);
        assert_eq!(first_drop(&[]), None);
    }

    #[test]
    fn a_tcp_record_is_as_large_as_the_probes_send_it() {
        use auspex_probe::testing::{sock_record, RecordKind, AF_INET};
        let record = sock_record(
            RecordKind::AUSPEX_EVENT_CONNECTION_OPEN,
            AF_INET,
            &[127, 0, 0, 1],
            &[127, 0, 0, 1],
            true,
        );
        // The ring buffer's header is 8 bytes (BPF_RINGBUF_HDR_SZ).
        assert_eq!(record.len() as u64 + 8, record_bytes("core_bpf"));
        assert_eq!(
            buffer_records("core_bpf"),
            (8 << 20) / (record.len() as u64 + 8)
        );
        assert!(buffer_records("ebpf") * record_bytes("ebpf") <= 1 << 20);
    }
}
