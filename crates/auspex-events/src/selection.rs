//! Which events to collect (`--events`): groups and single types, parsed
//! once and asked by the probes (what to load), the self-check (what to
//! prove) and the pipeline (what to report).

use std::fmt;

use crate::{EventKind, Protocol};

/// One stream of events a probe part produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
enum Stream {
    Exec = 1 << 0,
    Fork = 1 << 1,
    Exit = 1 << 2,
    TcpConnectionOpen = 1 << 3,
    TcpConnectionClose = 1 << 4,
    UdpConnectionOpen = 1 << 5,
    UdpConnectionClose = 1 << 6,
    TcpEndpointOpen = 1 << 7,
    TcpEndpointClose = 1 << 8,
    UdpEndpointOpen = 1 << 9,
    UdpEndpointClose = 1 << 10,
}

use Stream::*;

const TCP: u16 = TcpConnectionOpen as u16 | TcpConnectionClose as u16;
const UDP: u16 = UdpConnectionOpen as u16 | UdpConnectionClose as u16;
const ENDPOINTS: u16 = TcpEndpointOpen as u16
    | TcpEndpointClose as u16
    | UdpEndpointOpen as u16
    | UdpEndpointClose as u16;
const PROCESS: u16 = Exec as u16 | Fork as u16 | Exit as u16;

/// The names `--events` takes, with what each selects.
const NAMES: &[(&str, u16)] = &[
    ("all", PROCESS | TCP | UDP | ENDPOINTS),
    ("process", PROCESS),
    ("tcp", TCP),
    ("udp", UDP),
    ("endpoints", ENDPOINTS),
    ("process_exec", Exec as u16),
    ("process_fork", Fork as u16),
    ("process_exit", Exit as u16),
    (
        "connection_open",
        TcpConnectionOpen as u16 | UdpConnectionOpen as u16,
    ),
    (
        "connection_close",
        TcpConnectionClose as u16 | UdpConnectionClose as u16,
    ),
    (
        "endpoint_open",
        TcpEndpointOpen as u16 | UdpEndpointOpen as u16,
    ),
    (
        "endpoint_close",
        TcpEndpointClose as u16 | UdpEndpointClose as u16,
    ),
];

/// A set of event streams. The default is everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSelection {
    bits: u16,
    /// The names it was given as, for `config show` and /status.
    names: &'static [&'static str],
}

impl Default for EventSelection {
    fn default() -> Self {
        EventSelection::all()
    }
}

impl EventSelection {
    pub fn all() -> Self {
        EventSelection {
            bits: NAMES[0].1,
            names: &["all"],
        }
    }

    /// Every name `--events` takes.
    pub fn valid_names() -> impl Iterator<Item = &'static str> {
        NAMES.iter().map(|(n, _)| *n)
    }

    /// A comma-separated list of groups and types (`process,tcp`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut bits = 0;
        let mut names = Vec::new();
        for name in text.split(',').map(str::trim) {
            match NAMES.iter().find(|(n, _)| *n == name) {
                Some((n, b)) => {
                    bits |= b;
                    if !names.contains(n) {
                        names.push(*n);
                    }
                }
                None => {
                    return Err(format!(
                        "'{name}' is not an event group or type (valid: {})",
                        Self::valid_names().collect::<Vec<_>>().join(", ")
                    ))
                }
            }
        }
        Ok(EventSelection {
            bits,
            // A handful of names per run: leaked once, so the selection
            // stays Copy.
            names: Vec::leak(names),
        })
    }

    fn has(&self, bits: u16) -> bool {
        self.bits & bits != 0
    }

    pub fn exec(&self) -> bool {
        self.has(Exec as u16)
    }
    pub fn fork(&self) -> bool {
        self.has(Fork as u16)
    }
    pub fn exit(&self) -> bool {
        self.has(Exit as u16)
    }
    /// Any TCP event: connections or endpoints (one probe for both).
    pub fn tcp(&self) -> bool {
        self.has(TCP | TcpEndpointOpen as u16 | TcpEndpointClose as u16)
    }
    /// TCP connections opening (what the self-check's connection proves).
    pub fn tcp_connections(&self) -> bool {
        self.has(TcpConnectionOpen as u16)
    }
    /// Any UDP event.
    pub fn udp(&self) -> bool {
        self.has(UDP | UdpEndpointOpen as u16 | UdpEndpointClose as u16)
    }
    /// The same selection without its UDP events (for a probe that cannot
    /// load its UDP hooks); named as given.
    pub fn without_udp(self) -> Self {
        EventSelection {
            bits: self.bits & !(UDP | UdpEndpointOpen as u16 | UdpEndpointClose as u16),
            ..self
        }
    }
    /// Any network event.
    pub fn network(&self) -> bool {
        self.tcp() || self.udp()
    }

    /// Whether `kind` is selected. Deltas are: they derive from what is.
    pub fn wants(&self, kind: &EventKind) -> bool {
        let stream = |tcp: Stream, udp: Stream, p: Protocol| match p {
            Protocol::Tcp => tcp,
            Protocol::Udp => udp,
        };
        let s = match kind {
            EventKind::ProcessExec { .. } => Exec,
            EventKind::ProcessFork { .. } => Fork,
            EventKind::ProcessExit { .. } => Exit,
            EventKind::ConnectionOpen(c) => {
                stream(TcpConnectionOpen, UdpConnectionOpen, c.protocol)
            }
            EventKind::ConnectionClose(c) => {
                stream(TcpConnectionClose, UdpConnectionClose, c.protocol)
            }
            EventKind::EndpointOpen(e) => stream(TcpEndpointOpen, UdpEndpointOpen, e.protocol),
            EventKind::EndpointClose(e) => stream(TcpEndpointClose, UdpEndpointClose, e.protocol),
            EventKind::ConnectionsDelta(_) | EventKind::EndpointsDelta(_) => return true,
        };
        self.has(s as u16)
    }
}

impl fmt::Display for EventSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_types_combine_and_unknown_names_list_the_valid_ones() {
        let s = EventSelection::parse("process, tcp").unwrap();
        assert!(s.exec() && s.fork() && s.exit() && s.tcp() && s.tcp_connections());
        assert!(!s.udp());
        assert_eq!(s.to_string(), "process,tcp");
        let s = EventSelection::parse("endpoints").unwrap();
        assert!(s.tcp() && s.udp() && !s.tcp_connections() && !s.exec());
        let s = EventSelection::parse("process_exec").unwrap();
        assert!(s.exec() && !s.fork() && !s.network());
        assert!(EventSelection::default().udp());
        let e = EventSelection::parse("process,tcpp").unwrap_err();
        assert_eq!(
            e,
            "'tcpp' is not an event group or type (valid: all, process, tcp, udp, endpoints, \
             process_exec, process_fork, process_exit, connection_open, connection_close, \
             endpoint_open, endpoint_close)"
        );
        assert!(EventSelection::parse("").is_err());
    }
}
