//! The core_bpf method: CO-RE probes on BTF-aware tracepoints and cgroup
//! socket hooks, all writing to one ring buffer. Load, attach, read, detach.

use std::cell::RefCell;
use std::fs::File;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use auspex_events::Event;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{ErrorKind, Link, OpenObject, Program, ProgramType, RingBuffer, RingBufferBuilder};

use crate::clock::BootClock;
use crate::decode::{Context, DecodeStats, Decoder};
use crate::error::{errno_of, explain, ProbeError};
use crate::inbox::Inbox;
use crate::skel::network::{NetworkSkel, NetworkSkelBuilder};
use crate::skel::process::types::auspex_counter as Counter;
use crate::skel::process::{ProcessSkel, ProcessSkelBuilder};
use crate::{btf, cgroup, features, libbpf_log, privileges};

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

/// Losses counted in the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelDrops {
    /// Records lost because the ring buffer was full, by probe.
    pub exec: u64,
    pub fork: u64,
    pub exit: u64,
    pub network: u64,
    /// Sockets not remembered because a map was full: their later events
    /// lack their owner (TCP) or may repeat (UDP).
    pub socket_maps_full: u64,
    /// Connected UDP sockets whose local port never appeared.
    pub udp_connect_unresolved: u64,
}

impl KernelDrops {
    /// Records lost outright.
    pub fn records(&self) -> u64 {
        self.exec + self.fork + self.exit + self.network
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeStats {
    pub kernel_drops: KernelDrops,
    pub decode: DecodeStats,
    /// UDP sockets whose closes will not be reported (tracking table full).
    pub udp_sockets_forgotten: u64,
}

/// A feature that runs without some of its parts, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Degraded {
    pub feature: &'static str,
    pub reason: String,
}

/// The loaded and attached core_bpf probes. Dropping it detaches and
/// unloads everything: nothing is pinned, so nothing outlives the process.
pub struct CoreBpf {
    // Field order is drop order: stop reading, detach, then close the
    // objects, the network one first as it borrows the process one's maps.
    ring: RingBuffer<'static>,
    inbox: Rc<RefCell<Inbox>>,
    links: Vec<Link>,
    network: NetworkSkel<'static>,
    process: ProcessSkel<'static>,
    degraded: Vec<Degraded>,
    /// The BTF the probes were relocated against.
    btf: PathBuf,
}

/// The skeletons borrow the storage of their objects for their whole life.
/// Leaking the box (one pointer, once per load) gives it a 'static home
/// without a self-referential struct; the object itself is closed when its
/// skeleton drops.
fn object_storage() -> &'static mut MaybeUninit<OpenObject> {
    Box::leak(Box::new(MaybeUninit::uninit()))
}

pub(crate) fn load_error(probe: &'static str) -> impl Fn(libbpf_rs::Error) -> ProbeError {
    move |e| match errno_of(&e) {
        Some(libc::EAGAIN) => ProbeError::Interrupted { probe },
        _ => ProbeError::Load {
            probe,
            reason: explain(&e),
        },
    }
}

/// Loads with `load`, again when the verifier was interrupted by signals
/// (a busy process gets some: libbpf's own five tries are not always
/// enough).
pub(crate) fn retry_interrupted<T>(
    mut load: impl FnMut() -> Result<T, ProbeError>,
) -> Result<T, ProbeError> {
    let mut tries = 0;
    loop {
        match load() {
            Err(ProbeError::Interrupted { .. }) if tries < 5 => tries += 1,
            result => return result,
        }
    }
}

fn attach_error(program: &'static str) -> impl Fn(libbpf_rs::Error) -> ProbeError {
    move |e| ProbeError::Attach {
        program,
        reason: explain(&e),
    }
}

impl CoreBpf {
    pub fn load(config: &ProbeConfig) -> Result<Self, ProbeError> {
        retry_interrupted(|| Self::load_once(config))
    }

