//! Probing the netlink process connector (CONFIG_PROC_EVENTS), which the
//! proc method reads: subscribe, wait for the kernel's acknowledgement,
//! unsubscribe.

use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_CN_MCAST_IGNORE: u32 = 2;
const NLMSG_DONE: u16 = 3;
/// nlmsghdr (16) + cn_msg (20) + the operation (4).
const MESSAGE_LEN: usize = 40;

fn message(op: u32) -> [u8; MESSAGE_LEN] {
    let mut m = [0u8; MESSAGE_LEN];
    m[0..4].copy_from_slice(&(MESSAGE_LEN as u32).to_ne_bytes());
    m[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
    m[12..16].copy_from_slice(&std::process::id().to_ne_bytes());
    m[16..20].copy_from_slice(&CN_IDX_PROC.to_ne_bytes());
    m[20..24].copy_from_slice(&CN_VAL_PROC.to_ne_bytes());
    m[32..34].copy_from_slice(&4u16.to_ne_bytes());
    m[36..40].copy_from_slice(&op.to_ne_bytes());
    m
}

fn last_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

pub fn probe() -> Result<String, String> {
    // SAFETY: plain socket(2); the result is checked and owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_CONNECTOR,
        )
    };
    if fd < 0 {
        return Err(last_error("no netlink connector socket (CONFIG_CONNECTOR)"));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let fd = socket.as_raw_fd();

    // SAFETY: an all-zero sockaddr_nl is valid; the fields are then set.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = CN_IDX_PROC;
    // SAFETY: `addr` is a sockaddr_nl of the size passed.
    let rc = unsafe {
        libc::bind(
            fd,
            std::ptr::from_ref(&addr).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc < 0 {
        return Err(last_error("cannot join the process events group"));
    }
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 500_000,
    };
    // SAFETY: SO_RCVTIMEO takes a timeval of the size passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&timeout).cast(),
            size_of::<libc::timeval>() as u32,
        );
    }
    let send = |op| {
        let m = message(op);
        // SAFETY: `m` is a readable buffer of the length passed.
        unsafe { libc::send(fd, m.as_ptr().cast(), m.len(), 0) }
    };
    if send(PROC_CN_MCAST_LISTEN) < 0 {
        return Err(last_error("subscribing to process events failed"));
    }
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is a writable buffer of the length passed.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    send(PROC_CN_MCAST_IGNORE);
    if n <= 0 {
        return Err(last_error(
            "no answer to the subscription (CONFIG_PROC_EVENTS off, or CAP_NET_ADMIN missing)",
        ));
    }
    Ok("subscribed to process events and got the kernel's answer".into())
}
