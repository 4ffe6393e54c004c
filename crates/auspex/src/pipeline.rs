//! The userspace half of the data path: each event from a probe is
//! enriched, then written.

use auspex_enrich::ProcessTable;
use auspex_events::Event;

use crate::sink::JsonLines;

/// Live processes remembered for enrichment.
const PROCESS_TABLE_CAPACITY: usize = 65536;

pub struct Pipeline {
    processes: ProcessTable,
    pub sink: JsonLines,
}

impl Pipeline {
    pub fn new(sink: JsonLines) -> Self {
        Pipeline {
            processes: ProcessTable::new(PROCESS_TABLE_CAPACITY),
            sink,
        }
    }

    pub fn deliver(&mut self, mut event: Event) {
        self.processes.apply(&mut event);
        self.sink.write(&event);
    }

    /// Processes the enrichment table forgot because it was full.
    pub fn processes_evicted(&self) -> u64 {
        self.processes.evicted()
    }
}
