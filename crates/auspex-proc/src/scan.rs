//! Connections and endpoints from /proc scans: the difference between one
//! read of every namespace's socket tables and the previous one, reported
//! as opens and closes.

use std::collections::HashSet;

use auspex_events::{Event, EventKind};
use auspex_procfs::sockets::{SockKey, Sockets};
use auspex_procfs::{ProcReader, SocketReader};
use chrono::{DateTime, Utc};

pub struct Scanner {
    sockets: SocketReader,
    previous: Sockets,
    /// Sockets seen without an owner last scan (see `defer_unowned`).
    deferred: HashSet<SockKey>,
}

impl Scanner {
    pub fn new(reader: ProcReader) -> Self {
        Scanner {
            sockets: SocketReader::new(reader),
            previous: Sockets::default(),
            deferred: HashSet::new(),
        }
    }

    /// Scans, and returns what opened and closed since the last scan.
    pub fn scan(&mut self, time: DateTime<Utc>) -> Vec<Event> {
        let mut current = self.sockets.read();
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
        events
    }

    /// A socket created between reading the processes' fds and reading
    /// the socket tables has no owner yet: it is reported one scan later,
    /// with its owner, rather than now without. One that still has none
    /// then (its owner is not visible here) is reported as it is.
    fn defer_unowned(&mut self, current: &mut Sockets) {
        let previous = &self.previous;
        let deferred = &self.deferred;
        let mut now_deferred = HashSet::new();
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
}
