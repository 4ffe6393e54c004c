//! The legacy (ebpf) method: classic tracepoints and a perf event array,
//! no CO-RE, for kernels without BTF or ring buffers (bpf/legacy.bpf.c);
//! with CO-RE reads where some BTF is at hand (bpf/legacy_btf.bpf.c).

use std::cell::RefCell;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use auspex_events::Event;
use libbpf_rs::skel::{OpenSkel, Skel};

use crate::decode::trim_perf_padding;
use crate::degraded::Degraded;
use crate::error::ProbeError;
use crate::inbox::Inbox;
use crate::loading::{load_error, retry_interrupted, Loaded};
use crate::perf_reader::BatchedPerf;
use crate::programs::{self, Attached, ProgramInfo, Row};
use crate::skel::legacy::LegacySkelBuilder;
use crate::skel::legacy_btf::LegacyBtfSkelBuilder;
use crate::skel::{Legacy, LegacyBtf};
use crate::stats::{KernelDrops, ProbeStats};
use crate::{btf, features, libbpf_log, privileges};

/// Pages of perf buffer per CPU (a power of two).
const PERF_PAGES: usize = 256;
/// Samples per wakeup of the reader; fewer wait for its next poll.
const WAKEUP_EVENTS: u32 = 64;

/// The two objects of the method: the one without CO-RE, and the CO-RE
/// programs that replace some of its programs when BTF is at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Obj {
    Legacy,
    LegacyBtf,
}

/// Which variant of the probe runs a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Both,
    WithoutBtf,
    WithBtf,
}

impl Variant {
    fn runs(self, with_btf: bool) -> bool {
        match self {
            Variant::Both => true,
            Variant::WithoutBtf => !with_btf,
            Variant::WithBtf => with_btf,
        }
    }
}

const fn row(object: Obj, name: &'static str, variant: Variant) -> Row<Obj, Variant> {
    Row {
        object,
        name,
        part: variant,
    }
}

/// Every program of the method, in the order they are attached.
const PROGRAMS: [Row<Obj, Variant>; 7] = [
    row(Obj::Legacy, "legacy_fork", Variant::Both),
    row(Obj::Legacy, "legacy_tcp_state", Variant::Both),
    row(Obj::Legacy, "legacy_exec", Variant::WithoutBtf),
    row(Obj::Legacy, "legacy_exit", Variant::WithoutBtf),
    row(Obj::Legacy, "legacy_exit_group", Variant::WithoutBtf),
    row(Obj::LegacyBtf, "legacy_exec_btf", Variant::WithBtf),
    row(Obj::LegacyBtf, "legacy_exit_btf", Variant::WithBtf),
];

/// The loaded and attached legacy probes. Dropping it detaches and unloads
/// everything.
pub struct LegacyBpf {
    // Field order is drop order: stop reading, detach, close the objects.
    perf: BatchedPerf,
    inbox: Rc<RefCell<Inbox>>,
    attached: Vec<Attached>,
    /// The CO-RE programs, when some BTF was at hand; they use `legacy`'s maps.
    with_btf: Option<Loaded<LegacyBtf>>,
    legacy: Loaded<Legacy>,
    degraded: Vec<Degraded>,
    /// The BTF the CO-RE programs were relocated against, if they run.
    btf: Option<PathBuf>,
}

impl LegacyBpf {
    /// Loads with CO-RE reads when some BTF is at hand (the kernel's, or
    /// `btf_file`), and without when there is none or it does not fit.
    pub fn load(btf_file: Option<&Path>) -> Result<Self, ProbeError> {
        retry_interrupted(|| {
            let usable = btf_file.is_none_or(|f| btf::check_btf_file(f).is_ok());
            if usable && (btf_file.is_some() || btf::kernel_btf_present()) {
                match Self::load_once(Some(btf_file.or(btf::kernel_btf_elsewhere()))) {
                    Err(e @ ProbeError::Interrupted { .. }) => return Err(e),
                    Err(e) => {
                        tracing::debug!("the ebpf method runs without CO-RE reads: {e}");
                    }
                    ok => return ok,
                }
            }
            Self::load_once(None)
        })
    }

