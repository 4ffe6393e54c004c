//! The events Auspex reports, as every collection method produces them and
//! every sink consumes them. Plain data: no kernel, no BPF.
//!
//! The JSON form (one object per line) is part of the output contract and is
//! documented field by field in `docs/events.md`.
#![forbid(unsafe_code)]

mod identity;
pub mod json;
mod selection;

use std::net::IpAddr;
use std::sync::Arc;

pub use identity::{ExecIdParts, Identity, NS_PER_TICK};
pub use selection::EventSelection;

/// A task's name: at most 15 bytes from the kernel (TASK_COMM_LEN), more
/// only where /proc's bytes were not UTF-8; kept inline, without an
/// allocation (a String per event, allocated by the reader's thread and
/// freed by the pipeline's, was 5 % of the agent's CPU in a TCP storm).
pub type Comm = compact_str::CompactString;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};

/// One observation, stamped with the wall-clock time the kernel saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    #[serde(serialize_with = "rfc3339_nanos")]
    pub time: DateTime<Utc>,
    /// The node the event comes from; set by the pipeline on every event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<Arc<str>>,
    #[serde(flatten)]
    pub kind: EventKind,
    /// Found by reading /proc at start (state that existed before Auspex
    /// ran), rather than seen as it happened.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub scraped: bool,
}

impl Event {
    pub fn new(time: DateTime<Utc>, kind: EventKind) -> Self {
        Event {
            time,
            node: None,
            kind,
            scraped: false,
        }
    }
}

/// Its variants' names (`EventKindDiscriminants`, derived) are the `type`
/// of the JSON form and the label of metrics, listed by [`EventKind::names`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, strum::EnumDiscriminants)]
#[strum_discriminants(derive(strum::EnumIter, strum::IntoStaticStr))]
#[strum_discriminants(strum(serialize_all = "snake_case"))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A process replaced its image (execve/execveat succeeded).
    ProcessExec { process: Process },
    /// A task was created. `process` describes the child.
    ProcessFork {
        process: Process,
        parent: TaskId,
        /// True for a new thread in the parent's process, false for a new process.
        thread: bool,
    },
    /// The last thread of a process exited.
    ProcessExit {
        process: Process,
        /// Absent when the method cannot know it.
        #[serde(flatten)]
        status: Option<ExitStatus>,
    },
    /// A connection was established (TCP) or first seen (UDP).
    ConnectionOpen(Connection),
    /// A connection was closed by either side (TCP), or its socket was
    /// closed (UDP).
    ConnectionClose(Connection),
    /// A socket started listening (TCP) or was bound to a port (UDP).
    EndpointOpen(Endpoint),
    /// That socket stopped listening or was closed.
    EndpointClose(Endpoint),
    /// What changed in the table of connections since the last delta.
    ConnectionsDelta(Delta),
    /// What changed in the table of endpoints since the last delta.
    EndpointsDelta(Delta),
}

impl EventKind {
    /// The `type` value of the JSON form.
    pub fn name(&self) -> &'static str {
        EventKindDiscriminants::from(self).into()
    }

    /// Every event type's name.
    pub fn names() -> impl Iterator<Item = &'static str> {
        use strum::IntoEnumIterator;
        EventKindDiscriminants::iter().map(Into::into)
    }

    /// The process the event is about, when known.
    pub fn process(&self) -> Option<&Process> {
        match self {
            EventKind::ProcessExec { process }
            | EventKind::ProcessFork { process, .. }
            | EventKind::ProcessExit { process, .. } => Some(process),
            EventKind::ConnectionOpen(c) | EventKind::ConnectionClose(c) => c.process.as_ref(),
            EventKind::EndpointOpen(e) | EventKind::EndpointClose(e) => e.process.as_ref(),
            EventKind::ConnectionsDelta(_) | EventKind::EndpointsDelta(_) => None,
        }
    }

    pub fn process_mut(&mut self) -> Option<&mut Process> {
        match self {
            EventKind::ProcessExec { process }
            | EventKind::ProcessFork { process, .. }
            | EventKind::ProcessExit { process, .. } => Some(process),
            EventKind::ConnectionOpen(c) | EventKind::ConnectionClose(c) => c.process.as_mut(),
            EventKind::EndpointOpen(e) | EventKind::EndpointClose(e) => e.process.as_mut(),
            EventKind::ConnectionsDelta(_) | EventKind::EndpointsDelta(_) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// This side initiated: connect(), or sent the first datagram.
    Client,
    /// This side accepted, or received the first datagram.
    Server,
}

/// An IP address (IPv4-mapped IPv6 addresses are shown as IPv4) and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct SocketAddr {
    pub ip: IpAddr,
    pub port: u16,
}

