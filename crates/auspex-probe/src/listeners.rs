//! Seeding the probes' listener maps with sockets that were listening
//! before the probes loaded. The probes learn a listener's owner when it
//! calls listen(); without this, every connection a server started before
//! the agent accepts would have no owner, as accepts complete in softirq.

use auspex_events::{Endpoint, Process, Protocol};
use libbpf_rs::{MapCore, MapFlags};

use crate::decode::{AF_INET, AF_INET6};
use crate::error::{errno_of, explain, ProbeError};
use crate::skel::network::types::listener_key;
use crate::skel::types::task_info;
use crate::wire::bytes_of;

/// What the probes would have recorded at listen() for the owner.
fn owner(p: &Process) -> task_info {
    let mut t = task_info {
        pid: p.pid,
        tid: p.tid,
        ppid: p.ppid,
        uid: p.uid,
        gid: p.gid,
        _pad: 0,
        cgroup_id: p.cgroup_id,
        start_boottime: p
            .start_ticks
            .map_or(0, |t| t.saturating_mul(auspex_events::NS_PER_TICK)),
        comm: [0; 16],
    };
    // Like the kernel's comm: at most 15 bytes and a NUL.
    let n = p.comm.len().min(t.comm.len() - 1);
    t.comm[..n].copy_from_slice(&p.comm.as_bytes()[..n]);
    t
}

/// The TCP listeners among `endpoints` that have an owner, as (netns, port,
/// family, owner).
fn tcp_listeners(
    endpoints: &[Endpoint],
) -> impl Iterator<Item = (Option<u32>, u16, u16, task_info)> + '_ {
    endpoints
        .iter()
        .filter(|e| e.protocol == Protocol::Tcp)
        .filter_map(|e| {
            let family = if e.local.ip.is_ipv4() {
                AF_INET
            } else {
                AF_INET6
            };
            Some((e.netns, e.local.port, family, owner(e.process.as_ref()?)))
        })
}

/// Writes each listener into `map` (bpf/lib/owners.h's `listeners`) unless
/// it already has one for its key (a listen() the probe saw knows better
/// than a scan). Without `by_netns` the key's namespace is 0, as the probe
/// that cannot see namespaces writes it. Returns how many were written.
pub(crate) fn seed(
    map: &dyn MapCore,
    endpoints: &[Endpoint],
    by_netns: bool,
) -> Result<usize, ProbeError> {
    let mut seeded = 0;
    for (netns, port, family, task) in tcp_listeners(endpoints) {
        let key = listener_key {
            // A scan always knows the namespace; 0 where it would not.
            netns: if by_netns { netns.unwrap_or(0) } else { 0 },
            port,
            family,
        };
        match map.update(bytes_of(&key), bytes_of(&task), MapFlags::NO_EXIST) {
            Ok(()) => seeded += 1,
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(ProbeError::Runtime {
                    what: "seeding the listener map",
                    reason: explain(&e),
                })
            }
        }
    }
    Ok(seeded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use auspex_events::{SockId, SocketAddr};

    fn endpoint(protocol: Protocol, ip: &str, process: Option<Process>) -> Endpoint {
        Endpoint {
            protocol,
            local: SocketAddr {
                ip: ip.parse().unwrap(),
                port: 8080,
            },
            netns: Some(4026531840),
            sock_id: SockId(0),
            process,
        }
    }

    #[test]
    fn only_owned_tcp_listeners_with_their_family_and_a_kernel_style_comm() {
        let p = Process {
            pid: 10,
            tid: 10,
            ppid: 1,
            uid: 33,
            gid: 33,
            comm: "a-very-long-process-name".into(),
            cgroup_id: 7,
            ..Process::default()
        };
        let endpoints = [
            endpoint(Protocol::Tcp, "0.0.0.0", Some(p.clone())),
            endpoint(Protocol::Tcp, "::", Some(p.clone())),
            endpoint(Protocol::Udp, "0.0.0.0", Some(p)),
            endpoint(Protocol::Tcp, "127.0.0.1", None),
        ];
        let found: Vec<_> = tcp_listeners(&endpoints).collect();
        assert_eq!(found.len(), 2);
        let (netns, port, family, task) = found[0];
        assert_eq!((netns, port, family), (Some(4026531840), 8080, AF_INET));
        assert_eq!(
            (task.pid, task.ppid, task.uid, task.cgroup_id),
            (10, 1, 33, 7)
        );
        assert_eq!(&task.comm, b"a-very-long-pro\0");
        assert_eq!(found[1].2, AF_INET6);
    }
}