    /// `core`: Some(BTF file or the kernel's) to add the CO-RE programs.
    fn load_once(core: Option<Option<&Path>>) -> Result<Self, ProbeError> {
        libbpf_log::forward_to_tracing();
        privileges::check()?;
        features::require_bpf()?;
        if ![
            "/sys/kernel/tracing/events",
            "/sys/kernel/debug/tracing/events",
        ]
        .iter()
        .any(|d| Path::new(d).is_dir())
        {
            return Err(ProbeError::TracefsMissing);
        }
        let with_btf = core.is_some();
        let legacy =
            Loaded::<Legacy>::open("legacy", LegacySkelBuilder::default(), None, |open| {
                // The CO-RE twins, if loaded, replace some programs.
                programs::set_autoload(open.open_object_mut(), &PROGRAMS, Obj::Legacy, |v| {
                    v.runs(with_btf)
                });
                Ok(())
            })?;
        let btf_programs = match core {
            Some(btf_file) => Some(Self::load_core(&legacy, btf_file)?),
            None => None,
        };

        let attached = PROGRAMS
            .iter()
            .filter(|r| r.part.runs(with_btf))
            .map(|r| {
                let object = match (r.object, &btf_programs) {
                    (Obj::Legacy, _) => legacy.get().object(),
                    (Obj::LegacyBtf, Some(b)) => b.get().object(),
                    (Obj::LegacyBtf, None) => unreachable!("CO-RE programs run only with BTF"),
                };
                programs::attach(object, r.name, None)
            })
            .collect::<Result<Vec<_>, _>>()?;

        let inbox = Inbox::shared();
        let perf = {
            let inbox = Rc::clone(&inbox);
            BatchedPerf::new(
                legacy.get().maps.perf_events.as_fd(),
                PERF_PAGES,
                WAKEUP_EVENTS,
                Box::new(move |sample: &[u8]| {
                    inbox.borrow_mut().take(trim_perf_padding(sample));
                }),
            )
            .map_err(|e| ProbeError::Load {
                probe: "legacy",
                reason: format!("opening the perf buffer failed: {e}"),
            })?
        };
        let mut degraded = vec![Degraded {
            feature: "udp",
            reason: "the ebpf method does not report UDP yet".into(),
        }];
        if btf_programs.is_none() {
            degraded.push(Degraded {
                feature: "core_reads",
                reason: "no usable BTF: exec paths are as given to execve, arguments and \
                         parents come from /proc, exit codes from the exit_group syscall \
                         tracepoint, signals are unknown"
                    .into(),
            });
        }
        Ok(LegacyBpf {
            perf,
            inbox,
            attached,
            with_btf: btf_programs,
            legacy,
            degraded,
            btf: core.map(|file| file.map_or_else(|| btf::KERNEL_BTF.into(), Path::to_path_buf)),
        })
    }

    /// Opens and loads the CO-RE programs on the legacy object's maps.
    fn load_core(
        legacy: &Loaded<Legacy>,
        btf_file: Option<&Path>,
    ) -> Result<Loaded<LegacyBtf>, ProbeError> {
        const PROBE: &str = "legacy (CO-RE)";
        Loaded::<LegacyBtf>::open(PROBE, LegacyBtfSkelBuilder::default(), btf_file, |open| {
            let shared = &legacy.get().maps;
            let maps = &mut open.maps;
            maps.perf_events
                .reuse_fd(shared.perf_events.as_fd())
                .map_err(load_error(PROBE))?;
            maps.counters
                .reuse_fd(shared.counters.as_fd())
                .map_err(load_error(PROBE))?;
            maps.scratch
                .reuse_fd(shared.scratch.as_fd())
                .map_err(load_error(PROBE))?;
            Ok(())
        })
    }

    /// Waits up to `timeout` for a batch of samples, then hands each decoded
    /// event (of the batch, and of whatever waits below one) to `on_event`.
    pub fn poll(
        &mut self,
        timeout: Duration,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<usize, ProbeError> {
        self.perf.poll(timeout).map_err(perf_failed)?;
        // The flush: samples below the wakeup batch are read here.
        self.drain(on_event)
    }

    /// Takes whatever is in the perf buffers now, without waiting.
    pub fn drain(&mut self, on_event: &mut dyn FnMut(Event)) -> Result<usize, ProbeError> {
        self.perf.consume().map_err(perf_failed)?;
        Ok(self.inbox.borrow_mut().deliver(on_event))
    }

    pub fn stats(&self) -> Result<ProbeStats, ProbeError> {
        let mut kernel_drops = KernelDrops::read(&self.legacy.get().maps.counters)?;
        // Samples the kernel could not put in a full perf buffer.
        kernel_drops.network += self.perf.lost();
        Ok(self.inbox.borrow().stats(kernel_drops))
    }

    /// Records the owners of TCP listeners that predate the probe; see
    /// `CoreBpf::seed_listeners`. This probe keys listeners by (family,
    /// port) alone, as its TCP tracepoint does not give the network
    /// namespace: the first seeded listener of a port in any namespace wins.
    pub fn seed_listeners(
        &self,
        endpoints: &[auspex_events::Endpoint],
    ) -> Result<usize, ProbeError> {
        crate::listeners::seed(&self.legacy.get().maps.listeners, endpoints, false)
    }

    pub fn degraded(&self) -> &[Degraded] {
        &self.degraded
    }

    /// The BTF file the CO-RE programs were relocated against; None when
    /// the probe runs without them.
    pub fn relocated_against(&self) -> Option<&Path> {
        self.btf.as_deref()
    }

    /// The attached programs: name, attach point and kernel id.
    pub fn programs(&self) -> Vec<ProgramInfo> {
        self.attached.iter().map(|a| a.info.clone()).collect()
    }

    /// Kernel ids of the probe's maps, to check that they go away.
    pub fn map_ids(&self) -> Vec<u32> {
        let mut objects = vec![self.legacy.get().object()];
        objects.extend(self.with_btf.as_ref().map(|b| b.get().object()));
        programs::map_ids(&objects)
    }

    pub fn attached(&self) -> usize {
        self.attached.len()
    }

    /// Each attached program's run time and count.
    pub fn run_stats(&self) -> Vec<crate::ProgramRunStats> {
        let mut objects = vec![self.legacy.get().object()];
        objects.extend(self.with_btf.as_ref().map(|b| b.get().object()));
        programs::run_stats(&objects, &self.attached)
    }
}

fn perf_failed(e: std::io::Error) -> ProbeError {
    ProbeError::Runtime {
        what: "perf buffer",
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::programs::tests::assert_table_matches;

    #[test]
    fn the_table_lists_every_program_of_both_objects() {
        assert_table_matches(&PROGRAMS, Obj::Legacy, LegacySkelBuilder::default());
        assert_table_matches(&PROGRAMS, Obj::LegacyBtf, LegacyBtfSkelBuilder::default());
    }
}
