//! The self-check: the agent makes activity it must then see through the
//! method it chose. An exec of its own binary carrying a random nonce, and
//! a loopback TCP connection to a listener it opened. The events they cause
//! are the agent's own business and never reach the user.

use std::collections::VecDeque;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use auspex_events::{Event, EventKind, Protocol, Role};

/// Set to make canaries look for a nonce that never comes: a test-only way to
/// prove what happens when a method sees nothing. `heartbeat`: only the
/// heartbeats miss; anything else: every canary.
pub const FORCE_MISS_ENV: &str = "AUSPEX_TEST_CANARY_MISS";

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
    exec_pid: u32,
    /// Port of the listener the TCP part connected to; None for a
    /// heartbeat, which only execs.
    tcp_port: Option<u16>,
    pub seen_exec: bool,
    pub seen_tcp: bool,
    pub started: Instant,
}

impl Canary {
    /// Makes the activity. `with_tcp`: the full canary; without, the
    /// lighter heartbeat.
    pub fn launch(with_tcp: bool) -> io::Result<Canary> {
        let nonce = nonce();
        let force_miss =
            std::env::var(FORCE_MISS_ENV).is_ok_and(|which| which != "heartbeat" || !with_tcp);
        let expected_nonce = if force_miss {
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
            seen_exec: false,
            seen_tcp: false,
            started,
        })
    }

    pub fn passed(&self) -> bool {
        self.seen_exec && (self.tcp_port.is_none() || self.seen_tcp)
    }

    /// What was not seen, for the reason of a miss.
    pub fn missing(&self) -> String {
        let mut missing = Vec::new();
        if !self.seen_exec {
            missing.push(format!("the exec of pid {} with its nonce", self.exec_pid));
        }
        if let (Some(port), false) = (self.tcp_port, self.seen_tcp) {
            missing.push(format!("the loopback TCP connection to port {port}"));
        }
        missing.join(" and ")
    }

    fn observe(&mut self, event: &Event, me: u32) {
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
                    && c.process.as_ref().is_some_and(|p| p.pid == me) =>
            {
                self.seen_tcp = true;
            }
            _ => {}
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

/// Recognises the events canaries cause, so that they are kept from the
/// user, including those that arrive after the canary is over (exits,
/// closes). Remembers the latest canaries only.
#[derive(Debug, Default)]
pub struct CanaryEvents {
    recent: VecDeque<(u32, Option<u16>)>,
    me: u32,
}

const REMEMBERED: usize = 16;

impl CanaryEvents {
    pub fn new() -> Self {
        CanaryEvents {
            recent: VecDeque::new(),
            me: std::process::id(),
        }
    }

    pub fn remember(&mut self, canary: &Canary) {
        if self.recent.len() == REMEMBERED {
            self.recent.pop_front();
        }
        self.recent.push_back((canary.exec_pid, canary.tcp_port));
    }

    /// Whether `event` belongs to a canary; updates `running` with it.
    pub fn claim(&self, event: &Event, running: Option<&mut Canary>) -> bool {
        if let Some(canary) = running {
            canary.observe(event, self.me);
        }
        match &event.kind {
            EventKind::ProcessExec { process }
            | EventKind::ProcessFork { process, .. }
            | EventKind::ProcessExit { process, .. } => {
                self.recent.iter().any(|(pid, _)| *pid == process.pid)
            }
            EventKind::ConnectionOpen(c) | EventKind::ConnectionClose(c) => {
                c.process.as_ref().is_none_or(|p| p.pid == self.me)
                    && self.recent.iter().any(|(_, port)| {
                        port.is_some_and(|p| p == c.local.port || p == c.remote.port)
                    })
            }
            EventKind::EndpointOpen(e) | EventKind::EndpointClose(e) => {
                e.process.as_ref().is_none_or(|p| p.pid == self.me)
                    && self
                        .recent
                        .iter()
                        .any(|(_, port)| *port == Some(e.local.port))
            }
            EventKind::ConnectionsDelta(_) | EventKind::EndpointsDelta(_) => false,
        }
    }
}

/// How long a canary may take.
pub fn timed_out(canary: &Canary, deadline: Duration) -> bool {
    canary.started.elapsed() > deadline
}
