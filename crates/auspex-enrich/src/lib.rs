//! Enrichment: what the kernel event lacked, added from what Auspex saw
//! before: the process's exe, args and container, and the lineage of an
//! exec; and the startup scrape of what existed before Auspex ran. Plain
//! safe Rust, testable without a kernel.

pub mod container_id;
mod process_table;
pub mod scrape;

pub use process_table::{ProcFs, ProcessTable, SystemProc};
