//! Live tests of the network probes (core_bpf; TCP also through the legacy
//! probe, which shares its state machine): real sockets in separate
//! processes (tests/peer.py), and the exact events they must produce,
//! nothing more. They need root, kernel BTF, cgroup v2, python3 and ip.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use auspex_events::{Event, EventKind, Protocol, Role, SocketAddr};
use auspex_probe::LegacyBpf;
use common::{Harness, Probe};
use serde_json::Value;

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peer.py");

/// A peer process running one action of peer.py.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    fn spawn(args: &[&str]) -> Peer {
        Self::spawn_in(None, args)
    }

    /// Runs the peer in network namespace `netns` (see `ip netns`).
    fn spawn_in(netns: Option<&str>, args: &[&str]) -> Peer {
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "python3", PEER]);
                c
            }
            None => {
                let mut c = Command::new("python3");
                c.arg(PEER);
                c
            }
        };
        let mut child = command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the test peer");
        Peer {
            stdin: child.stdin.take().unwrap(),
            stdout: BufReader::new(child.stdout.take().unwrap()),
            child,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The peer's next report.
    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("peer said {line:?}: {e}"))
    }

    /// Lets the peer go on to close its sockets.
    fn go(&mut self) {
        self.stdin.write_all(b"\n").unwrap();
        self.stdin.flush().unwrap();
    }

    fn finish(mut self) {
        let status = self.child.wait().unwrap();
        assert!(status.success(), "peer failed: {status}");
    }
}

fn socket_addr(v: &Value) -> SocketAddr {
    let ip: IpAddr = v[0].as_str().unwrap().parse().unwrap();
    SocketAddr {
        ip: ip.to_canonical(),
        port: v[1].as_u64().unwrap() as u16,
    }
}

fn port(v: &Value) -> String {
    v[1].as_u64().unwrap().to_string()
}

/// The inode of a network namespace file: what the probe reports as netns.
fn netns_of(path: &str) -> u32 {
    std::fs::metadata(path).unwrap().ino() as u32
}

/// A network event reduced to what a test states exactly.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Net {
    kind: &'static str,
    protocol: &'static str,
    role: Option<&'static str>,
    local: String,
    remote: Option<String>,
    pid: Option<u32>,
    /// None where the probe cannot know it (the legacy one without BTF).
    netns: Option<u32>,
}

fn net(e: &Event) -> Option<Net> {
    let protocol = |p: Protocol| match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    let role = |r: Option<Role>| {
        r.map(|r| match r {
            Role::Client => "client",
            Role::Server => "server",
        })
    };
    let show = |a: &SocketAddr| format!("{}:{}", a.ip, a.port);
    match &e.kind {
        EventKind::ConnectionOpen(c) | EventKind::ConnectionClose(c) => Some(Net {
            kind: e.kind.name(),
            protocol: protocol(c.protocol),
            role: role(c.role),
            local: show(&c.local),
            remote: Some(show(&c.remote)),
            pid: c.process.as_ref().map(|p| p.pid),
            netns: c.netns,
        }),
        EventKind::EndpointOpen(ep) | EventKind::EndpointClose(ep) => Some(Net {
            kind: e.kind.name(),
            protocol: protocol(ep.protocol),
            role: None,
            local: show(&ep.local),
            remote: None,
            pid: ep.process.as_ref().map(|p| p.pid),
            netns: ep.netns,
        }),
        _ => None,
    }
}

fn conn(
    kind: &'static str,
    proto: &'static str,
    role: &'static str,
    local: &SocketAddr,
    remote: &SocketAddr,
    pid: u32,
    netns: Option<u32>,
) -> Net {
    Net {
        kind,
        protocol: proto,
        role: Some(role),
        local: format!("{}:{}", local.ip, local.port),
        remote: Some(format!("{}:{}", remote.ip, remote.port)),
        pid: Some(pid),
        netns,
    }
}

/// The open and the close of one connection, or of one endpoint.
fn lifetime(
    proto: &'static str,
    role: &'static str,
    local: &SocketAddr,
    remote: &SocketAddr,
    pid: u32,
    netns: Option<u32>,
) -> Vec<Net> {
    ["connection_open", "connection_close"]
        .map(|kind| conn(kind, proto, role, local, remote, pid, netns))
        .to_vec()
}

fn endpoint_lifetime(
    proto: &'static str,
    local: &SocketAddr,
    pid: u32,
    netns: Option<u32>,
) -> Vec<Net> {
    ["endpoint_open", "endpoint_close"]
        .map(|kind| endpoint(kind, proto, local, pid, netns))
        .to_vec()
}

