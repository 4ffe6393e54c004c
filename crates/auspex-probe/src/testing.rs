//! Records as the probes send them, built in userspace: for the decoder's
//! tests and the pipeline benchmark.

use std::mem::{offset_of, size_of};

use crate::skel::types::{
    auspex_event_kind as Kind, auspex_role as WireRole, auspex_sock_flags as SockFlags,
    event_header, exec_event, exit_event, fork_event, sock_event, task_info,
};
use crate::wire::bytes_of;

pub use crate::skel::types::auspex_event_kind as RecordKind;

pub use crate::decode::{AF_INET, AF_INET6};

/// A header for a record of `kind` and `size` bytes, about pid 10 (tid 11,
/// parent 1, uid 1000, gid 100, cgroup 99, comm "test").
pub fn header(kind: Kind, size: usize) -> event_header {
    let mut comm = [0u8; 16];
    comm[..4].copy_from_slice(b"test");
    event_header {
        kind: kind.0,
        size: size as u32,
        boot_ns: 1_500_000_000,
        task: task_info {
            pid: 10,
            tid: 11,
            ppid: 1,
            uid: 1000,
            gid: 100,
            cgroup_id: 99,
            comm,
            ..Default::default()
        },
    }
}

pub fn exec_record(exe: &[u8], args: &[u8], flags: u32) -> Vec<u8> {
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

pub fn exit_record(status: u32) -> Vec<u8> {
    let e = exit_event {
        hdr: header(Kind::AUSPEX_EVENT_EXIT, size_of::<exit_event>()),
        exit_status: status,
        ..Default::default()
    };
    bytes_of(&e).to_vec()
}

pub fn sock_record(kind: Kind, family: u16, local: &[u8], remote: &[u8], owner: bool) -> Vec<u8> {
    let mut e = sock_event {
        hdr: header(kind, size_of::<sock_event>()),
        sock: 0xffff_8880_1234_5678,
        netns: 4026531840,
        family,
        protocol: 6,
        role: WireRole::AUSPEX_ROLE_SERVER.0 as u8,
        local_port: 8080,
        remote_port: 40000,
        flags: if owner {
            SockFlags::AUSPEX_SOCK_OWNER_KNOWN.0
        } else {
            0
        },
        ..Default::default()
    };
    e.local_addr[..local.len()].copy_from_slice(local);
    e.remote_addr[..remote.len()].copy_from_slice(remote);
    bytes_of(&e).to_vec()
}

/// A fork record: the header describes the child, `parent` forked it.
pub fn fork_record(parent: u32, is_thread: bool) -> Vec<u8> {
    let e = fork_event {
        hdr: header(Kind::AUSPEX_EVENT_FORK, size_of::<fork_event>()),
        parent_pid: parent,
        parent_tid: parent,
        is_thread: u32::from(is_thread),
        ..Default::default()
    };
    bytes_of(&e).to_vec()
}
