//! The legacy (ebpf) method: classic tracepoints and a perf event array,
//! no CO-RE, for kernels without BTF or ring buffers (bpf/legacy.bpf.c);
//! with CO-RE reads where some BTF is at hand (bpf/legacy_btf.bpf.c).

use std::cell::RefCell;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use auspex_events::{Event, EventSelection};
use libbpf_rs::skel::{OpenSkel, Skel};

use crate::decode::trim_perf_padding;
use crate::degraded::Degraded;
use crate::error::ProbeError;
use crate::inbox::{Arrival, Inbox};
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
    WithoutBtf,
    WithBtf,
}

impl Variant {
    fn runs(self, with_btf: bool) -> bool {
        match self {
            Variant::WithoutBtf => !with_btf,
            Variant::WithBtf => with_btf,
        }
    }
}

/// What a program needs: the variant of the probe that runs it, and for the
/// UDP socket hooks a cgroup v2 root to attach to (all or none, as in
/// core_bpf: a partial set would report flows it can never close).
/// And the events it produces: it is loaded only when they are wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Part {
    variant: Variant,
    udp: bool,
    produces: Produces,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Produces {
    Exec,
    Fork,
    Exit,
    Tcp,
    Udp,
}

impl Part {
    fn runs(self, with_btf: bool, events: &EventSelection) -> bool {
        self.variant.runs(with_btf)
            && match self.produces {
                Produces::Exec => events.exec(),
                Produces::Fork => events.fork(),
                Produces::Exit => events.exit(),
                Produces::Tcp => events.tcp(),
                Produces::Udp => events.udp(),
            }
    }
}

const fn row(
    object: Obj,
    name: &'static str,
    variant: Variant,
    produces: Produces,
) -> Row<Obj, Part> {
    Row {
        object,
        name,
        part: Part {
            variant,
            udp: false,
            produces,
        },
    }
}

/// A UDP hook of bpf/lib/udp.h, which both objects hold (without and with
/// CO-RE reads of the kernel socket).
const fn udp(object: Obj, name: &'static str) -> Row<Obj, Part> {
    let variant = match object {
        Obj::Legacy => Variant::WithoutBtf,
        Obj::LegacyBtf => Variant::WithBtf,
    };
    Row {
        object,
        name,
        part: Part {
            variant,
            udp: true,
            produces: Produces::Udp,
        },
    }
}