fn endpoint(
    kind: &'static str,
    proto: &'static str,
    local: &SocketAddr,
    pid: u32,
    netns: Option<u32>,
) -> Net {
    Net {
        kind,
        protocol: proto,
        role: None,
        local: format!("{}:{}", local.ip, local.port),
        remote: None,
        pid: Some(pid),
        netns,
    }
}

/// Waits for the last expected event, then compares every network event
/// of the expected protocols and namespaces that touches one of `ports`
/// with `expected` (order aside).
fn assert_network_events<P: Probe>(
    h: &mut Harness<P>,
    ports: &[u16],
    last: &Net,
    mut expected: Vec<Net>,
) {
    let scope: Vec<(&str, Option<u32>)> = expected.iter().map(|n| (n.protocol, n.netns)).collect();
    let touches = |n: &Net| {
        scope.contains(&(n.protocol, n.netns))
            && ports.iter().any(|p| {
                n.local.ends_with(&format!(":{p}"))
                    || n.remote
                        .as_ref()
                        .is_some_and(|r| r.ends_with(&format!(":{p}")))
            })
    };
    let related = |e: &Event| net(e).is_some_and(|n| touches(&n));
    h.wait_until(
        &format!("{last:?}"),
        |e| net(e).as_ref() == Some(last),
        related,
    );
    let mut seen: Vec<Net> = h
        .seen
        .iter()
        .filter_map(net)
        .filter(|n| touches(n))
        .collect();
    seen.sort();
    expected.sort();
    assert_eq!(
        seen,
        expected,
        "network events differ from what the sockets did.\n{}",
        h.describe(related)
    );
}

/// A UDP port free right now: UDP endpoints are sockets bound to a port
/// they chose, not to an ephemeral one.
fn free_udp_port() -> String {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port().to_string()
}

fn own_netns() -> Option<u32> {
    Some(netns_of("/proc/self/ns/net"))
}

/// Where a peer runs: a named network namespace (None: this one), and
/// that namespace's id.
struct Side<'a> {
    netns_name: Option<&'a str>,
    netns: Option<u32>,
}

/// A TCP connection from `client` to a listener on `host` in `server`,
/// closed by the client, then the listener closed: exactly six events.
fn tcp_both_sides(host: &str, server: Side<'_>, client: Side<'_>) {
    tcp_both_sides_seen_by(Harness::start(), host, server, client);
}

/// The same, seen by the legacy probe: the same TCP state machine over the
/// tracepoint's arguments, with the network namespace read with CO-RE (the
/// kernel's BTF is at hand here).
fn legacy_tcp_both_sides(host: &str, server: Side<'_>, client: Side<'_>) {
    tcp_both_sides_seen_by(Harness::of(legacy_probe()), host, server, client);
}

fn legacy_probe() -> LegacyBpf {
    LegacyBpf::load(None).unwrap_or_else(|e| panic!("loading the legacy probe: {e}"))
}

fn tcp_both_sides_seen_by<P: Probe>(
    mut h: Harness<P>,
    host: &str,
    server: Side<'_>,
    client: Side<'_>,
) {
    let mut server_peer = Peer::spawn_in(server.netns_name, &["tcp-server", host, "0"]);
    let listening = server_peer.read()["listening"].clone();
    let mut client_peer =
        Peer::spawn_in(client.netns_name, &["tcp-client", host, &port(&listening)]);
    let c = client_peer.read();
    let s = server_peer.read();
    client_peer.go();
    assert_eq!(client_peer.read()["done"], true);
    assert_eq!(server_peer.read()["closed"], true);
    server_peer.go();
    assert_eq!(server_peer.read()["done"], true);
    let (server_pid, client_pid) = (server_peer.pid(), client_peer.pid());
    server_peer.finish();
    client_peer.finish();

    let listen = socket_addr(&listening);
    let client_local = socket_addr(&c["local"]);
    let server_local = socket_addr(&s["local"]);
    assert_eq!(socket_addr(&s["accepted"]), client_local);
    let (sns, cns) = (server.netns, client.netns);
    let last = endpoint("endpoint_close", "tcp", &listen, server_pid, sns);
    assert_network_events(
        &mut h,
        &[listen.port],
        &last,
        [
            endpoint_lifetime("tcp", &listen, server_pid, sns),
            lifetime(
                "tcp",
                "client",
                &client_local,
                &server_local,
                client_pid,
                cns,
            ),
            lifetime(
                "tcp",
                "server",
                &server_local,
                &client_local,
                server_pid,
                sns,
            ),
        ]
        .concat(),
    );
}

