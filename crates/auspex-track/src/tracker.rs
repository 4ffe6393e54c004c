//! The table: each connection (and endpoint) tracked over its lifetime,
//! reported once when new and once when inactive, in periodic deltas.

use std::collections::HashMap;
use std::time::Duration;

use auspex_events::{Delta, Event, EventKind, Protocol, Role, Tracked};
use chrono::{DateTime, Utc};

use crate::normalise::{guess_role, Normaliser, Peer};

#[derive(Debug, Clone)]
pub struct TrackerConfig {
    /// A connection closed and reopened within this is one lifetime (zero:
    /// every open is new). It also delays the report of a close.
    pub afterglow: Duration,
    /// New connections a container may open per minute; more are counted
    /// and not tracked. Closes are never limited.
    pub rate_limit_per_minute: u32,
    /// Table entries at most (connections and endpoints each).
    pub capacity: usize,
    pub normaliser: Normaliser,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            afterglow: Duration::from_secs(300),
            rate_limit_per_minute: 2048,
            capacity: 65536,
            normaliser: Normaliser::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// New connections not tracked because of the rate limit.
    pub rate_limited: u64,
    /// Entries dropped because the table was full.
    pub evicted: u64,
}

/// What identifies an entry of the table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    container_id: Option<String>,
    exe: Option<String>,
    protocol: Protocol,
    role: Option<Role>,
    local: Peer,
    remote: Option<Peer>,
}

#[derive(Debug, Clone)]
struct Life {
    opened: DateTime<Utc>,
    /// Sockets open under this key now.
    open: u32,
    closed: Option<DateTime<Utc>>,
    /// Reported in a delta already.
    reported: bool,
}

fn tracked(key: &Key, life: &Life) -> Tracked {
    Tracked {
        container_id: key.container_id.clone(),
        exe: key.exe.clone(),
        protocol: key.protocol,
        role: key.role,
        local: key.local.clone(),
        remote: key.remote.clone(),
        opened: life.opened,
        closed: life.closed,
    }
}

fn elapsed(from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
    (to - from).to_std().unwrap_or(Duration::ZERO)
}

#[derive(Debug, Default)]
struct Table {
    live: HashMap<Key, Life>,
    /// Lifetimes over since the last delta.
    finished: Vec<(Key, Life)>,
}

impl Table {
    /// Opens a socket under `key`; `admit` decides whether a new lifetime
    /// may start.
    fn open(
        &mut self,
        key: Key,
        at: DateTime<Utc>,
        config: &TrackerConfig,
        stats: &mut TrackerStats,
        admit: impl FnOnce() -> bool,
    ) {
        if let Some(life) = self.live.get_mut(&key) {
            match life.closed {
                None => {
                    life.open += 1;
                    return;
                }
                // Reopened within the afterglow: the same lifetime.
                Some(closed) if elapsed(closed, at) <= config.afterglow => {
                    life.closed = None;
                    life.open = 1;
                    return;
                }
                Some(_) => {
                    let old = self.live.remove(&key).expect("present");
                    self.finished.push((key.clone(), old));
                }
            }
        }
        if !admit() {
            stats.rate_limited += 1;
            return;
        }
        if self.live.len() >= config.capacity {
            if let Some(victim) = self.live.keys().next().cloned() {
                self.live.remove(&victim);
                stats.evicted += 1;
            }
        }
        self.live.insert(
            key,
            Life {
                opened: at,
                open: 1,
                closed: None,
                reported: false,
            },
        );
    }

    fn close(&mut self, key: &Key, at: DateTime<Utc>, config: &TrackerConfig) {
        let Some(life) = self.live.get_mut(key) else {
            return;
        };
        life.open = life.open.saturating_sub(1);
        if life.open == 0 && life.closed.is_none() {
            life.closed = Some(at);
            if config.afterglow.is_zero() {
                let over = self.live.remove(key).expect("present");
                self.finished.push((key.clone(), over));
            }
        }
    }

