//! Where a probe's records become events, between the kernel's buffer and
//! the caller of `poll`: decoded, and UDP releases turned into closes.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use auspex_events::Event;

use crate::clock::BootClock;
use crate::decode::{Context, Decoded, Decoder};
use crate::stats::{KernelDrops, ProbeStats};
use crate::udp_sockets::UdpSockets;

/// UDP sockets whose opens are remembered until they are released.
const UDP_SOCKETS_TRACKED: usize = 65536;

/// How the records of one read arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// In the order they were written (one ring buffer).
    InOrder,
    /// In order per CPU, one CPU's buffer after another (a perf event
    /// array): a socket's release on one CPU can be read before its open
    /// on another (the legacy UDP test lost an endpoint's close that way).
    PerCpu,
}

pub(crate) struct Inbox {
    decoder: Decoder,
    udp: UdpSockets,
    arrival: Arrival,
    /// The records of the current read, for `PerCpu` arrival.
    batch: Vec<Decoded>,
    events: VecDeque<Event>,
}

impl Inbox {
    /// An empty inbox, shared between a probe and its reader's callback.
    pub(crate) fn shared(arrival: Arrival) -> Rc<RefCell<Inbox>> {
        Rc::new(RefCell::new(Inbox {
            decoder: Decoder::new(Context::new(BootClock::now())),
            udp: UdpSockets::new(UDP_SOCKETS_TRACKED),
            arrival,
            batch: Vec::new(),
            events: VecDeque::new(),
        }))
    }

    /// Takes one record from the kernel.
    pub(crate) fn take(&mut self, record: &[u8]) {
        let Some(decoded) = self.decoder.decode(record) else {
            return;
        };
        match self.arrival {
            Arrival::InOrder => self.apply(decoded),
            Arrival::PerCpu => self.batch.push(decoded),
        }
    }

    fn apply(&mut self, decoded: Decoded) {
        match decoded {
            Decoded::Event(event) => {
                self.udp.observe(&event);
                self.events.push_back(*event);
            }
            Decoded::UdpReleased { time, sock_id } => {
                let closes = match self.arrival {
                    Arrival::InOrder => self.udp.release(sock_id, time),
                    Arrival::PerCpu => self.udp.release_or_hold(sock_id, time),
                };
                self.events.extend(closes);
            }
        }
    }

    /// Hands every waiting event over; returns how many. Called once the
    /// reader has read every CPU's buffer: a read's records, merged by
    /// time, are then in the order they were written.
    pub(crate) fn deliver(&mut self, on_event: &mut dyn FnMut(Event)) -> usize {
        let mut batch = std::mem::take(&mut self.batch);
        batch.sort_by_key(|d| match d {
            Decoded::Event(e) => e.time,
            Decoded::UdpReleased { time, .. } => *time,
        });
        // Releases the last read could not match wait for this one's opens
        // (a release written on a CPU read after the one its open was
        // written on, but after that CPU had been read).
        let held = self.udp.take_held();
        batch.drain(..).for_each(|d| self.apply(d));
        let closes = self.udp.retry_held(held);
        self.events.extend(closes);
        // Drained, not taken: both keep their room for the next poll
        // instead of growing again from nothing (a realloc and a copy of
        // every event at each doubling, issue 19's profile).
        self.batch = batch;
        let n = self.events.len();
        self.events.drain(..).for_each(on_event);
        n
    }

    /// The probe's statistics: `kernel_drops` and what this inbox counted.
    pub(crate) fn stats(&self, kernel_drops: KernelDrops) -> ProbeStats {
        ProbeStats {
            kernel_drops,
            decode: self.decoder.stats(),
            udp_sockets_forgotten: self.udp.forgotten(),
        }
    }
}
