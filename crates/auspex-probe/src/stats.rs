//! What a probe counts about itself: the losses its programs count in the
//! kernel (the per-CPU `counters` map of bpf/lib/counters.h), and those of
//! decoding.

use libbpf_rs::{MapCore, MapFlags};

use crate::decode::DecodeStats;
use crate::error::{explain, ProbeError};
use crate::skel::types::auspex_counter as Counter;

/// Losses counted in the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelDrops {
    /// Records lost because the ring buffer was full, by probe.
    pub exec: u64,
    pub fork: u64,
    pub exit: u64,
    pub network: u64,
    /// Sockets not remembered because a map was full: their later events
    /// lack their owner (TCP) or may repeat (UDP).
    pub socket_maps_full: u64,
    /// Connected UDP sockets whose local port never appeared.
    pub udp_connect_unresolved: u64,
}

impl KernelDrops {
    /// Records lost outright.
    pub fn records(&self) -> u64 {
        self.exec + self.fork + self.exit + self.network
    }

    /// Reads the counters map every probe shares (counters a probe does not
    /// have stay zero).
    pub(crate) fn read(counters: &dyn MapCore) -> Result<Self, ProbeError> {
        let counter = |c| sum(counters, c);
        Ok(KernelDrops {
            exec: counter(Counter::AUSPEX_DROP_RINGBUF_EXEC)?,
            fork: counter(Counter::AUSPEX_DROP_RINGBUF_FORK)?,
            exit: counter(Counter::AUSPEX_DROP_RINGBUF_EXIT)?,
            network: counter(Counter::AUSPEX_DROP_RINGBUF_NET)?,
            socket_maps_full: counter(Counter::AUSPEX_DROP_SOCK_OWNERS_FULL)?
                + counter(Counter::AUSPEX_DROP_LISTENERS_FULL)?
                + counter(Counter::AUSPEX_DROP_UDP_SOCKS_FULL)?,
            udp_connect_unresolved: counter(Counter::AUSPEX_DROP_UDP_CONNECT_UNRESOLVED)?,
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeStats {
    pub kernel_drops: KernelDrops,
    pub decode: DecodeStats,
    /// UDP sockets whose closes will not be reported (tracking table full).
    pub udp_sockets_forgotten: u64,
}

/// Sums a per-CPU counter over all CPUs.
fn sum(map: &dyn MapCore, counter: Counter) -> Result<u64, ProbeError> {
    let runtime = |reason: String| ProbeError::Runtime {
        what: "kernel counters",
        reason,
    };
    let per_cpu = map
        .lookup_percpu(&counter.0.to_ne_bytes(), MapFlags::ANY)
        .map_err(|e| runtime(explain(&e)))?
        .ok_or_else(|| runtime(format!("counter {} is missing", counter.0)))?;
    Ok(per_cpu
        .iter()
        .filter_map(|bytes| bytes.get(..8)?.try_into().ok().map(u64::from_ne_bytes))
        .sum())
}