    fn delta(&mut self, now: DateTime<Utc>, config: &TrackerConfig) -> Delta {
        let expired: Vec<Key> = self
            .live
            .iter()
            .filter(|(_, l)| {
                l.closed
                    .is_some_and(|c| elapsed(c, now) >= config.afterglow)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            let over = self.live.remove(&key).expect("present");
            self.finished.push((key, over));
        }
        let mut delta = Delta {
            added: Vec::new(),
            removed: Vec::new(),
        };
        for (key, life) in self.live.iter_mut().filter(|(_, l)| !l.reported) {
            life.reported = true;
            delta.added.push(tracked(key, life));
        }
        for (key, life) in self.finished.drain(..) {
            if life.reported {
                delta.removed.push(tracked(&key, &life));
            } else {
                delta.added.push(tracked(&key, &life));
            }
        }
        delta
    }
}

/// The connection and endpoint tables.
pub struct Tracker {
    config: TrackerConfig,
    connections: Table,
    endpoints: Table,
    /// New connections per container in the current minute.
    rate: HashMap<Option<String>, (DateTime<Utc>, u32)>,
    stats: TrackerStats,
}

impl Tracker {
    pub fn new(config: TrackerConfig) -> Self {
        Tracker {
            config,
            connections: Table::default(),
            endpoints: Table::default(),
            rate: HashMap::new(),
            stats: TrackerStats::default(),
        }
    }

    pub fn stats(&self) -> TrackerStats {
        self.stats
    }

    /// Entries in the tables now.
    pub fn len(&self) -> usize {
        self.connections.live.len() + self.endpoints.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes in one event (others than network ones are ignored).
    pub fn observe(&mut self, event: &Event) {
        let at = event.time;
        match &event.kind {
            EventKind::ConnectionOpen(c) | EventKind::ConnectionClose(c) => {
                let role = c.role.unwrap_or_else(|| guess_role(&c.local, &c.remote));
                let (local, remote) = self.config.normaliser.endpoints(role, &c.local, &c.remote);
                let key = Key {
                    container_id: c
                        .process
                        .as_ref()
                        .and_then(|p| p.container_id.as_deref().map(String::from)),
                    exe: c
                        .process
                        .as_ref()
                        .and_then(|p| p.exe.as_deref().map(String::from)),
                    protocol: c.protocol,
                    role: Some(role),
                    local,
                    remote: Some(remote),
                };
                if matches!(event.kind, EventKind::ConnectionOpen(_)) {
                    let (rate, limit) = (&mut self.rate, self.config.rate_limit_per_minute);
                    let container = key.container_id.clone();
                    self.connections
                        .open(key, at, &self.config, &mut self.stats, || {
                            admit(rate, container, at, limit)
                        });
                } else {
                    self.connections.close(&key, at, &self.config);
                }
            }
            EventKind::EndpointOpen(e) | EventKind::EndpointClose(e) => {
                let key = Key {
                    container_id: e
                        .process
                        .as_ref()
                        .and_then(|p| p.container_id.as_deref().map(String::from)),
                    exe: e
                        .process
                        .as_ref()
                        .and_then(|p| p.exe.as_deref().map(String::from)),
                    protocol: e.protocol,
                    role: None,
                    local: Peer {
                        ip: e.local.ip.to_string(),
                        port: e.local.port,
                    },
                    remote: None,
                };
                if matches!(event.kind, EventKind::EndpointOpen(_)) {
                    self.endpoints
                        .open(key, at, &self.config, &mut self.stats, || true);
                } else {
                    self.endpoints.close(&key, at, &self.config);
                }
            }
            _ => {}
        }
    }

    /// The deltas since the last call, as events stamped `now`; none when
    /// nothing changed.
    pub fn deltas(&mut self, now: DateTime<Utc>) -> Vec<Event> {
        let mut events = Vec::new();
        let connections = self.connections.delta(now, &self.config);
        if !connections.added.is_empty() || !connections.removed.is_empty() {
            events.push(Event::new(now, EventKind::ConnectionsDelta(connections)));
        }
        let endpoints = self.endpoints.delta(now, &self.config);
        if !endpoints.added.is_empty() || !endpoints.removed.is_empty() {
            events.push(Event::new(now, EventKind::EndpointsDelta(endpoints)));
        }
        events
    }
}

/// Whether `container` may start one more connection this minute.
fn admit(
    rate: &mut HashMap<Option<String>, (DateTime<Utc>, u32)>,
    container: Option<String>,
    at: DateTime<Utc>,
    limit: u32,
) -> bool {
    let (start, count) = rate.entry(container).or_insert((at, 0));
    if elapsed(*start, at) >= Duration::from_secs(60) {
        *start = at;
        *count = 0;
    }
    if *count >= limit {
        return false;
    }
    *count += 1;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use auspex_events::{Connection, Endpoint, Process, SockId, SocketAddr};

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        let a: std::net::SocketAddr = s.parse().unwrap();
        SocketAddr {
            ip: a.ip(),
            port: a.port(),
        }
    }

    fn process(container: Option<&str>) -> Process {
        Process {
            pid: 42,
            exe: Some("/usr/bin/curl".into()),
            container_id: container.map(std::sync::Arc::from),
            ..Process::default()
        }
    }

