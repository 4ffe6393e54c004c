//! Reading the probes' per-CPU counters.

use libbpf_rs::{MapCore, MapFlags};

use crate::error::{explain, ProbeError};
use crate::skel::types::auspex_counter as Counter;

/// Sums a per-CPU counter over all CPUs.
pub(crate) fn sum(map: &dyn MapCore, counter: Counter) -> Result<u64, ProbeError> {
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
