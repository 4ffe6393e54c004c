//! Everything BPF-specific and unsafe in Auspex: the probes (C, under
//! `bpf/`), their loading and attaching, kernel feature checks, and the
//! decoding of their records into `auspex_events` types. The rest of Auspex
//! is safe Rust that never sees a BPF type.

pub mod btf;
mod clock;
mod collector;
mod core_bpf;
pub mod decode;
mod degraded;
mod error;
pub mod features;
#[cfg(test)]
mod fuzz;
mod inbox;
mod legacy_bpf;
mod libbpf_log;
mod listeners;
mod loading;
mod perf_reader;
mod privileges;
mod programs;
mod skel;
mod stats;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod udp_sockets;
mod wire;

/// Where cgroup v2 is mounted (the socket hooks attach to its root): the
/// one lookup, shared with the rest of Auspex.
use auspex_procfs::cgroup;

pub use clock::BootClock;
pub use collector::{CoreBpfMethod, EbpfMethod};
pub use core_bpf::{CoreBpf, ProbeConfig};
pub use degraded::Degraded;
pub use error::ProbeError;
pub use legacy_bpf::LegacyBpf;
pub use programs::ProgramInfo;
pub use stats::{KernelDrops, ProbeStats};

/// Bytes of the argument vector a process event carries at most.
pub const ARGS_MAX: usize = skel::types::auspex_limits::AUSPEX_ARGS_MAX.0 as usize;

/// Kernel run statistics of one loaded BPF program (needs
/// `kernel.bpf_stats_enabled=1` to count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramRunStats {
    pub id: u32,
    pub name: String,
    pub run_time_ns: u64,
    pub run_count: u64,
}

/// Run statistics of every BPF program loaded on the host.
pub fn program_run_stats() -> Vec<ProgramRunStats> {
    libbpf_rs::query::ProgInfoIter::default()
        .map(|p| ProgramRunStats {
            id: p.id,
            name: p.name.to_string_lossy().into_owned(),
            run_time_ns: p.run_time_ns,
            run_count: p.run_cnt,
        })
        .collect()
}