    /// A client connection from an ephemeral port to `remote`.
    fn conn(open: bool, at: i64, local_port: u16, remote: &str, container: Option<&str>) -> Event {
        let c = Connection {
            protocol: Protocol::Tcp,
            role: Some(Role::Client),
            local: addr(&format!("10.0.0.1:{local_port}")),
            remote: addr(remote),
            netns: Some(1),
            sock_id: SockId(u64::from(local_port)),
            process: Some(process(container)),
        };
        let kind = if open {
            EventKind::ConnectionOpen(c)
        } else {
            EventKind::ConnectionClose(c)
        };
        Event::new(t(at), kind)
    }

    fn tracker(afterglow: u64) -> Tracker {
        Tracker::new(TrackerConfig {
            afterglow: Duration::from_secs(afterglow),
            ..TrackerConfig::default()
        })
    }

    fn connections(events: &[Event]) -> (Vec<Tracked>, Vec<Tracked>) {
        events
            .iter()
            .find_map(|e| match &e.kind {
                EventKind::ConnectionsDelta(d) => Some((d.added.clone(), d.removed.clone())),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// 200 short connections, each from a new ephemeral port, to one service.
    fn two_hundred(tr: &mut Tracker) {
        for i in 0..200 {
            tr.observe(&conn(true, i / 10, 40000 + i as u16, "10.0.0.2:80", None));
            tr.observe(&conn(false, i / 10, 40000 + i as u16, "10.0.0.2:80", None));
        }
    }

    #[test]
    fn afterglow_on_makes_repeated_connections_one() {
        let mut tr = tracker(300);
        two_hundred(&mut tr);
        let (added, removed) = connections(&tr.deltas(t(30)));
        assert_eq!(added.len(), 1, "{added:?}");
        assert!(removed.is_empty());
        let a = &added[0];
        assert_eq!(
            a.remote,
            Some(Peer {
                ip: "10.0.0.2".into(),
                port: 80
            })
        );
        assert_eq!(
            a.local,
            Peer {
                ip: "0.0.0.0".into(),
                port: 0
            }
        );
        assert_eq!(a.opened, t(0));
        assert_eq!(
            a.closed,
            Some(t(19)),
            "still in its afterglow, closed last at 19 s"
        );
        // Nothing new: no delta at all.
        assert!(tr.deltas(t(60)).is_empty());
        // Once the afterglow is over, it is reported inactive, once.
        let (added, removed) = connections(&tr.deltas(t(19 + 300)));
        assert!(added.is_empty());
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].closed, Some(t(19)));
        assert!(tr.deltas(t(1000)).is_empty());
        assert!(tr.is_empty());
    }

    #[test]
    fn afterglow_zero_reports_every_lifetime() {
        let mut tr = tracker(0);
        two_hundred(&mut tr);
        let (added, removed) = connections(&tr.deltas(t(30)));
        assert_eq!(added.len(), 200);
        assert!(added.iter().all(|a| a.closed.is_some()));
        assert!(
            removed.is_empty(),
            "never reported open, so never reported inactive"
        );
    }

    #[test]
    fn a_reopen_after_the_afterglow_is_new() {
        let mut tr = tracker(10);
        tr.observe(&conn(true, 0, 40000, "10.0.0.2:80", None));
        tr.observe(&conn(false, 1, 40000, "10.0.0.2:80", None));
        let (added, _) = connections(&tr.deltas(t(5)));
        assert_eq!(added.len(), 1);
        tr.observe(&conn(true, 30, 40001, "10.0.0.2:80", None));
        let (added, removed) = connections(&tr.deltas(t(31)));
        assert_eq!((added.len(), removed.len()), (1, 1));
        assert_eq!(added[0].opened, t(30));
        assert_eq!(removed[0].closed, Some(t(1)));
    }

    #[test]
    fn deltas_show_new_and_inactive_and_open_connections_stay() {
        let mut tr = tracker(5);
        tr.observe(&conn(true, 0, 40000, "10.0.0.2:80", None));
        tr.observe(&conn(true, 0, 40001, "10.0.0.3:443", None));
        let (added, _) = connections(&tr.deltas(t(1)));
        assert_eq!(added.len(), 2);
        assert!(added.iter().all(|a| a.closed.is_none()));
        tr.observe(&conn(false, 2, 40000, "10.0.0.2:80", None));
        assert!(tr.deltas(t(3)).is_empty(), "closed but in its afterglow");
        let (added, removed) = connections(&tr.deltas(t(8)));
        assert!(added.is_empty());
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].remote.as_ref().unwrap().port, 80);
        assert_eq!(tr.len(), 1, "the other is still open");
    }

