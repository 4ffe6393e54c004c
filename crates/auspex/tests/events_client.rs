//! `auspex events` as a person runs it: under a pseudo-terminal (util-linux
//! `script`), it prints a coloured line for an exec the test makes, says so
//! when the agent goes away, reconnects when it is back, and keeps going.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::{deadline, Agent};
use nix::sys::signal::Signal;

/// `auspex events ARGS` under `script`, its terminal's output collected.
struct Terminal {
    child: std::process::Child,
    screen: Arc<Mutex<String>>,
}

impl Terminal {
    fn start(args: &str) -> Terminal {
        let mut child = Command::new("script")
            .args([
                "-qfec",
                &format!("{} events {args}", common::AUSPEX),
                "/dev/null",
            ])
            // script ends the session when its stdin ends: held open.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .env("TERM", "xterm")
            .spawn()
            .unwrap();
        let screen = Arc::new(Mutex::new(String::new()));
        let mut out = child.stdout.take().unwrap();
        let sink = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Terminal { child, screen }
    }

    fn text(&self) -> String {
        self.screen.lock().unwrap().clone()
    }

    /// Waits until a line satisfies `found`; returns it.
    fn line(&self, what: &str, found: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self.text().lines().find(|l| found(l)) {
                return l.to_string();
            }
            assert!(
                start.elapsed() < deadline(),
                "no line with {what} on the terminal:\n{}",
                self.text()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn exec(marker: &str) -> u32 {
    let mut child = Command::new("/bin/true").arg(marker).spawn().unwrap();
    child.wait().unwrap();
    child.id()
}

#[test]
fn a_line_per_exec_on_a_terminal_across_an_agent_restart() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("grpc.sock");
    let endpoint = format!("unix:{}", socket.display());
    let exe = common::canonical("/bin/true");
    let terminal = Terminal::start(&format!(
        "--address {endpoint} --type process_exec --exe {exe}"
    ));
    // Started before the agent: it waits for it, and says so.
    terminal.line("cannot reach", |l| {
        l.contains(&format!("auspex events: cannot reach {endpoint}"))
    });
    let agent = Agent::start(&["--grpc-listen", &endpoint]);
    terminal.line("connected", |l| l.contains("auspex events: reconnected to"));

    let pid = exec("before-restart");
    let line = terminal.line("the first exec", |l| l.contains("before-restart"));
    let plain = String::from_utf8(strip(&line)).unwrap();
    assert!(
        plain.contains(" process_exec ")
            && plain.ends_with(&format!(" {pid} {exe} [/bin/true before-restart]")),
        "{plain:?}"
    );
    assert!(
        line.contains("\u{1b}["),
        "not coloured on a terminal: {line:?}"
    );

    // The agent restarts: the client says so and picks the new one up.
    let (status, stderr) = agent.stop(Signal::SIGTERM);
    assert!(status.success(), "{status}: {stderr:?}");
    terminal.line("the agent gone", |l| {
        l.contains("auspex events: the agent ended the stream (it stopped); reconnecting to")
    });
    let before = terminal.text().matches("reconnected to").count();
    let again = Agent::start(&["--grpc-listen", &endpoint]);
    let start = Instant::now();
    while terminal.text().matches("reconnected to").count() == before {
        assert!(
            start.elapsed() < deadline(),
            "not reconnected:\n{}\nagent:\n{}",
            terminal.text(),
            again.stderr_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pid = exec("after-restart");
    let line = terminal.line("the exec after the restart", |l| {
        l.contains("after-restart")
    });
    let plain = String::from_utf8(strip(&line)).unwrap();
    assert!(plain.contains(&format!(" {pid} {exe} ")), "{plain:?}");
    // Only what the filters let through.
    assert!(
        !terminal
            .text()
            .lines()
            .any(|l| l.contains("process_exit") || l.contains("/usr/bin/dash")),
        "{}",
        terminal.text()
    );
}

/// The text without its ANSI escapes.
fn strip(line: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut bytes = line.bytes().peekable();
    while let Some(b) = bytes.next() {
        if b == 0x1b {
            for c in bytes.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else if b != b'\r' {
            out.push(b);
        }
    }
    out
}
