//! The proc method: process and network events without BPF, for hosts that
//! forbid it. Lower fidelity, said plainly: process details are read from
//! /proc after the fact, and only connections that live across a scan are
//! seen. Safe Rust throughout.

mod collector;
mod connector;
mod procinfo;
mod scan;

pub use collector::{ProcCollector, ProcStats};
pub use connector::probe as probe_connector;
pub use procinfo::ProcReader;
pub use scan::Scanner;
