//! The one server behind both APIs (HTTP and gRPC): each runs on a thread
//! of its own with a single-threaded tokio runtime, so the collection loop
//! never waits for a client, and accepts on TCP or Unix sockets with the
//! same limits: at most `max_connections` per listener (the idlest closed
//! first when more come, table.rs), a deadline for a request's headers, and
//! connections without a request in progress closed after the idle
//! timeout. On HTTP/1 hyper's header timer also runs while a kept-alive
//! connection waits for its next request, so there the header timeout
//! closes an idle connection first (counted as header_timeout). Both APIs are axum routers (tonic's services become one), each
//! connection served by hyper (HTTP/1.1, or HTTP/2 for gRPC).

mod stream;
pub mod table;
pub mod tls;
mod unix;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower::ServiceExt;

use crate::config::values::Endpoint;
use crate::metrics::Metrics;
use stream::{Bound, Listener, Stream};
use table::{Busy, Closed, Table};
use tls::Tls;

/// The limits on each listener's clients (issue 16: 1,100 idle sockets
/// against a server without them starved the agent of descriptors under
/// the common soft limit of 1024 files).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    /// Also bounds a TLS handshake.
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

/// HTTP/2 pings on a quiet connection (a gRPC stream with nothing to send):
/// a client that vanished without closing is found within interval +
/// timeout and its connection closed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// After accept() fails (out of descriptors, say), wait before the next:
/// retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A server running on its thread.
pub struct Running {
    /// Where it listens, ports chosen by the kernel filled in.
    pub bound: Vec<Endpoint>,
    pub thread: std::thread::JoinHandle<()>,
}

/// What a server is called in messages and metrics.
#[derive(Debug, Clone, Copy)]
pub struct Named {
    /// "HTTP API", "gRPC stream".
    pub what: &'static str,
    /// The flag that sets its address.
    pub flag: &'static str,
    /// The `api` label of its metrics: http, grpc.
    pub api: &'static str,
}

/// How a server is reached: where, with what limits, with TLS or not (TLS
/// applies to its TCP endpoints; a Unix socket's access control is its
/// file mode).
pub struct Listening<'a> {
    pub endpoints: &'a [Endpoint],
    pub limits: Limits,
    pub tls: Option<Arc<Tls>>,
}

