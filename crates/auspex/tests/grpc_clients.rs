//! The gRPC API as a client the project did not write sees it: Python's
//! grpcio with stubs grpcio-tools generates from the proto at test time
//! (scripts/grpc-client/client.py, in the venv scripts/setup.sh makes).
//! Bad requests get INVALID_ARGUMENT naming what was wrong, the health
//! service follows /ready, reflection lists the services, and Subscribe's
//! filters pick the process asked for.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{canonical, grpc_client as client, grpc_python as python, Agent, HeldShell};
use serde_json::{json, Value};

fn grpc_target(agent: &Agent) -> String {
    agent.logged_after("gRPC event stream on http://")
}

#[test]
fn bad_requests_are_invalid_argument_naming_what_was_wrong() {
    let Some(py) = python() else { return };
    let agent = Agent::start(&["--grpc-listen", "127.0.0.1:0"]);
    let target = grpc_target(&agent);
    let status = |request: Value| client(&py, &[&target, "status", &request.to_string()]);
    let cases = [
        (
            json!({"types": ["no_such_type"]}),
            "types[0]: unknown event type \"no_such_type\" (one of: process_exec, ",
        ),
        (
            json!({"types": ["process_exec", "PROCESS_EXEC"]}),
            "types[1]: unknown event type \"PROCESS_EXEC\"",
        ),
        (
            json!({"container_ids": ["not-hex"]}),
            "container_ids[0]: \"not-hex\" is not a container id (12 to 64 hex digits)",
        ),
        (json!({"pids": [0]}), "pids[0]: 0 is not a process id"),
        (
            json!({"exes": ["true"]}),
            "exes[0]: \"true\" is not an absolute path",
        ),
    ];
    for (request, details) in cases {
        let answer = status(request.clone());
        assert_eq!(answer["code"], "INVALID_ARGUMENT", "{request}: {answer}");
        assert!(
            answer["details"].as_str().unwrap().starts_with(details),
            "{request}: {answer}"
        );
    }
    // Bytes that are no protobuf message: field 1 said to be 100 bytes
    // long, with 1 following.
    let answer = client(&py, &[&target, "raw", "0a6401"]);
    assert_eq!(answer["code"], "INVALID_ARGUMENT", "{answer}");
    assert!(
        answer["details"]
            .as_str()
            .unwrap()
            .starts_with("the request is not a valid SubscribeRequest: "),
        "{answer}"
    );
}

#[test]
fn health_and_reflection_answer_grpcio() {
    let Some(py) = python() else { return };
    let agent = Agent::start(&["--grpc-listen", "127.0.0.1:0"]);
    let target = grpc_target(&agent);
    assert_eq!(agent.http_get("/ready").0, 200);
    // Readiness is copied into the health service every 50 ms: /ready
    // may have turned 200 just before the copy.
    for service in ["", "auspex.v1.Events"] {
        agent.wait_until(&format!("health of {service:?} says SERVING"), |_| {
            client(&py, &[&target, "health", service]) == json!({"status": "SERVING"})
        });
    }
    let answer = client(&py, &[&target, "health", "no.such.Service"]);
    assert_eq!(answer["code"], "NOT_FOUND", "{answer}");
    let answer = client(&py, &[&target, "reflection"]);
    let services = answer["services"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"));
    for name in ["auspex.v1.Events", "grpc.health.v1.Health"] {
        assert!(services.contains(&json!(name)), "{name} not in {answer}");
    }
}

#[test]
fn health_is_not_serving_when_ready_is_not() {
    let Some(py) = python() else { return };
    let mut command = Command::new(common::AUSPEX);
    command
        .arg("run")
        .env("AUSPEX_TEST_CANARY_MISS", "heartbeat");
    let agent = Agent::launch(
        command,
        &[
            "--grpc-listen",
            "127.0.0.1:0",
            "--heartbeat-interval",
            "0.2",
            "--canary-timeout",
            "0.5",
        ],
    );
    let target = grpc_target(&agent);
    agent.wait_until("a heartbeat has missed", |a| a.http_get("/ready").0 == 503);
    // Copied every 50 ms: polled until then, within the
    // (scaled) deadline.
    let start = std::time::Instant::now();
    loop {
        let answer = client(&py, &[&target, "health"]);
        if answer == json!({"status": "NOT_SERVING"}) {
            break;
        }
        assert!(
            start.elapsed() < common::deadline(),
            "health still says {answer} while /ready is {}",
            agent.http_get("/ready").0
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(agent.http_get("/ready").0, 503);
}

#[test]
fn subscribe_filters_by_process_over_a_unix_socket() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("grpc.sock");
    let endpoint = format!("unix:{}", socket.display());
    let agent = Agent::start(&["--grpc-listen", &endpoint]);
    let ours = HeldShell::spawn("exec /bin/true filtered-in", &[]);
    let other = HeldShell::spawn("exec /bin/true filtered-out", &[]);
    let exe = canonical("/bin/true");
    let request = json!({"types": ["process_exec"], "pids": [ours.pid()], "exes": [&exe]});
    let mut subscriber = Command::new(&py)
        .arg(common::GRPC_CLIENT)
        .args([&endpoint, "subscribe", &request.to_string(), "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(subscriber.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert_eq!(first, r#"{"subscribed": true}"#);
    // The other one first: were the pid filter ignored, it would be the one
    // event the client takes.
    let other_pid = other.pid();
    other.release();
    agent.event("process_exec", other_pid);
    let pid = ours.pid();
    ours.release();
    let last = lines.next().unwrap().unwrap();
    subscriber.wait().unwrap();
    let got: Value = serde_json::from_str(&last).unwrap();
    let event = &got["events"][0];
    assert_eq!(event["type"], "process_exec", "{got}");
    assert_eq!(event["json"]["process"]["pid"], pid, "{got}");
    assert_eq!(
        event["json"]["process"]["args"],
        json!(["/bin/true", "filtered-in"]),
        "{got}"
    );
    assert_eq!(got["events"].as_array().unwrap().len(), 1, "{got}");
    let written = agent.event_where("process_exec", pid, |e| e["process"]["exe"] == exe.as_str());
    assert_eq!(event["json"], written);
}
