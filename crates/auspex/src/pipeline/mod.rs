//! The userspace half of the data path, one stage after the other, for
//! each event a collector delivered (already decoded, by the collector):
//!
//! enrich (`auspex-enrich`: exe, args, container, lineage) → filter (the
//! agent's own self-check activity, `own.rs`, handed back to the caller
//! instead) → track (`auspex-track`, with `--report deltas`) → sinks
//! (`sink.rs`: JSON lines, gRPC), each behind a queue of its own
//! (`queue.rs`).
//!
//! It runs on the run loop's thread, never on the one that reads the kernel
//! buffer: enrichment may wait on /proc (collect/reader.rs). Nor does it
//! wait on a sink: each is written by a thread of its own.

pub mod output;
mod own;
pub mod queue;
pub mod sink;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use auspex_collect::Drops;
use auspex_enrich::ProcessTable;
use auspex_events::{Event, EventSelection};
use auspex_track::Tracker;
use chrono::Utc;

use crate::config::{Report, RunArgs};

pub use own::OwnActivity;
use sink::Sinks;

/// Live processes remembered for enrichment.
const PROCESS_TABLE_CAPACITY: usize = 65536;

pub struct Pipeline {
    enrich: ProcessTable<crate::hooks::Proc>,
    own: OwnActivity,
    /// The connection tracker, when deltas are reported.
    track: Option<Tracker>,
    /// Whether the raw events are written.
    raw: bool,
    /// What is reported (`--events`): the probes load only that, but the
    /// startup scrape and the proc method find everything.
    events: EventSelection,
    /// The `node` of every event.
    node: Arc<str>,
    sinks: Sinks,
}

impl Pipeline {
    /// The stages `args` ask for (raw events, deltas, or both), writing
    /// to `sinks`.
    pub fn new(args: &RunArgs, sinks: Sinks) -> Self {
        let track = (args.report != Report::Raw).then(|| {
            Tracker::new(auspex_track::TrackerConfig {
                afterglow: args.afterglow,
                rate_limit_per_minute: args.connection_rate_limit,
                capacity: 65536,
                normaliser: auspex_track::Normaliser {
                    aggregate_public: args.aggregate_public,
                    never_aggregate: args.never_aggregate.clone(),
                },
            })
        });
        let identity = crate::identity::resolve(args).unwrap_or_else(|e| {
            tracing::warn!("events have no exec_id: {e:#}");
            auspex_events::Identity::new(&crate::identity::node_name(args), "", 0)
        });
        Pipeline {
            node: Arc::clone(identity.node()),
            events: args.events,
            enrich: ProcessTable::with_proc(PROCESS_TABLE_CAPACITY, crate::hooks::proc())
                .with_identity(identity),
            own: OwnActivity::new(),
            track,
            raw: args.report != Report::Deltas,
            sinks,
        }
    }

    /// Takes one event through the stages. An event of the agent's own
    /// self-check is not reported: it is returned, for the self-check.
    pub fn process(&mut self, mut event: Event) -> Option<Event> {
        // Before anything looks at it: the self-check recognises its own
        // exec by arguments some methods get only from here.
        self.enrich.apply(&mut event);
        if self.own.claims(&event) {
            return Some(event);
        }
        if !self.events.wants(&event.kind) {
            return None;
        }
        event.node = Some(Arc::clone(&self.node));
        if let Some(track) = &mut self.track {
            track.observe(&event);
        }
        if self.raw {
            self.sinks.write(&event);
        }
        None
    }

    /// Where the events of the agent's own activity are recognised.
    pub fn own_activity(&mut self) -> &mut OwnActivity {
        &mut self.own
    }

    /// Writes the tracker's deltas, if it runs.
    pub fn write_deltas(&mut self) {
        if let Some(track) = &mut self.track {
            for mut delta in track.deltas(Utc::now()) {
                delta.node = Some(Arc::clone(&self.node));
                self.sinks.write(&delta);
            }
        }
    }

    /// After each batch, so that readers see events without waiting for a
    /// buffer to fill.
    pub fn flush(&mut self) {
        self.sinks.flush();
    }

    /// Whether a sink failed: the run ends.
    pub fn failed(&self) -> bool {
        self.sinks.failed()
    }

    /// Events reported so far (handed to the sinks), by type.
    pub fn reported(&self) -> &BTreeMap<&'static str, u64> {
        self.sinks.reported()
    }

    /// Each sink, as /status shows it.
    pub fn sinks(&self) -> Vec<crate::status::SinkStatus> {
        self.sinks.status()
    }

    /// Processes enrichment forgot because its table was full.
    pub fn processes_evicted(&self) -> u64 {
        self.enrich.evicted()
    }

    /// Entries in the process table, and in the tracker's tables (0 when
    /// it does not run).
    pub fn table_sizes(&self) -> (usize, usize) {
        (
            self.enrich.len(),
            self.track.as_ref().map_or(0, Tracker::len),
        )
    }

    /// What the stages left out, by cause.
    pub fn drops(&self) -> Drops {
        let mut drops = vec![("process_table_evicted", self.processes_evicted())];
        if let Some(t) = self.track.as_ref().map(Tracker::stats) {
            drops.push(("connection_rate_limited", t.rate_limited));
            drops.push(("tracker_evicted", t.evicted));
        }
        drops.extend(self.sinks.drops());
        drops
    }

    /// Ends every sink's stream after what was handed to it, waiting for
    /// them until `deadline` at the latest: what each did.
    pub fn finish(self, deadline: Instant) -> Vec<queue::SinkReport> {
        self.sinks.finish(deadline)
    }
}