/// Identifies a socket while it is open, so that opens and closes pair up.
/// Opaque; a closed socket's id may be reused by a later socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockId(pub u64);

impl Serialize for SockId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Straight into the output, without a String per event.
        s.collect_str(&format_args!("{:016x}", self.0))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Connection {
    pub protocol: Protocol,
    /// Absent when unknown: a connection that was open before Auspex started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Inode number of the network namespace (as in /proc/<pid>/ns/net);
    /// `null` where the method cannot know it (the ebpf method without
    /// any BTF), never a made-up number.
    pub netns: Option<u32>,
    pub sock_id: SockId,
    /// The process that owns the socket; absent when unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub protocol: Protocol,
    pub local: SocketAddr,
    /// As in `Connection`.
    pub netns: Option<u32>,
    pub sock_id: SockId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
}

/// What is known about the process an event is about. Fields a method or an
/// event type cannot know are absent (`None`), never guessed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Process {
    /// Process id (thread group id), as seen from the initial pid namespace.
    pub pid: u32,
    /// Thread id of the task the event is about.
    pub tid: u32,
    /// Process id of the real parent.
    pub ppid: u32,
    /// When the process started, in clock ticks since boot (what
    /// /proc/PID/stat says); None when the method could not read it.
    /// Enrichment turns it into `start_time` and `exec_id`.
    #[serde(skip)]
    pub start_ticks: Option<u64>,
    /// When the process started (wall clock, to the clock tick).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "rfc3339_nanos_opt"
    )]
    pub start_time: Option<DateTime<Utc>>,
    /// Identifies the process image across PID reuse, boots and nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Shared, as `exe`, with the process table (computing it per event
    /// was 12 % of the agent's CPU in a TCP storm: a base64 encoding of a
    /// formatted String).
    pub exec_id: Option<Arc<str>>,
    /// On process_exec and process_fork: the real parent's exec_id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_exec_id: Option<Arc<str>>,
    pub uid: u32,
    pub gid: u32,
    pub comm: Comm,
    /// Absolute, resolved path of the executable. Shared (as `args`) with
    /// the process table, which hands it to every event of the process:
    /// cloning the strings for each was a tenth of the agent's CPU in a TCP
    /// storm (issue 19). Serialised as a string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<Arc<str>>,
    /// Set when the path was longer than the probe reads; `exe` then holds
    /// its last components only.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub exe_truncated: bool,
    /// Set when the executable is in no mounted directory (a memfd, as runc
    /// re-executing itself uses): `exe` is then the kernel's name for it,
    /// as /proc/PID/exe shows it (`/memfd:NAME (deleted)`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub exe_detached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Arc<[String]>>,
    /// Present with `args`: true when the argument vector was cut to the
    /// probe's bound (the last argument may then be partial).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args_truncated: Option<bool>,
    /// cgroup v2 id: the inode number of the process's cgroup directory.
    pub cgroup_id: u64,
    /// On process_exec, where the probe reads it: the id of its cgroup in
    /// the cgroup v1 hierarchy of its memory (else pids) controller, by
    /// which enrichment remembers containers on hosts with cgroup v1; 0
    /// when unknown. Not part of the JSON form.
    #[serde(skip)]
    pub cgroup1_id: u64,
    /// The container the process runs in (12 hex digits); absent on the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<Arc<str>>,
    /// The process's ancestors, nearest first, up to the container boundary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Vec<Ancestor>>,
}

/// One ancestor in a lineage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ancestor {
    pub uid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<Arc<str>>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "rfc3339_nanos_opt"
    )]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<Arc<str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TaskId {
    pub pid: u32,
    pub tid: u32,
}

/// An address as the connection table shows it: an IP (or `internet`, for
/// public addresses collapsed into one peer) and a port (0: any).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Peer {
    pub ip: String,
    pub port: u16,
}

