//! UDP has no close handshake: the kernel only says that a UDP socket was
//! released, and this turns that into a close for every connection and
//! endpoint reported open for the socket.

use std::collections::HashMap;

use auspex_events::{Connection, Endpoint, Event, EventKind, Protocol, SockId};
use chrono::{DateTime, Utc};

#[derive(Debug)]
struct Reported {
    /// When the first of them was reported open.
    since: DateTime<Utc>,
    connections: Vec<Connection>,
    endpoint: Option<Endpoint>,
}

/// The UDP connections and endpoints reported open, by socket. Bounded: at
/// capacity an arbitrary socket is forgotten (its closes will not be
/// reported), and counted.
#[derive(Debug)]
pub struct UdpSockets {
    open: HashMap<SockId, Reported>,
    /// Releases of sockets not (yet) reported open, kept for one more
    /// read: see [`UdpSockets::release_or_hold`].
    held: Vec<(SockId, DateTime<Utc>)>,
    capacity: usize,
    forgotten: u64,
}

impl UdpSockets {
    pub fn new(capacity: usize) -> Self {
        UdpSockets {
            open: HashMap::new(),
            held: Vec::new(),
            capacity,
            forgotten: 0,
        }
    }

    /// Remembers a UDP open from the event stream.
    pub fn observe(&mut self, event: &Event) {
        let sock_id = match &event.kind {
            EventKind::ConnectionOpen(c) if c.protocol == Protocol::Udp => c.sock_id,
            EventKind::EndpointOpen(e) if e.protocol == Protocol::Udp => e.sock_id,
            _ => return,
        };
        if !self.open.contains_key(&sock_id) && self.open.len() >= self.capacity {
            if let Some(victim) = self.open.keys().next().copied() {
                self.open.remove(&victim);
                self.forgotten += 1;
            }
        }
        let reported = self.open.entry(sock_id).or_insert_with(|| Reported {
            since: event.time,
            connections: Vec::new(),
            endpoint: None,
        });
        match &event.kind {
            EventKind::ConnectionOpen(c) => reported.connections.push(c.clone()),
            EventKind::EndpointOpen(e) => reported.endpoint = Some(e.clone()),
            _ => {}
        }
    }

    /// The closes owed for a released socket.
    pub fn release(&mut self, sock_id: SockId, time: DateTime<Utc>) -> Vec<Event> {
        let Some(reported) = self.open.remove(&sock_id) else {
            return Vec::new();
        };
        Self::closes(reported, time)
    }

    /// [`release`](Self::release) for records read one CPU's buffer after
    /// another: a release of a socket not reported open is kept until
    /// [`retry_held`](Self::retry_held), as its open may have been written
    /// on a CPU whose buffer this read had already passed (it then comes
    /// with the next read). Most such releases are of sockets that never
    /// sent, and are dropped by the retry.
    pub fn release_or_hold(&mut self, sock_id: SockId, time: DateTime<Utc>) -> Vec<Event> {
        if !self.open.contains_key(&sock_id) {
            self.held.push((sock_id, time));
        }
        self.release(sock_id, time)
    }

    /// The closes owed for the releases held by the read before the last
    /// one, now that the last one's opens are known. Only an open older
    /// than the release is closed: a newer one is a new socket that got the
    /// released one's id.
    pub fn retry_held(&mut self, held: Vec<(SockId, DateTime<Utc>)>) -> Vec<Event> {
        let mut closes = Vec::new();
        for (sock_id, time) in held {
            if self.open.get(&sock_id).is_some_and(|r| r.since <= time) {
                closes.extend(self.release(sock_id, time));
            }
        }
        closes
    }

    /// The releases held since the last read, handed over for
    /// [`retry_held`](Self::retry_held) after the next.
    pub fn take_held(&mut self) -> Vec<(SockId, DateTime<Utc>)> {
        std::mem::take(&mut self.held)
    }

    fn closes(reported: Reported, time: DateTime<Utc>) -> Vec<Event> {
        let connections = reported
            .connections
            .into_iter()
            .map(EventKind::ConnectionClose);
        let endpoint = reported.endpoint.into_iter().map(EventKind::EndpointClose);
        connections
            .chain(endpoint)
            .map(|kind| Event::new(time, kind))
            .collect()
    }

