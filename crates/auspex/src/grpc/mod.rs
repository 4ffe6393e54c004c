//! The gRPC API: the event stream (`auspex.v1.Events/Subscribe`, proto/),
//! every event the agent writes to each subscriber that asked for it;
//! `grpc.health.v1.Health`, SERVING exactly when /ready says ready; and
//! server reflection (v1 and v1alpha, which grpcurl and Python's grpcio
//! tools use). The collection loop only hands events to a broadcast channel
//! and never waits for a subscriber.

pub mod codec;
pub mod event;
mod filter;

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::config::values::Endpoint;
use crate::metrics::Metrics;
use crate::pipeline::sink::Sink;
use crate::server::{Listening, Named};
use crate::status::SharedStatus;
use filter::{Filter, Key};

pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/server/auspex.v1.rs"));

    /// The descriptors server reflection serves.
    pub const DESCRIPTORS: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/server/descriptors.bin"));
}

use pb::events_server::{Events, EventsServer};

/// Events a subscriber may fall behind by before it loses the oldest.
const BACKLOG: usize = 4096;

/// How often the health service copies the agent's readiness: a lock and a
/// comparison each time. At 250 ms, a client that asked as soon as /ready
/// said 200 (a test, with a Python client's start between) was often told
/// NOT_SERVING; 50 ms is below what any client takes to connect.
const HEALTH_INTERVAL: Duration = Duration::from_millis(50);

/// One event as the subscribers get it (the JSON shared, not copied per
/// subscriber), with what the filters look at.
struct Item {
    event: event::Event,
    /// Read from the JSON by the first subscriber whose filter looks at
    /// the process, once for all: on the receiving side, so a subscriber
    /// that has just subscribed never gets an event whose key the sender
    /// skipped (deciding on the sending side raced with subscribing).
    key: OnceLock<Key>,
}

impl Item {
    fn key(&self) -> &Key {
        self.key.get_or_init(|| Key::of(&self.event.json))
    }
}

/// The sending side.
#[derive(Clone)]
struct Feed {
    sender: broadcast::Sender<Arc<Item>>,
}

impl Feed {
    fn new() -> Self {
        Feed {
            sender: broadcast::channel(BACKLOG).0,
        }
    }

    /// Tells the subscribers the stream is over, after what was sent.
    fn close(&self) {
        let _ = self.sender.send(Arc::new(Item {
            event: event::Event::default(),
            key: OnceLock::new(),
        }));
    }

