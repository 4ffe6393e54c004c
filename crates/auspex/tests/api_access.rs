//! Who can reach the APIs, and that nobody can take them down: the gRPC
//! stream on a Unix socket only root can open, and both listeners keeping
//! their health answers under a flood of idle sockets with the agent held
//! to 1,024 open files (issue 16: 1,100 idle sockets made /ready and
//! /status time out and the heartbeat fail with "Too many open files").

mod common;

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{deadline, Agent};
use serde_json::Value;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The idle sockets opened against each listener.
const IDLE_SOCKETS: usize = 5_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A gRPC channel to a Unix socket.
async fn unix_channel(
    path: std::path::PathBuf,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

async fn health(channel: tonic::transport::Channel) -> Result<i32, String> {
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    Ok(response.into_inner().status)
}

/// The health status over the socket once it is SERVING (readiness is
/// copied to the health service within 50 ms), or the last
/// one seen at the deadline.
async fn serving_within(socket: std::path::PathBuf) -> Result<i32, String> {
    let start = Instant::now();
    loop {
        let channel = unix_channel(socket.clone())
            .await
            .map_err(|e| e.to_string())?;
        let status = health(channel).await;
        if status == Ok(ServingStatus::Serving as i32) || start.elapsed() > deadline() {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn grpc_on_a_unix_socket_answers_root_and_refuses_nobody() {
    let dir = tempfile::tempdir().unwrap();
    // Traversable by anyone: only the socket's own mode keeps nobody out.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("grpc.sock");
    let endpoint = format!("unix:{}", socket.display());
    let agent = Agent::start(&["--grpc-listen", &endpoint]);
    assert!(
        agent
            .stderr_text()
            .contains(&format!("gRPC event stream on {endpoint} ")),
        "{}",
        agent.stderr_text()
    );
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket(), "{meta:?}");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{meta:?}");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);

    // Root gets an answer: the health service, ready.
    let status = runtime().block_on(serving_within(socket.clone()));
    assert_eq!(status, Ok(ServingStatus::Serving as i32));

    // nobody cannot even connect.
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import socket, sys\n\
             s = socket.socket(socket.AF_UNIX)\n\
             try:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n    print(e.errno, e.strerror); sys.exit(3)\n\
             print('connected')",
        ])
        .arg(&socket)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{said} {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(said.trim(), "13 Permission denied");

    // A second agent on the same socket is refused, naming it; the first
    // still serves.
    let (code, stderr) =
        common::run_failing(&mut common::auspex_run(&["--grpc-listen", &endpoint]));
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        common::error_line(&stderr),
        format!(
            "auspex: error: cannot listen on {endpoint} for the gRPC stream (--grpc-listen): \
             another process listens on this socket"
        )
    );
    let (status, stderr) = agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{status}: {stderr:?}");
    // A clean stop removes its socket.
    assert!(
        std::fs::symlink_metadata(&socket).is_err(),
        "the socket outlived the agent"
    );

    // The socket an agent that died left is replaced by the next one.
    let killed = Agent::start(&["--grpc-listen", &endpoint]);
    let (status, _) = killed.stop(nix::sys::signal::Signal::SIGKILL);
    assert!(!status.success(), "{status}");
    assert!(socket.exists(), "SIGKILL left no socket to replace");
    let again = Agent::start(&["--grpc-listen", &endpoint]);
    let status = runtime().block_on(serving_within(socket.clone()));
    assert_eq!(
        status,
        Ok(ServingStatus::Serving as i32),
        "{}",
        again.stderr_text()
    );
}

#[test]
fn grpc_unix_socket_refuses_a_directory_others_can_write() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let socket = dir.path().join("grpc.sock");
    let endpoint = format!("unix:{}", socket.display());
    let (code, stderr) =
        common::run_failing(&mut common::auspex_run(&["--grpc-listen", &endpoint]));
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        common::error_line(&stderr),
        format!(
            "auspex: error: cannot listen on {endpoint} for the gRPC stream (--grpc-listen): \
             its directory {} is writable by group or others (mode 1777)",
            dir.path().display()
        )
    );
    assert!(!socket.exists());
}

/// Opens `n` TCP connections to `addr` that never send anything; returns
/// them (those the agent closes stay open on this side).
fn idle_sockets(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let start = Instant::now();
    let mut sockets = Vec::with_capacity(n);
    let mut failed = 0;
    while sockets.len() < n {
        assert!(
            start.elapsed() < deadline() * 4,
            "only {} of {n} idle sockets connected to {addr} ({failed} attempts failed)",
            sockets.len()
        );
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(s) => sockets.push(s),
            Err(_) => failed += 1,
        }
    }
    sockets
}

/// GET over a fresh connection, with a deadline: (status code, body).
fn get_within(addr: SocketAddr, path: &str, within: Duration) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut stream =
        TcpStream::connect_timeout(&addr, within).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(within)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read: {e} after {response:?}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no answer: {response:?}"))?;
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    Ok((code, body.to_string()))
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
}

