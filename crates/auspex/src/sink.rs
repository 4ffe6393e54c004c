//! Where events go: JSON lines, to stdout or a file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use anyhow::Context;
use auspex_events::Event;

/// After the first write error the sink writes nothing more and keeps the
/// error for its owner, so that one failure ends the run cleanly.
pub struct JsonLines {
    out: BufWriter<Box<dyn Write>>,
    written: BTreeMap<&'static str, u64>,
    error: Option<io::Error>,
}

impl JsonLines {
    pub fn stdout() -> Self {
        Self::new(Box::new(io::stdout().lock()))
    }

    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let file = File::create(path)
            .with_context(|| format!("cannot create output file {}", path.display()))?;
        Ok(Self::new(Box::new(file)))
    }

    fn new(out: Box<dyn Write>) -> Self {
        JsonLines {
            out: BufWriter::with_capacity(64 * 1024, out),
            written: BTreeMap::new(),
            error: None,
        }
    }

    pub fn write(&mut self, event: &Event) {
        if self.error.is_some() {
            return;
        }
        let result = serde_json::to_writer(&mut self.out, event)
            .map_err(io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"));
        self.count(event.kind.name(), result);
    }

    /// Writes an event already serialised (for another sink too).
    pub fn write_json(&mut self, kind: &'static str, json: &str) {
        if self.error.is_some() {
            return;
        }
        let result = self
            .out
            .write_all(json.as_bytes())
            .and_then(|()| self.out.write_all(b"\n"));
        self.count(kind, result);
    }

    fn count(&mut self, kind: &'static str, result: io::Result<()>) {
        match result {
            Ok(()) => *self.written.entry(kind).or_default() += 1,
            Err(e) => self.error = Some(e),
        }
    }

    /// Called after each batch, so a reader sees events without waiting for
    /// the buffer to fill.
    pub fn flush(&mut self) {
        if self.error.is_none() {
            self.error = self.out.flush().err();
        }
    }

    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    pub fn take_error(&mut self) -> Option<io::Error> {
        self.error.take()
    }

    /// Events written so far, by type.
    pub fn written(&self) -> &BTreeMap<&'static str, u64> {
        &self.written
    }
}
