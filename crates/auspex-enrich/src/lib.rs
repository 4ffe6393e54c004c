//! Enrichment: what the kernel event lacked, added from what Auspex saw
//! before: the process's exe, args and container, and the lineage of an
//! exec. Plain safe Rust, testable without a kernel (what it reads of /proc
//! goes through the `ProcFs` trait; `auspex-procfs` is the real one).
#![forbid(unsafe_code)]

pub mod container_id;
mod process_table;

pub use process_table::{ProcFs, ProcessTable, SystemProc};
