//! Connections and endpoints from /proc scans: every network namespace's
//! socket tables, sockets mapped to their processes through /proc/<pid>/fd,
//! and the difference from the previous scan reported as opens and closes.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr as StdSocketAddr;
use std::os::unix::fs::MetadataExt;

use auspex_events::{
    Connection, Endpoint, Event, EventKind, Process, Protocol, Role, SockId, SocketAddr,
};
use chrono::{DateTime, Utc};
use procfs::net::TcpState;
use procfs::process::{all_processes, FDTarget, Process as ProcProcess};

use crate::procinfo::ProcReader;

/// A socket, in a network namespace.
type SockKey = (u32, u64);

#[derive(Debug, Default)]
struct Snapshot {
    connections: HashMap<SockKey, Connection>,
    endpoints: HashMap<SockKey, Endpoint>,
}

/// What one pass over /proc found: who owns which socket, and one process
/// per network namespace to read that namespace's tables through.
#[derive(Debug, Default)]
struct Owners {
    by_inode: HashMap<u64, u32>,
    netns: HashMap<u32, u32>,
}

pub struct Scanner {
    reader: ProcReader,
    previous: Snapshot,
    /// Sockets seen without an owner last scan (see `defer_unowned`).
    deferred: std::collections::HashSet<SockKey>,
    sock_key: RandomState,
    /// Process details by (pid, start time): read once per process, not
    /// once per scan.
    processes: HashMap<(u32, u64), Process>,
    /// The first port of the ephemeral range: a bound, unconnected UDP
    /// socket below it is taken for a server.
    ephemeral_low: u16,
}

impl Scanner {
    pub fn new(reader: ProcReader) -> Self {
        let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(32768);
        Scanner {
            reader,
            previous: Snapshot::default(),
            deferred: std::collections::HashSet::new(),
            sock_key: RandomState::new(),
            processes: HashMap::new(),
            ephemeral_low,
        }
    }

    /// Scans, and returns what opened and closed since the last scan.
    pub fn scan(&mut self, time: DateTime<Utc>) -> Vec<Event> {
        let owners = self.owners();
        let mut current = self.snapshot(&owners);
        self.defer_unowned(&mut current);
        let previous = std::mem::replace(&mut self.previous, current);
        let current = &self.previous;
        let mut events = Vec::new();
        let mut emit = |kind| events.push(Event::new(time, kind));
        for (key, c) in &current.connections {
            if !previous.connections.contains_key(key) {
                emit(EventKind::ConnectionOpen(c.clone()));
            }
        }
        for (key, e) in &current.endpoints {
            if !previous.endpoints.contains_key(key) {
                emit(EventKind::EndpointOpen(e.clone()));
            }
        }
        for (key, c) in previous.connections {
            if !current.connections.contains_key(&key) {
                emit(EventKind::ConnectionClose(c));
            }
        }
        for (key, e) in previous.endpoints {
            if !current.endpoints.contains_key(&key) {
                emit(EventKind::EndpointClose(e));
            }
        }
        // Forget processes that are gone.
        let alive: std::collections::HashSet<u32> = owners.by_inode.values().copied().collect();
        self.processes.retain(|(pid, _), _| alive.contains(pid));
        events
    }

    /// A socket created between reading the processes' fds and reading
    /// the socket tables has no owner yet: it is reported one scan later,
    /// with its owner, rather than now without. One that still has none
    /// then (its owner is not visible here) is reported as it is.
    fn defer_unowned(&mut self, current: &mut Snapshot) {
        let previous = &self.previous;
        let deferred = &self.deferred;
        let mut now_deferred = std::collections::HashSet::new();
        current.connections.retain(|key, c| {
            let keep = c.process.is_some()
                || previous.connections.contains_key(key)
                || deferred.contains(key);
            if !keep {
                now_deferred.insert(*key);
            }
            keep
        });
        current.endpoints.retain(|key, e| {
            let keep = e.process.is_some()
                || previous.endpoints.contains_key(key)
                || deferred.contains(key);
            if !keep {
                now_deferred.insert(*key);
            }
            keep
        });
        self.deferred = now_deferred;
    }

    fn owners(&self) -> Owners {
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

    fn snapshot(&mut self, owners: &Owners) -> Snapshot {
        let mut snap = Snapshot::default();
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
                        let e =
                            self.endpoint(Protocol::Tcp, netns, t.inode, t.local_address, owners);
                        snap.endpoints.insert(key, e);
                    }
                    TcpState::Established => {
                        let role = if listening.contains(&t.local_address.port()) {
                            Role::Server
                        } else {
                            Role::Client
                        };
                        let c = self.connection(
                            Protocol::Tcp,
                            role,
                            netns,
                            t.inode,
                            t.local_address,
                            t.remote_address,
                            owners,
                        );
                        snap.connections.insert(key, c);
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
                    let c = self.connection(
                        Protocol::Udp,
                        Role::Client,
                        netns,
                        u.inode,
                        u.local_address,
                        u.remote_address,
                        owners,
                    );
                    snap.connections.insert(key, c);
                } else if u.local_address.port() < self.ephemeral_low {
                    let e = self.endpoint(Protocol::Udp, netns, u.inode, u.local_address, owners);
                    snap.endpoints.insert(key, e);
                }
            }
        }
        snap
    }

    fn sock_id(&self, netns: u32, inode: u64) -> SockId {
        SockId(self.sock_key.hash_one((netns, inode)))
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
        netns: u32,
        inode: u64,
        local: StdSocketAddr,
        owners: &Owners,
    ) -> Endpoint {
        Endpoint {
            protocol,
            local: addr(local),
            netns,
            sock_id: self.sock_id(netns, inode),
            process: self.owner(inode, owners),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn connection(
        &mut self,
        protocol: Protocol,
        role: Role,
        netns: u32,
        inode: u64,
        local: StdSocketAddr,
        remote: StdSocketAddr,
        owners: &Owners,
    ) -> Connection {
        Connection {
            protocol,
            role: Some(role),
            local: addr(local),
            remote: addr(remote),
            netns,
            sock_id: self.sock_id(netns, inode),
            process: self.owner(inode, owners),
        }
    }
}

/// IPv4-mapped IPv6 shown as IPv4, as everywhere in Auspex.
fn addr(a: StdSocketAddr) -> SocketAddr {
    SocketAddr {
        ip: a.ip().to_canonical(),
        port: a.port(),
    }
}
