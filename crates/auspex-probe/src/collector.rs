//! The BPF methods as the agent sees them: what each needs of the kernel,
//! how it starts, and the collection interface (`auspex-collect`) over the
//! probes' own API. Also how the feature probes answer a method's needs.

use std::path::PathBuf;
use std::time::Duration;

use auspex_collect::{Collector, Config, Degraded, Drops, Features, Method, Need};
use auspex_events::{Endpoint, Event};

use crate::features::{Check, FeatureReport};
use crate::{CoreBpf, LegacyBpf, ProbeConfig, ProbeStats};

/// CO-RE probes on BTF-aware tracepoints and cgroup socket hooks, one ring
/// buffer.
pub struct CoreBpfMethod;

impl Method for CoreBpfMethod {
    fn name(&self) -> &'static str {
        "core_bpf"
    }

    fn needs(&self) -> &'static [Need] {
        &[
            Need::TracePrivileges,
            Need::KernelBtf {
                because: "tp_btf programs attach through it; --btf cannot replace it",
            },
            Need::BtfFile,
            Need::BpfSyscall,
            Need::RingBuffer,
            Need::TpBtf,
        ]
    }

    fn start(&self, config: &Config) -> anyhow::Result<Box<dyn Collector>> {
        let probe = CoreBpf::load(&ProbeConfig {
            btf_file: config.btf_file.clone(),
            ring_buffer_bytes: config.ring_buffer_bytes,
            events: config.events,
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

    fn needs(&self) -> &'static [Need] {
        &[
            Need::TracePrivileges,
            Need::BpfSyscall,
            Need::PerfEventArray,
            Need::Tracefs,
        ]
    }

    fn start(&self, config: &Config) -> anyhow::Result<Box<dyn Collector>> {
        Ok(Box::new(LegacyBpf::load_selected(
            config.btf_file.as_deref(),
            config.events,
        )?))
    }
}

impl Features for FeatureReport {
    fn unmet(&self, need: Need) -> Option<String> {
        let failed =
            |name: &str, check: &Check| (!check.ok).then(|| format!("{name}: {}", check.detail));
        match need {
            Need::TracePrivileges => (!self.privileges.can_trace())
                .then(|| "privileges: needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN".to_string()),
            Need::KernelBtf { because } => failed("kernel BTF", &self.kernel_btf)
                .map(|missing| format!("{missing} ({because})")),
            Need::BtfFile => self
                .btf_file
                .as_ref()
                .filter(|c| !c.ok)
                .map(|c| c.detail.clone()),
            Need::BpfSyscall => failed("bpf()", &self.bpf_syscall),
            Need::RingBuffer => failed("ring buffer", &self.ring_buffer),
            Need::PerfEventArray => failed("perf event array", &self.perf_event_array),
            Need::TpBtf => failed("tp_btf", &self.tp_btf),
            Need::Tracefs => failed("tracefs", &self.tracefs),
            Need::ProcConnector => failed("proc connector", &self.proc_connector),
        }
    }
}

/// The drops of a BPF method, by cause.
fn probe_drops(s: &ProbeStats) -> Drops {
    let k = s.kernel_drops;
    vec![
        ("buffer_full_exec", k.exec),
        ("buffer_full_fork", k.fork),
        ("buffer_full_exit", k.exit),
        ("buffer_full_network", k.network),
        ("undecodable_record", s.decode.rejected()),
        ("socket_map_full", k.socket_maps_full),
        ("udp_connect_unresolved", k.udp_connect_unresolved),
        ("udp_socket_forgotten", s.udp_sockets_forgotten),
    ]
}

fn degraded(parts: &[crate::Degraded]) -> Vec<Degraded> {
    parts
        .iter()
        .map(|d| Degraded {
            feature: d.feature.to_string(),
            reason: d.reason.clone(),
        })
        .collect()
}

/// The same interface over both probes' (identical) public API.
macro_rules! bpf_collector {
    ($probe:ty, $btf:expr) => {
        impl Collector for $probe {
            fn poll(
                &mut self,
                timeout: Duration,
                on_event: &mut dyn FnMut(Event),
            ) -> anyhow::Result<()> {
                <$probe>::poll(self, timeout, on_event)?;
                Ok(())
            }

            fn drain(&mut self, on_event: &mut dyn FnMut(Event)) -> anyhow::Result<()> {
                <$probe>::drain(self, on_event)?;
                Ok(())
            }

            fn drops(&self) -> anyhow::Result<Drops> {
                Ok(probe_drops(&self.stats()?))
            }

            fn degraded(&self) -> Vec<Degraded> {
                degraded(<$probe>::degraded(self))
            }

            fn buffer_fill(&self) -> Option<auspex_collect::BufferFill> {
                Fill::fill(self)
            }

            fn program_runs(&self) -> Vec<auspex_collect::ProgramRuns> {
                self.run_stats()
                    .into_iter()
                    .map(|p| auspex_collect::ProgramRuns {
                        program: p.name,
                        run_time_ns: p.run_time_ns,
                        run_count: p.run_count,
                    })
                    .collect()
            }

            fn seed_listeners(&mut self, endpoints: &[Endpoint]) -> anyhow::Result<usize> {
                Ok(<$probe>::seed_listeners(self, endpoints)?)
            }

            fn relocated_against(&self) -> Option<PathBuf> {
                $btf(self)
            }

            fn programs(&self) -> Vec<auspex_collect::Program> {
                <$probe>::programs(self)
                    .into_iter()
                    .map(|p| auspex_collect::Program {
                        name: p.name.to_string(),
                        attach_point: p.attach_point,
                        id: p.id,
                    })
                    .collect()
            }
        }
    };
}

bpf_collector!(CoreBpf, |p: &CoreBpf| Some(
    p.relocated_against().to_path_buf()
));

/// Only the ring buffer tells how full it is.
trait Fill {
    fn fill(&self) -> Option<auspex_collect::BufferFill>;
}

impl Fill for CoreBpf {
    fn fill(&self) -> Option<auspex_collect::BufferFill> {
        self.ring_fill()
            .map(|(used, size)| auspex_collect::BufferFill { used, size })
    }
}

impl Fill for LegacyBpf {
    fn fill(&self) -> Option<auspex_collect::BufferFill> {
        None
    }
}
bpf_collector!(LegacyBpf, |p: &LegacyBpf| p
    .relocated_against()
    .map(PathBuf::from));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::Privileges;

    fn yes() -> Check {
        Check::from_result(Ok("works".into()))
    }

    fn no(why: &str) -> Check {
        Check::from_result(Err(why.into()))
    }

    fn everything() -> FeatureReport {
        FeatureReport {
            kernel_release: "test".into(),
            privileges: Privileges {
                cap_sys_admin: true,
                cap_bpf: true,
                cap_perfmon: true,
                cap_net_admin: true,
            },
            kernel_btf: yes(),
            btf_file: None,
            bpf_syscall: yes(),
            ring_buffer: yes(),
            perf_event_array: yes(),
            tp_btf: yes(),
            fentry: yes(),
            raw_tracepoint: yes(),
            tracefs: yes(),
            bpf_timer: yes(),
            cgroup2: yes(),
            proc_connector: yes(),
        }
    }

    #[test]
    fn with_everything_both_methods_can_run() {
        let f = everything();
        assert_eq!(auspex_collect::unmet(&CoreBpfMethod, &f), None);
        assert_eq!(auspex_collect::unmet(&EbpfMethod, &f), None);
    }

    #[test]
    fn without_kernel_btf_and_ring_buffers_core_bpf_says_both_and_ebpf_still_runs() {
        let f = FeatureReport {
            kernel_btf: no("/sys/kernel/btf/vmlinux is missing"),
            ring_buffer: no("the kernel refuses BPF ring buffer maps"),
            btf_file: Some(no("/x.btf: not BTF")),
            ..everything()
        };
        assert_eq!(
            auspex_collect::unmet(&CoreBpfMethod, &f).as_deref(),
            Some(
                "kernel BTF: /sys/kernel/btf/vmlinux is missing (tp_btf programs attach \
                 through it; --btf cannot replace it); /x.btf: not BTF; ring buffer: the \
                 kernel refuses BPF ring buffer maps"
            )
        );
        assert_eq!(auspex_collect::unmet(&EbpfMethod, &f), None);
    }

    #[test]
    fn without_privileges_neither_runs_and_the_reason_comes_first() {
        let f = FeatureReport {
            privileges: Privileges {
                cap_sys_admin: false,
                cap_bpf: true,
                cap_perfmon: false,
                cap_net_admin: true,
            },
            tracefs: no("not mounted"),
            ..everything()
        };
        let why = "privileges: needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN";
        assert_eq!(
            auspex_collect::unmet(&CoreBpfMethod, &f).as_deref(),
            Some(why)
        );
        assert_eq!(
            auspex_collect::unmet(&EbpfMethod, &f),
            Some(format!("{why}; tracefs: not mounted"))
        );
    }
}
