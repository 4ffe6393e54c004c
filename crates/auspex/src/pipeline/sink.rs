//! Where events go. A [`Sink`] takes each event the pipeline writes, as the
//! JSON object docs/events.md describes (serialised once, for every sink);
//! [`Sinks`] hands it to each of them. Two sinks exist: [`JsonLines`] (the
//! output, stdout or a file) and the gRPC stream (grpc.rs). Adding one is
//! implementing the trait and adding it in run.rs.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use auspex_events::Event;

use crate::metrics::{Metrics, TypeLabel};

pub trait Sink {
    /// For the error that ends the run ("writing events to {name} failed").
    fn name(&self) -> &'static str;
    /// Whether the sink takes events now: when none does, events are not
    /// even serialised (a gRPC stream without subscribers).
    fn wants(&self) -> bool {
        true
    }
    /// One event of type `kind`, as its JSON object (no newline). An error
    /// ends the run: the sink gets nothing more.
    fn write(&mut self, kind: &'static str, json: &str) -> io::Result<()>;
    /// The end of a batch: what is buffered should reach its reader.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// The end of the run, after the last event.
    fn finish(&mut self) -> io::Result<()> {
        self.flush()
    }
}

/// Every sink, and what was written to them.
pub struct Sinks {
    sinks: Vec<Box<dyn Sink>>,
    /// Reused for every event's JSON.
    json: Vec<u8>,
    written: BTreeMap<&'static str, u64>,
    /// The first error: after it nothing more is written.
    error: Option<(&'static str, io::Error)>,
    metrics: Arc<Metrics>,
}

impl Sinks {
    pub fn new(sinks: Vec<Box<dyn Sink>>, metrics: Arc<Metrics>) -> Self {
        Sinks {
            sinks,
            json: Vec::with_capacity(4096),
            written: BTreeMap::new(),
            error: None,
            metrics,
        }
    }

    pub fn write(&mut self, event: &Event) {
        if self.error.is_some() {
            return;
        }
        let kind = event.kind.name();
        if self.sinks.iter().any(|s| s.wants()) {
            self.json.clear();
            serde_json::to_writer(&mut self.json, event).expect("events serialise");
            let json = std::str::from_utf8(&self.json).expect("serde_json writes UTF-8");
            for sink in self.sinks.iter_mut().filter(|s| s.wants()) {
                if let Err(e) = sink.write(kind, json) {
                    self.error = Some((sink.name(), e));
                    return;
                }
            }
        }
        *self.written.entry(kind).or_default() += 1;
        self.metrics
            .events
            .get_or_create(&TypeLabel {
                r#type: kind.to_string(),
            })
            .inc();
    }

    pub fn flush(&mut self) {
        self.each(|s| s.flush());
    }

    fn each(&mut self, mut f: impl FnMut(&mut dyn Sink) -> io::Result<()>) {
        for sink in &mut self.sinks {
            if self.error.is_some() {
                return;
            }
            if let Err(e) = f(sink.as_mut()) {
                self.error = Some((sink.name(), e));
            }
        }
    }

    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// Events written so far, by type.
    pub fn written(&self) -> &BTreeMap<&'static str, u64> {
        &self.written
    }

    /// Ends every sink; returns the first error any met.
    pub fn finish(mut self) -> Option<(&'static str, io::Error)> {
        self.each(|s| s.finish());
        self.error
    }
}

/// JSON lines, to stdout or a file.
pub struct JsonLines {
    out: BufWriter<Box<dyn Write>>,
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
        }
    }
}

impl Sink for JsonLines {
    fn name(&self) -> &'static str {
        "the output"
    }

    fn write(&mut self, _kind: &'static str, json: &str) -> io::Result<()> {
        self.out.write_all(json.as_bytes())?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use auspex_events::{EventKind, Process};
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A sink that keeps what it got, and fails from the `fail_at`th write.
    struct Kept {
        lines: Rc<RefCell<Vec<String>>>,
        wants: bool,
        fail_at: usize,
    }

    impl Sink for Kept {
        fn name(&self) -> &'static str {
            "kept"
        }
        fn wants(&self) -> bool {
            self.wants
        }
        fn write(&mut self, kind: &'static str, json: &str) -> io::Result<()> {
            let mut lines = self.lines.borrow_mut();
            if lines.len() + 1 == self.fail_at {
                return Err(io::Error::from(io::ErrorKind::BrokenPipe));
            }
            lines.push(format!("{kind} {json}"));
            Ok(())
        }
    }

    fn exec(pid: u32) -> Event {
        let process = Process {
            pid,
            ..Process::default()
        };
        Event::new(
            chrono::DateTime::from_timestamp(0, 0).unwrap(),
            EventKind::ProcessExec { process },
        )
    }

    #[test]
    fn every_wanting_sink_gets_the_same_json_and_the_first_error_stops_all() {
        let (a, b) = (Rc::default(), Rc::default());
        let sinks: Vec<Box<dyn Sink>> = vec![
            Box::new(Kept {
                lines: Rc::clone(&a),
                wants: true,
                fail_at: 3,
            }),
            Box::new(Kept {
                lines: Rc::clone(&b),
                wants: false,
                fail_at: 0,
            }),
        ];
        let mut sinks = Sinks::new(sinks, Arc::new(Metrics::new()));
        for pid in 1..=4 {
            sinks.write(&exec(pid));
        }
        let expected = serde_json::to_string(&exec(1)).unwrap();
        assert_eq!(a.borrow()[0], format!("process_exec {expected}"));
        assert_eq!(a.borrow().len(), 2, "nothing after the error");
        assert!(
            b.borrow().is_empty(),
            "a sink that does not want events gets none"
        );
        assert_eq!(sinks.written()["process_exec"], 2);
        let (name, error) = sinks.finish().unwrap();
        assert_eq!((name, error.kind()), ("kept", io::ErrorKind::BrokenPipe));
    }
}
