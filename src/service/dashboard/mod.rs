//! The dashboard `paramopt serve` shows at `/`: one HTML page, its script and
//! its stylesheet, compiled into the binary (no CDN, no build step, works
//! offline), and the read-only `/v1/dashboard/...` routes it draws from.
//!
//! The page itself is public; its data routes are `/v1` routes, so a token,
//! when the server has one, guards them like every other `/v1` route (the
//! page takes it from `?token=` once and keeps it in the browser's
//! localStorage). See `docs/dashboard.md` for the routes.
//!
//! History must stay cheap with thousands of generations, so nothing here
//! reads every checkpoint on a refresh: the routes show every `stride`-th
//! generation (a power of two, so the generations shown stay the same as
//! history grows), and a generation's incumbents, which never change once
//! stored, are cached after the first read. They come from the generation's
//! `ml_learning_events` row when it has one, else from the checkpoint itself.
//! Listings (generations, events) are cached until the live generation moves.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use parking_lot::Mutex;
use serde::Serialize;

use super::error::ApiError;
use super::store::{CheckpointStore, CheckpointSummary, StoreError};
use super::AppState;
use wire::EventMark;

mod effectiveness;
mod grid;
mod history;
mod moves;
mod overview;
mod progress;
pub mod wire;
pub use moves::DashboardMoves;
use moves::MoveRow;

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const STYLE_CSS: &str = include_str!("style.css");

/// Points a history or progress answer holds unless `?points=` says otherwise.
const DEFAULT_POINTS: usize = 400;
const MAX_POINTS: usize = 5000;
/// Learning events read the first time a module's history is asked for;
/// later reads fetch only what is newer than the cache.
const FIRST_EVENTS: usize = 10_000;
/// Cached generations' incumbents, over all modules, before the cache starts over.
const MAX_CACHED_GENERATIONS: usize = 50_000;

/// The dashboard's routes, with their cache.
pub fn router(state: AppState) -> Router {
    let dashboard = Dashboard { app: state, cache: Arc::new(Mutex::new(HashMap::new())) };
    Router::new()
        .route("/", get(index))
        .route("/dashboard/app.js", get(app_js))
        .route("/dashboard/style.css", get(style_css))
        .route("/v1/dashboard/overview", get(overview::overview))
        .route("/v1/dashboard/modules/{module}/grid", get(grid::grid))
        .route("/v1/dashboard/modules/{module}/history", get(history::history))
        .route("/v1/dashboard/modules/{module}/progress", get(progress::progress))
        .route("/v1/dashboard/modules/{module}/effectiveness", get(effectiveness::effectiveness))
        .route("/v1/dashboard/modules/{module}/moves", get(moves::moves))
        .with_state(dashboard)
}

#[derive(Clone)]
struct Dashboard {
    app: AppState,
    cache: Arc<Cache>,
}

/// `[context][parameter]` incumbents of one stored generation, in the module's parameter order.
type Incumbents = Arc<Vec<Vec<f64>>>;
type Cache = Mutex<HashMap<String, ModuleCache>>;

/// What the store has said about one module, kept between refreshes.
#[derive(Default)]
struct ModuleCache {
    /// Oldest first, read when the live generation was the key.
    generations: Option<(u64, Arc<Vec<CheckpointSummary>>)>,
    /// Oldest first, read when the live generation was the key.
    events: Option<(u64, Arc<Vec<EventMark>>)>,
    /// The moves among those events, oldest first, the newest `MAX_MOVES`.
    moves: Vec<MoveRow>,
    incumbents: HashMap<u64, Incumbents>,
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Assets change only with the binary; a restart may bring a new one.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// On every page and asset: no Referer (the first visit's URL carries
/// `?token=`), nothing loaded from elsewhere, no framing, no sniffing. Inline
/// `style` attributes stay allowed: the charts set widths and positions with them.
const SECURITY_HEADERS: [(header::HeaderName, &str); 4] = [
    (header::REFERRER_POLICY, "no-referrer"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
         connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
];

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

fn json<T: Serialize>(value: &T) -> Result<Response, ApiError> {
    let body = serde_json::to_vec(value).map_err(|e| ApiError::Internal(format!("serialising the answer: {e}")))?;
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// Runs blocking store work off the request workers. Without a store there is
/// nothing to read: `None`.
async fn on_store<T: Send + 'static>(
    d: &Dashboard,
    f: impl FnOnce(&dyn CheckpointStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<Option<T>, ApiError> {
    let Some(store) = d.app.hooks().checkpoints.clone() else { return Ok(None) };
    let result = tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| ApiError::Internal(format!("dashboard store task failed: {e}")))?;
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            if matches!(e, StoreError::Unavailable(_) | StoreError::Internal(_)) {
                d.app.metrics().store_error();
            }
            Err(ApiError::Store(e))
        }
    }
}

/// `?points=`: how many generations an answer may show.
fn points_query(value: Option<String>) -> Result<usize, ApiError> {
    count_query("points", value, DEFAULT_POINTS, 2, MAX_POINTS)
}

/// A count query parameter `name`: `default` when absent, else a whole
/// number from `lo` to `hi`.
fn count_query(name: &str, value: Option<String>, default: usize, lo: usize, hi: usize) -> Result<usize, ApiError> {
    match value {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (lo..=hi).contains(&n) => Ok(n),
            _ => Err(ApiError::Invalid(format!("{name} {v:?} is not a whole number from {lo} to {hi}"))),
        },
    }
}

/// Indices into `n` items (oldest first) to show about `max` of: every
/// `stride`-th, the newest, and every one `keep` says. The stride is a power
/// of two, so as history grows the picks stay a subset of earlier ones and
/// their cached incumbents keep serving.
fn pick(n: usize, max: usize, keep: impl Fn(usize) -> bool) -> (usize, Vec<usize>) {
    let mut stride = 1;
    while n.div_ceil(stride) > max {
        stride *= 2;
    }
    let picked = (0..n).filter(|&i| i % stride == 0 || i + 1 == n || keep(i)).collect();
    (stride, picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_every_point_when_few() {
        let (stride, picked) = pick(5, 400, |_| false);
        assert_eq!(stride, 1);
        assert_eq!(picked, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn picks_a_power_of_two_stride_the_newest_and_the_marked() {
        let (stride, picked) = pick(5000, 400, |i| i == 777);
        assert_eq!(stride, 16);
        assert!(picked.len() <= 400 + 2, "{}", picked.len());
        assert!(picked.contains(&777) && picked.contains(&4999) && picked.contains(&0));
        // Growing history keeps the earlier picks (and their cached incumbents).
        let (_, later) = pick(5100, 400, |_| false);
        assert!(later.iter().filter(|&&i| i < 4999).all(|i| picked.contains(i)));
    }
}
