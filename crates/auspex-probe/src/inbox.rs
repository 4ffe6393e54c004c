//! Where a probe's records become events, between the kernel's buffer and
//! the caller of `poll`: decoded, and UDP releases turned into closes.

use std::collections::VecDeque;

use auspex_events::Event;

use crate::decode::{DecodeStats, Decoded, Decoder};
use crate::udp_sockets::UdpSockets;

/// UDP sockets whose opens are remembered until they are released.
const UDP_SOCKETS_TRACKED: usize = 65536;

pub(crate) struct Inbox {
    decoder: Decoder,
    udp: UdpSockets,
    events: VecDeque<Event>,
}

impl Inbox {
    pub(crate) fn new(decoder: Decoder) -> Self {
        Inbox {
            decoder,
            udp: UdpSockets::new(UDP_SOCKETS_TRACKED),
            events: VecDeque::new(),
        }
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
        let events = std::mem::take(&mut self.events);
        let n = events.len();
        events.into_iter().for_each(on_event);
        n
    }

    pub(crate) fn decode_stats(&self) -> DecodeStats {
        self.decoder.stats()
    }

    pub(crate) fn udp_sockets_forgotten(&self) -> u64 {
        self.udp.forgotten()
    }
}
