//! Operating switchboard over HTTP: `/metrics` (Prometheus or OpenMetrics
//! text), `/healthz`,
//! `/readyz`, `/fleet` and `/teams` (JSON), `/teams/{id}`, and a live
//! status page at `/`. Routed by axum and served by hyper on the tokio
//! runtime the sockets already use, within the bounds of [`serve`] and to
//! the names of [`host`], from what the [`Telemetry`] sidecar publishes
//! (see [`view`]): no answer is made on the core's thread.

pub mod book;
pub mod host;
mod metrics;
pub mod serve;
pub mod worker;
pub mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::core::TeamSnapshot;
use crate::protocol::TeamId;
pub use serve::{ConnStats, Limits};
use view::Shared;
pub use view::{Telemetry, View};

/// How long a handler waits for the driver to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// The status page: one self-contained file, no build step, no CDN.
const STATUS_PAGE: &str = include_str!("status.html");

struct AppState {
    shared: Arc<Shared>,
    registry: prometheus_client::registry::Registry,
    /// `/teams` rendered once per published version, for every poller.
    teams_json: tokio::sync::Mutex<(u64, bytes::Bytes)>,
}

/// How a server bounds its connections and which names it answers to.
#[derive(Clone, Debug, Default)]
pub struct HttpOptions {
    /// Connection cap and timeouts.
    pub limits: Limits,
    /// Names allowed in `Host` besides this machine's own (see [`host`]).
    pub allow_hosts: Vec<String>,
}

/// A running HTTP server.
pub struct HttpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    slots: Arc<serve::Slots>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Binds `addr` and serves on the current tokio runtime with the
    /// default [`HttpOptions`].
    pub async fn start(addr: SocketAddr) -> std::io::Result<HttpServer> {
        HttpServer::start_with(addr, HttpOptions::default()).await
    }

    /// Binds `addr` and serves on the current tokio runtime. Give
    /// [`HttpServer::telemetry`] to the run as a sidecar.
    pub async fn start_with(addr: SocketAddr, options: HttpOptions) -> std::io::Result<HttpServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Shared::new();
        let state = Arc::new(AppState {
            registry: metrics::registry(&shared),
            shared: shared.clone(),
            teams_json: tokio::sync::Mutex::new((0, bytes::Bytes::from_static(b"[]"))),
        });
        let router = Router::new()
            .route("/", get(status_page))
            .route("/metrics", get(metrics_text))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/fleet", get(fleet))
            .route("/teams", get(teams))
            .route("/teams/{id}", get(team))
            .route("/workers", get(workers))
            .with_state(state);
        let slots = Arc::new(serve::Slots::default());
        let hosts = Arc::new(host::Hosts::new(&options.allow_hosts));
        let task = tokio::spawn(serve::accept_loop(
            listener,
            router,
            options.limits,
            hosts,
            slots.clone(),
        ));
        Ok(HttpServer {
            addr,
            shared,
            slots,
            task,
        })
    }

    /// Its connections now and over its life.
    pub fn connections(&self) -> ConnStats {
        self.slots.stats()
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The status page's URL.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The sidecar that feeds this server from the driver.
    pub fn telemetry(&self) -> Telemetry {
        Telemetry::new(self.shared.clone())
    }

    /// Adds the cluster this process leads to `/metrics` and `/workers`.
    pub fn watch_cluster(&self, watch: crate::cluster::LeaderWatch) {
        let _ = self.shared.cluster.set(watch);
    }

    /// Shows a core of a cluster standing by: `/healthz` answers for the
    /// process, `/readyz` says it is not ready (only the leader is), and
    /// `/metrics` carries its role, the cluster's and the process's own.
    pub fn watch_standby(&self, watch: crate::cluster::StandbyWatch) {
        let _ = self.shared.standby.set(watch);
    }

    /// Adds the NATS publisher's numbers to `/metrics` (the first one
    /// attached stays).
    pub fn watch_publisher(&self, watch: crate::publish::PublishWatch) {
        let _ = self.shared.publish.set(watch);
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A one-line JSON answer with a status.
fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

async fn status_page() -> Html<&'static str> {
    Html(STATUS_PAGE)
}

/// Prometheus text, or OpenMetrics when the scraper's `Accept` asks for it.
async fn metrics_text(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let content_type = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    match metrics::render(&state.registry, openmetrics) {
        Ok(text) => ([(header::CONTENT_TYPE, content_type)], text).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The driver loop is alive: it answered a wake-up within the deadline.
/// (The step count is no proof: it stands still while the driver sleeps
/// with nothing due.)
async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    if let Some(waiting) = state.shared.standing_by() {
        return answer(
            StatusCode::OK,
            json!({"ok": true, "role": "standby", "standby_ms": waiting.since.elapsed().as_millis() as u64}),
        );
    }
    match state.shared.driver_alive(ANSWER_WITHIN).await {
        Some(wakes) => answer(StatusCode::OK, json!({"ok": true, "driver_wakes": wakes})),
        None => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"ok": false, "why": format!("the driver did not answer within {}s", ANSWER_WITHIN.as_secs())}),
        ),
    }
}

