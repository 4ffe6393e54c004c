//! Everything BPF-specific and unsafe in Auspex: the probes (C, under
//! `bpf/`), their loading and attaching, kernel feature checks, and the
//! decoding of their records into `auspex_events` types. The rest of Auspex
//! is safe Rust that never sees a BPF type.

pub mod btf;
mod cgroup;
mod clock;
mod core_bpf;
pub mod decode;
mod error;
pub mod features;
mod libbpf_log;
mod privileges;
mod skel;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod udp_sockets;
mod wire;

pub use clock::BootClock;
pub use core_bpf::{CoreBpf, Degraded, KernelDrops, ProbeConfig, ProbeStats};
pub use error::ProbeError;

/// Bytes of the argument vector a process event carries at most.
pub const ARGS_MAX: usize = skel::types::auspex_limits::AUSPEX_ARGS_MAX.0 as usize;
