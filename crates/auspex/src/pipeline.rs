//! The userspace half of the data path: each event from a method is
//! enriched, counted, then written.

use std::sync::Arc;

use auspex_enrich::ProcessTable;
use auspex_events::Event;

use crate::metrics::{Metrics, TypeLabel};
use crate::sink::JsonLines;

/// Live processes remembered for enrichment.
const PROCESS_TABLE_CAPACITY: usize = 65536;

pub struct Pipeline {
    processes: ProcessTable,
    metrics: Arc<Metrics>,
    pub sink: JsonLines,
}

impl Pipeline {
    pub fn new(sink: JsonLines, metrics: Arc<Metrics>) -> Self {
        Pipeline {
            processes: ProcessTable::new(PROCESS_TABLE_CAPACITY),
            metrics,
            sink,
        }
    }

    pub fn deliver(&mut self, mut event: Event) {
        self.processes.apply(&mut event);
        self.metrics
            .events
            .get_or_create(&TypeLabel {
                r#type: event.kind.name().to_string(),
            })
            .inc();
        self.sink.write(&event);
    }

    /// Processes the enrichment table forgot because it was full.
    pub fn processes_evicted(&self) -> u64 {
        self.processes.evicted()
    }
}
