//! Ring-buffer records → typed events, trusting nothing: a record that is
//! short, oversized, inconsistent or of an unknown kind is counted and
//! skipped.

use std::hash::{BuildHasher, RandomState};
use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use auspex_events::{
    Connection, Endpoint, Event, EventKind, ExitStatus, Process, Protocol, Role, SockId,
    SocketAddr, TaskId, NS_PER_TICK,
};

use crate::clock::BootClock;
use crate::skel::types::{
    auspex_event_kind as Kind, auspex_exec_flags as ExecFlags, auspex_exit_flags as ExitFlags,
    auspex_role as WireRole, auspex_sock_flags as SockFlags, event_header, exec_event, exit_event,
    fork_event, sock_event, task_info,
};
use crate::wire::{read_prefix, Wire};

/// Why a record was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than its kind needs.
    Short,
    /// More bytes than its kind can have.
    Oversized,
    /// The header's size disagrees with the record's, or the lengths inside
    /// the record point past its end.
    Inconsistent,
    UnknownKind(u32),
}

/// Counts of what the decoder accepted and rejected, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    pub decoded: u64,
    pub short: u64,
    pub oversized: u64,
    pub inconsistent: u64,
    pub unknown_kind: u64,
}

impl DecodeStats {
    pub fn rejected(&self) -> u64 {
        self.short + self.oversized + self.inconsistent + self.unknown_kind
    }
}

/// What a record means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Event(Box<Event>),
    /// A UDP socket was closed; what was reported open for it closes too.
    UdpReleased {
        time: chrono::DateTime<chrono::Utc>,
        sock_id: SockId,
    },
}

/// How records are turned into events: the clock for their timestamps, and
/// the key that turns kernel socket addresses into opaque ids (so that no
/// kernel address reaches the output).
#[derive(Debug, Clone)]
pub struct Context {
    pub clock: BootClock,
    pub sock_key: RandomState,
}

impl Context {
    pub fn new(clock: BootClock) -> Self {
        Context {
            clock,
            sock_key: RandomState::new(),
        }
    }

    fn sock_id(&self, address: u64) -> SockId {
        SockId(self.sock_key.hash_one(address))
    }
}

#[derive(Debug)]
pub struct Decoder {
    context: Context,
    stats: DecodeStats,
}

impl Decoder {
    pub fn new(context: Context) -> Self {
        Decoder {
            context,
            stats: DecodeStats::default(),
        }
    }

    pub fn stats(&self) -> DecodeStats {
        self.stats
    }

    /// Decodes one record, counting the outcome.
    pub fn decode(&mut self, record: &[u8]) -> Option<Decoded> {
        match decode(record, &self.context) {
            Ok(event) => {
                self.stats.decoded += 1;
                Some(event)
            }
            Err(e) => {
                let counter = match e {
                    DecodeError::Short => &mut self.stats.short,
                    DecodeError::Oversized => &mut self.stats.oversized,
                    DecodeError::Inconsistent => &mut self.stats.inconsistent,
                    DecodeError::UnknownKind(_) => &mut self.stats.unknown_kind,
                };
                *counter += 1;
                None
            }
        }
    }
}

/// A perf event array sample is padded to 8 bytes after the record: the
/// record is the header's `size` bytes, when the sample holds that many.
pub fn trim_perf_padding(sample: &[u8]) -> &[u8] {
    let size = sample
        .get(4..8)
        .and_then(|b| b.try_into().ok())
        .map_or(usize::MAX, |b| u32::from_ne_bytes(b) as usize);
    sample.get(..size).unwrap_or(sample)
}

