//! The legacy (ebpf) method: classic tracepoints and a perf event array,
//! no CO-RE, for kernels without BTF or ring buffers (bpf/legacy.bpf.c).

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use std::rc::Rc;
use std::time::Duration;

use auspex_events::Event;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, OpenObject};

use crate::clock::BootClock;
use crate::core_bpf::{Degraded, KernelDrops, ProbeStats};
use crate::decode::{trim_perf_padding, Context, Decoder};
use crate::error::{explain, ProbeError};
use crate::inbox::Inbox;
use crate::perf_reader::BatchedPerf;
use crate::skel::legacy::{LegacySkel, LegacySkelBuilder};
use crate::skel::legacy_btf::{LegacyBtfSkel, LegacyBtfSkelBuilder};
use crate::skel::types::auspex_counter as Counter;
use crate::{btf, features, libbpf_log, privileges};

/// Pages of perf buffer per CPU (a power of two).
const PERF_PAGES: usize = 256;
/// Samples per wakeup of the reader; fewer wait for its next poll.
const WAKEUP_EVENTS: u32 = 64;

/// The loaded and attached legacy probes. Dropping it detaches and unloads
/// everything.
pub struct LegacyBpf {
    // Field order is drop order: stop reading, detach, close the object.
    perf: BatchedPerf,
    inbox: Rc<RefCell<Inbox>>,
    links: Vec<Link>,
    /// The CO-RE programs, when some BTF was at hand; they use `skel`'s maps.
    _btf_skel: Option<LegacyBtfSkel<'static>>,
    skel: LegacySkel<'static>,
    degraded: Vec<Degraded>,
    /// The BTF the CO-RE programs were relocated against, if they run.
    btf: Option<PathBuf>,
}

