//! The filter stage: recognises the events the agent's own self-check
//! causes (its canary processes, its loopback connection), including those
//! that arrive after the canary is over (exits, closes). A test, changing
//! nothing: what the canary makes of the events is canary.rs's business.

use std::collections::VecDeque;

use auspex_events::{Event, EventKind};

use crate::canary::Canary;

/// Canaries remembered (the latest ones).
const REMEMBERED: usize = 16;

#[derive(Debug)]
pub struct OwnActivity {
    /// (exec pid, TCP port) of the latest canaries.
    recent: VecDeque<(u32, Option<u16>)>,
    me: u32,
}

impl OwnActivity {
    pub fn new() -> Self {
        OwnActivity {
            recent: VecDeque::new(),
            me: std::process::id(),
        }
    }

    /// From now on, `canary`'s events are the agent's own.
    pub fn remember(&mut self, canary: &Canary) {
        self.remember_activity(canary.exec_pid, canary.tcp_port);
    }

    fn remember_activity(&mut self, exec_pid: u32, tcp_port: Option<u16>) {
        if self.recent.len() == REMEMBERED {
            self.recent.pop_front();
        }
        self.recent.push_back((exec_pid, tcp_port));
    }

    /// Whether `event` belongs to a canary.
    pub fn claims(&self, event: &Event) -> bool {
        let ours = |port: u16| self.recent.iter().any(|(_, p)| *p == Some(port));
        match &event.kind {
            EventKind::ProcessExec { process }
            | EventKind::ProcessFork { process, .. }
            | EventKind::ProcessExit { process, .. } => {
                self.recent.iter().any(|(pid, _)| *pid == process.pid)
            }
            EventKind::ConnectionOpen(c) | EventKind::ConnectionClose(c) => {
                c.process.as_ref().is_none_or(|p| p.pid == self.me)
                    && (ours(c.local.port) || ours(c.remote.port))
            }
            EventKind::EndpointOpen(e) | EventKind::EndpointClose(e) => {
                e.process.as_ref().is_none_or(|p| p.pid == self.me) && ours(e.local.port)
            }
            EventKind::ConnectionsDelta(_) | EventKind::EndpointsDelta(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use auspex_events::{Connection, Process, Protocol, Role, SockId, SocketAddr};

    fn at(kind: EventKind) -> Event {
        Event::new(chrono::DateTime::from_timestamp(0, 0).unwrap(), kind)
    }

    fn exec(pid: u32) -> Event {
        let process = Process {
            pid,
            ..Process::default()
        };
        at(EventKind::ProcessExec { process })
    }

    fn connection(owner: Option<u32>, local: u16, remote: u16) -> Event {
        let addr = |port| SocketAddr {
            ip: "127.0.0.1".parse().unwrap(),
            port,
        };
        at(EventKind::ConnectionClose(Connection {
            protocol: Protocol::Tcp,
            role: Some(Role::Server),
            local: addr(local),
            remote: addr(remote),
            netns: Some(1),
            sock_id: SockId(1),
            process: owner.map(|pid| Process {
                pid,
                ..Process::default()
            }),
        }))
    }

    #[test]
    fn the_canaries_processes_and_the_agents_own_connections_are_claimed_nothing_else() {
        let mut own = OwnActivity::new();
        own.remember_activity(4242, Some(5000));
        let me = std::process::id();
        assert!(own.claims(&exec(4242)));
        assert!(!own.claims(&exec(4243)));
        assert!(
            own.claims(&connection(Some(me), 5000, 40000)),
            "the accepted end"
        );
        assert!(
            own.claims(&connection(None, 40000, 5000)),
            "an end without owner"
        );
        assert!(
            !own.claims(&connection(Some(me + 1), 40000, 5000)),
            "someone else's connection to the same port"
        );
        assert!(!own.claims(&connection(Some(me), 6000, 40000)));
    }

    #[test]
    fn only_the_latest_canaries_are_remembered() {
        let mut own = OwnActivity::new();
        for pid in 1..=REMEMBERED as u32 + 1 {
            own.remember_activity(pid, None);
        }
        assert!(!own.claims(&exec(1)), "the oldest is forgotten");
        assert!(own.claims(&exec(2)));
    }
}
