//! The core_bpf method: CO-RE probes on BTF-aware tracepoints and cgroup
//! socket hooks, all writing to one ring buffer. Load, attach, read, detach.

use std::cell::RefCell;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use auspex_events::{Event, EventSelection};
use libbpf_rs::skel::{OpenSkel, Skel};
use libbpf_rs::{ErrorKind, Object, ProgramType, RingBuffer, RingBufferBuilder};

use crate::degraded::Degraded;
use crate::error::{explain, ProbeError};
use crate::inbox::{Arrival, Inbox};
use crate::loading::{load_error, retry_interrupted, Loaded};
use crate::programs::{self, Attached, Cgroup, ProgramInfo, Row};
use crate::skel::network::NetworkSkelBuilder;
use crate::skel::process::ProcessSkelBuilder;
use crate::skel::{Network, Process};
use crate::stats::{KernelDrops, ProbeStats};
use crate::{btf, cgroup, features, libbpf_log, privileges};

/// The probes wake the reader once this fraction of the ring buffer is
/// waiting (see `wakeup_bytes` in bpf/lib/output.h); otherwise the reader
/// collects on its timed polls. A sixteenth leaves room for bursts while
/// each wakeup carries thousands of records.
const WAKEUP_FRACTION: u32 = 16;

#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Relocate against this BTF file instead of the kernel's.
    pub btf_file: Option<PathBuf>,
    /// Size of the ring buffer in bytes: a power of two, at least a page.
    pub ring_buffer_bytes: u32,
    /// What to collect: the programs of the rest are not loaded.
    pub events: EventSelection,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            btf_file: None,
            ring_buffer_bytes: 8 << 20,
            events: EventSelection::all(),
        }
    }
}

/// The two objects of the method (bpf/process.bpf.c, bpf/network.bpf.c).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Obj {
    Process,
    Network,
}

/// What needs a program: the events it produces (loaded only when
/// selected), or a feature that may run without it (reported as degraded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Exec,
    Fork,
    Exit,
    /// TCP connections and endpoints.
    Tcp,
    /// The UDP socket hooks: attached all or none, as a partial set would
    /// report flows it can never close.
    Udp,
    /// Connected UDP, reported from a BPF timer (Linux 5.15+).
    UdpConnected,
    /// Connected UDP without timers: reported when the socket is released.
    UdpConnectedLate,
}

impl Part {
    /// Whether `events` wants what the part produces.
    fn wanted(self, events: &EventSelection) -> bool {
        match self {
            Part::Exec => events.exec(),
            Part::Fork => events.fork(),
            Part::Exit => events.exit(),
            Part::Tcp => events.tcp(),
            Part::Udp | Part::UdpConnected | Part::UdpConnectedLate => events.udp(),
        }
    }
}

const fn row(object: Obj, name: &'static str, part: Part) -> Row<Obj, Part> {
    Row { object, name, part }
}

/// Every program of the method, in the order they are attached.
const PROGRAMS: [Row<Obj, Part>; 17] = [
    row(Obj::Process, "handle_exec", Part::Exec),
    row(Obj::Process, "handle_fork", Part::Fork),
    row(Obj::Process, "handle_exit", Part::Exit),
    row(Obj::Network, "handle_tcp_state", Part::Tcp),
    row(Obj::Network, "udp_sendmsg4", Part::Udp),
    row(Obj::Network, "udp_sendmsg6", Part::Udp),
    row(Obj::Network, "udp_recvmsg4", Part::Udp),
    row(Obj::Network, "udp_recvmsg6", Part::Udp),
    row(Obj::Network, "udp_bind4", Part::Udp),
    row(Obj::Network, "udp_bind6", Part::Udp),
    row(Obj::Network, "udp_post_bind4", Part::Udp),
    row(Obj::Network, "udp_post_bind6", Part::Udp),
    row(Obj::Network, "udp_release", Part::Udp),
    row(Obj::Network, "udp_connect4", Part::UdpConnected),
    row(Obj::Network, "udp_connect6", Part::UdpConnected),
    row(Obj::Network, "udp_connect4_late", Part::UdpConnectedLate),
    row(Obj::Network, "udp_connect6_late", Part::UdpConnectedLate),
];

