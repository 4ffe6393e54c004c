//! The netlink process connector: the kernel's own feed of fork, exec and
//! exit, available without BPF (CONFIG_PROC_EVENTS, CAP_NET_ADMIN).

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use netlink_sys::{protocols::NETLINK_CONNECTOR, Socket, SocketAddr};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_CN_MCAST_IGNORE: u32 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HEADER: usize = 16;
const CN_MSG_HEADER: usize = 20;
/// What, cpu, timestamp: then the event's own fields.
const PROC_EVENT_HEADER: usize = 16;

const PROC_EVENT_NONE: u32 = 0x0;
const PROC_EVENT_FORK: u32 = 0x1;
const PROC_EVENT_EXEC: u32 = 0x2;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;

/// One event of the connector (the kinds Auspex reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcEvent {
    Fork {
        parent_pid: u32,
        parent_tgid: u32,
        child_pid: u32,
        child_tgid: u32,
    },
    Exec {
        pid: u32,
        tgid: u32,
    },
    Exit {
        pid: u32,
        tgid: u32,
        /// Wait status, as the kernel keeps it.
        exit_code: u32,
    },
    /// The kernel's answer to a subscription: 0, or the errno of a refusal.
    Ack {
        err: u32,
    },
}

/// A proc event with the kernel's timestamp (CLOCK_MONOTONIC, ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamped {
    pub monotonic_ns: u64,
    pub event: ProcEvent,
}

pub struct Connector {
    socket: Socket,
    buf: Vec<u8>,
}

fn control(op: u32) -> [u8; NLMSG_HEADER + CN_MSG_HEADER + 4] {
    let mut m = [0u8; NLMSG_HEADER + CN_MSG_HEADER + 4];
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
    m[12..16].copy_from_slice(&std::process::id().to_ne_bytes());
    m[16..20].copy_from_slice(&CN_IDX_PROC.to_ne_bytes());
    m[20..24].copy_from_slice(&CN_VAL_PROC.to_ne_bytes());
    m[32..34].copy_from_slice(&4u16.to_ne_bytes());
    m[36..40].copy_from_slice(&op.to_ne_bytes());
    m
}

/// How long the kernel may take to answer a subscription.
const ACK_TIMEOUT: Duration = Duration::from_secs(1);

impl Connector {
    /// Subscribes to process events, and waits for the kernel to accept:
    /// joining the group alone succeeds even when the subscription is
    /// refused (without CAP_NET_ADMIN, the kernel answers EPERM).
    pub fn subscribe() -> io::Result<Connector> {
        let mut socket = Socket::new(NETLINK_CONNECTOR)?;
        socket.bind(&SocketAddr::new(0, CN_IDX_PROC))?;
        socket.send(&control(PROC_CN_MCAST_LISTEN), 0)?;
        let mut connector = Connector {
            socket,
            buf: Vec::with_capacity(64 * 1024),
        };
        let deadline = std::time::Instant::now() + ACK_TIMEOUT;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            for stamped in connector.receive(left)? {
                match stamped.event {
                    ProcEvent::Ack { err: 0 } => return Ok(connector),
                    ProcEvent::Ack { err } => return Err(io::Error::from_raw_os_error(err as i32)),
                    _ => {}
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the kernel did not answer the subscription (CONFIG_PROC_EVENTS off?)",
        ))
    }