    /// Whether anyone listens: without subscribers events are not even
    /// serialised for the stream.
    fn has_subscribers(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// Hands an event, serialised as the output writes it, to the current
    /// subscribers.
    fn send_json(&self, kind: &'static str, json: &str) {
        // An error only means the last subscriber left meanwhile.
        let _ = self.sender.send(Arc::new(Item {
            event: event::Event {
                r#type: kind,
                json: json.into(),
            },
            key: OnceLock::new(),
        }));
    }
}

struct Service {
    feed: Feed,
    metrics: Arc<Metrics>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<event::Event, Status>> + Send>>;

#[tonic::async_trait]
impl Events for Service {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let filter = Filter::from_request(request.into_inner())?;
        let metrics = Arc::clone(&self.metrics);
        let stream = BroadcastStream::new(self.feed.sender.subscribe())
            // An event without a type is the end (Feed::close): whatever
            // was sent before it has been delivered.
            .take_while(|item| item.as_ref().map_or(true, |i| !i.event.r#type.is_empty()))
            .filter_map(move |item| match item {
                Ok(item) if filter.matches(item.event.r#type, || item.key()) => {
                    Some(Ok(item.event.clone()))
                }
                Ok(_) => None,
                Err(BroadcastStreamRecvError::Lagged(n)) => {
                    metrics.grpc_dropped.inc_by(n);
                    tracing::warn!("a gRPC subscriber fell behind and lost {n} events");
                    None
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The running server: a sink of the pipeline, stopped once the last event
/// was sent.
pub struct Server {
    /// Where it listens (TCP ports chosen by the kernel filled in).
    pub bound: Vec<Endpoint>,
    feed: Feed,
    metrics: Arc<Metrics>,
    /// Taken when the stream ends.
    running: Option<(
        tokio::sync::oneshot::Sender<()>,
        std::thread::JoinHandle<()>,
    )>,
}

/// How long stopping waits for subscribers to read what is left.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

impl Sink for Server {
    fn name(&self) -> &'static str {
        "gRPC subscribers"
    }

    fn wants(&self) -> bool {
        self.feed.has_subscribers()
    }

    fn write(&mut self, kind: &'static str, json: &str) -> std::io::Result<()> {
        self.feed.send_json(kind, json);
        Ok(())
    }

    /// Ends every subscriber's stream after the events already sent (so
    /// those owed at shutdown are delivered, as to the output file), then
    /// waits a moment for the streams to drain.
    fn finish(&mut self) -> std::io::Result<()> {
        let Some((stop, thread)) = self.running.take() else {
            return Ok(());
        };
        self.feed.close();
        let _ = stop.send(());
        let start = Instant::now();
        while !thread.is_finished() && start.elapsed() < DRAIN_TIMEOUT {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !thread.is_finished() {
            // What the slowest subscriber has not read, end marker aside:
            // lost with the process, so counted.
            let unread = self.feed.sender.len().saturating_sub(1);
            self.metrics.grpc_dropped.inc_by(unread as u64);
            tracing::warn!(
                "gRPC subscribers still reading after {DRAIN_TIMEOUT:?}: leaving them \
                 ({unread} events unread)"
            );
        }
        Ok(())
    }
}

/// The services the health service reports on: the whole server ("") and
/// auspex.v1.Events.
const HEALTH_SERVICES: [&str; 2] = [
    "",
    <EventsServer<Service> as tonic::server::NamedService>::NAME,
];

/// Copies the agent's readiness into the health service until `stopped`,
/// then says NOT_SERVING and ends every Health/Watch stream (dropping a
/// status's sender ends its watchers), so that the server's graceful stop
/// does not wait on them: one open Watch made every SIGTERM take the whole
/// drain timeout (2 s).
async fn report_health(
    mut reporter: tonic_health::server::HealthReporter,
    status: SharedStatus,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    tokio::select! {
        () = follow_readiness(&reporter, status) => {}
        _ = stopped => {}
    }
    for service in HEALTH_SERVICES {
        reporter
            .set_service_status(service, tonic_health::ServingStatus::NotServing)
            .await;
        reporter.clear_service_status(service).await;
    }
}

/// Copies the agent's readiness into the health service, as it changes.
async fn follow_readiness(reporter: &tonic_health::server::HealthReporter, status: SharedStatus) {
    use tonic_health::ServingStatus;
    let mut last = None;
    loop {
        let ready = status.lock().unwrap().ready;
        if last != Some(ready) {
            let serving = match ready {
                true => ServingStatus::Serving,
                false => ServingStatus::NotServing,
            };
            for service in HEALTH_SERVICES {
                reporter.set_service_status(service, serving).await;
            }
            last = Some(ready);
        }
        tokio::time::sleep(HEALTH_INTERVAL).await;
    }
}

/// Binds `endpoints` and serves in the background.
pub fn serve(
    listening: Listening<'_>,
    status: SharedStatus,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Server> {
    let feed = Feed::new();
    let events = EventsServer::new(Service {
        feed: feed.clone(),
        metrics: Arc::clone(&metrics),
    });
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::DESCRIPTORS)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let mut routes = tonic::service::Routes::builder();
    routes
        .add_service(events)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let app = routes.routes().prepare().into_axum_router();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = crate::server::spawn(
        listening,
        Named {
            what: "gRPC stream",
            flag: "--grpc-listen",
            api: "grpc",
        },
        Arc::clone(&metrics),
        app,
        std::future::ready(()),
        report_health(reporter, status, stopped),
    )?;
    Ok(Server {
        bound: running.bound,
        feed,
        metrics,
        running: Some((stop, running.thread)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use auspex_events::{Event, EventKind, Process};

    fn exec(pid: u32) -> Event {
        let process = Process {
            pid,
            ..Process::default()
        };
        Event::new(chrono::Utc::now(), EventKind::ProcessExec { process })
    }

    #[test]
    fn a_subscriber_that_falls_behind_loses_the_oldest_and_they_are_counted() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let metrics = Arc::new(Metrics::new());
        let feed = Feed::new();
        let service = Service {
            feed: feed.clone(),
            metrics: Arc::clone(&metrics),
        };
        runtime.block_on(async {
            let request = Request::new(pb::SubscribeRequest::default());
            let mut stream = service.subscribe(request).await.unwrap().into_inner();
            let sent = BACKLOG as u32 + 100;
            for pid in 0..sent {
                let json = serde_json::to_string(&exec(pid)).unwrap();
                feed.send_json("process_exec", &json);
            }
            // The first event still held is the 101st sent.
            let first = stream.next().await.unwrap().unwrap();
            let value: serde_json::Value = serde_json::from_str(&first.json).unwrap();
            assert_eq!(value["process"]["pid"], 100);
            assert_eq!(first.r#type, "process_exec");
        });
        assert_eq!(metrics.grpc_dropped.get(), 100);
    }
}