/// The loaded and attached core_bpf probes. Dropping it detaches and
/// unloads everything: nothing is pinned, so nothing outlives the process.
pub struct CoreBpf {
    // Field order is drop order: stop reading, detach, then close the
    // objects, the network one first as it uses the process one's maps.
    ring: RingBuffer<'static>,
    inbox: Rc<RefCell<Inbox>>,
    attached: Vec<Attached>,
    /// None when no network event is wanted.
    network: Option<Loaded<Network>>,
    process: Loaded<Process>,
    degraded: Vec<Degraded>,
    /// The BTF the probes were relocated against.
    btf: PathBuf,
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
        let events = config.events;
        let mut degraded = Vec::new();

        let process = Loaded::<Process>::open(
            "process",
            ProcessSkelBuilder::default(),
            custom_btf.as_deref(),
            |open| {
                open.maps
                    .events
                    .set_max_entries(config.ring_buffer_bytes)
                    .map_err(load_error("process"))?;
                if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
                    rodata.wakeup_bytes = wakeup_bytes;
                }
                programs::set_autoload(open.open_object_mut(), &PROGRAMS, Obj::Process, |p| {
                    p.wanted(&events)
                });
                Ok(())
            },
        )?;

        let timers = ProgramType::CgroupSockAddr
            .is_helper_supported(libbpf_sys::BPF_FUNC_timer_init)
            .unwrap_or(false);
        if events.udp() && !timers {
            degraded.push(Degraded {
                feature: "udp_connected",
                reason: "BPF timers are not supported (Linux 5.15+): a connected UDP socket \
                         is reported when it is closed, not when it connects"
                    .into(),
            });
        }
        let network = events
            .network()
            .then(|| {
                Loaded::<Network>::open(
                    "network",
                    NetworkSkelBuilder::default(),
                    custom_btf.as_deref(),
                    |open| {
                        // One ring buffer and one set of counters for all probes.
                        let shared = &process.get().maps;
                        open.maps
                            .events
                            .reuse_fd(shared.events.as_fd())
                            .map_err(load_error("network"))?;
                        open.maps
                            .counters
                            .reuse_fd(shared.counters.as_fd())
                            .map_err(load_error("network"))?;
                        if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
                            rodata.wakeup_bytes = wakeup_bytes;
                        }
                        programs::set_autoload(
                            open.open_object_mut(),
                            &PROGRAMS,
                            Obj::Network,
                            |p| {
                                p.wanted(&events)
                                    && match p {
                                        Part::UdpConnected => timers,
                                        Part::UdpConnectedLate => !timers,
                                        _ => true,
                                    }
                            },
                        );
                        Ok(())
                    },
                )
            })
            .transpose()?;

        let object = |o: Obj| match (o, &network) {
            (Obj::Process, _) => process.get().object(),
            (Obj::Network, Some(n)) => n.get().object(),
            (Obj::Network, None) => unreachable!("network programs run only when wanted"),
        };
        let mut attached = PROGRAMS
            .iter()
            .filter(|r| matches!(r.part, Part::Exec | Part::Fork | Part::Exit | Part::Tcp))
            .filter(|r| r.part.wanted(&events))
            .map(|r| programs::attach(object(r.object), r.name, None))
            .collect::<Result<Vec<_>, _>>()?;
        if events.udp() {
            match attach_udp(&object, timers) {
                Ok(udp) => attached.extend(udp),
                Err(reason) => degraded.push(Degraded {
                    feature: "udp",
                    reason,
                }),
            }
        }

        let inbox = Inbox::shared(Arrival::InOrder);
        let ring = {
            let inbox = Rc::clone(&inbox);
            let mut builder = RingBufferBuilder::new();
            builder
                .add(&process.get().maps.events, move |record: &[u8]| {
                    inbox.borrow_mut().take(record);
                    0
                })
                .map_err(load_error("process"))?;
            builder.build().map_err(load_error("process"))?
        };
        Ok(CoreBpf {
            ring,
            inbox,
            attached,
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
        let kernel_drops = KernelDrops::read(&self.process.get().maps.counters)?;
        Ok(self.inbox.borrow().stats(kernel_drops))
    }

    /// Records the owners of TCP listeners that predate the probe (from a
    /// scan of /proc), so the connections they accept are attributed.
    /// Returns how many were recorded.
    pub fn seed_listeners(
        &self,
        endpoints: &[auspex_events::Endpoint],
    ) -> Result<usize, ProbeError> {
        match &self.network {
            Some(n) => crate::listeners::seed(&n.get().maps.listeners, endpoints, true),
            None => Ok(0),
        }
    }

    /// Features running without some of their parts.
    pub fn degraded(&self) -> &[Degraded] {
        &self.degraded
    }

    /// The BTF file the probes were relocated against.
    pub fn relocated_against(&self) -> &std::path::Path {
        &self.btf
    }

    /// The attached programs: name, attach point and kernel id.
    pub fn programs(&self) -> Vec<ProgramInfo> {
        self.attached.iter().map(|a| a.info.clone()).collect()
    }

    /// Kernel ids of the attached programs, to check that they go away.
    pub fn program_ids(&self) -> Vec<u32> {
        self.attached.iter().map(|a| a.info.id).collect()
    }

    /// Kernel ids of the probe's maps, to check that they go away.
    pub fn map_ids(&self) -> Vec<u32> {
        programs::map_ids(&self.objects())
    }

    /// (bytes written and not yet read, size) of the ring buffer: read
    /// from the positions libbpf maps, no system call.
    pub fn ring_fill(&self) -> Option<(u64, u64)> {
        use libbpf_rs::AsRawLibbpf;
        // SAFETY: the ring buffer is alive for as long as `self.ring`, and
        // ring 0 exists (one map was added); the two calls only read the
        // producer and consumer positions of its mapped pages.
        unsafe {
            let ring = libbpf_sys::ring_buffer__ring(self.ring.as_libbpf_object().as_ptr(), 0);
            if ring.is_null() {
                return None;
            }
            Some((
                libbpf_sys::ring__avail_data_size(ring) as u64,
                libbpf_sys::ring__size(ring) as u64,
            ))
        }
    }

    /// Each attached program's run time and count.
    pub fn run_stats(&self) -> Vec<crate::ProgramRunStats> {
        programs::run_stats(&self.objects(), &self.attached)
    }

    /// The loaded objects: the network one only when network events are wanted.
    fn objects(&self) -> Vec<&Object> {
        let mut objects = vec![self.process.get().object()];
        objects.extend(self.network.as_ref().map(|n| n.get().object()));
        objects
    }

    /// How many programs are attached.
    pub fn attached(&self) -> usize {
        self.attached.len()
    }
}

/// Attaches the UDP hooks to the root of the cgroup v2 hierarchy, so they
/// see every socket on the host; the connected-UDP ones with a timer only
/// with `timers`, those that wait for release only without.
/// All or none (see `Part::Udp`).
fn attach_udp<'a>(
    object: &impl Fn(Obj) -> &'a Object,
    timers: bool,
) -> Result<Vec<Attached>, String> {
    let root = cgroup::cgroup2_mount()
        .ok_or("cgroup v2 is not mounted: the UDP socket hooks attach to its root")?;
    let root = Cgroup::open(root)?;
    PROGRAMS
        .iter()
        .filter(|r| match r.part {
            Part::Udp => true,
            Part::UdpConnected => timers,
            Part::UdpConnectedLate => !timers,
            Part::Exec | Part::Fork | Part::Exit | Part::Tcp => false,
        })
        .map(|r| programs::attach(object(r.object), r.name, Some(&root)).map_err(|e| e.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::programs::tests::assert_table_matches;

    #[test]
    fn the_table_lists_every_program_of_both_objects() {
        assert_table_matches(&PROGRAMS, Obj::Process, ProcessSkelBuilder::default());
        assert_table_matches(&PROGRAMS, Obj::Network, NetworkSkelBuilder::default());
    }
}