impl<'a> Side<'a> {
    /// The named namespace (see `ip netns`).
    fn named(ns: &'a str) -> Self {
        Side {
            netns_name: Some(ns),
            netns: Some(netns_of(&format!("/run/netns/{ns}"))),
        }
    }
}

fn here() -> Side<'static> {
    Side {
        netns_name: None,
        netns: own_netns(),
    }
}

#[test]
fn tcp_over_ipv4_loopback_both_sides_open_and_close() {
    tcp_both_sides("127.0.0.1", here(), here());
}

#[test]
fn tcp_over_ipv6_loopback_both_sides_open_and_close() {
    tcp_both_sides("::1", here(), here());
}

#[test]
fn legacy_tcp_over_ipv4_loopback_both_sides_open_and_close() {
    legacy_tcp_both_sides("127.0.0.1", here(), here());
}

#[test]
fn legacy_tcp_over_ipv6_loopback_both_sides_open_and_close() {
    legacy_tcp_both_sides("::1", here(), here());
}

#[test]
fn nonblocking_connect_opens_and_refused_connect_does_not() {
    let mut h = Harness::start();
    let ns = own_netns();
    // A port that is bound but not listening: connecting there is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let refused = Peer::spawn(&["tcp-refused", "127.0.0.1", &closed_port.to_string()]);
    let mut refused = refused;
    assert_eq!(refused.read()["error"], 111, "ECONNREFUSED expected");
    refused.finish();

    let mut server = Peer::spawn(&["tcp-server", "127.0.0.1", "0"]);
    let listening = server.read()["listening"].clone();
    let mut client = Peer::spawn(&["tcp-client", "127.0.0.1", &port(&listening), "nonblocking"]);
    let c = client.read();
    let s = server.read();
    let client_local = socket_addr(&c["local"]);
    let server_local = socket_addr(&s["local"]);
    let opened = conn(
        "connection_open",
        "tcp",
        "client",
        &client_local,
        &server_local,
        client.pid(),
        ns,
    );
    h.wait_until(
        "the non-blocking client's open",
        |e| net(e).as_ref() == Some(&opened),
        |e| net(e).is_some(),
    );
    client.go();
    client.read();
    server.read();
    server.go();
    server.read();
    client.finish();
    server.finish();
    // Everything before the open above has been delivered: the refused
    // attempt produced no event at all.
    let about_refused: Vec<Net> = h
        .seen
        .iter()
        .filter_map(net)
        .filter(|n| {
            n.remote
                .as_ref()
                .is_some_and(|r| r.ends_with(&format!(":{closed_port}")))
        })
        .collect();
    assert!(
        about_refused.is_empty(),
        "refused connect reported: {about_refused:?}"
    );
}

#[test]
fn connected_udp_is_one_connection_each_side() {
    connected_udp_seen_by(Harness::start());
}

/// The legacy probe reports the client's open when its socket is released
/// (it has no BPF timer), which changes when, not what.
#[test]
fn legacy_connected_udp_is_one_connection_each_side() {
    connected_udp_seen_by(Harness::of(legacy_probe()));
}

fn connected_udp_seen_by<P: Probe>(mut h: Harness<P>) {
    let ns = own_netns();
    let mut server = Peer::spawn(&["udp-echo", "127.0.0.1", &free_udp_port(), "1"]);
    let bound = socket_addr(&server.read()["bound"]);
    let mut client = Peer::spawn(&["udp-connected", "127.0.0.1", &bound.port.to_string()]);
    let client_local = socket_addr(&client.read()["local"]);
    client.go();
    client.read();
    server.go();
    server.read();
    let (server_pid, client_pid) = (server.pid(), client.pid());
    client.finish();
    server.finish();

    let last = endpoint("endpoint_close", "udp", &bound, server_pid, ns);
    assert_network_events(
        &mut h,
        &[bound.port],
        &last,
        [
            endpoint_lifetime("udp", &bound, server_pid, ns),
            lifetime("udp", "client", &client_local, &bound, client_pid, ns),
            lifetime("udp", "server", &bound, &client_local, server_pid, ns),
        ]
        .concat(),
    );
}

