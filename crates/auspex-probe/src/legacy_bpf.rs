//! The legacy (ebpf) method: classic tracepoints and a perf event array,
//! no CO-RE, for kernels without BTF or ring buffers (bpf/legacy.bpf.c).

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::path::Path;
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
use crate::skel::types::auspex_counter as Counter;
use crate::{features, libbpf_log, privileges};

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
    skel: LegacySkel<'static>,
    degraded: Vec<Degraded>,
}

impl LegacyBpf {
    pub fn load() -> Result<Self, ProbeError> {
        crate::core_bpf::retry_interrupted(Self::load_once)
    }

    fn load_once() -> Result<Self, ProbeError> {
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
        let open = LegacySkelBuilder::default()
            .open(storage)
            .map_err(load_error())?;
        let skel = open.load().map_err(load_error())?;
        let p = &skel.progs;
        let links = [
            ("legacy_exec", &p.legacy_exec),
            ("legacy_fork", &p.legacy_fork),
            ("legacy_exit", &p.legacy_exit),
            ("legacy_exit_group", &p.legacy_exit_group),
            ("legacy_tcp_state", &p.legacy_tcp_state),
        ]
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
        let degraded = vec![Degraded {
            feature: "udp",
            reason: "the ebpf method does not report UDP yet".into(),
        }];
        Ok(LegacyBpf {
            perf,
            inbox,
            links,
            skel,
            degraded,
        })
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

    pub fn degraded(&self) -> &[Degraded] {
        &self.degraded
    }

    pub fn attached(&self) -> usize {
        self.links.len()
    }
}
