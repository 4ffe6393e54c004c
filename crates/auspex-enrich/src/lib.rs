//! Enrichment: what the kernel event lacked, added from what Auspex saw
//! before. Plain safe Rust, no kernel needed to test it.

mod process_table;

pub use process_table::{ProcFs, ProcessTable, SystemProc};