/// One connection (or endpoint) of the table, over one lifetime: from its
/// first open to its last close (plus the afterglow).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tracked {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    pub protocol: Protocol,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    pub local: Peer,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<Peer>,
    #[serde(serialize_with = "rfc3339_nanos")]
    pub opened: DateTime<Utc>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "rfc3339_nanos_opt"
    )]
    pub closed: Option<DateTime<Utc>>,
}

/// A periodic delta of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delta {
    /// New since the last delta (with `closed` when already over).
    pub added: Vec<Tracked>,
    /// Reported earlier, now inactive.
    pub removed: Vec<Tracked>,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ExitStatus {
    Exited {
        exit_code: u8,
    },
    Signaled {
        signal: u8,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        core_dumped: bool,
    },
}

impl ExitStatus {
    /// Decodes a wait(2) status word as the kernel keeps it in `exit_code`.
    pub fn from_wait_status(status: u32) -> Self {
        let signal = (status & 0x7f) as u8;
        if signal == 0 {
            ExitStatus::Exited {
                exit_code: ((status >> 8) & 0xff) as u8,
            }
        } else {
            ExitStatus::Signaled {
                signal,
                core_dumped: status & 0x80 != 0,
            }
        }
    }
}

/// `time.to_rfc3339_opts(SecondsFormat::Nanos, true)`, written into a
/// buffer on the stack rather than a String allocated for every event
/// (issue 19: malloc and free were a tenth of the agent's CPU in a TCP
/// storm). Years chrono writes with a sign (before 0, after 9999) go
/// through chrono.
fn rfc3339_nanos<S: Serializer>(time: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    match rfc3339_digits(time) {
        Some(buf) => s.serialize_str(std::str::from_utf8(&buf).expect("ASCII digits")),
        None => s.serialize_str(&time.to_rfc3339_opts(SecondsFormat::Nanos, true)),
    }
}

/// The RFC 3339 form of `time` with nanoseconds, as chrono writes it,
/// for the years 0 to 9999 (None for the others, which chrono signs).
pub(crate) fn rfc3339_digits(time: &DateTime<Utc>) -> Option<[u8; 30]> {
    use chrono::{Datelike, Timelike};
    let year = time.year();
    if !(0..=9999).contains(&year) {
        return None;
    }
    // A leap second is a nanosecond count past 1e9: chrono shows it as
    // second 60.
    let (mut second, mut nano) = (time.second(), time.nanosecond());
    if nano >= 1_000_000_000 {
        second += 1;
        nano -= 1_000_000_000;
    }
    let mut buf = *b"0000-00-00T00:00:00.000000000Z";
    let mut put = |at: usize, width: usize, mut value: u32| {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year as u32);
    put(5, 2, time.month());
    put(8, 2, time.day());
    put(11, 2, time.hour());
    put(14, 2, time.minute());
    put(17, 2, second);
    put(20, 9, nano);
    Some(buf)
}