    fn load_once(config: &ProbeConfig) -> Result<Self, ProbeError> {
        libbpf_log::forward_to_tracing();
        privileges::check()?;
        let custom_btf = btf::relocation_source(config.btf_file.as_deref())?;
        features::require_bpf()?;
        features::require_ring_buffer()?;
        let wakeup_bytes = u64::from(config.ring_buffer_bytes / WAKEUP_FRACTION);
        let mut degraded = Vec::new();

        let mut builder = ProcessSkelBuilder::default();
        if let Some(path) = &custom_btf {
            builder
                .obj_builder
                .btf_custom_path(path)
                .map_err(load_error("process"))?;
        }
        let mut open = builder
            .open(object_storage())
            .map_err(load_error("process"))?;
        open.maps
            .events
            .set_max_entries(config.ring_buffer_bytes)
            .map_err(load_error("process"))?;
        if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
            rodata.wakeup_bytes = wakeup_bytes;
        }
        let process = open.load().map_err(load_error("process"))?;

        let mut builder = NetworkSkelBuilder::default();
        if let Some(path) = &custom_btf {
            builder
                .obj_builder
                .btf_custom_path(path)
                .map_err(load_error("network"))?;
        }
        let mut open = builder
            .open(object_storage())
            .map_err(load_error("network"))?;
        // One ring buffer and one set of counters for all probes.
        open.maps
            .events
            .reuse_fd(process.maps.events.as_fd())
            .map_err(load_error("network"))?;
        open.maps
            .counters
            .reuse_fd(process.maps.counters.as_fd())
            .map_err(load_error("network"))?;
        if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
            rodata.wakeup_bytes = wakeup_bytes;
        }
        // Connected UDP is reported from a BPF timer (Linux 5.15+).
        if !ProgramType::CgroupSockAddr
            .is_helper_supported(libbpf_sys::BPF_FUNC_timer_init)
            .unwrap_or(false)
        {
            open.progs.udp_connect4.set_autoload(false);
            open.progs.udp_connect6.set_autoload(false);
            degraded.push(Degraded {
                feature: "udp_connected",
                reason: "BPF timers are not supported (Linux 5.15+): connected UDP sockets \
                         are not reported"
                    .into(),
            });
        }
        let network = open.load().map_err(load_error("network"))?;

        let mut links = vec![
            process
                .progs
                .handle_exec
                .attach()
                .map_err(attach_error("handle_exec"))?,
            process
                .progs
                .handle_fork
                .attach()
                .map_err(attach_error("handle_fork"))?,
            process
                .progs
                .handle_exit
                .attach()
                .map_err(attach_error("handle_exit"))?,
            network
                .progs
                .handle_tcp_state
                .attach()
                .map_err(attach_error("handle_tcp_state"))?,
        ];
        match attach_udp(&network) {
            Ok(udp_links) => links.extend(udp_links),
            Err(reason) => degraded.push(Degraded {
                feature: "udp",
                reason,
            }),
        }

        let inbox = Rc::new(RefCell::new(Inbox::new(Decoder::new(Context::new(
            BootClock::now(),
        )))));
        let ring = {
            let inbox = Rc::clone(&inbox);
            let mut builder = RingBufferBuilder::new();
            builder
                .add(&process.maps.events, move |record: &[u8]| {
                    inbox.borrow_mut().take(record);
                    0
                })
                .map_err(load_error("process"))?;
            builder.build().map_err(load_error("process"))?
        };
        Ok(CoreBpf {
            ring,
            inbox,
            links,
            network,
            process,
            degraded,
            btf: custom_btf.unwrap_or_else(|| btf::KERNEL_BTF.into()),
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
        Ok(self.inbox.borrow_mut().deliver(on_event))
    }

    pub fn stats(&self) -> Result<ProbeStats, ProbeError> {
        let inbox = self.inbox.borrow();
        Ok(ProbeStats {
            kernel_drops: KernelDrops {
                exec: self.counter(Counter::AUSPEX_DROP_RINGBUF_EXEC)?,
                fork: self.counter(Counter::AUSPEX_DROP_RINGBUF_FORK)?,
                exit: self.counter(Counter::AUSPEX_DROP_RINGBUF_EXIT)?,
                network: self.counter(Counter::AUSPEX_DROP_RINGBUF_NET)?,
                socket_maps_full: self.counter(Counter::AUSPEX_DROP_SOCK_OWNERS_FULL)?
                    + self.counter(Counter::AUSPEX_DROP_LISTENERS_FULL)?
                    + self.counter(Counter::AUSPEX_DROP_UDP_SOCKS_FULL)?,
                udp_connect_unresolved: self
                    .counter(Counter::AUSPEX_DROP_UDP_CONNECT_UNRESOLVED)?,
            },
            decode: inbox.decode_stats(),
            udp_sockets_forgotten: inbox.udp_sockets_forgotten(),
        })
    }

    fn counter(&self, counter: Counter) -> Result<u64, ProbeError> {
        crate::counters::sum(&self.process.maps.counters, counter)
    }

    /// Features running without some of their parts.
    /// Records the owners of TCP listeners that predate the probe (from a
    /// scan of /proc), so the connections they accept are attributed.
    /// Returns how many were recorded.
    pub fn seed_listeners(
        &self,
        endpoints: &[auspex_events::Endpoint],
    ) -> Result<usize, ProbeError> {
        let key = |netns: u32, port: u16, family: u16| {
            let key = crate::skel::network::types::listener_key {
                netns,
                port,
                family,
            };
            crate::wire::bytes_of(&key).to_vec()
        };
        crate::listeners::seed(&self.network.maps.listeners, endpoints, key)
    }

    pub fn degraded(&self) -> &[Degraded] {
        &self.degraded
    }

    /// The BTF file the probes were relocated against.
    pub fn relocated_against(&self) -> &std::path::Path {
        &self.btf
    }

    /// Kernel ids of the loaded programs, to check that they go away.
    pub fn program_ids(&self) -> Vec<u32> {
        let process = &self.process.progs;
        let network = &self.network.progs;
        [
            &process.handle_exec,
            &process.handle_fork,
            &process.handle_exit,
            &network.handle_tcp_state,
            &network.udp_sendmsg4,
            &network.udp_release,
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

/// Attaches the UDP hooks to the root of the cgroup v2 hierarchy, so they
/// see every socket on the host. All or none: a partial set would report
/// flows it can never close.
fn attach_udp(network: &NetworkSkel<'_>) -> Result<Vec<Link>, String> {
    let root = cgroup::cgroup2_mount()
        .ok_or("cgroup v2 is not mounted: the UDP socket hooks attach to its root")?;
    let dir = File::open(&root).map_err(|e| format!("cannot open {}: {e}", root.display()))?;
    let p = &network.progs;
    let mut programs = vec![
        ("udp_sendmsg4", &p.udp_sendmsg4),
        ("udp_sendmsg6", &p.udp_sendmsg6),
        ("udp_recvmsg4", &p.udp_recvmsg4),
        ("udp_recvmsg6", &p.udp_recvmsg6),
        ("udp_bind4", &p.udp_bind4),
        ("udp_bind6", &p.udp_bind6),
        ("udp_post_bind4", &p.udp_post_bind4),
        ("udp_post_bind6", &p.udp_post_bind6),
        ("udp_release", &p.udp_release),
    ];
    if p.udp_connect4.autoload() {
        programs.push(("udp_connect4", &p.udp_connect4));
        programs.push(("udp_connect6", &p.udp_connect6));
    }
    programs
        .into_iter()
        .map(|(name, prog)| {
            prog.attach_cgroup(dir.as_raw_fd())
                .map_err(|e| format!("attaching {name} to {}: {}", root.display(), explain(&e)))
        })
        .collect()
}
