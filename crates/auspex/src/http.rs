//! The HTTP API: /ready, /status, /metrics.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use crate::config::values::Endpoint;
use crate::metrics::Metrics;
use crate::server::{Listening, Named};
use crate::status::{Liveness, SharedStatus, LIVENESS_STALL};

#[derive(Clone)]
struct AppState {
    status: SharedStatus,
    metrics: Arc<Metrics>,
    liveness: Liveness,
}

/// Binds `addr` and serves in the background; returns the bound address.
pub fn serve(
    listening: Listening<'_>,
    (status, liveness): (SharedStatus, Liveness),
    metrics: Arc<Metrics>,
) -> anyhow::Result<SocketAddr> {
    let app = Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/status", get(status_json))
        .route("/metrics", get(metrics_text))
        .with_state(AppState {
            status,
            metrics: Arc::clone(&metrics),
            liveness,
        });
    // It serves until the process exits.
    let running = crate::server::spawn(
        listening,
        Named {
            what: "HTTP API",
            flag: "--listen",
            api: "http",
        },
        metrics,
        app,
        std::future::pending(),
        std::future::pending(),
    )?;
    match running.bound.as_slice() {
        [Endpoint::Tcp(bound)] => Ok(*bound),
        other => unreachable!("bound one TCP address, got {other:?}"),
    }
}

/// For a liveness probe: fails only when the agent's loop is stuck, not
/// when it runs degraded or not ready (restarting would not help those).
async fn live(State(state): State<AppState>) -> impl IntoResponse {
    match state.liveness.since_last_beat() {
        Some(quiet) if quiet > LIVENESS_STALL => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "stalled: the event loop has not turned for {} s\n",
                quiet.as_secs()
            ),
        ),
        Some(_) => (StatusCode::OK, "alive\n".to_string()),
        None => (StatusCode::OK, "starting\n".to_string()),
    }
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

/// OpenMetrics when the scraper lists it in Accept (Prometheus does), else
/// the classic text format, which every Prometheus-compatible tool reads
/// (promtool, for one, reads nothing else).
async fn metrics_text(State(state): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let wants_openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if wants_openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            state.metrics.encode_openmetrics(),
        )
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            state.metrics.encode_classic(),
        )
    }
}
