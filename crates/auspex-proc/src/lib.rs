//! The proc method: process and network events without BPF, for hosts that
//! forbid it. Lower fidelity, said plainly: process details are read from
//! /proc after the fact, and only connections that live across a scan are
//! seen. Safe Rust throughout; what it reads of /proc comes from
//! `auspex-procfs`.
#![forbid(unsafe_code)]

mod collector;
mod connector;
mod scan;

pub use collector::{ProcCollector, ProcMethod, ProcStats};
pub use connector::probe as probe_connector;
pub use scan::Scanner;