#[test]
fn health_answers_under_idle_sockets_with_1024_files() {
    // This test holds 2 x 5,000 sockets itself.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let want = (2 * IDLE_SOCKETS as u64 + 1000).min(hard);
    if nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, want, hard)
        .is_err()
        || want < 2 * IDLE_SOCKETS as u64 + 100
    {
        eprintln!(
            "skipped: cannot raise this test's open file limit to {want} (hard limit {hard})"
        );
        return;
    }
    let mut prlimit = Command::new("prlimit");
    prlimit.args(["--nofile=1024:1024", "--", common::AUSPEX, "run"]);
    let agent = Agent::launch(
        prlimit,
        &["--grpc-listen", "127.0.0.1:0", "--heartbeat-interval", "1"],
    );
    let pid = agent.child.id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits.lines().any(|l| l.starts_with("Max open files")
            && l.split_whitespace().filter(|w| *w == "1024").count() == 2),
        "{limits}"
    );
    let http = agent.http_addr();
    let grpc: SocketAddr = agent
        .logged_after("gRPC event stream on http://")
        .parse()
        .unwrap();
    let heartbeats_before = heartbeats(&agent);

    let flood_start = Instant::now();
    let _http_flood = idle_sockets(http, IDLE_SOCKETS);
    let _grpc_flood = idle_sockets(grpc, IDLE_SOCKETS);
    let flooded_in = flood_start.elapsed();
    eprintln!("{} idle sockets opened in {flooded_in:?}", 2 * IDLE_SOCKETS);

    // With 10,000 idle sockets open against it, each health answer comes
    // on a fresh connection.
    let within = Duration::from_secs(5) * common::time_scale();
    for path in ["/live", "/ready", "/status"] {
        match get_within(http, path, within) {
            Ok((200, _)) => {}
            other => panic!(
                "{path} under the flood: {other:?} (flood took {flooded_in:?})\nagent stderr:\n{}",
                agent.stderr_text()
            ),
        }
    }
    let status = runtime().block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
            .unwrap()
            .connect_timeout(within)
            .timeout(within)
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        health(channel).await
    });
    assert_eq!(
        status,
        Ok(ServingStatus::Serving as i32),
        "{}",
        agent.stderr_text()
    );

    eprintln!(
        "health answered {:?} after the flood began",
        flood_start.elapsed()
    );
    // The heartbeat kept passing (it opens descriptors of its own), and
    // the agent never ran out of them. The flood's own 20,000 connection
    // events may overrun the pipeline on a loaded machine (a CI run lost
    // 3,594 to enrich_queue_full, the heartbeat's exec among them): a miss
    // is then allowed if that loss was counted, and a later one passes.
    agent.wait_until("a passing heartbeat after the flood", |a| {
        let s: Value = serde_json::from_str(&a.http_get("/status").1).unwrap();
        heartbeats(a) > heartbeats_before && s["heartbeat"]["last"]["passed"] == true
    });
    let (_, s) = get_within(http, "/status", within).unwrap();
    let s: Value = serde_json::from_str(&s).unwrap();
    let counted_losses: u64 = s["drops"]
        .as_object()
        .map(|d| d.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    assert!(
        s["heartbeat"]["misses"] == 0 || counted_losses > 0,
        "a heartbeat missed without any counted loss: {s:#}"
    );
    let (_, metrics) = get_within(http, "/metrics", within).unwrap();
    for api in ["http", "grpc"] {
        assert_eq!(
            metric(
                &metrics,
                &format!("auspex_api_accept_errors_total{{api=\"{api}\"}}")
            ),
            0,
            "{metrics}"
        );
        // The cap (256) was reached: the idlest made room for the rest,
        // each eviction counted once. Exactly IDLE_SOCKETS - 256 idle ones
        // at least; at most one more per connection of this test's own
        // beyond the flood (5 HTTP requests, 1 gRPC channel), whose timing
        // against the flood's evictions varies.
        let evicted = metric(
            &metrics,
            &format!("auspex_api_connections_closed_total{{api=\"{api}\",reason=\"evicted\"}}"),
        );
        let least = (IDLE_SOCKETS - 256) as u64;
        assert!(
            (least..=least + 5).contains(&evicted),
            "{api}: {evicted} evicted, not within {least}..={}\n{metrics}",
            least + 5
        );
    }
    assert!(
        !agent.stderr_text().contains("Too many open files"),
        "{}",
        agent.stderr_text()
    );
}

fn heartbeats(agent: &Agent) -> u64 {
    let s: Value = serde_json::from_str(&agent.http_get("/status").1).unwrap();
    s["heartbeat"]["last"]["at"].as_u64().unwrap_or(0)
}

#[test]
fn a_kept_alive_http1_connection_closes_at_the_header_timeout_counted() {
    // An idle timeout far beyond the header timeout: only the header timer
    // can close the kept-alive connection within this test's wait.
    let agent = Agent::start(&["--api-header-timeout", "1", "--api-idle-timeout", "600"]);
    let addr = agent.http_addr();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(deadline())).unwrap();
    use std::io::{Read, Write};
    write!(stream, "GET /live HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    // The response, then the close (EOF) with nothing more sent.
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "the kept-alive connection stayed open {:?}: {e}; read {:?}",
                start.elapsed(),
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    let (_, metrics) = agent.http_get("/metrics");
    assert_eq!(
        metric(
            &metrics,
            "auspex_api_connections_closed_total{api=\"http\",reason=\"header_timeout\"}"
        ),
        1,
        "{metrics}"
    );
}
