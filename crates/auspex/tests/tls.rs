//! TLS and mutual TLS on the TCP listeners, with certificates made by
//! openssl at test time: grpcio over mutual TLS gets answers, a client
//! without a certificate (or with one from another CA, or without TLS) is
//! refused; the HTTP API over TLS answers curl, and serves a certificate
//! replaced on disk without a restart; a non-loopback address without TLS
//! is refused unless the insecure option says so.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{deadline, grpc_client as client, grpc_python as python, Agent};
use serde_json::json;

/// Runs openssl in `dir`; fails with its output.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (NAME.crt, NAME.key) in `dir`.
fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
}

/// A certificate NAME.crt (key NAME.key) signed by the CA `by`, for a
/// server (localhost, 127.0.0.1) or a client.
fn leaf(dir: &Path, name: &str, by: &str, server: bool) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    let ext = match server {
        true => "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        false => "extendedKeyUsage=clientAuth\n",
    };
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{by}.crt"),
            "-CAkey",
            &format!("{by}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).display().to_string()
}

/// An agent serving gRPC over mutual TLS with `d`'s server.crt and
/// server.key, trusting clients of ca.crt.
fn mtls_agent(d: &Path) -> Agent {
    tls_agent(d, &["--grpc-tls-client-ca", &path(d, "ca.crt")])
}

/// An agent serving gRPC over TLS with `d`'s server.crt and server.key,
/// with `extra` arguments.
fn tls_agent(d: &Path, extra: &[&str]) -> Agent {
    let (cert, key) = (path(d, "server.crt"), path(d, "server.key"));
    let mut args = vec![
        "--grpc-listen",
        "127.0.0.1:0",
        "--grpc-tls-cert",
        &cert,
        "--grpc-tls-key",
        &key,
    ];
    args.extend_from_slice(extra);
    Agent::start(&args)
}

