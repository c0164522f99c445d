//! Middleware: request ids and spans, bearer auth, metrics, and the rewrite of
//! error answers produced outside the handlers into the contract's JSON.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::request_id::{MakeRequestId, RequestId};

use super::error::{error_response, ApiError};
use super::AppState;

/// Request ids `<process prefix>-<counter>`: unique across restarts (the prefix
/// is random) and cheaper than a UUID on the decision path.
#[derive(Clone)]
pub struct MakeId {
    prefix: Arc<str>,
    counter: Arc<AtomicU64>,
}

impl Default for MakeId {
    fn default() -> Self {
        MakeId { prefix: format!("{:08x}", rand::random::<u32>()).into(), counter: Arc::new(AtomicU64::new(1)) }
    }
}

impl MakeRequestId for MakeId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{}-{n}", self.prefix)).ok().map(RequestId::new)
    }
}

/// The span every log line of a request is written in: it carries the request id.
pub fn request_span<B>(req: &Request<B>) -> tracing::Span {
    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
    tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
}

/// Bearer auth on `/v1` when a token is configured; `/healthz` and `/metrics` stay open.
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = state.options().token.as_deref() else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    if path != "/v1" && !path.starts_with("/v1/") {
        return next.run(req).await;
    }
    let presented = req.headers().get(header::AUTHORIZATION).map(|v| v.to_str().unwrap_or(""));
    let refusal = match presented {
        None => "missing Authorization header; expected \"Bearer <token>\"",
        Some(v) => match v.strip_prefix("Bearer ") {
            None => "Authorization header is not \"Bearer <token>\"",
            Some(t) if constant_time_eq(t.trim().as_bytes(), token.as_bytes()) => return next.run(req).await,
            // Never echo a presented token: it may be a real secret of something else.
            Some(_) => "the bearer token is wrong",
        },
    };
    // Counted always, logged rarely: an unauthenticated flood must not flood the log.
    let refused = state.metrics().unauthorized();
    if refused.is_power_of_two() {
        tracing::warn!(reason = refusal, refused, "unauthorised requests (logged at 1, 2, 4, 8, … of them)");
    } else {
        tracing::debug!(reason = refusal, "unauthorised request");
    }
    ApiError::Unauthorized(refusal.to_string()).into_response()
}

/// Compares without an early exit, so timing does not reveal the matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts the request and its latency under its matched route.
pub async fn record_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let metrics = state.metrics();
    let route = metrics.route_index(req.extensions().get::<MatchedPath>().map(MatchedPath::as_str));
    let response = next.run(req).await;
    metrics.observe(route, response.status().as_u16(), start.elapsed().as_secs_f64());
    response
}

/// Answers from layers and from axum itself (405, 408, 413 on a declared
/// length, …) come with an empty or text body; this rewrites every error
/// answer that is not JSON into `{"error": …}`, keeping its status and headers
/// (such as `Allow` on a 405).
pub async fn json_errors(State(timeout): State<Duration>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&response) {
        return response;
    }
    let message = match status {
        StatusCode::NOT_FOUND => format!("no route {method} {path}"),
        // axum adds the `Allow` header outside this layer, so it cannot be quoted here.
        StatusCode::METHOD_NOT_ALLOWED => format!("method {method} is not allowed on {path}; see the Allow header"),
        StatusCode::REQUEST_TIMEOUT => format!("the request was not completed within {timeout:?}"),
        StatusCode::PAYLOAD_TOO_LARGE => "request body is too large".to_string(),
        other => format!("{method} {path}: {}", other.canonical_reason().unwrap_or("error")),
    };
    let (mut parts, _) = response.into_parts();
    let fresh = error_response(status, &message);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, fresh.into_body())
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// A panicking handler answers 500 in the contract's shape; the panic goes to the log.
pub fn panic_response(err: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let detail = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".to_string());
    ApiError::Internal(format!("handler panicked: {detail}")).into_response()
}
