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

pub(crate) struct Inbox {
    decoder: Decoder,
    udp: UdpSockets,
    events: VecDeque<Event>,
}

impl Inbox {
    /// An empty inbox, shared between a probe and its reader's callback.
    pub(crate) fn shared() -> Rc<RefCell<Inbox>> {
        Rc::new(RefCell::new(Inbox {
            decoder: Decoder::new(Context::new(BootClock::now())),
            udp: UdpSockets::new(UDP_SOCKETS_TRACKED),
            events: VecDeque::new(),
        }))
    }

    /// Takes one record from the kernel.
    pub(crate) fn take(&mut self, record: &[u8]) {
        match self.decoder.decode(record) {
            Some(Decoded::Event(event)) => {
                self.udp.observe(&event);
                self.events.push_back(*event);
            }
            Some(Decoded::UdpReleased { time, sock_id }) => {
                self.events.extend(self.udp.release(sock_id, time));
            }
            None => {}
        }
    }

    /// Hands every waiting event over; returns how many.
    pub(crate) fn deliver(&mut self, on_event: &mut dyn FnMut(Event)) -> usize {
        let n = self.events.len();
        // Drained, not taken: the queue keeps its room for the next poll
        // instead of growing again from nothing (a realloc and a copy of
        // every event at each doubling, issue 19's profile).
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