#[test]
fn grpc_over_mutual_tls_refuses_clients_without_a_certificate() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ca(d, "ca");
    ca(d, "other-ca");
    leaf(d, "server", "ca", true);
    leaf(d, "client", "ca", false);
    leaf(d, "stranger", "other-ca", false);
    let agent = mtls_agent(d);
    let target = agent.logged_after("gRPC event stream on https://");
    let ca = path(d, "ca.crt");
    let with = |cert: &str| {
        client(
            &py,
            &[
                "--ca",
                &ca,
                "--cert",
                &path(d, &format!("{cert}.crt")),
                "--key",
                &path(d, &format!("{cert}.key")),
                &target,
                "health",
            ],
        )
    };
    // Readiness reaches the health service within 50 ms of /ready.
    agent.wait_until("health says SERVING to a client with a certificate", |_| {
        with("client") == json!({"status": "SERVING"})
    });
    let answer = client(
        &py,
        &[
            "--ca",
            &ca,
            "--cert",
            &path(d, "client.crt"),
            "--key",
            &path(d, "client.key"),
            &target,
            "reflection",
        ],
    );
    assert!(
        answer["services"]
            .as_array()
            .unwrap()
            .contains(&json!("auspex.v1.Events")),
        "{answer}"
    );
    // Refused: no certificate, one from another CA, no TLS at all.
    let refused = [
        client(&py, &["--ca", &ca, &target, "health"]),
        with("stranger"),
        client(&py, &[&target, "health"]),
    ];
    for answer in &refused {
        assert_eq!(answer["code"], "UNAVAILABLE", "{refused:?}");
    }
    // `auspex events` over mutual TLS, as JSON: the document the agent wrote.
    let held = common::HeldShell::spawn("exec /bin/true over-mtls", &[]);
    let mut events = Command::new(common::AUSPEX)
        .args([
            "events",
            "-o",
            "json",
            "--type",
            "process_exec",
            "--pid",
            &held.pid().to_string(),
        ])
        .args(["--address", &format!("https://{target}"), "--tls-ca", &ca])
        .args([
            "--tls-cert",
            &path(d, "client.crt"),
            "--tls-key",
            &path(d, "client.key"),
        ])
        .args([
            "--tls-server-name",
            "localhost",
            "--exe",
            &common::canonical("/bin/true"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(events.stderr.take().unwrap());
    let mut said = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut said).unwrap();
    assert!(
        said.starts_with("auspex events: connected to https://"),
        "{said}"
    );
    let pid = held.pid();
    held.release();
    // Read on a thread, so that a missing line fails the test with what the
    // agent saw instead of hanging it.
    let stdout = events.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(deadline());
    let _ = events.kill();
    let _ = events.wait();
    let line = line.unwrap_or_else(|_| {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        let written = agent.event_where("process_exec", pid, |_| true);
        panic!(
            "auspex events printed nothing for pid {pid}; its stderr: {said}{rest}\nthe agent \
             wrote: {written}\nagent stderr:\n{}",
            agent.stderr_text()
        )
    });
    let doc: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(
        doc["process"]["args"],
        json!(["/bin/true", "over-mtls"]),
        "{doc}"
    );
    assert_eq!(
        doc,
        agent.event_where("process_exec", pid, |e| e["process"]["args"]
            == doc["process"]["args"])
    );

    let (_, metrics) = agent.http_get("/metrics");
    let failed: u64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("auspex_api_connections_closed_total{api=\"grpc\",reason=\"tls_failed\"}")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(failed >= 3, "{failed} TLS failures counted\n{metrics}");
}

/// Runs `auspex events` with `args` until it exits or the deadline
/// passes: (exit code, stderr); Err(stderr) if it was still running
/// (killed).
fn events_exit(args: &[&str]) -> Result<(Option<i32>, String), String> {
    let mut child = Command::new(common::AUSPEX)
        .arg("events")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            return Ok((status.code(), stderr));
        }
        if start.elapsed() > deadline() {
            let _ = child.kill();
            let _ = child.wait();
            let mut stderr = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr);
            return Err(stderr);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn auspex_events_stops_on_a_refused_certificate_instead_of_retrying() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ca(d, "ca");
    ca(d, "other-ca");
    leaf(d, "server", "ca", true);
    leaf(d, "stranger", "other-ca", false);
    let agent = mtls_agent(d);
    let address = format!(
        "https://{}",
        agent.logged_after("gRPC event stream on https://")
    );
    let common = ["--address", &address, "--tls-server-name", "localhost"];
    let [other_ca, ca, stranger_crt, stranger_key] =
        ["other-ca.crt", "ca.crt", "stranger.crt", "stranger.key"].map(|f| path(d, f));
    let cases: [(&str, Vec<&str>, &str); 2] = [
        (
            "the agent's certificate, not signed by --tls-ca",
            vec!["--tls-ca", &other_ca],
            "invalid peer certificate: UnknownIssuer",
        ),
        (
            "our certificate, refused by the agent",
            vec![
                "--tls-ca",
                &ca,
                "--tls-cert",
                &stranger_crt,
                "--tls-key",
                &stranger_key,
            ],
            "a certificate was refused",
        ),
    ];
    for (what, args, says) in cases {
        let args: Vec<&str> = common.iter().copied().chain(args).collect();
        let (code, stderr) = events_exit(&args).unwrap_or_else(|stderr| {
            panic!("{what}: auspex events {args:?} kept retrying past the deadline: {stderr}")
        });
        assert_eq!(code, Some(1), "{what}: {stderr}");
        assert!(
            stderr.contains("a certificate was refused") && stderr.contains(says),
            "{what}: {stderr}"
        );
    }
}

