//! The connection tracker live: repeated short connections and afterglow.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};

use common::{Agent, AUSPEX};
use nix::sys::signal::Signal;
use serde_json::Value;

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../auspex-probe/tests/peer.py");

/// Runs 200 short TCP connections between two processes and returns, from
/// all the connections deltas the agent wrote, the entries (client side,
/// server side) about them.
fn two_hundred_connections(afterglow: &str) -> (Vec<Value>, Vec<Value>) {
    let mut command = Command::new(AUSPEX);
    command.arg("run");
    let agent = Agent::launch(
        command,
        &[
            "--report",
            "deltas",
            "--delta-interval",
            "0.5",
            "--afterglow",
            afterglow,
        ],
    );
    let mut server = Command::new("python3")
        .args([PEER, "tcp-accept-n", "127.0.0.1", "0", "200"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port = serde_json::from_str::<Value>(&line).unwrap()["listening"][1].clone();
    let client = Command::new("python3")
        .args([PEER, "tcp-connect-n", "127.0.0.1", &port.to_string(), "200"])
        .output()
        .unwrap();
    assert!(client.status.success());
    server.wait().unwrap();

    // Wait for a delta that reports the listener closed (the last thing
    // that happened), then gather.
    let entries = |side: &str| -> Vec<Value> {
        agent
            .events()
            .iter()
            .filter(|e| e["type"] == "connections_delta")
            .flat_map(|e| e["added"].as_array().unwrap().clone())
            .filter(|c| match side {
                "client" => c["role"] == "client" && c["remote"]["port"] == port,
                _ => c["role"] == "server" && c["local"]["port"] == port,
            })
            .collect()
    };
    // A marker: one more connection, after all of them. Once both its
    // ends are in a delta, every connection before it has been tracked
    // and reported.
    let marker = TcpListener::bind("127.0.0.1:0").unwrap();
    let marker_port = marker.local_addr().unwrap().port();
    let client = TcpStream::connect(("127.0.0.1", marker_port)).unwrap();
    drop((marker.accept().unwrap(), client, marker));
    agent.wait_until("the marker connection is in a delta", |a| {
        let sides: Vec<bool> = a
            .events()
            .iter()
            .filter(|e| e["type"] == "connections_delta")
            .flat_map(|e| e["added"].as_array().unwrap().clone())
            .map(|c| c["remote"]["port"] == marker_port || c["local"]["port"] == marker_port)
            .collect();
        sides.iter().filter(|marked| **marked).count() >= 2
    });
    let result = (entries("client"), entries("server"));
    assert!(
        agent
            .events()
            .iter()
            .all(|e| e["type"] != "connection_open"),
        "raw events were written with --report deltas"
    );
    let (status, stderr) = agent.stop(Signal::SIGTERM);
    assert!(status.success(), "{status}: {stderr:?}");
    result
}

#[test]
fn with_afterglow_two_hundred_connections_are_one() {
    let (client, server) = two_hundred_connections("300");
    assert_eq!(client.len(), 1, "{client:#?}");
    assert_eq!(server.len(), 1, "{server:#?}");
    let c = &client[0];
    assert_eq!(c["protocol"], "tcp", "{c}");
    assert_eq!(c["local"]["ip"], "0.0.0.0", "{c}");
    assert_eq!(c["local"]["port"], 0, "{c}");
    assert_eq!(c["remote"]["ip"], "127.0.0.1", "{c}");
    let s = &server[0];
    assert_eq!(s["remote"]["port"], 0, "{s}");
    assert!(c["exe"].as_str().unwrap().contains("python"), "{c}");
}

#[test]
fn without_afterglow_every_connection_is_reported() {
    let (client, server) = two_hundred_connections("0");
    assert_eq!(client.len(), 200);
    assert_eq!(server.len(), 200);
    assert!(client.iter().all(|c| c["closed"].is_string()));
}