/// Ready: Global connected and no team has waited for its URL longer than
/// the request timeout.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let view = state.shared.view();
    let why = if let Some(waiting) = state.shared.standing_by() {
        Some(match waiting.leader {
            Some((holder, epoch)) => format!("standby: {holder} leads (epoch {epoch})"),
            None => "standby: no leader seen yet".to_owned(),
        })
    } else if view.at.is_none() {
        Some("no run yet".to_owned())
    } else if !view.global_ready {
        Some(format!(
            "Global link is {}{}",
            view.global_state,
            view.global_error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ))
    } else {
        view.url_backlog_ms
            .filter(|&ms| ms > view.request_timeout_ms)
            .map(|ms| {
                format!(
                    "a team has waited {ms}ms for its URL (request timeout {}ms)",
                    view.request_timeout_ms
                )
            })
    };
    match why {
        None => answer(StatusCode::OK, json!({"ready": true})),
        Some(why) => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"ready": false, "why": why}),
        ),
    }
}

/// The leader's workers: epoch, lease, and each live worker with its
/// teams; 404 when this process leads no cluster.
async fn workers(State(state): State<Arc<AppState>>) -> Response {
    match state.shared.cluster.get() {
        Some(watch) => answer(
            StatusCode::OK,
            serde_json::json!({
                "epoch": watch.epoch,
                "lease_ms": watch.lease.as_millis() as u64,
                "lease_age_ms": watch.lease_age().as_millis() as u64,
                "workers": watch.workers(),
            }),
        ),
        None => answer(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "this process leads no cluster"}),
        ),
    }
}

/// Fleet totals (cheap: the published view).
async fn fleet(State(state): State<Arc<AppState>>) -> Json<Arc<View>> {
    Json(state.shared.view())
}

/// Every team, one line each, by id: rendered once per publication
/// whoever asks, on an I/O thread.
async fn teams(State(state): State<Arc<AppState>>) -> Response {
    let pages = state.shared.pages();
    let mut cached = state.teams_json.lock().await;
    if cached.0 != pages.version {
        let mut lines = pages.lines();
        if let Some(cluster) = state.shared.cluster.get() {
            let workers = cluster.team_workers();
            for line in &mut lines {
                line.worker = workers.get(&line.id).cloned();
            }
        }
        match serde_json::to_vec(&lines) {
            Ok(json) => *cached = (pages.version, json.into()),
            Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    }
    let json = cached.1.clone();
    drop(cached);
    ([(header::CONTENT_TYPE, "application/json")], json).into_response()
}

/// One team with its history, as last published.
async fn team(State(state): State<Arc<AppState>>, Path(id): Path<u64>) -> Response {
    match state.shared.pages().team(TeamId(id)) {
        Some(team) => Json(redacted(&team)).into_response(),
        None => answer(
            StatusCode::NOT_FOUND,
            json!({"why": format!("team {id} never joined")}),
        ),
    }
}

/// A team view with every URL in it masked: its errors may quote a refused
/// `ws_url` with its token, and this is served without authentication.
fn redacted(team: &TeamSnapshot) -> TeamSnapshot {
    let mut team = team.clone();
    let texts = team.health.last_error.iter_mut();
    for text in texts.chain(team.history.0.iter_mut().filter_map(|e| e.reason.as_mut())) {
        *text = crate::redact::text(text);
    }
    team
}
