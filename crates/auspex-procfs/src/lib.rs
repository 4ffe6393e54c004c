//! What /proc and the cgroup v2 hierarchy say, read once here for every
//! part of Auspex that needs it: the `proc` method (process details at an
//! event, socket tables at a scan), enrichment (processes that started
//! before Auspex, container ids from cgroup paths), the startup scrape, and
//! the BPF probes (where cgroup v2 is mounted, for the socket hooks). Plain
//! safe Rust; every read is of the live system, so a read can fail and
//! callers get `None` or an empty value, never an error to handle.
#![forbid(unsafe_code)]

pub mod cgroup;
mod process;
pub mod sockets;

pub use process::{all_pids, ProcReader};
pub use sockets::{SocketReader, Sockets};