pub fn decode(record: &[u8], context: &Context) -> Result<Decoded, DecodeError> {
    if record.len() < size_of::<event_header>() {
        return Err(DecodeError::Short);
    }
    let header: event_header = read_prefix(record);
    if header.size as usize != record.len() {
        return Err(DecodeError::Inconsistent);
    }
    let time = context.clock.to_wall(header.boot_ns);
    let kind = match Kind(header.kind) {
        Kind::AUSPEX_EVENT_EXEC => decode_exec(record, &header)?,
        Kind::AUSPEX_EVENT_FORK => {
            let e: fork_event = read_exact(record)?;
            EventKind::ProcessFork {
                process: process(&header.task),
                parent: TaskId {
                    pid: e.parent_pid,
                    tid: e.parent_tid,
                },
                thread: e.is_thread != 0,
            }
        }
        Kind::AUSPEX_EVENT_EXIT => {
            let e: exit_event = read_exact(record)?;
            EventKind::ProcessExit {
                process: process(&header.task),
                status: (e.flags & ExitFlags::AUSPEX_EXIT_STATUS_UNKNOWN.0 == 0)
                    .then(|| ExitStatus::from_wait_status(e.exit_status)),
            }
        }
        kind @ (Kind::AUSPEX_EVENT_CONNECTION_OPEN
        | Kind::AUSPEX_EVENT_CONNECTION_CLOSE
        | Kind::AUSPEX_EVENT_ENDPOINT_OPEN
        | Kind::AUSPEX_EVENT_ENDPOINT_CLOSE
        | Kind::AUSPEX_EVENT_UDP_RELEASE) => {
            let e: sock_event = read_exact(record)?;
            let sock = Sock::decode(&e, context)?;
            match kind {
                Kind::AUSPEX_EVENT_CONNECTION_OPEN => EventKind::ConnectionOpen(sock.connection()),
                Kind::AUSPEX_EVENT_CONNECTION_CLOSE => {
                    EventKind::ConnectionClose(sock.connection())
                }
                Kind::AUSPEX_EVENT_ENDPOINT_OPEN => EventKind::EndpointOpen(sock.endpoint()),
                Kind::AUSPEX_EVENT_ENDPOINT_CLOSE => EventKind::EndpointClose(sock.endpoint()),
                _ => {
                    return Ok(Decoded::UdpReleased {
                        time,
                        sock_id: sock.sock_id,
                    })
                }
            }
        }
        Kind(other) => return Err(DecodeError::UnknownKind(other)),
    };
    Ok(Decoded::Event(Box::new(Event::new(time, kind))))
}

/// The fields of a sock_event, checked.
struct Sock {
    protocol: Protocol,
    role: Option<Role>,
    local: SocketAddr,
    remote: SocketAddr,
    netns: Option<u32>,
    sock_id: SockId,
    process: Option<Process>,
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

impl Sock {
    fn decode(e: &sock_event, context: &Context) -> Result<Sock, DecodeError> {
        let protocol = match e.protocol {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            _ => return Err(DecodeError::Inconsistent),
        };
        let role = match WireRole(u32::from(e.role)) {
            WireRole::AUSPEX_ROLE_CLIENT => Some(Role::Client),
            WireRole::AUSPEX_ROLE_SERVER => Some(Role::Server),
            _ => None,
        };
        let owner_known = e.flags & SockFlags::AUSPEX_SOCK_OWNER_KNOWN.0 != 0;
        Ok(Sock {
            protocol,
            role,
            local: SocketAddr {
                ip: ip(e.family, &e.local_addr)?,
                port: e.local_port,
            },
            remote: SocketAddr {
                ip: ip(e.family, &e.remote_addr)?,
                port: e.remote_port,
            },
            // 0 is what a probe without BTF sends: it cannot read the
            // namespace. No namespace has inode 0 (the kernel numbers them
            // from 0xF0000000, PROC_DYNAMIC_FIRST).
            netns: (e.netns != 0).then_some(e.netns),
            sock_id: context.sock_id(e.sock),
            process: owner_known.then(|| process(&e.hdr.task)),
        })
    }

    fn connection(self) -> Connection {
        Connection {
            protocol: self.protocol,
            role: self.role,
            local: self.local,
            remote: self.remote,
            netns: self.netns,
            sock_id: self.sock_id,
            process: self.process,
        }
    }

