//! The self-check: the agent makes activity it must then see through the
//! method it chose. An exec of its own binary carrying a random nonce, and
//! a loopback TCP connection to a listener it opened. The pipeline keeps
//! the events they cause from the user (pipeline/own.rs) and hands them
//! here.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use auspex_events::{Event, EventKind, Protocol, Role};

use crate::status::{now_secs, CheckResult};

/// The hidden subcommand the canary execs.
pub const SUBCOMMAND: &str = "canary";

fn nonce() -> String {
    let mut bytes = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = io::Read::read_exact(&mut f, &mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One canary run: what it did and what of it was seen so far. Its process
/// and its connection stay alive until it is dropped, so that a method that
/// looks at /proc only now and then can still find them.
#[derive(Debug)]
pub struct Canary {
    /// Held open: the canary process lives until it sees end of file.
    process: Option<(Child, ChildStdin)>,
    _connection: Option<(TcpListener, TcpStream, TcpStream)>,
    expected_nonce: String,
    pub exec_pid: u32,
    /// Port of the listener the TCP part connected to; None for a
    /// heartbeat, which only execs.
    pub tcp_port: Option<u16>,
    me: u32,
    /// Whether the exec is checked (`--events` may leave it out).
    check_exec: bool,
    seen_exec: bool,
    seen_tcp: bool,
    started: Instant,
}

impl Canary {
    /// Makes the activity. `with_tcp`: the full canary; without, the
    /// lighter heartbeat. `check_exec`: whether the exec must be seen (not
    /// when `--events` leaves process_exec out: its probe is not loaded).
    pub fn launch(check_exec: bool, with_tcp: bool) -> io::Result<Canary> {
        let nonce = nonce();
        let expected_nonce = if crate::hooks::canary_misses(!with_tcp) {
            format!("never-{nonce}")
        } else {
            nonce.clone()
        };
        let started = Instant::now();
        let mut child = Command::new(std::env::current_exe()?)
            .args([SUBCOMMAND, &nonce])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let exec_pid = child.id();
        let stdin = child.stdin.take().expect("stdin was piped");
        let connection = if with_tcp {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let client = TcpStream::connect(listener.local_addr()?)?;
            let (server, _) = listener.accept()?;
            Some((listener, client, server))
        } else {
            None
        };
        let tcp_port = match &connection {
            Some((listener, _, _)) => Some(listener.local_addr()?.port()),
            None => None,
        };
        Ok(Canary {
            process: Some((child, stdin)),
            _connection: connection,
            expected_nonce,
            exec_pid,
            tcp_port,
            me: std::process::id(),
            check_exec,
            seen_exec: !check_exec,
            seen_tcp: false,
            started,
        })
    }

    fn passed(&self) -> bool {
        self.seen_exec && (self.tcp_port.is_none() || self.seen_tcp)
    }

    /// What was not seen, for the reason of a miss.
    fn missing(&self) -> String {
        let mut missing = Vec::new();
        if !self.seen_exec {
            missing.push(format!("the exec of pid {} with its nonce", self.exec_pid));
        }
        if let (Some(port), false) = (self.tcp_port, self.seen_tcp) {
            missing.push(format!("the loopback TCP connection to port {port}"));
        }
        missing.join(" and ")
    }

    /// Takes note of one of the agent's own events.
    pub fn observe(&mut self, event: &Event) {
        match &event.kind {
            EventKind::ProcessExec { process } if process.pid == self.exec_pid => {
                let nonce = &self.expected_nonce;
                if process
                    .args
                    .as_ref()
                    .is_some_and(|a| a.iter().any(|x| x == nonce))
                {
                    self.seen_exec = true;
                }
            }
            EventKind::ConnectionOpen(c)
                if c.protocol == Protocol::Tcp
                    && c.role == Some(Role::Client)
                    && Some(c.remote.port) == self.tcp_port
                    && c.process.as_ref().is_some_and(|p| p.pid == self.me) =>
            {
                self.seen_tcp = true;
            }
            _ => {}
        }
    }

    /// Passed, missed (after `timeout`), or `None` while still waiting.
    pub fn verdict(&self, timeout: Duration) -> Option<CheckResult> {
        let took = self.started.elapsed();
        let result = |passed, detail| CheckResult {
            passed,
            detail,
            duration_ms: took.as_millis() as u64,
            at: now_secs(),
        };
        if self.passed() {
            let what = match (self.check_exec, self.tcp_port) {
                (true, Some(_)) => "saw its exec and TCP connection",
                (true, None) => "saw its exec",
                (false, Some(_)) => "saw its TCP connection (--events selects no exec)",
                (false, None) => {
                    "nothing to see: --events selects neither execs nor TCP connections"
                }
            };
            Some(result(true, format!("{what} in {took:?}")))
        } else if took > timeout {
            let missing = self.missing();
            Some(result(
                false,
                format!("did not see {missing} within {timeout:?}"),
            ))
        } else {
            None
        }
    }

    /// The result when the wait was cut short.
    pub fn interrupted(&self, why: String) -> CheckResult {
        CheckResult {
            duration_ms: self.started.elapsed().as_millis() as u64,
            ..CheckResult::failed(why)
        }
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        if let Some((mut child, stdin)) = self.process.take() {
            drop(stdin);
            // Reap it without waiting here.
            std::thread::spawn(move || child.wait());
        }
    }
}

/// The heartbeat: the exec part of the canary again every `every`, while
/// the agent runs; a miss makes it not ready.
pub struct Heartbeat {
    every: Duration,
    timeout: Duration,
    next: Option<Instant>,
    running: Option<Canary>,
}

impl Heartbeat {
    /// `every` zero: never.
    pub fn new(every: Duration, timeout: Duration) -> Self {
        Heartbeat {
            every,
            timeout,
            next: (!every.is_zero()).then(|| Instant::now() + every),
            running: None,
        }
    }

    pub fn observe(&mut self, own: &Event) {
        if let Some(beat) = &mut self.running {
            beat.observe(own);
        }
    }

    /// Launches the next heartbeat when due (handing it to `remember`, so
    /// that its events are known as the agent's own); returns the results
    /// of those that are over.
    pub fn tick(&mut self, remember: impl FnOnce(&Canary)) -> Vec<CheckResult> {
        let mut results = Vec::new();
        if let Some(over) = self.running.as_ref().and_then(|b| b.verdict(self.timeout)) {
            results.push(over);
            self.running = None;
        }
        if let Some(due) = self.next.filter(|due| Instant::now() >= *due) {
            self.next = Some(due + self.every);
            if self.running.is_none() {
                match Canary::launch(true, false) {
                    Ok(beat) => {
                        remember(&beat);
                        self.running = Some(beat);
                    }
                    Err(e) => results.push(CheckResult::failed(format!("could not start: {e}"))),
                }
            }
        }
        results
    }
}
