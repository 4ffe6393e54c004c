//! The collection methods, in order of preference, and what each needs of
//! the kernel. Adding a method is adding it here.

use std::path::PathBuf;
use std::time::Duration;

use auspex_probe::features::FeatureReport;
use auspex_probe::{CoreBpf, LegacyBpf, ProbeConfig};
use auspex_proc::ProcCollector;

use crate::collector::{Collector, Degraded};

/// What starting a method needs from the command line.
#[derive(Debug, Clone)]
pub struct MethodConfig {
    pub btf_file: Option<PathBuf>,
    pub ring_buffer_bytes: u32,
    /// How often the proc method scans /proc for sockets.
    pub scan_interval: Duration,
}

pub trait Method {
    fn name(&self) -> &'static str;
    /// Why the method cannot run on this kernel, judged from the feature
    /// probes; `None` when it can.
    fn unmet(&self, features: &FeatureReport) -> Option<String>;
    fn start(&self, config: &MethodConfig) -> anyhow::Result<Box<dyn Collector>>;
    /// Extra time the canary allows this method (one scan, for a method
    /// that sees connections only when it scans).
    fn canary_allowance(&self, _config: &MethodConfig) -> Duration {
        Duration::ZERO
    }
}

/// Set (to anything) to put a method that sees nothing first in line: a
/// test-only way to prove, end to end, that a method failing its canary is
/// given up for the next one.
pub const BLIND_METHOD_ENV: &str = "AUSPEX_TEST_BLIND_METHOD";

/// The registered methods, best first: what `auto` tries, in this order.
pub fn registered() -> Vec<Box<dyn Method>> {
    let mut methods: Vec<Box<dyn Method>> = vec![
        Box::new(CoreBpfMethod),
        Box::new(EbpfMethod),
        Box::new(ProcMethod),
    ];
    if std::env::var_os(BLIND_METHOD_ENV).is_some() {
        methods.insert(0, Box::new(Blind));
    }
    methods
}

/// Every method name the command line accepts, registered or not yet.
pub const KNOWN: &[&str] = &["core_bpf", "ebpf", "proc"];

pub struct CoreBpfMethod;

impl Method for CoreBpfMethod {
    fn name(&self) -> &'static str {
        "core_bpf"
    }

    fn unmet(&self, f: &FeatureReport) -> Option<String> {
        let mut missing = Vec::new();
        if !f.privileges.can_trace() {
            missing.push("privileges: needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN".to_string());
        }
        if !f.kernel_btf.ok {
            missing.push(format!(
                "kernel BTF: {} (tp_btf programs attach through it; --btf cannot replace it)",
                f.kernel_btf.detail
            ));
        }
        if let Some(file) = f.btf_file.as_ref().filter(|c| !c.ok) {
            missing.push(file.detail.clone());
        }
        for (name, check) in [
            ("bpf()", &f.bpf_syscall),
            ("ring buffer", &f.ring_buffer),
            ("tp_btf", &f.tp_btf),
        ] {
            if !check.ok {
                missing.push(format!("{name}: {}", check.detail));
            }
        }
        (!missing.is_empty()).then(|| missing.join("; "))
    }

    fn start(&self, config: &MethodConfig) -> anyhow::Result<Box<dyn Collector>> {
        let probe = CoreBpf::load(&ProbeConfig {
            btf_file: config.btf_file.clone(),
            ring_buffer_bytes: config.ring_buffer_bytes,
        })?;
        Ok(Box::new(probe))
    }
}

/// Classic tracepoints and a perf event array, no BTF needed.
pub struct EbpfMethod;

impl Method for EbpfMethod {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn unmet(&self, f: &FeatureReport) -> Option<String> {
        let mut missing = Vec::new();
        if !f.privileges.can_trace() {
            missing.push("privileges: needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN".to_string());
        }
        for (name, check) in [
            ("bpf()", &f.bpf_syscall),
            ("perf event array", &f.perf_event_array),
            ("tracefs", &f.tracefs),
        ] {
            if !check.ok {
                missing.push(format!("{name}: {}", check.detail));
            }
        }
        (!missing.is_empty()).then(|| missing.join("; "))
    }

    fn start(&self, config: &MethodConfig) -> anyhow::Result<Box<dyn Collector>> {
        Ok(Box::new(LegacyBpf::load(config.btf_file.as_deref())?))
    }
}

/// No BPF: the netlink process connector and /proc scans.
pub struct ProcMethod;

impl Method for ProcMethod {
    fn name(&self) -> &'static str {
        "proc"
    }

    fn unmet(&self, f: &FeatureReport) -> Option<String> {
        (!f.proc_connector.ok).then(|| format!("proc connector: {}", f.proc_connector.detail))
    }

    fn start(&self, config: &MethodConfig) -> anyhow::Result<Box<dyn Collector>> {
        let collector = ProcCollector::start(config.scan_interval)
            .map_err(|e| anyhow::anyhow!("subscribing to the process connector failed: {e}"))?;
        Ok(Box::new(collector))
    }

    fn canary_allowance(&self, config: &MethodConfig) -> Duration {
        config.scan_interval
    }
}

/// See [`BLIND_METHOD_ENV`].
struct Blind;

impl Method for Blind {
    fn name(&self) -> &'static str {
        "test_blind"
    }

    fn unmet(&self, _: &FeatureReport) -> Option<String> {
        None
    }

    fn start(&self, _: &MethodConfig) -> anyhow::Result<Box<dyn Collector>> {
        Ok(Box::new(Blind))
    }
}

impl Collector for Blind {
    fn poll(
        &mut self,
        timeout: std::time::Duration,
        _: &mut dyn FnMut(auspex_events::Event),
    ) -> anyhow::Result<()> {
        std::thread::sleep(timeout);
        Ok(())
    }

    fn drain(&mut self, _: &mut dyn FnMut(auspex_events::Event)) -> anyhow::Result<()> {
        Ok(())
    }

    fn drops(&self) -> anyhow::Result<Vec<(&'static str, u64)>> {
        Ok(Vec::new())
    }

    fn degraded(&self) -> Vec<Degraded> {
        Vec::new()
    }
}