    /// Waits up to `timeout` for messages and returns the events in them.
    pub fn receive(&mut self, timeout: Duration) -> io::Result<Vec<Stamped>> {
        let mut events = Vec::new();
        let mut wait = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        loop {
            let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, wait) {
                Ok(0) => return Ok(events),
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => return Ok(events),
                Err(e) => return Err(e.into()),
            }
            self.buf.clear();
            self.socket.recv(&mut self.buf, 0)?;
            events.extend(parse(&self.buf));
            // Take what else is queued, without waiting again.
            wait = PollTimeout::ZERO;
        }
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        let _ = self.socket.send(&control(PROC_CN_MCAST_IGNORE), 0);
    }
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// The events in one datagram of netlink messages; anything short or
/// unknown is skipped.
pub fn parse(datagram: &[u8]) -> Vec<Stamped> {
    let mut events = Vec::new();
    let mut rest = datagram;
    while let Some(len) = u32_at(rest, 0).map(|l| l as usize) {
        if len < NLMSG_HEADER || len > rest.len() {
            break;
        }
        if let Some(e) = parse_proc_event(&rest[NLMSG_HEADER..len]) {
            events.push(e);
        }
        // Messages are aligned to 4 bytes.
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    events
}

fn parse_proc_event(cn_msg: &[u8]) -> Option<Stamped> {
    if u32_at(cn_msg, 0)? != CN_IDX_PROC {
        return None;
    }
    let ev = cn_msg.get(CN_MSG_HEADER..)?;
    let what = u32_at(ev, 0)?;
    let monotonic_ns = u64_at(ev, 8)?;
    let at = |i: usize| u32_at(ev, PROC_EVENT_HEADER + 4 * i);
    let event = match what {
        PROC_EVENT_FORK => ProcEvent::Fork {
            parent_pid: at(0)?,
            parent_tgid: at(1)?,
            child_pid: at(2)?,
            child_tgid: at(3)?,
        },
        PROC_EVENT_EXEC => ProcEvent::Exec {
            pid: at(0)?,
            tgid: at(1)?,
        },
        PROC_EVENT_NONE => ProcEvent::Ack { err: at(0)? },
        PROC_EVENT_EXIT => ProcEvent::Exit {
            pid: at(0)?,
            tgid: at(1)?,
            exit_code: at(2)?,
        },
        _ => return None,
    };
    Some(Stamped {
        monotonic_ns,
        event,
    })
}

/// The feature probe: can this process subscribe to process events?
pub fn probe() -> Result<String, String> {
    match Connector::subscribe() {
        Ok(_) => Ok("subscribed to process events; the kernel accepted".into()),
        Err(e) if e.raw_os_error() == Some(nix::libc::EPERM) => Err(format!(
            "the kernel refused the subscription ({e}): CAP_NET_ADMIN is needed"
        )),
        Err(e) => Err(format!("no process events: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(what: u32, fields: &[u32]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        body.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        body.extend_from_slice(&[0; 12]);
        body.extend_from_slice(&what.to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        body.extend_from_slice(&77u64.to_ne_bytes());
        for f in fields {
            body.extend_from_slice(&f.to_ne_bytes());
        }
        let len = (NLMSG_HEADER + body.len()) as u32;
        let mut m = len.to_ne_bytes().to_vec();
        m.extend_from_slice(&[0; 12]);
        m.extend_from_slice(&body);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    #[test]
    fn parses_fork_exec_exit_and_skips_the_rest() {
        let mut datagram = message(PROC_EVENT_FORK, &[1, 1, 42, 42]);
        datagram.extend(message(PROC_EVENT_EXEC, &[42, 42]));
        datagram.extend(message(0x200 /* comm */, &[42, 42, 0, 0]));
        datagram.extend(message(PROC_EVENT_EXIT, &[42, 42, 3 << 8, 17]));
        datagram.extend(message(PROC_EVENT_NONE, &[1]));
        let events: Vec<ProcEvent> = parse(&datagram).into_iter().map(|s| s.event).collect();
        assert_eq!(
            events,
            [
                ProcEvent::Fork {
                    parent_pid: 1,
                    parent_tgid: 1,
                    child_pid: 42,
                    child_tgid: 42
                },
                ProcEvent::Exec { pid: 42, tgid: 42 },
                ProcEvent::Exit {
                    pid: 42,
                    tgid: 42,
                    exit_code: 3 << 8
                },
                ProcEvent::Ack { err: 1 },
            ]
        );
        assert_eq!(parse(&datagram)[0].monotonic_ns, 77);
    }

    #[test]
    fn truncated_and_garbage_datagrams_never_panic() {
        let datagram = message(PROC_EVENT_EXIT, &[42, 42, 0, 0]);
        for len in 0..datagram.len() {
            let _ = parse(&datagram[..len]);
        }
        let garbage: Vec<u8> = (0..997u32).map(|i| (i * 31 % 251) as u8).collect();
        let _ = parse(&garbage);
        assert!(parse(&[0xff; 64]).is_empty());
    }
}