/// Every program of the method, in the order they are attached.
const PROGRAMS: [Row<Obj, Part>; 31] = [
    row(
        Obj::Legacy,
        "legacy_fork",
        Variant::WithoutBtf,
        Produces::Fork,
    ),
    row(
        Obj::Legacy,
        "legacy_tcp_state",
        Variant::WithoutBtf,
        Produces::Tcp,
    ),
    row(
        Obj::Legacy,
        "legacy_exec",
        Variant::WithoutBtf,
        Produces::Exec,
    ),
    row(
        Obj::Legacy,
        "legacy_exit",
        Variant::WithoutBtf,
        Produces::Exit,
    ),
    row(
        Obj::Legacy,
        "legacy_exit_group",
        Variant::WithoutBtf,
        Produces::Exit,
    ),
    row(
        Obj::LegacyBtf,
        "legacy_fork_btf",
        Variant::WithBtf,
        Produces::Fork,
    ),
    row(
        Obj::LegacyBtf,
        "legacy_exec_btf",
        Variant::WithBtf,
        Produces::Exec,
    ),
    row(
        Obj::LegacyBtf,
        "legacy_exit_btf",
        Variant::WithBtf,
        Produces::Exit,
    ),
    row(
        Obj::LegacyBtf,
        "legacy_tcp_state_btf",
        Variant::WithBtf,
        Produces::Tcp,
    ),
    udp(Obj::Legacy, "udp_sendmsg4"),
    udp(Obj::Legacy, "udp_sendmsg6"),
    udp(Obj::Legacy, "udp_recvmsg4"),
    udp(Obj::Legacy, "udp_recvmsg6"),
    udp(Obj::Legacy, "udp_bind4"),
    udp(Obj::Legacy, "udp_bind6"),
    udp(Obj::Legacy, "udp_post_bind4"),
    udp(Obj::Legacy, "udp_post_bind6"),
    udp(Obj::Legacy, "udp_release"),
    udp(Obj::Legacy, "udp_connect4_late"),
    udp(Obj::Legacy, "udp_connect6_late"),
    udp(Obj::LegacyBtf, "udp_sendmsg4"),
    udp(Obj::LegacyBtf, "udp_sendmsg6"),
    udp(Obj::LegacyBtf, "udp_recvmsg4"),
    udp(Obj::LegacyBtf, "udp_recvmsg6"),
    udp(Obj::LegacyBtf, "udp_bind4"),
    udp(Obj::LegacyBtf, "udp_bind6"),
    udp(Obj::LegacyBtf, "udp_post_bind4"),
    udp(Obj::LegacyBtf, "udp_post_bind6"),
    udp(Obj::LegacyBtf, "udp_release"),
    udp(Obj::LegacyBtf, "udp_connect4_late"),
    udp(Obj::LegacyBtf, "udp_connect6_late"),
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
        Self::load_selected(btf_file, EventSelection::all())
    }

    /// As `load`, with only the programs of the `events` wanted.
    pub fn load_selected(
        btf_file: Option<&Path>,
        events: EventSelection,
    ) -> Result<Self, ProbeError> {
        retry_interrupted(|| {
            let usable = btf_file.is_none_or(|f| btf::check_btf_file(f).is_ok());
            if usable && (btf_file.is_some() || btf::kernel_btf_present()) {
                match Self::load_once(Some(btf_file.or(btf::kernel_btf_elsewhere())), events) {
                    Err(e @ ProbeError::Interrupted { .. }) => return Err(e),
                    Err(e) => {
                        tracing::debug!("the ebpf method runs without CO-RE reads: {e}");
                    }
                    ok => return ok,
                }
            }
            Self::load_once(None, events)
        })
    }

    /// `core`: Some(BTF file or the kernel's) to add the CO-RE programs.
    fn load_once(core: Option<Option<&Path>>, events: EventSelection) -> Result<Self, ProbeError> {
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
        let mut degraded = Vec::new();
        // Loading a cgroup socket program needs CAP_NET_ADMIN (or
        // CAP_SYS_ADMIN: the kernel's bpf_net_capable). Without it the UDP
        // hooks are left out, degraded, rather than failing the method that
        // is the last BPF fallback (the deploy test's pod without NET_ADMIN
        // fell through to proc once the hooks were added here).
        let events = if events.udp() && !net_capable() {
            degraded.push(Degraded {
                feature: "udp",
                reason: "no CAP_NET_ADMIN: the UDP socket hooks (cgroup programs) cannot be \
                         loaded"
                    .into(),
            });
            events.without_udp()
        } else {
            events
        };
        let legacy =
            Loaded::<Legacy>::open("legacy", LegacySkelBuilder::default(), None, |open| {
                // The CO-RE twins, if loaded, replace some programs.
                programs::set_autoload(open.open_object_mut(), &PROGRAMS, Obj::Legacy, |p| {
                    p.runs(with_btf, &events)
                });
                Ok(())
            })?;
        let btf_programs = match core {
            Some(btf_file) => Some(Self::load_core(&legacy, btf_file, events)?),
            None => None,
        };

        let object = |o: Obj| match (o, &btf_programs) {
            (Obj::Legacy, _) => legacy.get().object(),
            (Obj::LegacyBtf, Some(b)) => b.get().object(),
            (Obj::LegacyBtf, None) => unreachable!("CO-RE programs run only with BTF"),
        };
        let runs = |p: &Part| p.runs(with_btf, &events);
        let mut attached = PROGRAMS
            .iter()
            .filter(|r| runs(&r.part) && !r.part.udp)
            .map(|r| programs::attach(object(r.object), r.name, None))
            .collect::<Result<Vec<_>, _>>()?;
        if events.udp() {
            match attach_udp(&object, &runs) {
                Ok(udp) => attached.extend(udp),
                Err(reason) => degraded.push(Degraded {
                    feature: "udp",
                    reason,
                }),
            }
        }

        let inbox = Inbox::shared(Arrival::PerCpu);
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
        // No BPF timer here (the method is the fallback for kernels without
        // them): the hook cannot wait for connect() to bind the socket.
        if events.udp() {
            degraded.push(Degraded {
                feature: "udp_connected",
                reason: if with_btf {
                    "the ebpf method has no BPF timers: a connected UDP socket is reported \
                 when it is closed, not when it connects"
                        .into()
                } else {
                    "no usable BTF and no BPF timers: a connected UDP socket is reported when \
                 it is closed, without its local address and port (0)"
                        .into()
                },
            });
        }
        if btf_programs.is_none() {
            degraded.push(Degraded {
                feature: "core_reads",
                reason: "no usable BTF: exec paths are as given to execve, arguments and \
                         parents come from /proc, exit codes from the exit_group syscall \
                         tracepoint, signals are unknown"
                    .into(),
            });
            degraded.push(Degraded {
                feature: "netns",
                reason: "no usable BTF: the network namespace of connections and endpoints \
                         is unknown (null), and TCP listeners are told apart by port alone"
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
        events: EventSelection,
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
            // Seeding and the UDP state work on the legacy object's maps,
            // which otherwise would sit allocated and unused.
            maps.sock_owners
                .reuse_fd(shared.sock_owners.as_fd())
                .map_err(load_error(PROBE))?;
            maps.listeners
                .reuse_fd(shared.listeners.as_fd())
                .map_err(load_error(PROBE))?;
            maps.udp_socks
                .reuse_fd(shared.udp_socks.as_fd())
                .map_err(load_error(PROBE))?;
            maps.udp_flows
                .reuse_fd(shared.udp_flows.as_fd())
                .map_err(load_error(PROBE))?;
            programs::set_autoload(open.open_object_mut(), &PROGRAMS, Obj::LegacyBtf, |p| {
                p.runs(true, &events)
            });
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
        // Samples the kernel could not put in a full perf buffer are
        // counted by the programs, per kind, when bpf_perf_event_output
        // fails (lib/perf_output.h). The kernel's PERF_RECORD_LOST counts
        // the same samples again: adding it made every lost record count
        // twice (`auspex-bench max-rate`: 7,695 records lost, 15,390
        // counted).
        let kernel_drops = KernelDrops::read(&self.legacy.get().maps.counters)?;
        Ok(self.inbox.borrow().stats(kernel_drops))
    }

    /// Records the owners of TCP listeners that predate the probe; see
    /// `CoreBpf::seed_listeners`. Without BTF this probe keys listeners by
    /// (family, port) alone, as its TCP tracepoint does not give the
    /// network namespace: the first seeded listener of a port in any
    /// namespace wins.
    pub fn seed_listeners(
        &self,
        endpoints: &[auspex_events::Endpoint],
    ) -> Result<usize, ProbeError> {
        let by_netns = self.with_btf.is_some();
        crate::listeners::seed(&self.legacy.get().maps.listeners, endpoints, by_netns)
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

/// Attaches the UDP hooks of the running variant to the root of the cgroup
/// v2 hierarchy, so they see every socket on the host. All or none.
fn attach_udp<'a>(
    object: &impl Fn(Obj) -> &'a libbpf_rs::Object,
    runs: &impl Fn(&Part) -> bool,
) -> Result<Vec<Attached>, String> {
    let root = crate::cgroup::cgroup2_mount()
        .ok_or("cgroup v2 is not mounted: the UDP socket hooks attach to its root")?;
    let root = programs::Cgroup::open(root)?;
    PROGRAMS
        .iter()
        .filter(|r| r.part.udp && runs(&r.part))
        .map(|r| programs::attach(object(r.object), r.name, Some(&root)).map_err(|e| e.to_string()))
        .collect()
}

/// Whether this thread may load cgroup socket programs.
fn net_capable() -> bool {
    [
        caps::Capability::CAP_NET_ADMIN,
        caps::Capability::CAP_SYS_ADMIN,
    ]
    .into_iter()
    .any(|cap| caps::has_cap(None, caps::CapSet::Effective, cap).unwrap_or(false))
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

    /// Bytes of CO-RE relocation records in a BPF object (its .BTF.ext
    /// header: magic 0xeb9f, version 1, 32-byte header, core_relo_len last).
    fn core_relocation_bytes(object: &[u8]) -> u32 {
        let header = [0x9f, 0xeb, 1, 0, 32, 0, 0, 0];
        let at = object
            .windows(header.len())
            .position(|w| w == header)
            .expect("a .BTF.ext header");
        u32::from_le_bytes(object[at + 28..at + 32].try_into().unwrap())
    }

    /// libbpf refuses an object with any CO-RE relocation where no BTF is
    /// at hand, and a field access through a vmlinux.h type is one (they are
    /// all preserve_access_index): the BTF-less kernel of the matrix found
    /// the UDP hooks' context reads that way.
    #[test]
    fn the_object_for_kernels_without_btf_has_no_core_relocation() {
        let legacy = include_bytes!(concat!(env!("OUT_DIR"), "/legacy.bpf.o"));
        let with_btf = include_bytes!(concat!(env!("OUT_DIR"), "/legacy_btf.bpf.o"));
        assert!(
            core_relocation_bytes(with_btf) > 0,
            "the check reads .BTF.ext"
        );
        assert_eq!(core_relocation_bytes(legacy), 0);
    }

    #[test]
    fn the_table_lists_every_program_of_both_objects() {
        assert_table_matches(&PROGRAMS, Obj::Legacy, LegacySkelBuilder::default());
        assert_table_matches(&PROGRAMS, Obj::LegacyBtf, LegacyBtfSkelBuilder::default());
    }
}
