//! Normalisation: what identifies a connection for the table. A server's
//! many clients on one port are one entry per client address; a client's
//! connections to one service are one entry, whatever its ephemeral port.

use std::net::IpAddr;

pub use auspex_events::Peer;
use auspex_events::{Role, SocketAddr};
use ipnet::IpNet;

pub const INTERNET: &str = "internet";

#[derive(Debug, Clone, Default)]
pub struct Normaliser {
    /// Collapse public remote addresses into one "internet" peer.
    pub aggregate_public: bool,
    /// Networks kept as they are even when public.
    pub never_aggregate: Vec<IpNet>,
}

/// Collector's ephemeral-port score: the higher-scoring side of a
/// connection is likely its client.
pub fn ephemeral_score(port: u16) -> u8 {
    match port {
        49152.. => 4,
        32768.. => 3,
        1025..=5000 => 2,
        1024 => 1,
        _ => 0,
    }
}

/// The role when the event does not say: the side with the more ephemeral
/// port is the client.
pub fn guess_role(local: &SocketAddr, remote: &SocketAddr) -> Role {
    if ephemeral_score(local.port) > ephemeral_score(remote.port) {
        Role::Client
    } else {
        Role::Server
    }
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                // 100.64.0.0/10, carrier-grade NAT: private in practice.
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64))
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80) // link local
        }
    }
}

impl Normaliser {
    /// The remote peer as the table shows it.
    pub fn peer(&self, ip: IpAddr, port: u16) -> Peer {
        let aggregate = self.aggregate_public
            && is_public(ip)
            && !self.never_aggregate.iter().any(|net| net.contains(&ip));
        Peer {
            ip: if aggregate {
                INTERNET.to_string()
            } else {
                ip.to_string()
            },
            port,
        }
    }

    /// (local, remote) of a connection as the table keys it: the server
    /// side keeps its port and the client's address; the client side keeps
    /// the server's address and port.
    pub fn endpoints(&self, role: Role, local: &SocketAddr, remote: &SocketAddr) -> (Peer, Peer) {
        match role {
            Role::Server => (
                Peer {
                    ip: unspecified(local.ip),
                    port: local.port,
                },
                self.peer(remote.ip, 0),
            ),
            Role::Client => (
                Peer {
                    ip: unspecified(local.ip),
                    port: 0,
                },
                self.peer(remote.ip, remote.port),
            ),
        }
    }
}

fn unspecified(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => "0.0.0.0".into(),
        IpAddr::V6(_) => "::".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        let a: std::net::SocketAddr = s.parse().unwrap();
        SocketAddr {
            ip: a.ip(),
            port: a.port(),
        }
    }

    #[test]
    fn both_roles_normalise() {
        let n = Normaliser::default();
        let (l, r) = n.endpoints(
            Role::Server,
            &addr("10.0.0.1:8080"),
            &addr("10.0.0.9:51234"),
        );
        assert_eq!(
            (l.ip.as_str(), l.port, r.ip.as_str(), r.port),
            ("0.0.0.0", 8080, "10.0.0.9", 0)
        );
        let (l, r) = n.endpoints(
            Role::Client,
            &addr("10.0.0.9:51234"),
            &addr("10.0.0.1:8080"),
        );
        assert_eq!(
            (l.ip.as_str(), l.port, r.ip.as_str(), r.port),
            ("0.0.0.0", 0, "10.0.0.1", 8080)
        );
        let (l, _) = n.endpoints(Role::Client, &addr("[::1]:51234"), &addr("[::1]:80"));
        assert_eq!(l.ip, "::");
    }

    #[test]
    fn the_ephemeral_heuristic_picks_the_client() {
        assert_eq!(
            guess_role(&addr("10.0.0.1:53000"), &addr("10.0.0.2:53")),
            Role::Client
        );
        assert_eq!(
            guess_role(&addr("10.0.0.1:443"), &addr("10.0.0.2:40000")),
            Role::Server
        );
        assert_eq!(
            guess_role(&addr("10.0.0.1:2000"), &addr("10.0.0.2:1024")),
            Role::Client
        );
        // Equal scores: the server side is assumed.
        assert_eq!(
            guess_role(&addr("10.0.0.1:80"), &addr("10.0.0.2:22")),
            Role::Server
        );
        assert_eq!(ephemeral_score(65535), 4);
        assert_eq!(ephemeral_score(0), 0);
    }

    #[test]
    fn public_addresses_aggregate_private_ones_never() {
        let n = Normaliser {
            aggregate_public: true,
            never_aggregate: vec!["8.8.8.0/24".parse().unwrap()],
        };
        assert_eq!(n.peer("1.1.1.1".parse().unwrap(), 443).ip, INTERNET);
        assert_eq!(n.peer("2606:4700::1111".parse().unwrap(), 443).ip, INTERNET);
        for kept in [
            "8.8.8.8",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "100.64.1.1",
            "fd00::1",
            "fe80::1",
            "::1",
        ] {
            assert_eq!(n.peer(kept.parse().unwrap(), 1).ip, kept, "{kept}");
        }
        let off = Normaliser::default();
        assert_eq!(off.peer("1.1.1.1".parse().unwrap(), 443).ip, "1.1.1.1");
    }
}