#[test]
fn unconnected_udp_reports_each_peer_once_after_a_thousand_datagrams() {
    unconnected_udp_seen_by(Harness::start());
}

#[test]
fn legacy_unconnected_udp_reports_each_peer_once_after_a_thousand_datagrams() {
    unconnected_udp_seen_by(Harness::of(legacy_probe()));
}

fn unconnected_udp_seen_by<P: Probe>(mut h: Harness<P>) {
    let ns = own_netns();
    let mut a = Peer::spawn(&["udp-echo", "127.0.0.1", &free_udp_port(), "1000"]);
    let a_addr = socket_addr(&a.read()["bound"]);
    let mut b = Peer::spawn(&["udp-echo", "127.0.0.1", &free_udp_port(), "1000"]);
    let b_addr = socket_addr(&b.read()["bound"]);
    let mut talker = Peer::spawn(&[
        "udp-talk",
        "127.0.0.1",
        "1000",
        &a_addr.port.to_string(),
        &b_addr.port.to_string(),
    ]);
    // An unconnected socket bound to any address: that is its local address.
    let local = socket_addr(&talker.read()["local"]);
    talker.go();
    talker.read();
    a.go();
    a.read();
    b.go();
    b.read();
    let (a_pid, b_pid, t_pid) = (a.pid(), b.pid(), talker.pid());
    talker.finish();
    a.finish();
    b.finish();

    let talker_seen = SocketAddr {
        ip: "127.0.0.1".parse().unwrap(),
        port: local.port,
    };
    let last_a = endpoint("endpoint_close", "udp", &a_addr, a_pid, ns);
    let last_b = endpoint("endpoint_close", "udp", &b_addr, b_pid, ns);
    h.wait_until(
        "the first echo's close",
        |e| net(e).as_ref() == Some(&last_a),
        |e| net(e).is_some(),
    );
    assert_network_events(
        &mut h,
        &[a_addr.port, b_addr.port],
        &last_b,
        [
            endpoint_lifetime("udp", &a_addr, a_pid, ns),
            endpoint_lifetime("udp", &b_addr, b_pid, ns),
            lifetime("udp", "client", &local, &a_addr, t_pid, ns),
            lifetime("udp", "client", &local, &b_addr, t_pid, ns),
            // The echoes see the talker from the loopback address.
            lifetime("udp", "server", &a_addr, &talker_seen, a_pid, ns),
            lifetime("udp", "server", &b_addr, &talker_seen, b_pid, ns),
        ]
        .concat(),
    );
}

/// Two network namespaces joined by a veth pair, removed on drop.
struct VethPair {
    names: [String; 2],
}

impl VethPair {
    fn create(tag: &str, subnet: &str) -> VethPair {
        let names = [format!("auspex-{tag}-a"), format!("auspex-{tag}-b")];
        let pair = VethPair { names };
        let [a, b] = &pair.names;
        let ip = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .output()
                .expect("ip (iproute2) runs");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for ns in [a, b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
        }
        ip(&[
            "link",
            "add",
            "auspex-va",
            "netns",
            a,
            "type",
            "veth",
            "peer",
            "name",
            "auspex-vb",
            "netns",
            b,
        ]);
        ip(&[
            "-n",
            a,
            "addr",
            "add",
            &format!("{subnet}.1/24"),
            "dev",
            "auspex-va",
        ]);
        ip(&[
            "-n",
            b,
            "addr",
            "add",
            &format!("{subnet}.2/24"),
            "dev",
            "auspex-vb",
        ]);
        for (ns, dev) in [(a, "auspex-va"), (b, "auspex-vb")] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `test` with a server in one new network namespace and a client in
/// another, joined by a veth pair on `subnet` (the server is at .1).
fn in_two_namespaces(tag: &str, subnet: &str, test: impl FnOnce(&str, Side<'_>, Side<'_>)) {
    let veth = VethPair::create(&format!("{tag}{}", std::process::id()), subnet);
    let [ns_a, ns_b] = &veth.names;
    let (server, client) = (Side::named(ns_a), Side::named(ns_b));
    assert_ne!(server.netns, client.netns);
    test(&format!("{subnet}.1"), server, client);
}

#[test]
fn tcp_between_two_network_namespaces_has_their_addresses_and_ids() {
    in_two_namespaces("c", "10.213.77", tcp_both_sides);
}

#[test]
fn legacy_tcp_between_two_network_namespaces_has_their_addresses() {
    in_two_namespaces("l", "10.213.78", legacy_tcp_both_sides);
}
