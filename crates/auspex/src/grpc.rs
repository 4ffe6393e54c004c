//! The gRPC event stream (`auspex.v1.Events/Subscribe`, proto/): every
//! event the agent writes, to each subscriber. The collection loop only
//! hands events to a broadcast channel and never waits for a subscriber.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::metrics::Metrics;
use crate::pipeline::sink::Sink;

pub mod pb {
    tonic::include_proto!("auspex.v1");
}

use pb::events_server::{Events, EventsServer};

/// Events a subscriber may fall behind by before it loses the oldest.
const BACKLOG: usize = 4096;

/// The sending side.
#[derive(Clone)]
struct Feed {
    sender: broadcast::Sender<Arc<pb::Event>>,
}

impl Feed {
    fn new() -> Self {
        Feed {
            sender: broadcast::channel(BACKLOG).0,
        }
    }

    /// Tells the subscribers the stream is over, after what was sent.
    fn close(&self) {
        let _ = self.sender.send(Arc::new(pb::Event::default()));
    }

    /// Whether anyone listens: without subscribers events are not even
    /// serialised for the stream.
    fn has_subscribers(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// Hands an event, serialised as the output writes it, to the current
    /// subscribers.
    fn send_json(&self, kind: &str, json: String) {
        // An error only means the last subscriber left meanwhile.
        let _ = self.sender.send(Arc::new(pb::Event {
            r#type: kind.to_string(),
            json,
        }));
    }
}

struct Service {
    feed: Feed,
    metrics: Arc<Metrics>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl Events for Service {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let types = request.into_inner().types;
        let metrics = Arc::clone(&self.metrics);
        let stream = BroadcastStream::new(self.feed.sender.subscribe())
            // An event without a type is the end (Feed::close): whatever
            // was sent before it has been delivered.
            .take_while(|item| item.as_ref().map_or(true, |e| !e.r#type.is_empty()))
            .filter_map(move |item| match item {
                Ok(event) if types.is_empty() || types.contains(&event.r#type) => {
                    Some(Ok(pb::Event::clone(&event)))
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
    pub addr: SocketAddr,
    feed: Feed,
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
        self.feed.send_json(kind, json.to_string());
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
            tracing::warn!("gRPC subscribers still reading after {DRAIN_TIMEOUT:?}: leaving them");
        }
        Ok(())
    }
}

/// Binds `addr` and serves in the background.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<Server> {
    let feed = Feed::new();
    let service = EventsServer::new(Service {
        feed: feed.clone(),
        metrics,
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, thread) = crate::server::spawn(
        addr,
        "gRPC stream",
        "--grpc-listen",
        |listener| async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
            {
                tracing::error!("the gRPC stream stopped: {e}");
            }
        },
    )?;
    Ok(Server {
        addr,
        feed,
        running: Some((stop, thread)),
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
            let request = Request::new(pb::SubscribeRequest { types: vec![] });
            let mut stream = service.subscribe(request).await.unwrap().into_inner();
            let sent = BACKLOG as u32 + 100;
            for pid in 0..sent {
                let json = serde_json::to_string(&exec(pid)).unwrap();
                feed.send_json("process_exec", json);
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
