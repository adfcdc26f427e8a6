//! Admin HTTP server: `/healthz` (process alive), `/readyz` (listener up and upstream
//! answering), `/metrics` (Prometheus text), the dashboard at `/`, the JSON views under
//! `/api/` ([`api`]),
//! `POST /invalidate` and `POST /flush` (manual invalidation), the write-behind dead
//! letters; anything else is 404. One middleware, [`guard`], checks the Host header, the
//! token and the content type of every request first.

pub mod api;
mod auth;
mod behind;
mod conn;
pub mod guard;
pub mod invalidate;
mod readiness;
pub mod rows;
pub mod views;

use std::future::IntoFuture;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use api::ApiState;
pub use guard::AdminAccess;
pub use invalidate::{InvalidationHandle, Trigger, flush_all, invalidate_table};
pub use readiness::{
    PROBE_CACHE_TTL, ProbeError, Readiness, ReadyReport, UpstreamReport, probe_upstream,
};

/// Content type of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Answers `/readyz`.
    pub readiness: Arc<Readiness>,
    /// Serves `POST /invalidate`.
    pub invalidation: InvalidationHandle,
    /// The change streams, reported in `/readyz` (they never make pgmemo unready: a
    /// database whose stream is down is served uncached).
    pub cdc: Arc<crate::cdc::hub::Hub>,
    /// The write-behind queues (dead letters), when configured.
    pub behind: Option<Arc<crate::behind::Behind>>,
    /// The token and the allowed host names the [`guard`] checks (replaced on reload).
    pub access: Arc<AdminAccess>,
    /// What the `/api/` views read (`None`: they answer 404, e.g. an embedding without an
    /// application context).
    pub api: Option<ApiState>,
}

/// Bounds on the admin server's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    /// Open connections at most; further clients wait in the accept backlog.
    pub max_connections: usize,
    /// A connection with no I/O progress for this long is closed.
    pub idle_timeout: Duration,
    /// After shutdown is requested, how long in-flight requests may take before the server
    /// returns anyway.
    pub shutdown_grace: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            // Scrapers and orchestrator probes need a handful; 64 leaves room for bursts.
            max_connections: 64,
            // Longer than common scrape intervals (15-60 s), so keep-alive connections
            // between scrapes are normally kept.
            idle_timeout: Duration::from_secs(75),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// The admin routes, without a listener (useful for embedding and tests).
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // Other methods get 405 with `Allow: POST`.
        .route(
            "/invalidate",
            post(invalidate::invalidate).layer(DefaultBodyLimit::max(invalidate::MAX_BODY)),
        )
        .route("/behind/dead-letters", get(behind::list))
        .route("/behind/dead-letters/{id}/retry", post(behind::retry))
        .route("/behind/dead-letters/{id}/drop", post(behind::drop_letter))
        .route(
            "/flush",
            post(invalidate::flush).layer(DefaultBodyLimit::max(invalidate::MAX_BODY)),
        )
        .route("/", get(dashboard))
        .route("/api/stats", get(api::stats))
        .route("/api/cdc", get(api::cdc))
        .route("/api/shared", get(api::shared))
        .route("/api/queries", get(api::queries))
        .route("/api/tables", get(api::tables))
        .route("/api/config", get(api::config))
        .fallback(not_found)
        // Every route, the fallback included: Host, token and content type (see `guard`).
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::check,
        ))
        .with_state(state)
}

/// Serves the admin routes on `listener` with [`AdminLimits::default`] until `shutdown` is
/// cancelled; then stops accepting and lets in-flight requests finish (bounded by the grace).
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> io::Result<()> {
    serve_with_limits(listener, state, shutdown, AdminLimits::default()).await
}

/// [`serve`] with explicit connection bounds.
pub async fn serve_with_limits(
    listener: TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
    limits: AdminLimits,
) -> io::Result<()> {
    let listener =
        conn::BoundedListener::new(listener, limits.max_connections.max(1), limits.idle_timeout);
    let server = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    // axum's graceful shutdown waits for every open connection to finish; a stuck client must
    // not hold the process up, so the wait is capped.
    let grace_over = async {
        shutdown.cancelled().await;
        tokio::time::sleep(limits.shutdown_grace).await;
    };
    tokio::select! {
        result = server => result,
        () = grace_over => {
            tracing::warn!(
                grace = ?limits.shutdown_grace,
                "admin server: connections still open after the shutdown grace; closing",
            );
            Ok(())
        }
    }
}

/// The live dashboard (`src/admin/dashboard.html`): one self-contained page that polls the
/// JSON API; nothing is fetched from anywhere else.
const DASHBOARD: &str = include_str!("dashboard.html");

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // Nothing but this page's own inline script and style, and the API on this origin.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:",
            ),
        ],
        DASHBOARD,
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let mut report = state.readiness.check().await;
    report.cdc = state
        .cdc
        .streams()
        .map(|s| (s.name().to_owned(), s.state().as_str()))
        .collect();
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    match serde_json::to_string(&report) {
        Ok(body) => (
            status,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        // Serialising plain strings and bools cannot fail, but if it ever did, the status
        // still tells the orchestrator what it needs.
        Err(e) => (status, format!("could not encode readiness report: {e}\n")).into_response(),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    crate::telemetry::striped::sync();
    crate::telemetry::runtimes::sync();
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found\n")
}
