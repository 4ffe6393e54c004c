//! Ring-buffer records → typed events, trusting nothing: a record that is
//! short, oversized, inconsistent or of an unknown kind is counted and
//! skipped.

use std::mem::{offset_of, size_of};

use auspex_events::{Event, EventKind, ExitStatus, Process, TaskId};

use crate::clock::BootClock;
use crate::skel::types::{
    auspex_event_kind as Kind, auspex_exec_flags as ExecFlags, event_header, exec_event,
    exit_event, fork_event,
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

#[derive(Debug)]
pub struct Decoder {
    clock: BootClock,
    stats: DecodeStats,
}

impl Decoder {
    pub fn new(clock: BootClock) -> Self {
        Decoder {
            clock,
            stats: DecodeStats::default(),
        }
    }

    pub fn stats(&self) -> DecodeStats {
        self.stats
    }

    /// Decodes one record, counting the outcome.
    pub fn decode(&mut self, record: &[u8]) -> Option<Event> {
        match decode(record, &self.clock) {
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

pub fn decode(record: &[u8], clock: &BootClock) -> Result<Event, DecodeError> {
    if record.len() < size_of::<event_header>() {
        return Err(DecodeError::Short);
    }
    let header: event_header = read_prefix(record);
    if header.size as usize != record.len() {
        return Err(DecodeError::Inconsistent);
    }
    let kind = match Kind(header.kind) {
        Kind::AUSPEX_EVENT_EXEC => decode_exec(record, &header)?,
        Kind::AUSPEX_EVENT_FORK => {
            let e: fork_event = read_exact(record)?;
            EventKind::ProcessFork {
                process: process(&header),
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
                process: process(&header),
                status: ExitStatus::from_wait_status(e.exit_status),
            }
        }
        Kind(other) => return Err(DecodeError::UnknownKind(other)),
    };
    Ok(Event {
        time: clock.to_wall(header.boot_ns),
        kind,
    })
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
            exe: (!exe.is_empty()).then(|| path_from_leaf_first(exe)),
            exe_truncated: has(ExecFlags::AUSPEX_EXEC_EXE_TRUNCATED),
            args: (!has(ExecFlags::AUSPEX_EXEC_ARGS_UNREADABLE)).then(|| split_args(args)),
            args_truncated: (!has(ExecFlags::AUSPEX_EXEC_ARGS_UNREADABLE))
                .then(|| has(ExecFlags::AUSPEX_EXEC_ARGS_TRUNCATED)),
            ..process(header)
        },
    })
}

fn process(h: &event_header) -> Process {
    Process {
        pid: h.pid,
        tid: h.tid,
        ppid: h.ppid,
        uid: h.uid,
        gid: h.gid,
        comm: c_string(&h.comm),
        cgroup_id: h.cgroup_id,
        ..Process::default()
    }
}

/// Text up to the first NUL; bytes that are not UTF-8 become U+FFFD.
fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
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
    use crate::wire::bytes_of;
    use chrono::DateTime;

    fn clock() -> BootClock {
        BootClock::booted_at(DateTime::from_timestamp(1_700_000_000, 0).unwrap())
    }

    fn header(kind: Kind, size: usize) -> event_header {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"test");
        event_header {
            kind: kind.0,
            size: size as u32,
            boot_ns: 1_500_000_000,
            pid: 10,
            tid: 11,
            ppid: 1,
            uid: 1000,
            gid: 100,
            cgroup_id: 99,
            comm,
            ..Default::default()
        }
    }

    fn exec_record(exe: &[u8], args: &[u8], flags: u32) -> Vec<u8> {
        let size = offset_of!(exec_event, data) + exe.len() + args.len();
        let mut e = exec_event {
            hdr: header(Kind::AUSPEX_EVENT_EXEC, size),
            exe_len: exe.len() as u16,
            args_len: args.len() as u16,
            flags,
            ..Default::default()
        };
        e.data[..exe.len()].copy_from_slice(exe);
        e.data[exe.len()..exe.len() + args.len()].copy_from_slice(args);
        bytes_of(&e)[..size].to_vec()
    }

    fn exit_record(status: u32) -> Vec<u8> {
        let e = exit_event {
            hdr: header(Kind::AUSPEX_EVENT_EXIT, size_of::<exit_event>()),
            exit_status: status,
            ..Default::default()
        };
        bytes_of(&e).to_vec()
    }

    #[test]
    fn exec_record_decodes_path_and_args() {
        let record = exec_record(b"true\0bin\0usr\0", b"true\0\0a b\0h\xc3\xa9\0", 0);
        let event = decode(&record, &clock()).unwrap();
        assert_eq!(event.time.timestamp(), 1_700_000_001);
        assert_eq!(event.time.timestamp_subsec_nanos(), 500_000_000);
        let EventKind::ProcessExec { process } = event.kind else {
            panic!("not an exec: {event:?}")
        };
        assert_eq!(process.exe.as_deref(), Some("/usr/bin/true"));
        assert_eq!(
            process.args,
            Some(vec!["true".into(), "".into(), "a b".into(), "hé".into()])
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
    fn truncated_and_unreadable_args() {
        let flags = ExecFlags::AUSPEX_EXEC_ARGS_TRUNCATED.0;
        let record = exec_record(b"x\0", b"one\0tw", flags);
        let EventKind::ProcessExec { process } = decode(&record, &clock()).unwrap().kind else {
            panic!()
        };
        assert_eq!(process.args, Some(vec!["one".into(), "tw".into()]));
        assert_eq!(process.args_truncated, Some(true));
        assert_eq!(process.exe.as_deref(), Some("/x"));

        let record = exec_record(b"", b"", ExecFlags::AUSPEX_EXEC_ARGS_UNREADABLE.0);
        let EventKind::ProcessExec { process } = decode(&record, &clock()).unwrap().kind else {
            panic!()
        };
        assert_eq!(process.args, None);
        assert_eq!(process.args_truncated, None);
        assert_eq!(process.exe, None);
    }

    #[test]
    fn exit_record_decodes_status() {
        let event = decode(&exit_record(3 << 8), &clock()).unwrap();
        assert!(matches!(
            event.kind,
            EventKind::ProcessExit {
                status: ExitStatus::Exited { exit_code: 3 },
                ..
            }
        ));
    }

    #[test]
    fn every_truncation_of_a_valid_record_is_rejected_without_panic() {
        for record in [exec_record(b"sh\0bin\0", b"sh\0-c\0", 0), exit_record(9)] {
            for len in 0..record.len() {
                let err = decode(&record[..len], &clock()).unwrap_err();
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
        assert_eq!(decode(&record, &clock()), Err(DecodeError::Inconsistent));

        // a kind nobody knows
        let mut record = exit_record(0);
        record[..4].copy_from_slice(&77u32.to_ne_bytes());
        assert_eq!(decode(&record, &clock()), Err(DecodeError::UnknownKind(77)));

        // a fixed-size record with trailing bytes its header accounts for
        let mut record = exit_record(0);
        record.extend_from_slice(&[0; 8]);
        let size = record.len() as u32;
        record[4..8].copy_from_slice(&size.to_ne_bytes());
        assert_eq!(decode(&record, &clock()), Err(DecodeError::Oversized));

        // an exec record longer than the largest exec record
        let mut record = vec![0u8; size_of::<exec_event>() + 8];
        record[..4].copy_from_slice(&Kind::AUSPEX_EVENT_EXEC.0.to_ne_bytes());
        let size = record.len() as u32;
        record[4..8].copy_from_slice(&size.to_ne_bytes());
        assert_eq!(decode(&record, &clock()), Err(DecodeError::Oversized));
    }

    #[test]
    fn garbage_is_counted_never_a_panic() {
        let mut decoder = Decoder::new(clock());
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
