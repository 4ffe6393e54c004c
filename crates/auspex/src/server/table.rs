//! The connections of one listener: at most `max` at a time, each closed
//! when it has had no request in progress for the idle timeout, and the
//! longest idle one closed first when a new connection would pass the cap.
//!
//! Closing the idlest rather than refusing the newest is what keeps the
//! health endpoints answering under a flood of idle sockets: a kubelet's
//! probe connects after the flood and sends its request at once, so it is
//! never the idlest, while refusing (or not accepting) would leave it in
//! the kernel's backlog behind thousands of sockets that never speak.
//! A connection with a request in progress (a gRPC stream, a /metrics
//! scrape) is never closed for being idle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Why a connection was closed by the agent rather than by its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// No request in progress for the idle timeout.
    Idle,
    /// The idlest when a new connection came at the cap.
    Evicted,
    /// At the cap with every connection busy: the new one was refused.
    Refused,
    /// The TLS handshake failed or did not end within the header timeout
    /// (a client without a valid certificate, under mutual TLS).
    TlsFailed,
    /// An HTTP/1 client sent no complete request headers within the header
    /// timeout: a slow request, or a kept-alive connection waiting for its
    /// next request (hyper's header timer covers that wait too, so on
    /// HTTP/1 it comes before the idle timeout).
    HeaderTimeout,
}

impl Closed {
    pub const ALL: [Closed; 5] = [
        Closed::Idle,
        Closed::Evicted,
        Closed::Refused,
        Closed::TlsFailed,
        Closed::HeaderTimeout,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Closed::Idle => "idle",
            Closed::Evicted => "evicted",
            Closed::Refused => "refused",
            Closed::TlsFailed => "tls_failed",
            Closed::HeaderTimeout => "header_timeout",
        }
    }
}

struct Entry {
    /// Requests in progress (a response whose body has not ended counts).
    busy: usize,
    /// When `busy` last fell to 0, or the connection was accepted.
    idle_since: Instant,
    /// Told to close; still counted until its task ends.
    evicted: bool,
    close: Arc<Notify>,
}

pub struct Table {
    max: usize,
    idle_timeout: Duration,
    next: AtomicU64,
    entries: Mutex<HashMap<u64, Entry>>,
}

impl Table {
    pub fn new(max: usize, idle_timeout: Duration) -> Arc<Table> {
        Arc::new(Table {
            max,
            idle_timeout,
            next: AtomicU64::new(0),
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// Makes room for a new connection, closing the idlest at the cap:
    /// Err(Refused) when every connection is busy; Ok(true) when one was
    /// told to close (the caller yields, so that its socket is closed
    /// before the next accept).
    pub fn admit(self: &Arc<Self>) -> Result<(Slot, bool), Closed> {
        let mut entries = self.entries.lock().unwrap();
        let live = entries.values().filter(|e| !e.evicted).count();
        let mut evicted = false;
        if live >= self.max {
            let idlest = entries
                .values_mut()
                .filter(|e| !e.evicted && e.busy == 0)
                .min_by_key(|e| e.idle_since)
                .ok_or(Closed::Refused)?;
            idlest.evicted = true;
            idlest.close.notify_one();
            evicted = true;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        entries.insert(
            id,
            Entry {
                busy: 0,
                idle_since: Instant::now(),
                evicted: false,
                close: Arc::clone(&close),
            },
        );
        Ok((
            Slot {
                id,
                table: Arc::clone(self),
                close,
            },
            evicted,
        ))
    }

    /// Connections held, those told to close included.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}

/// One connection's place in the table, removed when the last clone goes.
pub struct Slot {
    id: u64,
    table: Arc<Table>,
    close: Arc<Notify>,
}

impl Slot {
    /// Marks a request in progress until the guard is dropped.
    pub fn busy(&self) -> Busy {
        if let Some(e) = self.table.entries.lock().unwrap().get_mut(&self.id) {
            e.busy += 1;
        }
        Busy {
            id: self.id,
            table: Arc::clone(&self.table),
        }
    }

    /// Resolves when the connection must be closed: idle for the timeout,
    /// or evicted.
    pub async fn closing(&self) -> Closed {
        loop {
            let (deadline, evicted) = {
                let entries = self.table.entries.lock().unwrap();
                match entries.get(&self.id) {
                    Some(e) => (
                        (e.busy == 0).then(|| e.idle_since + self.table.idle_timeout),
                        e.evicted,
                    ),
                    None => (None, true),
                }
            };
            if evicted {
                return Closed::Evicted;
            }
            match deadline {
                Some(deadline) if deadline <= Instant::now() => return Closed::Idle,
                // Busy: look again after a timeout's worth (a request that
                // ends resets the clock, so this never closes early).
                _ => {
                    let wake = deadline.unwrap_or(Instant::now() + self.table.idle_timeout);
                    tokio::select! {
                        _ = tokio::time::sleep_until(wake) => {}
                        _ = self.close.notified() => {}
                    }
                }
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.entries.lock().unwrap().remove(&self.id);
    }
}

/// A request in progress on a connection.
pub struct Busy {
    id: u64,
    table: Arc<Table>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(e) = self.table.entries.lock().unwrap().get_mut(&self.id) {
            e.busy -= 1;
            if e.busy == 0 {
                e.idle_since = Instant::now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_idlest_goes_and_busy_ones_stay() {
        let table = Table::new(2, Duration::from_secs(60));
        let (first, _) = table.admit().unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        let (second, _) = table.admit().unwrap();
        let _busy = second.busy();
        // At the cap: the first (idle) is told to close.
        let (third, evicted) = table.admit().unwrap();
        assert!(evicted);
        assert_eq!(first.closing().await, Closed::Evicted);
        drop(first);
        // The third is idle, the second busy: a fourth evicts the third.
        let (_fourth, evicted) = table.admit().unwrap();
        assert!(evicted);
        assert_eq!(third.closing().await, Closed::Evicted);
        drop(third);
        // Now both are busy... the fourth is idle; make it busy too.
        let _also = _fourth.busy();
        assert_eq!(table.admit().err(), Some(Closed::Refused));
        assert_eq!(table.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_for_the_timeout_closes_and_a_request_resets_the_clock() {
        let table = Table::new(8, Duration::from_secs(10));
        let (slot, _) = table.admit().unwrap();
        let start = Instant::now();
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(slot.busy());
        assert_eq!(slot.closing().await, Closed::Idle);
        assert_eq!(start.elapsed(), Duration::from_secs(15));
        // A busy connection is never idle.
        let busy = slot.busy();
        let closing = tokio::time::timeout(Duration::from_secs(100), slot.closing()).await;
        assert!(closing.is_err(), "closed while busy");
        drop(busy);
    }
}
