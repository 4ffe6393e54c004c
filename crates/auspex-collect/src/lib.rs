//! The one interface every collection method implements, in a crate of its
//! own (as ripgrep's `grep-matcher` is): a [`Method`] says what it needs of
//! the kernel and starts a [`Collector`], which delivers events. Each
//! method's crate implements both (`auspex-probe`: `core_bpf`, `ebpf`;
//! `auspex-proc`: `proc`); the agent holds one list of methods and never
//! knows which one it runs.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use auspex_events::{Endpoint, Event};

/// What starting a method needs from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Relocate against this BTF file instead of the kernel's.
    pub btf_file: Option<PathBuf>,
    /// Size of a BPF method's kernel buffer, in bytes.
    pub ring_buffer_bytes: u32,
    /// How often a scanning method scans.
    pub scan_interval: Duration,
    /// What to collect: a method loads nothing for the rest.
    pub events: auspex_events::EventSelection,
}

/// A kernel feature a method needs, in the words of the feature probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN.
    TracePrivileges,
    /// The kernel's own BTF; `because` says why a `--btf` file is no
    /// substitute.
    KernelBtf {
        because: &'static str,
    },
    /// The `--btf` file parses, when one was given.
    BtfFile,
    BpfSyscall,
    RingBuffer,
    PerfEventArray,
    TpBtf,
    Tracefs,
    /// The netlink process connector.
    ProcConnector,
}

/// What the feature probes found, asked need by need.
pub trait Features {
    /// Why `need` is not met here; `None` when it is.
    fn unmet(&self, need: Need) -> Option<String>;
}

/// Everything lost or incomplete so far, by cause (cumulative counts).
pub type Drops = Vec<(&'static str, u64)>;

/// A program a method attached (in /status: what runs in the kernel).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Program {
    /// Its name in the BPF object.
    pub name: String,
    /// Where it is attached (`tp_btf/sched_process_exec`, ...).
    pub attach_point: String,
    /// The kernel's id of the program.
    pub id: u32,
}

/// How full the kernel buffer the method reads is, now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BufferFill {
    /// Bytes written by the kernel and not yet read.
    pub used: u64,
    pub size: u64,
}

/// One BPF program's in-kernel cost so far: counted by the kernel only
/// while `kernel.bpf_stats_enabled` is 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramRuns {
    pub program: String,
    pub run_time_ns: u64,
    pub run_count: u64,
}

/// A part of a method that could not run, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Degraded {
    pub feature: String,
    pub reason: String,
}

/// A way of collecting events. Implementations are unit values listed once,
/// best first, in the agent (`methods.rs`): adding a method is adding one.
pub trait Method: Sync {
    /// The name `--method` takes and every report shows.
    fn name(&self) -> &'static str;
    /// What the method needs, in the order a missing need is reported.
    fn needs(&self) -> &'static [Need];
    /// Loads and attaches (or subscribes); the collector runs until dropped.
    /// Called on the thread that will read it: a collector need not be
    /// `Send`.
    fn start(&self, config: &Config) -> anyhow::Result<Box<dyn Collector>>;
    /// Extra time the self-check allows this method (one scan, for a method
    /// that sees connections only when it scans).
    fn canary_allowance(&self, _config: &Config) -> Duration {
        Duration::ZERO
    }
}

/// Why `method` cannot run with these features: every unmet need, joined;
/// `None` when it can.
pub fn unmet(method: &dyn Method, features: &dyn Features) -> Option<String> {
    let missing: Vec<String> = method
        .needs()
        .iter()
        .filter_map(|need| features.unmet(*need))
        .collect();
    (!missing.is_empty()).then(|| missing.join("; "))
}

/// A running method: events, drop counts, and what it runs without.
pub trait Collector {
    /// Waits up to `timeout`, then hands over the events that arrived.
    fn poll(&mut self, timeout: Duration, on_event: &mut dyn FnMut(Event)) -> anyhow::Result<()>;
    /// Hands over what has arrived, without waiting.
    fn drain(&mut self, on_event: &mut dyn FnMut(Event)) -> anyhow::Result<()>;
    /// Everything lost or incomplete so far, by cause.
    fn drops(&self) -> anyhow::Result<Drops>;
    fn degraded(&self) -> Vec<Degraded>;
    /// Each of its BPF programs' run time and count (none without BPF).
    fn program_runs(&self) -> Vec<ProgramRuns> {
        Vec::new()
    }
    /// How full its kernel buffer is, where it can tell (a BPF ring
    /// buffer can; perf buffers and the proc connector cannot).
    fn buffer_fill(&self) -> Option<BufferFill> {
        None
    }
    /// Tells the method who owns the listeners that existed before it ran
    /// (from the startup scrape); returns how many it took. Only a method
    /// that learns owners at listen() needs them.
    fn seed_listeners(&mut self, _endpoints: &[Endpoint]) -> anyhow::Result<usize> {
        Ok(0)
    }
    /// The BTF file the method's probes were relocated against, if any.
    fn relocated_against(&self) -> Option<PathBuf> {
        None
    }
    /// The BPF programs the method attached; none for a method without BPF.
    fn programs(&self) -> Vec<Program> {
        Vec::new()
    }
    /// Whether the method reports the sockets that exist already itself (a
    /// scanning method's first scan); otherwise the startup scrape does.
    fn reports_existing_sockets(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Picky;

    impl Method for Picky {
        fn name(&self) -> &'static str {
            "picky"
        }
        fn needs(&self) -> &'static [Need] {
            &[Need::BpfSyscall, Need::Tracefs, Need::RingBuffer]
        }
        fn start(&self, _: &Config) -> anyhow::Result<Box<dyn Collector>> {
            anyhow::bail!("never started here")
        }
    }

    /// A kernel with only the needs listed.
    struct Has(&'static [Need]);

    impl Features for Has {
        fn unmet(&self, need: Need) -> Option<String> {
            (!self.0.contains(&need)).then(|| format!("no {need:?}"))
        }
    }

    #[test]
    fn every_unmet_need_is_named_in_the_methods_order() {
        assert_eq!(
            unmet(&Picky, &Has(&[Need::Tracefs])).as_deref(),
            Some("no BpfSyscall; no RingBuffer")
        );
        const ALL: &[Need] = &[Need::BpfSyscall, Need::Tracefs, Need::RingBuffer];
        assert_eq!(unmet(&Picky, &Has(ALL)), None);
    }
}