/// The value of the metric line starting with `start`, 0 when absent (a
/// counter never incremented has no line).
fn counter(metrics: &str, start: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn silent_tls_clients_evicted_mid_handshake_close_at_once_counted_once() {
    const CLIENTS: usize = 300;
    const MAX: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ca(d, "ca");
    leaf(d, "server", "ca", true);
    // A header (and handshake) timeout far beyond this test's waits: only
    // eviction can close the silent clients in time.
    let agent = tls_agent(
        d,
        &[
            "--api-max-connections",
            &MAX.to_string(),
            "--api-header-timeout",
            "600",
        ],
    );
    let target: std::net::SocketAddr = agent
        .logged_after("gRPC event stream on https://")
        .parse()
        .unwrap();
    let pid = agent.child.id();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let before = fds();
    // Connect and never send a ClientHello.
    let silent: Vec<std::net::TcpStream> = (0..CLIENTS)
        .map(|_| std::net::TcpStream::connect(target).unwrap())
        .collect();
    let start = Instant::now();
    let grpc = "auspex_api_connections_closed_total{api=\"grpc\",reason=";
    loop {
        let (_, metrics) = agent.http_get("/metrics");
        let evicted = counter(&metrics, &format!("{grpc}\"evicted\"}}"));
        let now = fds();
        if evicted == (CLIENTS - MAX) as u64 && now <= before + MAX {
            assert_eq!(
                counter(&metrics, &format!("{grpc}\"tls_failed\"}}")),
                0,
                "{metrics}"
            );
            break;
        }
        assert!(
            start.elapsed() < deadline(),
            "{CLIENTS} silent clients, at most {MAX} kept: the agent holds {now} descriptors \
             ({before} before), {evicted} evictions counted\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(silent);
}

/// curl over TLS trusting only `ca`: the HTTP status, or curl's error.
fn curl(addr: &str, ca: &str, path: &str) -> Result<String, String> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "--cacert",
            ca,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("https://{addr}{path}"))
        .output()
        .unwrap();
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

#[test]
fn https_serves_a_certificate_replaced_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ca(d, "ca");
    ca(d, "next-ca");
    leaf(d, "server", "ca", true);
    leaf(d, "next", "next-ca", true);
    // The agent reads tls.crt and tls.key, as a Kubernetes Secret mounts them.
    std::fs::copy(d.join("server.crt"), d.join("tls.crt")).unwrap();
    std::fs::copy(d.join("server.key"), d.join("tls.key")).unwrap();
    let agent = Agent::start(&[
        "--http-tls-cert",
        &path(d, "tls.crt"),
        "--http-tls-key",
        &path(d, "tls.key"),
    ]);
    let addr = agent.logged_after("HTTP API on https://");
    assert_eq!(curl(&addr, &path(d, "ca.crt"), "/ready"), Ok("200".into()));
    assert!(curl(&addr, &path(d, "next-ca.crt"), "/ready").is_err());

    // Replaced as a rotation does it: new files renamed over the old.
    for (from, to) in [("next.key", "tls.key"), ("next.crt", "tls.crt")] {
        std::fs::copy(d.join(from), d.join("staged")).unwrap();
        std::fs::rename(d.join("staged"), d.join(to)).unwrap();
    }
    let start = Instant::now();
    loop {
        match curl(&addr, &path(d, "next-ca.crt"), "/ready") {
            Ok(code) => {
                assert_eq!(code, "200");
                break;
            }
            Err(e) => assert!(
                start.elapsed() < deadline(),
                "the new certificate is not served: {e}\n{}",
                agent.stderr_text()
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(curl(&addr, &path(d, "ca.crt"), "/ready").is_err());
    assert!(
        agent.stderr_text().contains("read ") && agent.stderr_text().contains("again: it changed")
    );
}

#[test]
fn a_non_loopback_address_without_tls_is_refused_unless_insecure() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["--grpc-listen", "0.0.0.0:0"],
            "auspex: error: --grpc-listen 0.0.0.0:0 is not a loopback address: give \
             --grpc-tls-cert and --grpc-tls-key to serve it over TLS, or --grpc-insecure to \
             serve it in clear text",
        ),
        (
            &["--listen", "0.0.0.0:0"],
            "auspex: error: --listen 0.0.0.0:0 is not a loopback address: give --http-tls-cert \
             and --http-tls-key to serve it over TLS, or --http-insecure to serve it in clear \
             text",
        ),
        (
            &[
                "--grpc-listen",
                "127.0.0.1:0",
                "--grpc-tls-cert",
                "/nonexistent.crt",
            ],
            "auspex: error: --grpc-tls-cert needs --grpc-tls-key",
        ),
        (
            &[
                "--grpc-listen",
                "127.0.0.1:0",
                "--grpc-tls-cert",
                "/nonexistent.crt",
                "--grpc-tls-key",
                "/nonexistent.key",
            ],
            "auspex: error: --grpc-tls-cert /nonexistent.crt: ",
        ),
    ];
    for (args, expected) in cases {
        let mut command = Command::new(common::AUSPEX);
        command.arg("run");
        if args[0] != "--listen" {
            command.args(["--listen", "off"]);
        }
        let (code, stderr) = common::run_failing(command.args(args));
        assert_eq!(code, 1, "{args:?}: {stderr}");
        let line = common::error_line(&stderr);
        assert!(line.starts_with(expected), "{args:?}:\n{line}\n{expected}");
        assert!(!stderr.contains("probes attached"), "{stderr}");
    }
    let agent = Agent::start(&["--grpc-listen", "0.0.0.0:0", "--grpc-insecure"]);
    assert!(
        agent
            .stderr_text()
            .contains("gRPC event stream on http://0.0.0.0:"),
        "{}",
        agent.stderr_text()
    );
}