    fn endpoint(self) -> Endpoint {
        Endpoint {
            protocol: self.protocol,
            local: self.local,
            netns: self.netns,
            sock_id: self.sock_id,
            process: self.process,
        }
    }
}

/// An address as the kernel keeps it; IPv4-mapped IPv6 shown as IPv4.
fn ip(family: u16, bytes: &[u8; 16]) -> Result<IpAddr, DecodeError> {
    match family {
        AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        AF_INET6 => {
            let v6 = Ipv6Addr::from(*bytes);
            Ok(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
        }
        _ => Err(DecodeError::Inconsistent),
    }
}

fn read_exact<T: Wire>(record: &[u8]) -> Result<T, DecodeError> {
    match record.len().cmp(&size_of::<T>()) {
        std::cmp::Ordering::Less => Err(DecodeError::Short),
        std::cmp::Ordering::Greater => Err(DecodeError::Oversized),
        std::cmp::Ordering::Equal => Ok(read_prefix(record)),
    }
}

fn decode_exec(record: &[u8], header: &event_header) -> Result<EventKind, DecodeError> {
    let data_offset = offset_of!(exec_event, data);
    if record.len() < data_offset {
        return Err(DecodeError::Short);
    }
    if record.len() > size_of::<exec_event>() {
        return Err(DecodeError::Oversized);
    }
    let e: exec_event = read_prefix(record);
    let data = &record[data_offset..];
    let exe_len = usize::from(e.exe_len);
    let args_len = usize::from(e.args_len);
    if exe_len + args_len != data.len() {
        return Err(DecodeError::Inconsistent);
    }
    let (exe, args) = data.split_at(exe_len);
    let has = |flag: ExecFlags| e.flags & flag.0 != 0;
    Ok(EventKind::ProcessExec {
        process: Process {
            exe: (!exe.is_empty()).then(|| {
                if has(ExecFlags::AUSPEX_EXEC_EXE_VERBATIM) {
                    String::from_utf8_lossy(exe).into_owned()
                } else if has(ExecFlags::AUSPEX_EXEC_EXE_DETACHED) {
                    // As the kernel names such a file (d_path, simple_dname).
                    format!("{} (deleted)", path_from_leaf_first(exe))
                } else {
                    path_from_leaf_first(exe)
                }
                .into()
            }),
            exe_truncated: has(ExecFlags::AUSPEX_EXEC_EXE_TRUNCATED),
            exe_detached: has(ExecFlags::AUSPEX_EXEC_EXE_DETACHED),
            args: (!has(ExecFlags::AUSPEX_EXEC_ARGS_UNREADABLE)).then(|| split_args(args).into()),
            args_truncated: (!has(ExecFlags::AUSPEX_EXEC_ARGS_UNREADABLE))
                .then(|| has(ExecFlags::AUSPEX_EXEC_ARGS_TRUNCATED)),
            cgroup1_id: e.cgroup1_id,
            ..process(&header.task)
        },
    })
}

fn process(h: &task_info) -> Process {
    Process {
        pid: h.pid,
        tid: h.tid,
        ppid: h.ppid,
        uid: h.uid,
        gid: h.gid,
        // Valid UTF-8 nearly always: `from_utf8_lossy` alone was 9 % of the
        // reader thread in a TCP storm (perf).
        comm: match std::str::from_utf8(c_str(&h.comm)) {
            Ok(comm) => auspex_events::Comm::new(comm),
            Err(_) => auspex_events::Comm::from_utf8_lossy(c_str(&h.comm)),
        },
        cgroup_id: h.cgroup_id,
        // /proc/PID/stat's rounding (nsec_to_clock_t): down to the tick.
        start_ticks: (h.start_boottime != 0).then_some(h.start_boottime / NS_PER_TICK),
        ..Process::default()
    }
}

/// Text up to the first NUL; bytes that are not UTF-8 become U+FFFD.
fn c_str(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// "true\0bin\0usr\0" → "/usr/bin/true" (see `struct exec_event`).
fn path_from_leaf_first(bytes: &[u8]) -> String {
    let mut path = String::with_capacity(bytes.len() + 1);
    for component in bytes.split(|&b| b == 0).rev().filter(|c| !c.is_empty()) {
        path.push('/');
        path.push_str(&String::from_utf8_lossy(component));
    }
    if path.is_empty() {
        path.push('/');
    }
    path
}

/// NUL-terminated strings back to back. Empty arguments are kept; a final
/// piece without its NUL (the vector was truncated) is kept as it is.
fn split_args(bytes: &[u8]) -> Vec<String> {
    if bytes.is_empty() {
        return Vec::new();
    }
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    bytes
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use chrono::DateTime;

    fn context() -> Context {
        Context::new(BootClock::booted_at(
            DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        ))
    }

    /// Decodes a record that must be an event.
    fn event(record: &[u8], context: &Context) -> Result<Event, DecodeError> {
        match decode(record, context)? {
            Decoded::Event(e) => Ok(*e),
            other => panic!("not an event: {other:?}"),
        }
    }

    #[test]
    fn exec_record_decodes_path_and_args() {
        let record = exec_record(b"true\0bin\0usr\0", b"true\0\0a b\0h\xc3\xa9\0", 0);
        let event = event(&record, &context()).unwrap();
        assert_eq!(event.time.timestamp(), 1_700_000_001);
        assert_eq!(event.time.timestamp_subsec_nanos(), 500_000_000);
        let EventKind::ProcessExec { process } = event.kind else {
            panic!("not an exec: {event:?}")
        };
        assert_eq!(process.exe.as_deref(), Some("/usr/bin/true"));
        assert_eq!(
            process.args,
            Some(vec!["true".into(), "".into(), "a b".into(), "hé".into()].into())
        );
        assert_eq!(process.args_truncated, Some(false));
        assert_eq!(
            (
                process.pid,
                process.tid,
                process.ppid,
                process.uid,
                process.gid
            ),
            (10, 11, 1, 1000, 100)
        );
        assert_eq!(process.comm, "test");
        assert_eq!(process.cgroup_id, 99);
    }

    #[test]
    fn a_detached_executable_is_named_as_the_kernel_names_it() {
        let flags = ExecFlags::AUSPEX_EXEC_EXE_DETACHED.0;
        let record = exec_record(
            b"memfd:runc_cloned:/proc/self/exe\0",
            b"runc\0init\0",
            flags,
        );
        let EventKind::ProcessExec { process } = event(&record, &context()).unwrap().kind else {
            panic!()
        };
        assert_eq!(
            process.exe.as_deref(),
            Some("/memfd:runc_cloned:/proc/self/exe (deleted)")
        );
        assert!(process.exe_detached);
        assert!(!process.exe_truncated);
    }

    #[test]
    fn truncated_and_unreadable_args() {
        let flags = ExecFlags::AUSPEX_EXEC_ARGS_TRUNCATED.0;
        let record = exec_record(b"x\0", b"one\0tw", flags);
        let EventKind::ProcessExec { process } = event(&record, &context()).unwrap().kind else {
            panic!()
        };
        assert_eq!(process.args, Some(vec!["one".into(), "tw".into()].into()));
        assert_eq!(process.args_truncated, Some(true));
        assert_eq!(process.exe.as_deref(), Some("/x"));

        let record = exec_record(b"", b"", ExecFlags::AUSPEX_EXEC_ARGS_UNREADABLE.0);
        let EventKind::ProcessExec { process } = event(&record, &context()).unwrap().kind else {
            panic!()
        };
        assert_eq!(process.args, None);
        assert_eq!(process.args_truncated, None);
        assert_eq!(process.exe, None);
    }

    #[test]
    fn exit_record_decodes_status() {
        let event = event(&exit_record(3 << 8), &context()).unwrap();
        assert!(matches!(
            event.kind,
            EventKind::ProcessExit {
                status: Some(ExitStatus::Exited { exit_code: 3 }),
                ..
            }
        ));
    }

    #[test]
    fn every_truncation_of_a_valid_record_is_rejected_without_panic() {
        for record in [exec_record(b"sh\0bin\0", b"sh\0-c\0", 0), exit_record(9)] {
            for len in 0..record.len() {
                let err = decode(&record[..len], &context()).unwrap_err();
                assert!(
                    matches!(err, DecodeError::Short | DecodeError::Inconsistent),
                    "{len}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn inconsistent_lengths_unknown_kinds_and_oversized_records() {
        // exe_len pointing past the record
        let mut record = exec_record(b"a\0", b"b\0", 0);
        let exe_len_at = offset_of!(exec_event, exe_len);
        record[exe_len_at..exe_len_at + 2].copy_from_slice(&4000u16.to_ne_bytes());
        assert_eq!(event(&record, &context()), Err(DecodeError::Inconsistent));

        // a kind nobody knows
        let mut record = exit_record(0);
        record[..4].copy_from_slice(&77u32.to_ne_bytes());
        assert_eq!(
            event(&record, &context()),
            Err(DecodeError::UnknownKind(77))
        );

        // a fixed-size record with trailing bytes its header accounts for
        let mut record = exit_record(0);
        record.extend_from_slice(&[0; 8]);
        let size = record.len() as u32;
        record[4..8].copy_from_slice(&size.to_ne_bytes());
        assert_eq!(event(&record, &context()), Err(DecodeError::Oversized));

        // an exec record longer than the largest exec record
        let mut record = vec![0u8; size_of::<exec_event>() + 8];
        record[..4].copy_from_slice(&Kind::AUSPEX_EVENT_EXEC.0.to_ne_bytes());
        let size = record.len() as u32;
        record[4..8].copy_from_slice(&size.to_ne_bytes());
        assert_eq!(event(&record, &context()), Err(DecodeError::Oversized));
    }

    #[test]
    fn garbage_is_counted_never_a_panic() {
        let mut decoder = Decoder::new(context());
        // A deterministic pseudo-random stream of records of every length.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 0..600 {
            let record: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            assert!(decoder.decode(&record).is_none());
        }
        let stats = decoder.stats();
        assert_eq!(stats.decoded, 0);
        assert_eq!(stats.rejected(), 600);
        assert_eq!(stats.short, size_of::<event_header>() as u64);
    }

    #[test]
    fn sock_records_decode_addresses_roles_and_owner() {
        let ctx = context();
        let record = sock_record(
            Kind::AUSPEX_EVENT_CONNECTION_OPEN,
            AF_INET,
            &[10, 0, 0, 1],
            &[10, 0, 0, 2],
            true,
        );
        let EventKind::ConnectionOpen(c) = event(&record, &ctx).unwrap().kind else {
            panic!()
        };
        assert_eq!(c.protocol, Protocol::Tcp);
        assert_eq!(c.role, Some(Role::Server));
        assert_eq!(
            c.local,
            SocketAddr {
                ip: "10.0.0.1".parse().unwrap(),
                port: 8080
            }
        );
        assert_eq!(
            c.remote,
            SocketAddr {
                ip: "10.0.0.2".parse().unwrap(),
                port: 40000
            }
        );
        assert_eq!(c.netns, Some(4026531840));
        assert_eq!(c.process.unwrap().pid, 10);
        // The id is stable for one socket and hides the kernel address.
        let EventKind::ConnectionOpen(again) = event(&record, &ctx).unwrap().kind else {
            panic!()
        };
        assert_eq!(c.sock_id, again.sock_id);
        assert_ne!(c.sock_id.0, 0xffff_8880_1234_5678);

        // IPv6, with an IPv4-mapped peer shown as IPv4, and no owner.
        let mapped: Vec<u8> = [[0u8; 10].as_slice(), &[0xff, 0xff, 192, 168, 1, 9]].concat();
        let local: Vec<u8> = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        let record = sock_record(
            Kind::AUSPEX_EVENT_CONNECTION_CLOSE,
            AF_INET6,
            &local,
            &mapped,
            false,
        );
        let EventKind::ConnectionClose(c) = event(&record, &ctx).unwrap().kind else {
            panic!()
        };
        assert_eq!(c.local.ip, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(c.remote.ip, "192.168.1.9".parse::<IpAddr>().unwrap());
        assert_eq!(c.process, None);

        let record = sock_record(
            Kind::AUSPEX_EVENT_ENDPOINT_OPEN,
            AF_INET,
            &[0; 4],
            &[0; 4],
            true,
        );
        let EventKind::EndpointOpen(e) = event(&record, &ctx).unwrap().kind else {
            panic!()
        };
        assert_eq!(
            e.local,
            SocketAddr {
                ip: "0.0.0.0".parse().unwrap(),
                port: 8080
            }
        );

        let record = sock_record(
            Kind::AUSPEX_EVENT_UDP_RELEASE,
            AF_INET,
            &[0; 4],
            &[0; 4],
            true,
        );
        assert!(matches!(
            decode(&record, &ctx),
            Ok(Decoded::UdpReleased { .. })
        ));

        // An unknown family or protocol is an inconsistent record.
        let record = sock_record(
            Kind::AUSPEX_EVENT_CONNECTION_OPEN,
            1,
            &[0; 4],
            &[0; 4],
            true,
        );
        assert_eq!(decode(&record, &ctx), Err(DecodeError::Inconsistent));
        let mut record = sock_record(
            Kind::AUSPEX_EVENT_CONNECTION_OPEN,
            AF_INET,
            &[0; 4],
            &[0; 4],
            true,
        );
        record[offset_of!(sock_event, protocol)] = 99;
        assert_eq!(decode(&record, &ctx), Err(DecodeError::Inconsistent));
    }

    #[test]
    fn path_and_args_edge_cases() {
        assert_eq!(path_from_leaf_first(b"\0"), "/");
        assert_eq!(path_from_leaf_first(b"a\0b\0c\0"), "/c/b/a");
        assert_eq!(path_from_leaf_first(b"f\xff\0"), "/f\u{fffd}");
        assert_eq!(split_args(b""), Vec::<String>::new());
        assert_eq!(split_args(b"\0"), vec![String::new()]);
        assert_eq!(split_args(b"a\0\0"), vec!["a".to_string(), String::new()]);
        assert_eq!(split_args(b"\0\0"), vec![String::new(), String::new()]);
        assert_eq!(split_args(b"a"), vec!["a".to_string()]);
    }
}