    #[test]
    fn server_side_and_unknown_roles_normalise() {
        let mut tr = tracker(300);
        for (port, role) in [(51000u16, Some(Role::Server)), (51001, None)] {
            let c = Connection {
                protocol: Protocol::Udp,
                role,
                local: addr("10.0.0.1:53"),
                remote: addr(&format!("10.0.0.7:{port}")),
                netns: Some(1),
                sock_id: SockId(u64::from(port)),
                process: Some(process(None)),
            };
            tr.observe(&Event::new(t(0), EventKind::ConnectionOpen(c)));
        }
        let (added, _) = connections(&tr.deltas(t(1)));
        // Both normalise to (any address, 53) ↔ (10.0.0.7, any port): one.
        assert_eq!(added.len(), 1, "{added:?}");
        assert_eq!(added[0].role, Some(Role::Server));
        assert_eq!(
            added[0].local,
            Peer {
                ip: "0.0.0.0".into(),
                port: 53
            }
        );
        assert_eq!(
            added[0].remote,
            Some(Peer {
                ip: "10.0.0.7".into(),
                port: 0
            })
        );
    }

    #[test]
    fn aggregation_collapses_public_peers() {
        let mut tr = Tracker::new(TrackerConfig {
            normaliser: Normaliser {
                aggregate_public: true,
                never_aggregate: Vec::new(),
            },
            ..TrackerConfig::default()
        });
        tr.observe(&conn(true, 0, 40000, "1.1.1.1:443", None));
        tr.observe(&conn(true, 0, 40001, "9.9.9.9:443", None));
        tr.observe(&conn(true, 0, 40002, "10.0.0.2:443", None));
        let (added, _) = connections(&tr.deltas(t(1)));
        let mut remotes: Vec<String> = added.iter().map(|a| a.remote.clone().unwrap().ip).collect();
        remotes.sort();
        assert_eq!(remotes, ["10.0.0.2", "internet"]);
    }

    #[test]
    fn the_rate_limit_is_per_container_counts_and_spares_closes() {
        let mut tr = Tracker::new(TrackerConfig {
            rate_limit_per_minute: 3,
            afterglow: Duration::ZERO,
            ..TrackerConfig::default()
        });
        for i in 0..5u16 {
            tr.observe(&conn(
                true,
                0,
                40000 + i,
                &format!("10.0.1.{i}:80"),
                Some("aaaaaaaaaaaa"),
            ));
            tr.observe(&conn(
                true,
                0,
                41000 + i,
                &format!("10.0.2.{i}:80"),
                Some("bbbbbbbbbbbb"),
            ));
        }
        assert_eq!(tr.stats().rate_limited, 4);
        // Closes of tracked connections go through.
        for i in 0..3u16 {
            tr.observe(&conn(
                false,
                1,
                40000 + i,
                &format!("10.0.1.{i}:80"),
                Some("aaaaaaaaaaaa"),
            ));
        }
        let (added, _) = connections(&tr.deltas(t(2)));
        assert_eq!(added.len(), 6);
        assert_eq!(added.iter().filter(|a| a.closed.is_some()).count(), 3);
        // A new minute, a new allowance.
        tr.observe(&conn(true, 61, 40010, "10.0.1.10:80", Some("aaaaaaaaaaaa")));
        assert_eq!(tr.stats().rate_limited, 4);
    }

    #[test]
    fn endpoints_are_tracked_too_and_the_table_is_bounded() {
        let mut tr = Tracker::new(TrackerConfig {
            capacity: 2,
            ..TrackerConfig::default()
        });
        let endpoint = |open: bool, port: u16| {
            let e = Endpoint {
                protocol: Protocol::Tcp,
                local: addr(&format!("0.0.0.0:{port}")),
                netns: Some(1),
                sock_id: SockId(u64::from(port)),
                process: Some(process(None)),
            };
            Event::new(
                t(0),
                if open {
                    EventKind::EndpointOpen(e)
                } else {
                    EventKind::EndpointClose(e)
                },
            )
        };
        tr.observe(&endpoint(true, 8080));
        let events = tr.deltas(t(1));
        assert!(matches!(&events[0].kind, EventKind::EndpointsDelta(d) if d.added.len() == 1));
        for port in 9000..9005 {
            tr.observe(&conn(true, 2, port, "10.0.0.2:80", None));
            tr.observe(&conn(
                true,
                2,
                port,
                &format!("10.0.0.{}:80", port - 8990),
                None,
            ));
        }
        assert!(tr.stats().evicted > 0);
        assert!(tr.connections.live.len() <= 2);
    }
}