fn rfc3339_nanos_opt<S: Serializer>(time: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match time {
        Some(t) => rfc3339_nanos(t, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn time() -> DateTime<Utc> {
        DateTime::from_timestamp(1_764_100_000, 123_456_789).unwrap()
    }

    fn process() -> Process {
        Process {
            pid: 42,
            tid: 43,
            ppid: 1,
            uid: 1000,
            gid: 100,
            comm: "sh".into(),
            cgroup_id: 7,
            ..Process::default()
        }
    }

    #[test]
    fn names_are_the_json_types() {
        let names: Vec<_> = EventKind::names().collect();
        assert_eq!(
            names,
            [
                "process_exec",
                "process_fork",
                "process_exit",
                "connection_open",
                "connection_close",
                "endpoint_open",
                "endpoint_close",
                "connections_delta",
                "endpoints_delta"
            ]
        );
        let exec = EventKind::ProcessExec { process: process() };
        let json = serde_json::to_value(Event::new(time(), exec.clone())).unwrap();
        assert_eq!(json["type"], exec.name());
    }

    #[test]
    fn exec_serializes_with_type_time_and_process() {
        let event = Event::new(
            time(),
            EventKind::ProcessExec {
                process: Process {
                    exe: Some("/usr/bin/dash".into()),
                    args: Some(["sh".into(), "".into(), "a b".into()].into()),
                    args_truncated: Some(false),
                    ..process()
                },
            },
        );
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            json!({
                "type": "process_exec",
                "time": "2025-11-25T19:46:40.123456789Z",
                "process": {
                    "pid": 42, "tid": 43, "ppid": 1, "uid": 1000, "gid": 100,
                    "comm": "sh", "exe": "/usr/bin/dash", "args": ["sh", "", "a b"],
                    "args_truncated": false, "cgroup_id": 7
                }
            })
        );
    }

    #[test]
    fn fork_and_exit_forms() {
        let fork = Event::new(
            time(),
            EventKind::ProcessFork {
                process: process(),
                parent: TaskId { pid: 1, tid: 1 },
                thread: true,
            },
        );
        let v = serde_json::to_value(&fork).unwrap();
        assert_eq!(v["type"], "process_fork");
        assert_eq!(v["parent"], json!({"pid": 1, "tid": 1}));
        assert_eq!(v["thread"], true);
        assert!(v["process"].get("exe").is_none());

        let exit = Event::new(
            time(),
            EventKind::ProcessExit {
                process: process(),
                status: Some(ExitStatus::from_wait_status(7 << 8)),
            },
        );
        let v = serde_json::to_value(&exit).unwrap();
        assert_eq!(v["exit_code"], 7);
        assert!(v.get("signal").is_none());
    }

    #[test]
    fn connection_form() {
        let event = Event::new(
            time(),
            EventKind::ConnectionOpen(Connection {
                protocol: Protocol::Tcp,
                role: Some(Role::Client),
                local: SocketAddr {
                    ip: "10.0.0.1".parse().unwrap(),
                    port: 40000,
                },
                remote: SocketAddr {
                    ip: "::1".parse().unwrap(),
                    port: 80,
                },
                netns: Some(4026531840),
                sock_id: SockId(0xabc),
                process: None,
            }),
        );
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            json!({
                "time": "2025-11-25T19:46:40.123456789Z",
                "type": "connection_open",
                "protocol": "tcp",
                "role": "client",
                "local": {"ip": "10.0.0.1", "port": 40000},
                "remote": {"ip": "::1", "port": 80},
                "netns": 4026531840u32,
                "sock_id": "0000000000000abc",
            })
        );
    }

    /// The time is written by hand (no allocation): exactly as chrono
    /// writes it, leap seconds and the years it signs included.
    #[test]
    fn times_are_written_as_chrono_writes_them() {
        let mut times: Vec<DateTime<Utc>> = [
            (0, 0),
            (1_764_100_000, 123_456_789),
            (1_764_100_000, 1),
            (951_782_400, 999_999_999),
            (253_402_300_799, 999_999_999),
            (-62_167_219_200, 0),
            (-62_167_219_201, 5),
            (253_402_300_800, 7),
        ]
        .iter()
        .map(|&(s, n)| DateTime::from_timestamp(s, n).unwrap())
        .collect();
        // A leap second: 2016-12-31T23:59:60.5Z.
        times.push(
            chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
                .unwrap()
                .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
                .unwrap()
                .and_utc(),
        );
        for t in times {
            let ours = serde_json::to_string(&Event::new(
                t,
                EventKind::ProcessExec { process: process() },
            ))
            .unwrap();
            let chrono = format!("\"{}\"", t.to_rfc3339_opts(SecondsFormat::Nanos, true));
            assert!(
                ours.contains(&format!("\"time\":{chrono}")),
                "{ours} vs {chrono}"
            );
        }
    }

    #[test]
    fn wait_status_decoding() {
        assert_eq!(
            ExitStatus::from_wait_status(0),
            ExitStatus::Exited { exit_code: 0 }
        );
        assert_eq!(
            ExitStatus::from_wait_status(255 << 8),
            ExitStatus::Exited { exit_code: 255 }
        );
        assert_eq!(
            ExitStatus::from_wait_status(9),
            ExitStatus::Signaled {
                signal: 9,
                core_dumped: false
            }
        );
        assert_eq!(
            ExitStatus::from_wait_status(0x80 | 11),
            ExitStatus::Signaled {
                signal: 11,
                core_dumped: true
            }
        );
        let v = serde_json::to_value(ExitStatus::from_wait_status(15)).unwrap();
        assert_eq!(v, json!({"signal": 15}));
    }
}
