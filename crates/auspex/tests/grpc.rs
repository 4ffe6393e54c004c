//! The gRPC event stream, read by a real client: a subscriber gets the
//! events the agent writes, only of the types it asked for.

mod common;

use std::process::Command;
use std::time::Instant;

use common::{canonical, deadline, Agent};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

mod pb {
    include!(concat!(env!("OUT_DIR"), "/client/auspex.v1.rs"));
}

use pb::events_client::EventsClient;
use pb::SubscribeRequest;

#[test]
fn a_subscriber_gets_the_exec_it_asked_for_and_nothing_else() {
    let agent = Agent::start(&["--grpc-listen", "127.0.0.1:0"]);
    let addr = agent.logged_after("gRPC event stream on ");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (exec, others, mut stream) = runtime.block_on(async {
        let mut client = EventsClient::connect(addr).await.unwrap();
        let mut stream = client
            .subscribe(SubscribeRequest {
                types: vec!["process_exec".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        // Subscribed: what happens from now on is streamed.
        let mut child = Command::new("/bin/true")
            .arg("through-grpc")
            .spawn()
            .unwrap();
        child.wait().unwrap();
        let pid = child.id();
        let start = Instant::now();
        let mut others = Vec::new();
        loop {
            let left = deadline().saturating_sub(start.elapsed());
            let next = tokio::time::timeout(left, stream.message()).await;
            let Ok(Ok(Some(event))) = next else {
                panic!(
                    "no process_exec for pid {pid} on the stream ({next:?}); other types seen: \
                     {others:?}\nagent stderr:\n{}",
                    agent.stderr_text()
                );
            };
            let value: Value = serde_json::from_str(&event.json).unwrap();
            if event.r#type != "process_exec" || value["type"] != "process_exec" {
                others.push(event.r#type.clone());
            }
            if value["process"]["pid"] == pid {
                return (value, others, stream);
            }
        }
    });
    assert_eq!(
        exec["process"]["args"],
        json!(["/bin/true", "through-grpc"]),
        "{exec}"
    );
    assert_eq!(exec["process"]["exe"], canonical("/bin/true"), "{exec}");
    assert!(others.is_empty(), "types not asked for: {others:?}");
    // The same event went to the output file too.
    let written = agent.event(
        "process_exec",
        exec["process"]["pid"].as_u64().unwrap() as u32,
    );
    assert_eq!(written, exec);
    // Stopping ends the stream cleanly, after what was still owed.
    let (status, stderr) = agent.stop(Signal::SIGTERM);
    assert!(status.success(), "{status}: {stderr:?}");
    runtime.block_on(async {
        loop {
            match tokio::time::timeout(deadline(), stream.message()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => break,
                other => panic!("the stream did not end cleanly: {other:?}\n{stderr:?}"),
            }
        }
    });
}

#[test]
fn a_taken_grpc_port_is_one_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = common::run_failing(&mut common::auspex_run(&["--grpc-listen", &addr]));
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        common::error_line(&stderr),
        format!(
            "auspex: error: cannot listen on {addr} for the gRPC stream (--grpc-listen): \
             Address already in use (os error 98)"
        )
    );
}

#[test]
fn sigterm_ends_a_health_watch_with_not_serving_without_waiting_the_drain() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let agent = Agent::start(&["--grpc-listen", "127.0.0.1:0"]);
    let addr = agent.logged_after("gRPC event stream on ");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(agent.child.id() as i32);
    let (seen, end, exited) = runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(addr)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut watch = HealthClient::new(channel)
            .watch(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner();
        let mut seen = Vec::new();
        // Ready first (the agent answered its readiness once started).
        while seen.last() != Some(&(ServingStatus::Serving as i32)) {
            match tokio::time::timeout(deadline(), watch.message()).await {
                Ok(Ok(Some(m))) => seen.push(m.status),
                other => panic!("no SERVING on the watch: {other:?}, saw {seen:?}"),
            }
        }
        nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
        let end = loop {
            match tokio::time::timeout(deadline(), watch.message()).await {
                Ok(Ok(Some(m))) => seen.push(m.status),
                other => break format!("{other:?}"),
            }
        };
        // Waited for on a blocking thread, so that this runtime keeps the
        // client's connection answering (the graceful stop's HTTP/2 ping),
        // as a live client does.
        let exited = tokio::task::spawn_blocking(move || {
            agent.wait_for_exit(Some(Instant::now() + deadline()))
        })
        .await
        .unwrap();
        (seen, end, exited)
    });
    let (status, stderr) =
        exited.unwrap_or_else(|stderr| panic!("the agent did not exit: {stderr}"));
    assert!(status.success(), "{status}: {stderr:?}");
    assert_eq!(
        seen.last(),
        Some(&(ServingStatus::NotServing as i32)),
        "statuses {seen:?}, then {end}"
    );
    // The stream ended cleanly (no error, no deadline).
    assert_eq!(end, "Ok(Ok(None))", "statuses {seen:?}");
    assert!(
        !stderr.iter().any(|l| l.contains("still reading")),
        "the stop waited on the watch: {stderr:?}"
    );
}
