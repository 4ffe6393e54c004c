//! The core_bpf process probe: load, attach, read, detach.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use auspex_events::Event;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{
    ErrorKind, Link, MapCore, MapFlags, OpenObject, Program, RingBuffer, RingBufferBuilder,
};

use crate::clock::BootClock;
use crate::decode::{DecodeStats, Decoder};
use crate::error::{explain, ProbeError};
use crate::skel::types::auspex_counter as Counter;
use crate::skel::{ProcessSkel, ProcessSkelBuilder};
use crate::{btf, features, libbpf_log, privileges};

/// The probes wake the reader once this fraction of the ring buffer is
/// waiting (see `wakeup_bytes` in bpf/output.h); otherwise the reader
/// collects on its timed polls. A sixteenth leaves room for bursts while
/// each wakeup carries thousands of records.
const WAKEUP_FRACTION: u32 = 16;

#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Relocate against this BTF file instead of the kernel's.
    pub btf_file: Option<PathBuf>,
    /// Size of the ring buffer in bytes: a power of two, at least a page.
    pub ring_buffer_bytes: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            btf_file: None,
            ring_buffer_bytes: 8 << 20,
        }
    }
}

/// Records lost in the kernel because the ring buffer was full, by event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelDrops {
    pub exec: u64,
    pub fork: u64,
    pub exit: u64,
}

impl KernelDrops {
    pub fn total(&self) -> u64 {
        self.exec + self.fork + self.exit
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeStats {
    pub kernel_drops: KernelDrops,
    pub decode: DecodeStats,
}

/// Decoded events waiting for the caller of `poll`, filled by the ring
/// buffer's callback.
struct Inbox {
    decoder: Decoder,
    events: VecDeque<Event>,
}

/// A loaded and attached process probe. Dropping it detaches and unloads
/// everything: nothing is pinned, so nothing outlives the process.
pub struct ProcessProbe {
    // Field order is drop order: stop reading, detach, then close the object.
    ring: RingBuffer<'static>,
    inbox: Rc<RefCell<Inbox>>,
    links: Vec<Link>,
    skel: ProcessSkel<'static>,
}

impl ProcessProbe {
    pub fn load(config: &ProbeConfig) -> Result<Self, ProbeError> {
        libbpf_log::forward_to_tracing();
        privileges::check()?;
        let custom_btf = btf::relocation_source(config.btf_file.as_deref())?;
        features::require_bpf()?;
        features::require_ring_buffer()?;

        let load_error = |e: libbpf_rs::Error| ProbeError::Load {
            probe: "process",
            reason: explain(&e),
        };
        let mut builder = ProcessSkelBuilder::default();
        if let Some(path) = &custom_btf {
            builder
                .obj_builder
                .btf_custom_path(path)
                .map_err(load_error)?;
        }
        // The skeleton borrows the storage of its object for its whole life.
        // Leaking the box (one pointer, once per load) gives it a 'static
        // home without a self-referential struct; the object itself is
        // closed when the skeleton drops.
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = builder.open(storage).map_err(load_error)?;
        open.maps
            .events
            .set_max_entries(config.ring_buffer_bytes)
            .map_err(load_error)?;
        if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
            rodata.wakeup_bytes = u64::from(config.ring_buffer_bytes / WAKEUP_FRACTION);
        }
        let skel = open.load().map_err(load_error)?;

        let links = [
            ("handle_exec", &skel.progs.handle_exec),
            ("handle_fork", &skel.progs.handle_fork),
            ("handle_exit", &skel.progs.handle_exit),
        ]
        .into_iter()
        .map(|(program, prog)| {
            prog.attach().map_err(|e| ProbeError::Attach {
                program,
                reason: explain(&e),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

        let inbox = Rc::new(RefCell::new(Inbox {
            decoder: Decoder::new(BootClock::now()),
            events: VecDeque::new(),
        }));
        let ring = {
            let inbox = Rc::clone(&inbox);
            let mut builder = RingBufferBuilder::new();
            builder
                .add(&skel.maps.events, move |record: &[u8]| {
                    let mut inbox = inbox.borrow_mut();
                    if let Some(event) = inbox.decoder.decode(record) {
                        inbox.events.push_back(event);
                    }
                    0
                })
                .map_err(load_error)?;
            builder.build().map_err(load_error)?
        };
        Ok(ProcessProbe {
            ring,
            inbox,
            links,
            skel,
        })
    }

    /// Waits up to `timeout` for a wakeup, then hands each decoded event to
    /// `on_event`. Records arrive without a wakeup while few are waiting, so
    /// callers poll again within the delay they accept for an event.
    /// Returns how many events were delivered.
    pub fn poll(
        &mut self,
        timeout: Duration,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<usize, ProbeError> {
        match self.ring.poll(timeout) {
            Ok(()) => {}
            // A signal (the user's Ctrl-C) ends epoll_wait early: not an error.
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(ProbeError::Runtime {
                    what: "ring buffer",
                    reason: explain(&e),
                })
            }
        }
        self.drain(on_event)
    }

    /// Takes whatever is in the ring buffer now, without waiting.
    pub fn drain(&mut self, on_event: &mut dyn FnMut(Event)) -> Result<usize, ProbeError> {
        self.ring.consume().map_err(|e| ProbeError::Runtime {
            what: "ring buffer",
            reason: explain(&e),
        })?;
        Ok(self.deliver(on_event))
    }

    fn deliver(&mut self, on_event: &mut dyn FnMut(Event)) -> usize {
        let events = std::mem::take(&mut self.inbox.borrow_mut().events);
        let n = events.len();
        events.into_iter().for_each(on_event);
        n
    }

    pub fn stats(&self) -> Result<ProbeStats, ProbeError> {
        Ok(ProbeStats {
            kernel_drops: KernelDrops {
                exec: self.counter(Counter::AUSPEX_DROP_RINGBUF_EXEC)?,
                fork: self.counter(Counter::AUSPEX_DROP_RINGBUF_FORK)?,
                exit: self.counter(Counter::AUSPEX_DROP_RINGBUF_EXIT)?,
            },
            decode: self.inbox.borrow().decoder.stats(),
        })
    }

    /// Sums a per-CPU counter over all CPUs.
    fn counter(&self, counter: Counter) -> Result<u64, ProbeError> {
        let runtime = |reason: String| ProbeError::Runtime {
            what: "kernel counters",
            reason,
        };
        let per_cpu = self
            .skel
            .maps
            .counters
            .lookup_percpu(&counter.0.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| runtime(explain(&e)))?
            .ok_or_else(|| runtime(format!("counter {} is missing", counter.0)))?;
        Ok(per_cpu
            .iter()
            .filter_map(|bytes| bytes.get(..8)?.try_into().ok().map(u64::from_ne_bytes))
            .sum())
    }

    /// Kernel ids of the loaded programs, to check that they go away.
    pub fn program_ids(&self) -> Vec<u32> {
        [
            &self.skel.progs.handle_exec,
            &self.skel.progs.handle_fork,
            &self.skel.progs.handle_exit,
        ]
        .into_iter()
        .filter_map(|p| Program::id_from_fd(p.as_fd()).ok())
        .collect()
    }

    /// How many programs are attached.
    pub fn attached(&self) -> usize {
        self.links.len()
    }
}
