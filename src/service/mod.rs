//! `paramopt serve`: the HTTP service of API.md (`/work/shared/API.md`, kept
//! stable: fields are added, never renamed or removed).
//!
//! [`app`] builds the axum [`Router`] over an [`AppState`], so tests drive the
//! whole service through `tower::ServiceExt::oneshot` without a socket;
//! [`server::serve`] runs it on a TCP listener with TCP_NODELAY, keep-alive
//! and graceful shutdown. Every refusal goes through [`ApiError`], so every
//! 4xx/5xx body is `{"error": "…"}`; request types deny unknown fields and
//! every check happens before the agent is called, so bad input changes no state.
//!
//! Persistence plugs in through [`store::CheckpointStore`] and
//! [`store::OutcomeSink`] in [`Hooks`]; without a store, the checkpoint routes
//! validate their input and then answer 503.

pub mod client;
pub mod compose;
pub mod config;
mod dashboard;
pub mod error;
pub mod extract;
mod idempotency;
pub mod metrics;
mod middleware;
pub mod openapi;
pub mod persist;
mod routes;
pub mod server;
pub mod store;
mod undeclared;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::agent::Agent;

pub use error::ApiError;
pub use metrics::Metrics;
pub use store::{CheckpointStore, CheckpointSummary, LogSink, OutcomeRecord, OutcomeSink, RollbackTarget, StoreError};

/// Limits and auth of the service.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// When set, every `/v1` request must carry `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Largest request body accepted; larger ones get 413.
    pub body_limit: usize,
    /// Longest a request may take, body included; slower ones get 408.
    pub request_timeout: Duration,
    /// Longest a connection may take to send a request's headers before it is
    /// closed: half-sent requests must not hold sockets and memory for ever.
    /// The clock also runs while a keep-alive connection waits for its next
    /// request, so an idle connection closes after this long (clients reconnect).
    pub header_read_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog
    /// until one closes, so a flood cannot exhaust file descriptors.
    pub max_connections: usize,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            token: None,
            body_limit: 64 * 1024,
            request_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
        }
    }
}

/// Where the service hands off what must outlive the process.
#[derive(Clone)]
pub struct Hooks {
    /// `None` until the storage layer provides one: checkpoint routes answer 503.
    pub checkpoints: Option<Arc<dyn CheckpointStore>>,
    /// Every accepted outcome goes here before the client is answered.
    pub outcomes: Arc<dyn OutcomeSink>,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks { checkpoints: None, outcomes: Arc::new(LogSink) }
    }
}

struct Inner {
    agent: Agent,
    options: ServiceOptions,
    hooks: Hooks,
    metrics: Metrics,
    idempotency: idempotency::IdempotencyKeys,
    /// `GET /v1/modules` never changes while the process runs, so it is rendered once.
    modules_json: Bytes,
}

/// Everything handlers share. Cheap to clone; nothing in it is behind a lock.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

impl AppState {
    pub fn new(agent: Agent, options: ServiceOptions, hooks: Hooks) -> AppState {
        let modules_json = Bytes::from(
            serde_json::to_vec(&wire::modules_json(agent.modules())).expect("module spaces serialise to JSON"),
        );
        AppState {
            inner: Arc::new(Inner {
                agent,
                options,
                hooks,
                metrics: Metrics::default(),
                idempotency: Default::default(),
                modules_json,
            }),
        }
    }

    pub fn agent(&self) -> &Agent {
        &self.inner.agent
    }

    pub fn options(&self) -> &ServiceOptions {
        &self.inner.options
    }

    fn idempotency(&self) -> &idempotency::IdempotencyKeys {
        &self.inner.idempotency
    }

    pub fn hooks(&self) -> &Hooks {
        &self.inner.hooks
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
}

/// The whole service as a router: routes, auth, limits, metrics, tracing.
pub fn app(state: AppState) -> Router {
    let options = state.options().clone();
    let routes = Router::new()
        .route("/v1/decisions", post(routes::decide))
        .route("/v1/outcomes", post(routes::report))
        .route("/v1/parameters/{module}", get(routes::parameters))
        .route("/v1/modules", get(routes::modules))
        .route("/v1/checkpoints", get(routes::list_checkpoints))
        .route("/v1/checkpoints/{module}/{generation}", get(routes::get_checkpoint))
        .route("/v1/checkpoints/{module}", post(routes::create_checkpoint))
        .route("/v1/rollback", post(routes::rollback))
        .route("/v1/ab-tests", post(routes::start_ab_test))
        .route("/v1/ab-tests/{module}", get(routes::ab_test_status).delete(routes::stop_ab_test))
        .route("/v1/openapi.json", get(routes::openapi))
        .route("/healthz", get(routes::healthz))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .with_state(state.clone())
        .merge(dashboard::router(state.clone()));

    // Outermost first. `Router::layer` runs after routing, so the metrics
    // middleware sees the matched route; auth still runs before any handler.
    let timeout = options.request_timeout;
    routes.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(middleware::MakeId::default()))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(middleware::request_span)
                    .on_request(())
                    .on_response(DefaultOnResponse::new().level(Level::DEBUG))
                    // ApiError already logs server errors with their cause.
                    .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
            )
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::record_metrics))
            .layer(axum::middleware::from_fn_with_state(timeout, middleware::json_errors))
            .layer(CatchPanicLayer::custom(middleware::panic_response))
            .layer(axum::middleware::from_fn_with_state(state, middleware::require_token))
            .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, timeout))
            .layer(Extension(extract::BodyLimit(options.body_limit)))
            .layer(DefaultBodyLimit::max(options.body_limit)),
    )
}
