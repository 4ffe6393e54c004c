//! The sockets every network namespace has now: /proc/<pid>/net/{tcp,udp}{,6}
//! read once per namespace, each socket given its owner through the
//! processes' /proc/<pid>/fd.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr as StdSocketAddr;
use std::os::unix::fs::MetadataExt;

use auspex_events::{Connection, Endpoint, Process, Protocol, Role, SockId, SocketAddr};
use procfs::net::TcpState;
use procfs::process::{all_processes, FDTarget, Process as ProcProcess};

use crate::process::ProcReader;

/// A socket, in a network namespace: (namespace inode, socket inode).
pub type SockKey = (u32, u64);

/// The connections and endpoints found by one read.
#[derive(Debug, Default)]
pub struct Sockets {
    pub connections: HashMap<SockKey, Connection>,
    pub endpoints: HashMap<SockKey, Endpoint>,
}

/// What one pass over /proc found: who owns which socket, and one process
/// per network namespace to read that namespace's tables through.
#[derive(Debug, Default)]
struct Owners {
    by_inode: HashMap<u64, u32>,
    netns: HashMap<u32, u32>,
}

/// Reads the socket tables; remembers process details between reads.
pub struct SocketReader {
    reader: ProcReader,
    sock_key: RandomState,
    /// Process details by (pid, start time): read once per process, not
    /// once per read.
    processes: HashMap<(u32, u64), Process>,
    /// The first port of the ephemeral range: a bound, unconnected UDP
    /// socket below it is taken for a server.
    ephemeral_low: u16,
}

impl SocketReader {
    pub fn new(reader: ProcReader) -> Self {
        let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(32768);
        SocketReader {
            reader,
            sock_key: RandomState::new(),
            processes: HashMap::new(),
            ephemeral_low,
        }
    }

    /// Every listening or connected TCP socket and every connected (or
    /// bound, below the ephemeral range) UDP socket, with its owner when
    /// one is visible here.
    pub fn read(&mut self) -> Sockets {
        let owners = owners();
        let sockets = self.tables(&owners);
        // Forget processes that are gone.
        let alive: HashSet<u32> = owners.by_inode.values().copied().collect();
        self.processes.retain(|(pid, _), _| alive.contains(pid));
        sockets
    }

    fn tables(&mut self, owners: &Owners) -> Sockets {
        let mut found = Sockets::default();
        for (&netns, &pid) in &owners.netns {
            let Ok(p) = ProcProcess::new(pid as i32) else {
                continue;
            };
            let tcp: Vec<_> = [p.tcp(), p.tcp6()]
                .into_iter()
                .flatten()
                .flatten()
                .collect();
            let listening: Vec<u16> = tcp
                .iter()
                .filter(|t| t.state == TcpState::Listen)
                .map(|t| t.local_address.port())
                .collect();
            for t in tcp.iter().filter(|t| t.inode != 0) {
                let key = (netns, t.inode);
                match t.state {
                    TcpState::Listen => {
                        let e = self.endpoint(Protocol::Tcp, key, t.local_address, owners);
                        found.endpoints.insert(key, e);
                    }
                    TcpState::Established => {
                        let role = if listening.contains(&t.local_address.port()) {
                            Role::Server
                        } else {
                            Role::Client
                        };
                        let ends = (t.local_address, t.remote_address);
                        let c = self.connection(Protocol::Tcp, role, key, ends, owners);
                        found.connections.insert(key, c);
                    }
                    _ => {}
                }
            }
            for u in [p.udp(), p.udp6()].into_iter().flatten().flatten() {
                if u.inode == 0 || u.local_address.port() == 0 {
                    continue;
                }
                let key = (netns, u.inode);
                if u.remote_address.port() != 0 {
                    let ends = (u.local_address, u.remote_address);
                    let c = self.connection(Protocol::Udp, Role::Client, key, ends, owners);
                    found.connections.insert(key, c);
                } else if u.local_address.port() < self.ephemeral_low {
                    let e = self.endpoint(Protocol::Udp, key, u.local_address, owners);
                    found.endpoints.insert(key, e);
                }
            }
        }
        found
    }

    fn sock_id(&self, key: SockKey) -> SockId {
        SockId(self.sock_key.hash_one(key))
    }

    /// The owner of a socket; details read once per process.
    fn owner(&mut self, inode: u64, owners: &Owners) -> Option<Process> {
        let pid = *owners.by_inode.get(&inode)?;
        let start = ProcProcess::new(pid as i32).ok()?.stat().ok()?.starttime;
        let reader = &self.reader;
        Some(
            self.processes
                .entry((pid, start))
                .or_insert_with(|| reader.process(pid, pid))
                .clone(),
        )
    }

    fn endpoint(
        &mut self,
        protocol: Protocol,
        key: SockKey,
        local: StdSocketAddr,
        owners: &Owners,
    ) -> Endpoint {
        Endpoint {
            protocol,
            local: addr(local),
            netns: Some(key.0),
            sock_id: self.sock_id(key),
            process: self.owner(key.1, owners),
        }
    }

    fn connection(
        &mut self,
        protocol: Protocol,
        role: Role,
        key: SockKey,
        (local, remote): (StdSocketAddr, StdSocketAddr),
        owners: &Owners,
    ) -> Connection {
        Connection {
            protocol,
            role: Some(role),
            local: addr(local),
            remote: addr(remote),
            netns: Some(key.0),
            sock_id: self.sock_id(key),
            process: self.owner(key.1, owners),
        }
    }
}

fn owners() -> Owners {
    let mut owners = Owners::default();
    let Ok(processes) = all_processes() else {
        return owners;
    };
    for p in processes.flatten() {
        let pid = p.pid as u32;
        let Ok(ns) = std::fs::metadata(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        owners.netns.entry(ns.ino() as u32).or_insert(pid);
        let Ok(fds) = p.fd() else { continue };
        for fd in fds.flatten() {
            if let FDTarget::Socket(inode) = fd.target {
                owners.by_inode.entry(inode).or_insert(pid);
            }
        }
    }
    owners
}

/// IPv4-mapped IPv6 shown as IPv4, as everywhere in Auspex.
fn addr(a: StdSocketAddr) -> SocketAddr {
    SocketAddr {
        ip: a.ip().to_canonical(),
        port: a.port(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_and_its_connection_are_found_with_their_owner() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let local = client.local_addr().unwrap().port();
        let sockets = SocketReader::new(ProcReader::new()).read();
        let me = std::process::id();
        let endpoint = sockets
            .endpoints
            .values()
            .find(|e| e.local.port == port)
            .expect("the listener");
        assert_eq!(endpoint.process.as_ref().map(|p| p.pid), Some(me));
        let client = sockets
            .connections
            .values()
            .find(|c| c.local.port == local)
            .expect("the client end");
        assert_eq!(client.role, Some(Role::Client));
        assert_eq!(client.remote.port, port);
        let server = sockets
            .connections
            .values()
            .find(|c| c.remote.port == local)
            .expect("the server end");
        assert_eq!(server.role, Some(Role::Server));
        assert_eq!(server.process.as_ref().map(|p| p.pid), Some(me));
    }
}
