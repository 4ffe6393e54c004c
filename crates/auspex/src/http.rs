//! The HTTP API: /ready, /status, /metrics. Served from its own thread so
//! the collection loop never waits for a client.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use crate::metrics::Metrics;
use crate::status::SharedStatus;

#[derive(Clone)]
struct AppState {
    status: SharedStatus,
    metrics: Arc<Metrics>,
}

/// Binds `addr` and serves in the background; returns the bound address
/// (useful when the port was 0).
pub fn serve(
    addr: SocketAddr,
    status: SharedStatus,
    metrics: Arc<Metrics>,
) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on {addr} for the HTTP API (--listen)"))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/ready", get(ready))
        .route("/status", get(status_json))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { status, metrics });
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!("the HTTP API stopped: {e}");
                }
            });
        })?;
    Ok(bound)
}

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let status = state.status.lock().unwrap();
    if status.ready {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        let reason = status
            .not_ready_reason
            .clone()
            .unwrap_or_else(|| "starting".into());
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
    }
}

async fn status_json(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.status.lock().unwrap().clone())
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
