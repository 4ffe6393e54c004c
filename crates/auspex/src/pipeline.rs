//! The userspace half of the data path: each event from a method is
//! enriched, counted, tracked, then written (raw, as deltas, or both) to
//! the output and to gRPC subscribers.

use std::sync::Arc;

use auspex_enrich::ProcessTable;
use auspex_events::Event;
use auspex_track::{Tracker, TrackerStats};
use chrono::Utc;

use crate::grpc::Feed;
use crate::metrics::{Metrics, TypeLabel};
use crate::sink::JsonLines;

/// Live processes remembered for enrichment.
const PROCESS_TABLE_CAPACITY: usize = 65536;

pub struct Pipeline {
    processes: ProcessTable,
    metrics: Arc<Metrics>,
    /// The connection tracker, when deltas are reported.
    tracker: Option<Tracker>,
    /// Whether the raw events are written.
    raw: bool,
    pub sink: JsonLines,
    /// The gRPC subscribers, when the stream is served.
    feed: Option<Feed>,
}

impl Pipeline {
    pub fn new(
        sink: JsonLines,
        metrics: Arc<Metrics>,
        tracker: Option<Tracker>,
        raw: bool,
        feed: Option<Feed>,
    ) -> Self {
        Pipeline {
            processes: ProcessTable::new(PROCESS_TABLE_CAPACITY),
            metrics,
            tracker,
            raw,
            sink,
            feed,
        }
    }

    /// Adds what the event lacked (before anything looks at it: the
    /// self-check recognises its own exec by arguments some methods get
    /// only from here).
    pub fn enrich(&mut self, event: &mut Event) {
        self.processes.apply(event);
    }

    /// Tracks and writes an enriched event.
    pub fn emit(&mut self, event: Event) {
        if let Some(tracker) = &mut self.tracker {
            tracker.observe(&event);
        }
        if self.raw {
            self.write(&event);
        }
    }

    /// Writes the tracker's deltas, if any.
    pub fn write_deltas(&mut self) {
        let deltas = match &mut self.tracker {
            Some(tracker) => tracker.deltas(Utc::now()),
            None => return,
        };
        for delta in &deltas {
            self.write(delta);
        }
    }

    fn write(&mut self, event: &Event) {
        self.metrics
            .events
            .get_or_create(&TypeLabel {
                r#type: event.kind.name().to_string(),
            })
            .inc();
        match &self.feed {
            // Serialised once for both sinks.
            Some(feed) if feed.has_subscribers() => {
                let json = serde_json::to_string(event).expect("events serialise");
                self.sink.write_json(event.kind.name(), &json);
                feed.send_json(event.kind.name(), json);
            }
            _ => self.sink.write(event),
        }
    }

    /// What the tracker left out, if it runs.
    pub fn tracker_stats(&self) -> Option<TrackerStats> {
        self.tracker.as_ref().map(Tracker::stats)
    }

    /// Processes the enrichment table forgot because it was full.
    pub fn processes_evicted(&self) -> u64 {
        self.processes.evicted()
    }
}
