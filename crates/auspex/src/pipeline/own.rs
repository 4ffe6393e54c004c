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
        if self.recent.len() == REMEMBERED {
            self.recent.pop_front();
        }
        self.recent.push_back((canary.exec_pid, canary.tcp_port));
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
