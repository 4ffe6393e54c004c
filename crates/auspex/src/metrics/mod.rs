//! Prometheus metrics: the active method, fallbacks, events and drops, in
//! OpenMetrics or (for scrapers that ask for it, and by default) the classic
//! text format.

mod classic;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use std::sync::Mutex;

use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabel {
    pub cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FallbackLabels {
    pub from: String,
    pub to: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramLabel {
    pub program: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabel {
    pub api: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiClosedLabels {
    pub api: String,
    pub reason: String,
}

/// The APIs' labels: the HTTP API, the gRPC stream.
pub const APIS: [&str; 2] = ["http", "grpc"];

pub struct Metrics {
    registry: Mutex<Registry>,
    pub events: Family<TypeLabel, Counter>,
    pub drops: Family<CauseLabel, Counter>,
    pub fallbacks: Family<FallbackLabels, Counter>,
    pub ready: Gauge,
    pub heartbeat_misses: Counter,
    pub grpc_dropped: Counter,
    /// Per sink (pipeline/queue.rs): written, waiting, stalled for.
    pub sink_written: Family<SinkLabel, Counter>,
    pub sink_queued: Family<SinkLabel, Gauge>,
    pub sink_stalled: Family<SinkLabel, Gauge>,
    /// Per API (server/): connections the agent closed, by reason, and
    /// failed accepts.
    pub api_closed: Family<ApiClosedLabels, Counter>,
    pub api_accept_errors: Family<ApiLabel, Counter>,
    /// Sizes of the pipeline's tables.
    pub process_table_entries: Gauge,
    pub tracker_entries: Gauge,
    /// Per BPF program: in-kernel run time and runs, as the kernel counts
    /// them (only while kernel.bpf_stats_enabled is 1).
    pub bpf_run_seconds: Family<ProgramLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub bpf_runs: Family<ProgramLabel, Counter>,
    /// The ring buffer (core_bpf): bytes waiting to be read, and its size.
    pub ring_used: Gauge,
    pub ring_size: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("auspex");
        let events = Family::<TypeLabel, Counter>::default();
        let drops = Family::<CauseLabel, Counter>::default();
        let fallbacks = Family::<FallbackLabels, Counter>::default();
        let ready = Gauge::default();
        let heartbeat_misses = Counter::default();
        let grpc_dropped = Counter::default();
        let sink_written = Family::<SinkLabel, Counter>::default();
        let sink_queued = Family::<SinkLabel, Gauge>::default();
        let sink_stalled = Family::<SinkLabel, Gauge>::default();
        let api_closed = Family::<ApiClosedLabels, Counter>::default();
        let api_accept_errors = Family::<ApiLabel, Counter>::default();
        let process_table_entries = Gauge::default();
        let tracker_entries = Gauge::default();
        let bpf_run_seconds =
            Family::<ProgramLabel, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        let bpf_runs = Family::<ProgramLabel, Counter>::default();
        let ring_used = Gauge::default();
        let ring_size = Gauge::default();
        registry.register("events", "Events reported, by type", events.clone());
        registry.register(
            "drops",
            "Events lost or incomplete, by cause",
            drops.clone(),
        );
        registry.register(
            "fallbacks",
            "Methods given up for the next one, by reason",
            fallbacks.clone(),
        );
        registry.register("ready", "1 when the last self-check passed", ready.clone());
        registry.register(
            "heartbeat_misses",
            "Heartbeats the method did not see in time",
            heartbeat_misses.clone(),
        );
        registry.register(
            "grpc_events_dropped",
            "Events gRPC subscribers lost by falling behind, or left unread when stopping \
             gave up waiting for them",
            grpc_dropped.clone(),
        );
        registry.register(
            "sink_written",
            "Events each sink wrote (and flushed)",
            sink_written.clone(),
        );
        registry.register(
            "sink_queued",
            "Events waiting in each sink's queue",
            sink_queued.clone(),
        );
        registry.register(
            "sink_stalled_seconds",
            "How long each sink has been stalled (0: it is not)",
            sink_stalled.clone(),
        );
        registry.register(
            "api_connections_closed",
            "API connections the agent closed: idle past the idle timeout, evicted (the \
             idlest, at the connection cap), refused (at the cap, all busy), a failed TLS \
             handshake, or HTTP/1 headers not sent within the header timeout",
            api_closed.clone(),
        );
        registry.register(
            "api_accept_errors",
            "Connections an API listener could not accept (out of descriptors, say)",
            api_accept_errors.clone(),
        );
        registry.register(
            "process_table_entries",
            "Live processes the enrichment table remembers (at most 65536; past that the \
             oldest are forgotten, counted as process_table_evicted)",
            process_table_entries.clone(),
        );
        registry.register(
            "tracker_entries",
            "Connections and endpoints in the tracker's tables (with --report deltas or \
             both; 0 otherwise)",
            tracker_entries.clone(),
        );
        registry.register(
            "bpf_program_run_seconds",
            "In-kernel run time of each BPF program of the method, counted only while \
             kernel.bpf_stats_enabled is 1",
            bpf_run_seconds.clone(),
        );
        registry.register(
            "bpf_program_runs",
            "Runs of each BPF program of the method, counted only while \
             kernel.bpf_stats_enabled is 1",
            bpf_runs.clone(),
        );
        registry.register(
            "ring_buffer_used_bytes",
            "Bytes the kernel wrote to the ring buffer that the agent has not read yet, at the \
             last look (each second; core_bpf only)",
            ring_used.clone(),
        );
        registry.register(
            "ring_buffer_size_bytes",
            "Size of the ring buffer (core_bpf only; 0 under other methods)",
            ring_size.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            events,
            drops,
            fallbacks,
            ready,
            heartbeat_misses,
            grpc_dropped,
            sink_written,
            sink_queued,
            sink_stalled,
            api_closed,
            api_accept_errors,
            process_table_entries,
            tracker_entries,
            bpf_run_seconds,
            bpf_runs,
            ring_used,
            ring_size,
        }
    }

    pub fn api_connections_closed(&self, api: &str, reason: &str) {
        self.api_closed
            .get_or_create(&ApiClosedLabels {
                api: api.into(),
                reason: reason.into(),
            })
            .inc();
    }

    pub fn api_accept_errors(&self, api: &str) {
        self.api_accept_errors
            .get_or_create(&ApiLabel { api: api.into() })
            .inc();
    }

    /// Exports the method chosen, as an info metric (once: the method does
    /// not change while the agent runs).
    pub fn set_method(&self, method: &str) {
        self.registry.lock().unwrap().register(
            "method",
            "The collection method in use",
            Info::new(MethodLabel {
                method: method.to_string(),
            }),
        );
    }

    /// OpenMetrics text (`application/openmetrics-text; version=1.0.0`).
    pub fn encode_openmetrics(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry.lock().unwrap())
            .expect("writing to a String cannot fail");
        text
    }

    /// The classic Prometheus text format (`text/plain; version=0.0.4`).
    pub fn encode_classic(&self) -> String {
        classic::from_openmetrics(&self.encode_openmetrics())
    }

    /// Counts of what has not happened yet, at zero, so that dashboards and
    /// alerts have a series to bind to: every event type, and every
    /// fallback between the methods tried in `order` (to the next, or to
    /// none when a method was asked for by name), for each reason.
    pub fn start_at_zero(&self, order: &[&str]) {
        for kind in auspex_events::EventKind::names() {
            self.events
                .get_or_create(&TypeLabel {
                    r#type: kind.to_string(),
                })
                .inc_by(0);
        }
        for api in APIS {
            for reason in crate::server::table::Closed::ALL {
                self.api_closed
                    .get_or_create(&ApiClosedLabels {
                        api: api.into(),
                        reason: reason.label().into(),
                    })
                    .inc_by(0);
            }
            self.api_accept_errors
                .get_or_create(&ApiLabel { api: api.into() })
                .inc_by(0);
        }
        for (i, from) in order.iter().enumerate() {
            let next = order.get(i + 1).copied();
            for to in next.into_iter().chain(["none"]) {
                for reason in crate::status::Outcome::FALLBACK_REASONS {
                    self.fallbacks
                        .get_or_create(&FallbackLabels {
                            from: from.to_string(),
                            to: to.to_string(),
                            reason: reason.label().into(),
                        })
                        .inc_by(0);
                }
            }
        }
    }
}
