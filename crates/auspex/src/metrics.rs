//! Prometheus metrics: the active method, fallbacks, events and drops.

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
pub struct MethodLabel {
    pub method: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub events: Family<TypeLabel, Counter>,
    pub drops: Family<CauseLabel, Counter>,
    pub fallbacks: Family<FallbackLabels, Counter>,
    pub ready: Gauge,
    pub heartbeat_misses: Counter,
    pub grpc_dropped: Counter,
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
            "Events gRPC subscribers lost by falling behind",
            grpc_dropped.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            events,
            drops,
            fallbacks,
            ready,
            heartbeat_misses,
            grpc_dropped,
        }
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

    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry.lock().unwrap())
            .expect("writing to a String cannot fail");
        text
    }
}
