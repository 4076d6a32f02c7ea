//! A worker's HTTP: `/metrics` (its sockets, epoch, lease age, the ended
//! sockets' readings it keeps, and the process's memory and descriptors)
//! and `/healthz` (200 while its lease is fresh, 503 once it fences). The
//! same accept loop, limits and Host check as a core's.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde_json::json;

use super::{HttpOptions, answer, host, metrics, serve};
use crate::cluster::worker::WorkerWatch;

struct WorkerState {
    registry: Registry,
    watch: WorkerWatch,
}

/// Binds `addr` and serves the worker's endpoints on the current tokio
/// runtime, for as long as it runs; where it listens.
pub async fn serve_worker(
    addr: SocketAddr,
    options: HttpOptions,
    watch: WorkerWatch,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(WorkerState {
        registry: metrics::worker_registry(&watch),
        watch,
    });
    let router = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .with_state(state);
    let hosts = Arc::new(host::Hosts::new(&options.allow_hosts));
    tokio::spawn(serve::accept_loop(
        listener,
        router,
        options.limits,
        hosts,
        Arc::new(serve::Slots::default()),
    ));
    Ok(addr)
}

async fn metrics_text(State(state): State<Arc<WorkerState>>) -> Response {
    match metrics::render(&state.registry, false) {
        Ok(text) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn healthz(State(state): State<Arc<WorkerState>>) -> Response {
    let age_ms = state.watch.lease_age().map(|a| a.as_millis() as u64);
    if state.watch.healthy() {
        answer(StatusCode::OK, json!({"ok": true, "lease_age_ms": age_ms}))
    } else {
        answer(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"ok": false, "why": "the worker lease is not fresh: fencing", "lease_age_ms": age_ms}),
        )
    }
}
