//! What the agent's tests share: a running agent with its output, log and
//! HTTP API at hand, and helpers for runs that must fail.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

pub const AUSPEX: &str = env!("CARGO_BIN_EXE_auspex");
/// How much slower than here the machine runs: `AUSPEX_TEST_TIME_SCALE`,
/// 1 when unset (the kernel matrix sets it: emulated guests run many times
/// slower).
pub fn time_scale() -> u32 {
    std::env::var("AUSPEX_TEST_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// How long a test waits for what it expects: 15 s, times the time scale.
pub fn deadline() -> Duration {
    Duration::from_secs(15) * time_scale()
}

/// Whether the agent's `/status` lists `feature` as degraded.
pub fn has_degraded(status: &Value, feature: &str) -> bool {
    status["degraded"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["feature"] == feature)
}

/// A running `auspex run --output FILE`, with its stderr collected.
pub struct Agent {
    pub child: Child,
    /// Set once `stop` waited for it; otherwise dropping it kills it, so a
    /// failed test leaves no agent behind.
    stopped: bool,
    output: PathBuf,
    stderr: Arc<Mutex<Vec<String>>>,
    /// Reads the agent's stderr until it closes.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Agent {
    pub fn start(extra: &[&str]) -> Agent {
        let mut command = Command::new(AUSPEX);
        command.arg("run");
        Self::launch(command, extra)
    }

    /// Starts `command` (which must end up running `auspex run`) with an
    /// output file, an HTTP API on a free port and `extra` arguments.
    pub fn launch(command: Command, extra: &[&str]) -> Agent {
        let agent = Self::spawn(command, None, extra);
        agent.wait_until("the probe is attached", |a| {
            a.stderr_text().contains("probes attached")
        });
        agent
    }

    /// `auspex run` writing to `output`, once its probes are attached.
    pub fn writing_to(output: PathBuf, extra: &[&str]) -> Agent {
        let mut run = Command::new(AUSPEX);
        run.arg("run");
        let agent = Self::spawn(run, Some(output), extra);
        agent.wait_until("the probe is attached", |a| {
            a.stderr_text().contains("probes attached")
        });
        agent
    }

    /// As `launch`, writing to `output` (or a file of its own), without
    /// waiting for anything.
    pub fn spawn(mut command: Command, output: Option<PathBuf>, extra: &[&str]) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let output = output.unwrap_or_else(|| dir.path().join("events.jsonl"));
        let mut child = command
            .arg("--output")
            .arg(&output)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&stderr);
        let pipe = child.stderr.take().unwrap();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                lines.lock().unwrap().push(line.unwrap());
            }
        });
        Agent {
            child,
            stopped: false,
            output,
            stderr,
            stderr_reader: Some(stderr_reader),
            _dir: dir,
        }
    }

    /// The word that follows `marker` in the agent's log.
    pub fn logged_after(&self, marker: &str) -> String {
        let text = self.stderr_text();
        text.split(marker)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {marker:?} in the agent's log:\n{text}"))
            .to_string()
    }

    /// Where the agent's HTTP API listens, from its log.
    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.logged_after("HTTP API on http://").parse().unwrap()
    }

    /// GET `path` from the agent's HTTP API: (status code, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        let addr = self.http_addr();
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut response = String::new();
        std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        (code, body.to_string())
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// The events written so far: complete lines only (a long line may be
    /// caught half written).
    pub fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.output).unwrap_or_default();
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect()
    }

    pub fn wait_until(&self, what: &str, done: impl Fn(&Agent) -> bool) {
        let start = Instant::now();
        while !done(self) {
            assert!(
                start.elapsed() < deadline(),
                "timed out waiting until {what}.\nagent stderr:\n{}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The first event of `kind` about `pid`; fails listing what was seen.
    pub fn event(&self, kind: &str, pid: u32) -> Value {
        self.event_where(kind, pid, |_| true)
    }

    /// The first event of `kind` about `pid` that `also` accepts.
    pub fn event_where(&self, kind: &str, pid: u32, also: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_event(
            &format!("{kind} event for pid {pid}"),
            |e| e["type"] == kind && e["process"]["pid"] == pid && also(e),
            |e| e["process"]["pid"] == pid || e["process"]["ppid"] == pid,
        )
    }

    /// The first event of `kind` that `matches` accepts.
    pub fn event_with(&self, kind: &str, matches: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_event(
            &format!("matching {kind} event"),
            |e| e["type"] == kind && matches(e),
            |e| e["type"] == kind,
        )
    }

    /// Waits for an event `matches` accepts; on timeout, fails listing the
    /// events `related` selects.
    fn wait_for_event(
        &self,
        what: &str,
        matches: impl Fn(&Value) -> bool,
        related: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let events = self.events();
            if let Some(e) = events.iter().find(|e| matches(e)) {
                return e.clone();
            }
            if start.elapsed() > deadline() {
                let related: Vec<String> = events
                    .iter()
                    .filter(|e| related(e))
                    .map(Value::to_string)
                    .collect();
                panic!(
                    "no {what}; {} events written, the related ones:\n{}\nagent stderr:\n{}",
                    events.len(),
                    related.join("\n"),
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` and returns the exit status and the stderr lines.
    pub fn stop(self, signal: Signal) -> (std::process::ExitStatus, Vec<String>) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
        self.wait_for_exit(None)
            .unwrap_or_else(|_| unreachable!("waited without a deadline"))
    }

    /// Waits for the agent to exit: the exit status and the stderr lines;
    /// or, if `deadline` passes first, its stderr so far (and it is killed).
    pub fn wait_for_exit(
        mut self,
        deadline: Option<Instant>,
    ) -> Result<(std::process::ExitStatus, Vec<String>), String> {
        let status = loop {
            match (self.child.try_wait().unwrap(), deadline) {
                (Some(status), _) => break status,
                (None, Some(deadline)) if Instant::now() > deadline => {
                    return Err(self.stderr_text())
                }
                (None, Some(_)) => std::thread::sleep(Duration::from_millis(10)),
                (None, None) => break self.child.wait().unwrap(),
            }
        };
        self.stopped = true;
        // Every line, up to the end of the agent's stderr.
        if let Some(reader) = self.stderr_reader.take() {
            reader.join().unwrap();
        }
        let lines = self.stderr.lock().unwrap().clone();
        Ok((status, lines))
    }
}

/// `/bin/sh -c SCRIPT ARGS...` that first waits for its stdin to close, so
/// that it lives until the test has seen what it needs (a method that reads
/// a process's details from /proc reads them when it hears of its exec):
/// no fixed sleep, however slow the machine.
pub struct HeldShell {
    pub child: Child,
    pub args: Vec<String>,
}

impl HeldShell {
    /// The script runs after `read held`, which returns at end of file.
    pub fn spawn(script: &str, args: &[&str]) -> HeldShell {
        let script = format!("read held; {script}");
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(&script)
            .args(args)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let mut argv = vec!["/bin/sh".to_string(), "-c".to_string(), script];
        argv.extend(args.iter().map(|a| a.to_string()));
        HeldShell { child, args: argv }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets it run its script, and waits for it to end.
    pub fn release(mut self) -> std::process::ExitStatus {
        drop(self.child.stdin.take());
        self.child.wait().unwrap()
    }
}

pub fn canonical(path: &str) -> String {
    std::fs::canonicalize(path)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// The number that follows `marker` in `text` (a summary line, say).
pub fn number_after(text: &str, marker: &str) -> u64 {
    text.split(marker)
        .nth(1)
        .and_then(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .unwrap_or_else(|| panic!("no number after {marker:?} in {text}"))
}

/// Runs auspex to completion (it must fail) and returns its output.
pub fn run_failing(command: &mut Command) -> (i32, String) {
    let Output {
        status,
        stderr,
        stdout,
    } = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    assert!(
        stdout.is_empty(),
        "nothing belongs on stdout: {:?}",
        String::from_utf8_lossy(&stdout)
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    (status.code().expect("exited, not killed"), stderr)
}

pub fn auspex_run(args: &[&str]) -> Command {
    let mut c = Command::new(AUSPEX);
    c.args(["run", "--listen", "off"]).args(args);
    c
}

/// The line `auspex: error: ...` among the agent's log lines.
pub fn error_line(stderr: &str) -> &str {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("auspex: error: "))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "exactly one error line expected:\n{stderr}"
    );
    errors[0]
}

impl Drop for Agent {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The venv's python, or None (and the test skips) where setup.sh has not
/// run; under CI it always has, so there a missing venv fails.
pub fn grpc_python() -> Option<PathBuf> {
    let venv = std::env::var_os("AUSPEX_GRPC_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/auspex/grpc-venv")
        });
    let python = venv.join("bin/python");
    if python.exists() {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing: scripts/setup.sh makes it",
        python.display()
    );
    eprintln!(
        "skipped: {} is missing (run scripts/setup.sh)",
        python.display()
    );
    None
}

pub const GRPC_CLIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../scripts/grpc-client/client.py"
);

/// Runs the Python gRPC client (scripts/grpc-client); its last line of
/// output, as JSON.
pub fn grpc_client(python: &std::path::Path, args: &[&str]) -> Value {
    let out = Command::new(python)
        .arg(GRPC_CLIENT)
        .args(args)
        .env("AUSPEX_CLIENT_TIMEOUT", (15 * time_scale()).to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "client {args:?}: {e}: {}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
