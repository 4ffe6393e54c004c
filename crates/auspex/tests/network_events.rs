//! Network events of the BPF methods in cases the any_kernel cells do not
//! reach: a TCP connection closed by a reset, whose close the kernel traces
//! after it has released the connection's local port.

mod common;

use std::io::{ErrorKind, Read};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};

use common::Agent;
use nix::sys::signal::Signal;
use nix::sys::socket::{setsockopt, sockopt::Linger};
use serde_json::{json, Value};

/// `auspex run --method <method>`, checked to run that method.
fn agent_with(method: &str) -> Agent {
    let agent = Agent::start(&["--method", method]);
    let status: Value = serde_json::from_str(&agent.http_get("/status").1).unwrap();
    assert_eq!(status["method"], method, "{status:#}");
    agent
}

/// An address as the agent writes it.
fn addr(a: SocketAddr) -> Value {
    json!({"ip": a.ip().to_string(), "port": a.port()})
}

/// A loopback connection to `ip`, reset by the client (SO_LINGER {on, 0},
/// then close: the kernel sends RST instead of FIN), so that both ends go
/// from ESTABLISHED straight to CLOSE: the client in its close, the server
/// when the RST arrives. Each end's open and close must carry the same
/// addresses and ports, matched by the socket's id.
fn reset_connection_keeps_its_ports(agent: &Agent, ip: IpAddr) {
    let listener = TcpListener::bind((ip, 0)).unwrap();
    let server_addr = listener.local_addr().unwrap();
    let client = TcpStream::connect(server_addr).unwrap();
    let client_addr = client.local_addr().unwrap();
    let (mut server, peer) = listener.accept().unwrap();
    assert_eq!(peer, client_addr);

    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(&client, Linger, &linger).unwrap();
    drop(client);
    // The server's end saw the reset (not an orderly end of stream, which
    // would be a FIN and another path through the kernel).
    let mut buf = [0u8; 1];
    let read = server.read(&mut buf);
    assert_eq!(
        read.as_ref().map_err(|e| e.kind()).err(),
        Some(ErrorKind::ConnectionReset),
        "{read:?}"
    );
    drop((server, listener));

    let me = std::process::id();
    let ends = [
        ("client", client_addr, server_addr),
        ("server", server_addr, client_addr),
    ];
    for (role, local, remote) in ends {
        let open = agent.event_where("connection_open", me, |e| {
            e["role"] == role && e["local"] == addr(local) && e["remote"] == addr(remote)
        });
        assert_eq!(open["protocol"], "tcp", "{open}");
        let sock_id = open["sock_id"].clone();
        // A socket's id is its kernel address, which a later socket may
        // reuse: the remote end, which the kernel keeps, tells them apart.
        let close = agent.event_where("connection_close", me, |e| {
            e["sock_id"] == sock_id && e["remote"] == addr(remote)
        });
        assert_eq!(close["role"], role, "{close}");
        assert_eq!(close["protocol"], "tcp", "{close}");
        assert_eq!(
            close["local"],
            addr(local),
            "{role} close {close}\nopen {open}"
        );
        assert_eq!(
            close["remote"],
            addr(remote),
            "{role} close {close}\nopen {open}"
        );
    }
}

fn reset_connections_keep_their_ports(method: &str) {
    let agent = agent_with(method);
    reset_connection_keeps_its_ports(&agent, IpAddr::from([127, 0, 0, 1]));
    reset_connection_keeps_its_ports(&agent, "::1".parse().unwrap());
    let (code, stderr) = agent.stop(Signal::SIGTERM);
    assert!(code.success(), "{code}: {stderr:?}");
}

#[test]
fn core_bpf_reports_a_reset_connection_closed_with_its_ports() {
    reset_connections_keep_their_ports("core_bpf");
}

#[test]
fn ebpf_reports_a_reset_connection_closed_with_its_ports() {
    reset_connections_keep_their_ports("ebpf");
}