impl LegacyBpf {
    /// Loads with CO-RE reads when some BTF is at hand (the kernel's, or
    /// `btf_file`), and without when there is none or it does not fit.
    pub fn load(btf_file: Option<&Path>) -> Result<Self, ProbeError> {
        crate::core_bpf::retry_interrupted(|| {
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
        let load_error = || crate::core_bpf::load_error("legacy");
        // See CoreBpf::load on why the storage is leaked.
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = LegacySkelBuilder::default()
            .open(storage)
            .map_err(load_error())?;
        if core.is_some() {
            // Their CO-RE twins replace them.
            open.progs.legacy_exec.set_autoload(false);
            open.progs.legacy_exit.set_autoload(false);
            open.progs.legacy_exit_group.set_autoload(false);
        }
        let skel = open.load().map_err(load_error())?;
        let btf_skel = match core {
            Some(btf_file) => Some(Self::load_core(&skel, btf_file)?),
            None => None,
        };

        let mut programs = vec![
            ("legacy_fork", &skel.progs.legacy_fork),
            ("legacy_tcp_state", &skel.progs.legacy_tcp_state),
        ];
        match &btf_skel {
            Some(b) => {
                programs.push(("legacy_exec_btf", &b.progs.legacy_exec_btf));
                programs.push(("legacy_exit_btf", &b.progs.legacy_exit_btf));
            }
            None => {
                programs.push(("legacy_exec", &skel.progs.legacy_exec));
                programs.push(("legacy_exit", &skel.progs.legacy_exit));
                programs.push(("legacy_exit_group", &skel.progs.legacy_exit_group));
            }
        }
        let links = programs
            .into_iter()
            .map(|(program, prog)| {
                prog.attach().map_err(|e| ProbeError::Attach {
                    program,
                    reason: explain(&e),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let inbox = Rc::new(RefCell::new(Inbox::new(Decoder::new(Context::new(
            BootClock::now(),
        )))));
        let perf = {
            let inbox = Rc::clone(&inbox);
            BatchedPerf::new(
                skel.maps.perf_events.as_fd(),
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
        if btf_skel.is_none() {
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
            links,
            _btf_skel: btf_skel,
            skel,
            degraded,
            btf: core.map(|file| file.map_or_else(|| btf::KERNEL_BTF.into(), Path::to_path_buf)),
        })
    }

    /// Opens and loads the CO-RE programs on the legacy object's maps.
    fn load_core(
        skel: &LegacySkel<'static>,
        btf_file: Option<&Path>,
    ) -> Result<LegacyBtfSkel<'static>, ProbeError> {
        let load_error = || crate::core_bpf::load_error("legacy (CO-RE)");
        let mut builder = LegacyBtfSkelBuilder::default();
        if let Some(path) = btf_file {
            builder
                .obj_builder
                .btf_custom_path(path)
                .map_err(load_error())?;
        }
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = builder.open(storage).map_err(load_error())?;
        let maps = &mut open.maps;
        maps.perf_events
            .reuse_fd(skel.maps.perf_events.as_fd())
            .map_err(load_error())?;
        maps.counters
            .reuse_fd(skel.maps.counters.as_fd())
            .map_err(load_error())?;
        maps.scratch
            .reuse_fd(skel.maps.scratch.as_fd())
            .map_err(load_error())?;
        open.load().map_err(load_error())
    }

    /// Waits up to `timeout` for a batch of samples, then hands each decoded
    /// event (of the batch, and of whatever waits below one) to `on_event`.
    pub fn poll(
        &mut self,
        timeout: Duration,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<usize, ProbeError> {
        let runtime = |e: std::io::Error| ProbeError::Runtime {
            what: "perf buffer",
            reason: e.to_string(),
        };
        self.perf.poll(timeout).map_err(runtime)?;
        // The flush: samples below the wakeup batch are read here.
        self.perf.consume().map_err(runtime)?;
        Ok(self.inbox.borrow_mut().deliver(on_event))
    }

    /// Takes whatever is in the perf buffers now, without waiting.
    pub fn drain(&mut self, on_event: &mut dyn FnMut(Event)) -> Result<usize, ProbeError> {
        self.perf.consume().map_err(|e| ProbeError::Runtime {
            what: "perf buffer",
            reason: e.to_string(),
        })?;
        Ok(self.inbox.borrow_mut().deliver(on_event))
    }

    pub fn stats(&self) -> Result<ProbeStats, ProbeError> {
        let counter = |c| crate::counters::sum(&self.skel.maps.counters, c);
        let inbox = self.inbox.borrow();
        Ok(ProbeStats {
            kernel_drops: KernelDrops {
                exec: counter(Counter::AUSPEX_DROP_RINGBUF_EXEC)?,
                fork: counter(Counter::AUSPEX_DROP_RINGBUF_FORK)?,
                exit: counter(Counter::AUSPEX_DROP_RINGBUF_EXIT)?,
                // Samples the kernel could not put in a full perf buffer.
                network: counter(Counter::AUSPEX_DROP_RINGBUF_NET)? + self.perf.lost(),
                socket_maps_full: counter(Counter::AUSPEX_DROP_SOCK_OWNERS_FULL)?
                    + counter(Counter::AUSPEX_DROP_LISTENERS_FULL)?,
                udp_connect_unresolved: 0,
            },
            decode: inbox.decode_stats(),
            udp_sockets_forgotten: inbox.udp_sockets_forgotten(),
        })
    }

    /// Records the owners of TCP listeners that predate the probe; see
    /// `CoreBpf::seed_listeners`. This probe keys listeners by (family,
    /// port) alone, as its TCP tracepoint does not give the network
    /// namespace: the first seeded listener of a port in any namespace wins.
    pub fn seed_listeners(
        &self,
        endpoints: &[auspex_events::Endpoint],
    ) -> Result<usize, ProbeError> {
        let key = |_netns: u32, port: u16, family: u16| {
            ((u32::from(family) << 16) | u32::from(port))
                .to_ne_bytes()
                .to_vec()
        };
        crate::listeners::seed(&self.skel.maps.listeners, endpoints, key)
    }

    pub fn degraded(&self) -> &[Degraded] {
        &self.degraded
    }

    /// The BTF file the CO-RE programs were relocated against; None when
    /// the probe runs without them.
    pub fn relocated_against(&self) -> Option<&Path> {
        self.btf.as_deref()
    }

    pub fn attached(&self) -> usize {
        self.links.len()
    }
}