    /// Sockets forgotten because the table was full.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use auspex_events::{Role, SocketAddr};

    fn addr(s: &str) -> SocketAddr {
        let a: std::net::SocketAddr = s.parse().unwrap();
        SocketAddr {
            ip: a.ip(),
            port: a.port(),
        }
    }

    fn open(sock: u64, protocol: Protocol, peer: &str) -> Event {
        Event::new(
            DateTime::from_timestamp(1, 0).unwrap(),
            EventKind::ConnectionOpen(Connection {
                protocol,
                role: Some(Role::Client),
                local: addr("10.0.0.1:5000"),
                remote: addr(peer),
                netns: Some(1),
                sock_id: SockId(sock),
                process: None,
            }),
        )
    }

    #[test]
    fn release_closes_every_flow_and_the_endpoint_once() {
        let mut udp = UdpSockets::new(16);
        udp.observe(&open(1, Protocol::Udp, "10.0.0.2:53"));
        udp.observe(&open(1, Protocol::Udp, "10.0.0.3:53"));
        udp.observe(&open(2, Protocol::Udp, "10.0.0.4:53"));
        udp.observe(&open(3, Protocol::Tcp, "10.0.0.5:80"));
        udp.observe(&Event::new(
            DateTime::from_timestamp(1, 0).unwrap(),
            EventKind::EndpointOpen(Endpoint {
                protocol: Protocol::Udp,
                local: addr("0.0.0.0:5000"),
                netns: Some(1),
                sock_id: SockId(1),
                process: None,
            }),
        ));
        let t = DateTime::from_timestamp(9, 0).unwrap();
        let closes = udp.release(SockId(1), t);
        let names: Vec<&str> = closes.iter().map(|e| e.kind.name()).collect();
        assert_eq!(
            names,
            ["connection_close", "connection_close", "endpoint_close"]
        );
        let EventKind::ConnectionClose(c) = &closes[1].kind else {
            panic!()
        };
        assert_eq!(c.remote, addr("10.0.0.3:53"));
        assert!(closes.iter().all(|e| e.time == t));
        assert!(udp.release(SockId(1), t).is_empty(), "closed twice");
        assert!(
            udp.release(SockId(3), t).is_empty(),
            "TCP is not tracked here"
        );
        assert_eq!(udp.release(SockId(2), t).len(), 1);
    }

    #[test]
    fn a_release_read_before_its_open_closes_it_after_the_next_read() {
        let mut udp = UdpSockets::new(16);
        let t = |s| DateTime::from_timestamp(s, 0).unwrap();
        // Read 1: socket 7's release (its open was on a CPU already read),
        // and socket 8's, which never sent.
        assert!(udp.release_or_hold(SockId(7), t(5)).is_empty());
        assert!(udp.release_or_hold(SockId(8), t(5)).is_empty());
        let held = udp.take_held();
        // Read 2: socket 7's open, from time 1; socket 8's id reused by a
        // new socket opened after the release, which stays open.
        udp.observe(&open(7, Protocol::Udp, "10.0.0.2:53"));
        let mut reused = open(8, Protocol::Udp, "10.0.0.9:53");
        reused.time = t(6);
        udp.observe(&reused);
        let closes = udp.retry_held(held);
        assert_eq!(closes.len(), 1, "{closes:?}");
        let EventKind::ConnectionClose(c) = &closes[0].kind else {
            panic!("{closes:?}")
        };
        assert_eq!((c.sock_id, closes[0].time), (SockId(7), t(5)));
        assert!(udp.take_held().is_empty());
        assert_eq!(udp.release(SockId(8), t(7)).len(), 1);
    }

    #[test]
    fn capacity_is_bounded_and_counted() {
        let mut udp = UdpSockets::new(2);
        for sock in 0..5 {
            udp.observe(&open(sock, Protocol::Udp, "10.0.0.2:53"));
        }
        assert_eq!(udp.forgotten(), 3);
        assert_eq!(udp.open.len(), 2);
    }
}