/// Binds every endpoint now (so a taken port is an error at start, naming
/// the flag) and serves `app` on them in the background, with `beside`
/// running alongside (the health service's updates), until `stop`
/// resolves (then lets the connections finish what they were doing).
pub fn spawn(
    listening: Listening<'_>,
    name: Named,
    metrics: Arc<Metrics>,
    app: axum::Router,
    beside: impl std::future::Future<Output = ()> + Send + 'static,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    let Listening {
        endpoints,
        limits,
        tls,
    } = listening;
    let listeners = endpoints
        .iter()
        .map(|endpoint| {
            Bound::bind(endpoint).with_context(|| {
                format!(
                    "cannot listen on {endpoint} for the {} ({})",
                    name.what, name.flag
                )
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let bound = listeners
        .iter()
        .map(Bound::local)
        .collect::<std::io::Result<Vec<_>>>()?;
    let thread = std::thread::Builder::new()
        .name(name.flag.trim_start_matches("--").into())
        .spawn(move || {
            // Serving needs no capability; dropped here, since
            // capabilities are per thread and the lockdown after loading
            // reaches only the thread that loads.
            crate::lockdown::drop_all_for_this_thread();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            runtime.block_on(async move {
                let beside = tokio::spawn(beside);
                let server = Server {
                    name,
                    limits,
                    tls,
                    metrics,
                    app,
                };
                server.serve(listeners, stop).await;
                beside.abort();
            });
        })?;
    Ok(Running { bound, thread })
}

/// What every connection of a server shares.
#[derive(Clone)]
struct Server {
    name: Named,
    limits: Limits,
    tls: Option<Arc<Tls>>,
    metrics: Arc<Metrics>,
    app: axum::Router,
}

impl Server {
    async fn serve(self, listeners: Vec<Bound>, stop: impl std::future::Future<Output = ()>) {
        let (stopping, stopped) = tokio::sync::watch::channel(false);
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT);
        let mut tasks = tokio::task::JoinSet::new();
        for bound in listeners {
            let listener = match Listener::new(bound) {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::error!("the {} cannot serve: {e}", self.name.what);
                    continue;
                }
            };
            let table = Table::new(self.limits.max_connections, self.limits.idle_timeout);
            tasks.spawn(self.clone().accept_loop(
                listener,
                table,
                builder.clone(),
                stopped.clone(),
            ));
        }
        stop.await;
        let _ = stopping.send(true);
        while tasks.join_next().await.is_some() {}
    }

    fn closed(&self, why: Closed) {
        self.metrics
            .api_connections_closed(self.name.api, why.label());
    }

    /// Accepts until told to stop, then waits for its connections to finish.
    async fn accept_loop(
        self,
        listener: Listener,
        table: Arc<Table>,
        builder: hyper_util::server::conn::auto::Builder<TokioExecutor>,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stopping(&mut stopped) => break,
                // Reap finished connections as they end.
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let stream = match accepted {
                Ok(stream) => stream,
                Err(e) => {
                    self.metrics.api_accept_errors(self.name.api);
                    tracing::warn!("the {} cannot accept a connection: {e}", self.name.what);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let (slot, evicted) = match table.admit() {
                Ok(admitted) => admitted,
                Err(why) => {
                    self.closed(why);
                    drop(stream);
                    continue;
                }
            };
            if evicted {
                // Counted by the evicted connection itself, when it sees
                // its slot closing (serve_connection), so once. Let it close
                // its socket before the next accept takes a descriptor.
                tokio::task::yield_now().await;
            }
            connections.spawn(self.clone().serve_connection(
                stream,
                slot,
                builder.clone(),
                stopped.clone(),
            ));
        }
        while connections.join_next().await.is_some() {}
    }

    /// The TLS handshake, when the server has TLS and this is TCP, within
    /// the header timeout.
    async fn secure(&self, stream: Stream) -> Result<Stream, String> {
        match (stream, &self.tls) {
            (Stream::Tcp(tcp), Some(tls)) => {
                let handshake = tls.acceptor().accept(tcp);
                match tokio::time::timeout(self.limits.header_timeout, handshake).await {
                    Ok(Ok(tls)) => Ok(Stream::Tls(Box::new(tls))),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("the TLS handshake timed out".into()),
                }
            }
            (stream, _) => Ok(stream),
        }
    }

    async fn serve_connection(
        self,
        stream: Stream,
        slot: table::Slot,
        builder: hyper_util::server::conn::auto::Builder<TokioExecutor>,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        // The handshake races eviction and the stop: 300 silent TLS
        // clients against --api-max-connections 4 held 309 descriptors for
        // the header timeout when an evicted one kept waiting for its
        // ClientHello (and was counted twice, evicted and tls_failed).
        let secured = tokio::select! {
            secured = self.secure(stream) => secured,
            why = slot.closing() => {
                self.closed(why);
                return;
            }
            _ = stopping(&mut stopped) => return,
        };
        let stream = match secured {
            Ok(stream) => stream,
            Err(e) => {
                // Debug only: anyone who can connect could fill the log.
                tracing::debug!("a {} client failed TLS: {e}", self.name.what);
                self.closed(Closed::TlsFailed);
                return;
            }
        };
        let slot = Arc::new(slot);
        let requests = Arc::clone(&slot);
        let app = self.app.clone();
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let busy = requests.busy();
                let app = app.clone();
                async move {
                    let response = app.oneshot(request).await.unwrap_or_else(|e| match e {});
                    Ok::<_, Infallible>(
                        response.map(|body| Body::new(Guarded { body, _busy: busy })),
                    )
                }
            });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    let timed_out = e
                        .downcast_ref::<hyper::Error>()
                        .is_some_and(hyper::Error::is_timeout);
                    if timed_out {
                        self.closed(Closed::HeaderTimeout);
                    }
                    tracing::debug!("a {} connection ended: {e}", self.name.what);
                }
            }
            why = slot.closing() => self.closed(why),
            _ = stopping(&mut stopped) => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        }
    }
}

/// Resolves once the server is told to stop.
async fn stopping(stopped: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// A response body that keeps its connection busy until it ends (a gRPC
/// stream is one long body).
struct Guarded {
    body: Body,
    _busy: Busy,
}

impl http_body::Body for Guarded {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
