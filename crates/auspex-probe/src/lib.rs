//! Everything BPF-specific and unsafe in Auspex: the probes (C, under
//! `bpf/`), their loading and attaching, kernel feature checks, and the
//! decoding of their records into `auspex_events` types. The rest of Auspex
//! is safe Rust that never sees a BPF type.

pub mod btf;
mod clock;
pub mod decode;
mod error;
mod features;
mod libbpf_log;
mod privileges;
mod process_probe;
mod skel;
mod wire;

pub use clock::BootClock;
pub use error::ProbeError;
pub use process_probe::{KernelDrops, ProbeConfig, ProbeStats, ProcessProbe};

/// Bytes of the argument vector a process event carries at most.
pub const ARGS_MAX: usize = skel::types::auspex_limits::AUSPEX_ARGS_MAX.0 as usize;
