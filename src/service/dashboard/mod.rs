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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use parking_lot::Mutex;
use serde::Serialize;

use crate::agent::ModuleView;
use crate::space::{Context, ModuleSpace, Regime, Session};
use crate::store::{now_secs, HistoryPoint, LearningEvent, LearningEventKind};

use super::error::ApiError;
use super::extract::{PathParams, QueryPairs};
use super::store::{CheckpointStore, CheckpointSummary, StoreError};
use super::wire::{
    ab_test_json, context_json, ContextBody, DashboardEffectiveness, DashboardGrid, DashboardHistory,
    DashboardOverview, DashboardProgress, DashboardStore, DefaultsEstimate, EffectivenessRow, EventMark, GridCell,
    GridParameter, LivePoint, ModuleOps, PosteriorWidth, RewardPoint,
};
use super::AppState;

mod moves;
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
        .route("/v1/dashboard/overview", get(overview))
        .route("/v1/dashboard/modules/{module}/grid", get(grid))
        .route("/v1/dashboard/modules/{module}/history", get(history))
        .route("/v1/dashboard/modules/{module}/progress", get(progress))
        .route("/v1/dashboard/modules/{module}/effectiveness", get(effectiveness))
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

/// `GET /v1/dashboard/overview`.
async fn overview(State(d): State<Dashboard>, query: QueryPairs) -> Result<Response, ApiError> {
    query.take([])?;
    let agent = d.app.agent();
    let store = d.app.hooks().checkpoints.as_deref();
    let mut modules = Vec::new();
    for space in agent.modules() {
        let view = agent.view(&space.name)?;
        let counters = agent.counters(&space.name)?;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        modules.push(ModuleOps {
            module: space.name.clone(),
            generation: view.generation,
            outcomes: view.outcomes,
            decisions: load(&counters.decisions),
            pending: agent.pending_count(&space.name)?,
            expired: load(&counters.expired),
            refused_full: load(&counters.refused_full),
            rejected_outcomes: load(&counters.rejected_outcomes),
            checkpoint_age_secs: store.and_then(|s| s.checkpoint_age_secs(&space.name)),
            safety: agent.budget(&space.name)?,
        });
    }
    json(&DashboardOverview {
        server_time: now_secs(),
        store: DashboardStore {
            kind: store.map_or("none", |s| s.kind()),
            healthy: store.is_some_and(|s| s.healthy()),
            errors: d.app.metrics().store_errors(),
        },
        modules,
    })
}

/// `GET /v1/dashboard/modules/{module}/grid`.
async fn grid(
    State(d): State<Dashboard>,
    PathParams(module): PathParams<String>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    query.take([])?;
    let agent = d.app.agent();
    let space = agent.space(&module)?.clone();
    let view = agent.view(&module)?;
    let parameters = space
        .params
        .iter()
        .enumerate()
        .map(|(p, param)| GridParameter {
            name: param.full_name.clone(),
            group: param.group.clone(),
            default: param.default,
            lo: param.lo,
            hi: param.hi,
            cells: Context::all()
                .map(|ctx| {
                    let incumbent = view.cells[ctx.index()].params[p].incumbent;
                    GridCell {
                        session: ctx.session.as_str(),
                        regime: ctx.regime.as_str(),
                        incumbent,
                        moved: moved(incumbent, param.default, param.lo, param.hi),
                    }
                })
                .collect(),
        })
        .collect();
    json(&DashboardGrid {
        module: space.name.clone(),
        generation: view.generation,
        outcomes: view.outcomes,
        sessions: Session::ALL.iter().map(|s| s.as_str()).collect(),
        regimes: Regime::ALL.iter().map(|r| r.as_str()).collect(),
        parameters,
    })
}

fn moved(value: f64, default: f64, lo: f64, hi: f64) -> f64 {
    if hi > lo {
        (value - default) / (hi - lo)
    } else {
        0.0
    }
}

/// `GET /v1/dashboard/modules/{module}/history?parameter=…&session=…&regime=…[&points=…]`.
async fn history(
    State(d): State<Dashboard>,
    PathParams(module): PathParams<String>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let agent = d.app.agent();
    let space = agent.space(&module)?.clone();
    let [parameter, session, regime, points] = query.take(["parameter", "session", "regime", "points"])?;
    let parameter = parameter.ok_or_else(|| ApiError::Invalid("query parameter parameter is missing".into()))?;
    let p = space.param_index(&parameter).ok_or_else(|| {
        ApiError::Invalid(format!("unknown parameter {parameter:?} of module {module:?}; GET /v1/modules lists them"))
    })?;
    let context = ContextBody { session, regime }.resolve("")?;
    let max_points = points_query(points)?;
    let view = agent.view(&module)?;
    let live = LivePoint {
        generation: view.generation,
        outcomes: view.outcomes,
        incumbent: view.cells[context.index()].params[p].incumbent,
    };
    let param = &space.params[p];
    let (default, lo, hi) = (param.default, param.lo, param.hi);

    let (cache, live_generation, space2) = (d.cache.clone(), view.generation, space.clone());
    let read = on_store(&d, move |store| {
        let metas = generations(&cache, store, &space2.name, live_generation)?;
        let events = events(&cache, store, &space2, live_generation)?;
        let kinds = kinds_by_generation(&events);
        let (stride, picked) = pick(metas.len(), max_points, |i| is_marked(&kinds, metas[i].generation));
        let wanted: Vec<u64> = picked.iter().map(|&i| metas[i].generation).collect();
        let incumbents = incumbents(&cache, store, &space2, &wanted)?;
        let points = picked
            .iter()
            .filter_map(|&i| {
                let m = &metas[i];
                let values = incumbents.get(&m.generation)?;
                Some(HistoryPoint {
                    generation: m.generation,
                    kind: kinds.get(&m.generation).cloned().unwrap_or_else(|| "checkpoint".into()),
                    created_at: m.created_at,
                    outcomes: m.outcomes,
                    incumbent: values[context.index()][p],
                })
            })
            .collect::<Vec<_>>();
        let shown: std::collections::HashSet<u64> = wanted.iter().copied().collect();
        let marks = events
            .iter()
            .filter(|e| e.kind != "checkpoint" || e.generation.is_some_and(|g| shown.contains(&g)))
            .cloned()
            .collect();
        Ok((metas.len(), stride, points, marks))
    })
    .await?;
    let (generations, stride, points, events) = read.unwrap_or((0, 1, Vec::new(), Vec::new()));
    tracing::debug!(module, parameter, %context, generations, shown = points.len(), "dashboard history");
    json(&DashboardHistory {
        module: space.name.clone(),
        parameter: param.full_name.clone(),
        context: context_json(context),
        default,
        lo,
        hi,
        generations,
        stride,
        points,
        events,
        live,
    })
}

/// `GET /v1/dashboard/modules/{module}/progress[?points=…]`.
async fn progress(
    State(d): State<Dashboard>,
    PathParams(module): PathParams<String>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let agent = d.app.agent();
    let space = agent.space(&module)?.clone();
    let [points] = query.take(["points"])?;
    let max_points = points_query(points)?;
    let view = agent.view(&module)?;
    let posterior = space
        .params
        .iter()
        .enumerate()
        .map(|(p, param)| {
            // A 95% interval of a posterior mean is 2 × 1.96 standard deviations wide.
            let widths: Vec<f64> =
                view.cells.iter().flat_map(|c| c.params[p].sds.iter().map(|sd| 2.0 * 1.96 * sd)).collect();
            let mean_width = if widths.is_empty() { 0.0 } else { widths.iter().sum::<f64>() / widths.len() as f64 };
            PosteriorWidth {
                parameter: param.full_name.clone(),
                mean_width,
                max_width: widths.iter().copied().fold(0.0, f64::max),
            }
        })
        .collect();

    let (cache, live_generation, space2) = (d.cache.clone(), view.generation, space.clone());
    let read = on_store(&d, move |store| {
        let metas = generations(&cache, store, &space2.name, live_generation)?;
        let events = events(&cache, store, &space2, live_generation)?;
        let kinds = kinds_by_generation(&events);
        let (stride, picked) = pick(metas.len(), max_points, |i| is_marked(&kinds, metas[i].generation));
        Ok((metas.len(), stride, reward_points(&metas, &picked, &kinds)))
    })
    .await?;
    let (generations, stride, reward) = read.unwrap_or((0, 1, Vec::new()));
    let estimate = d.app.hooks().checkpoints.as_deref().and_then(|s| s.defaults_estimate(&space.name));
    json(&DashboardProgress {
        module: space.name.clone(),
        generation: view.generation,
        outcomes: view.outcomes,
        generations,
        stride,
        reward,
        defaults_estimate: estimate.map(|e| e.value),
        defaults_estimate_detail: estimate.map(|e| DefaultsEstimate {
            estimator: "doubly_robust",
            value: e.value,
            ci_low: e.ci_low,
            ci_high: e.ci_high,
            decisions: e.n,
            effective_n: e.effective_n,
        }),
        ab_test: ab_status(&view, d.app.hooks().checkpoints.as_deref(), &space.name),
        posterior,
    })
}

/// The running A/B test, or how the last one ended, with a one-line `status`
/// for the page; `None` when the module never had one.
fn ab_status(view: &ModuleView, store: Option<&dyn CheckpointStore>, module: &str) -> Option<serde_json::Value> {
    if let Some(t) = view.ab.as_deref() {
        let (a, b) = (&t.champion_rewards, &t.challenger_rewards);
        let next = t.settings.looks().get(t.looks_done).copied();
        let status = format!(
            "running: challenger {} on {:.0}% of decisions; live policy {:.5} over {} outcomes, challenger {:.5} over {}{}",
            t.challenger,
            100.0 * t.settings.split,
            a.mean,
            a.n,
            b.mean,
            b.n,
            next.map(|n| format!("; next look at {n} outcomes per arm")).unwrap_or_default()
        );
        let mut v = ab_test_json(t);
        v["status"] = status.into();
        return Some(v);
    }
    let mut last = store?.last_ab_result(module)?;
    let outcome = last["outcome"].as_str().unwrap_or("ended").to_string();
    let challenger = last["challenger"].as_str().unwrap_or("?").to_string();
    last["status"] = format!("No A/B test running; the last one ({challenger}) ended {outcome}").into();
    Some(last)
}

/// The mean reward so far at each picked generation, and over each window
/// between consecutive picks (from the cumulative sums the checkpoints keep).
fn reward_points(metas: &[CheckpointSummary], picked: &[usize], kinds: &HashMap<u64, String>) -> Vec<RewardPoint> {
    let sum = |m: &CheckpointSummary| m.mean_reward.unwrap_or(0.0) * m.outcomes as f64;
    let mut out: Vec<RewardPoint> = Vec::with_capacity(picked.len());
    let mut previous: Option<&CheckpointSummary> = None;
    for &i in picked {
        let m = &metas[i];
        let kind = kinds.get(&m.generation).cloned().unwrap_or_else(|| "checkpoint".into());
        let window_reward = match previous {
            // A rollback or promotion replaces what was learned: no window spans it.
            Some(a) if kind == "checkpoint" && m.outcomes > a.outcomes => {
                Some((sum(m) - sum(a)) / (m.outcomes - a.outcomes) as f64)
            }
            Some(_) => None,
            None if m.outcomes > 0 && kind == "checkpoint" => m.mean_reward,
            None => None,
        };
        out.push(RewardPoint {
            generation: m.generation,
            kind,
            created_at: m.created_at,
            outcomes: m.outcomes,
            mean_reward: m.mean_reward,
            window_reward,
        });
        previous = Some(m);
    }
    out
}

/// `GET /v1/dashboard/modules/{module}/effectiveness`.
async fn effectiveness(
    State(d): State<Dashboard>,
    PathParams(module): PathParams<String>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    query.take([])?;
    let space = d.app.agent().space(&module)?.clone();
    let name = space.name.clone();
    let rows = on_store(&d, move |store| store.effectiveness(&name)).await?.unwrap_or_default();
    let rows = rows
        .into_iter()
        .map(|r| {
            let (success_lo95, success_hi95) = wilson(r.success_rate, r.sample_size);
            EffectivenessRow {
                parameter: r.parameter_type,
                value: r.parameter_value,
                session: r.session.map(Session::as_str),
                regime: r.regime.map(Regime::as_str),
                success_rate: r.success_rate,
                success_lo95,
                success_hi95,
                avg_return: r.avg_return,
                sample_size: r.sample_size,
                last_updated: r.last_updated,
            }
        })
        .collect();
    json(&DashboardEffectiveness { module: space.name.clone(), rows })
}

/// The Wilson score 95% interval of a rate observed over `n` trials: unlike
/// the normal approximation it stays inside [0, 1] and is sane for small `n`.
fn wilson(rate: f64, n: u64) -> (f64, f64) {
    if n == 0 || !rate.is_finite() {
        return (0.0, 1.0);
    }
    let (p, n, z) = (rate.clamp(0.0, 1.0), n as f64, 1.96f64);
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
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

fn kinds_by_generation(events: &[EventMark]) -> HashMap<u64, String> {
    // A generation's own event says how it was made; later ones do not name it.
    events.iter().filter_map(|e| Some((e.generation?, e.kind.clone()))).collect()
}

fn is_marked(kinds: &HashMap<u64, String>, generation: u64) -> bool {
    kinds.get(&generation).is_some_and(|k| k != "checkpoint")
}

/// The module's generations, oldest first; listed again only when the live generation moved.
fn generations(
    cache: &Cache,
    store: &dyn CheckpointStore,
    module: &str,
    live: u64,
) -> Result<Arc<Vec<CheckpointSummary>>, StoreError> {
    if let Some((key, list)) = cache.lock().get(module).and_then(|c| c.generations.clone()) {
        if key == live {
            return Ok(list);
        }
    }
    // Every generation (retention bounds how many there are); the chart
    // downsamples them.
    let mut list = store.list(module, None, usize::MAX)?;
    list.reverse();
    let list = Arc::new(list);
    cache.lock().entry(module.to_string()).or_default().generations = Some((live, list.clone()));
    Ok(list)
}

/// The module's learning events, oldest first. Rows newer than the cached
/// ones are fetched when the live generation moved, or while the newest
/// generation's row is missing (the runtime writes it just after the
/// generation). Incumbents the rows carry go into the cache on the way.
fn events(
    cache: &Cache,
    store: &dyn CheckpointStore,
    space: &ModuleSpace,
    live: u64,
) -> Result<Arc<Vec<EventMark>>, StoreError> {
    let module = space.name.as_str();
    let cached = cache.lock().get(module).and_then(|c| c.events.clone());
    let newest = cached.as_ref().and_then(|(_, e)| e.iter().filter_map(|e| e.generation).max());
    if let Some((key, events)) = &cached {
        // Generation 0 is the seed defaults: no event can name it.
        if *key == live && (live == 0 || newest.is_some_and(|g| g >= live)) {
            return Ok(events.clone());
        }
    }
    let limit = match (&cached, newest) {
        (Some(_), Some(g)) => (live.saturating_sub(g) as usize + 16).min(FIRST_EVENTS),
        _ => FIRST_EVENTS,
    };
    let mut fresh = store.learning_events(module, limit)?;
    fresh.reverse();
    let mut merged: Vec<EventMark> = cached.map(|(_, e)| e.as_ref().clone()).unwrap_or_default();
    let seen: std::collections::HashSet<(Option<u64>, u64)> =
        merged.iter().map(|e| (e.generation, e.created_at.to_bits())).collect();
    let mut carried = Vec::new();
    let mut new_moves = Vec::new();
    for e in &fresh {
        if seen.contains(&(e.generation, e.created_at.to_bits())) {
            continue;
        }
        new_moves.extend(moves::move_of(module, e));
        if let (Some(g), Some(values)) = (e.generation, incumbents_of_event(e, space)) {
            carried.push((g, Arc::new(values)));
        }
        merged.push(EventMark {
            generation: e.generation,
            kind: kind_name(&e.learning_event),
            created_at: e.created_at,
        });
    }
    merged.sort_by(|a, b| a.created_at.total_cmp(&b.created_at));
    let merged = Arc::new(merged);
    let mut guard = cache.lock();
    let entry = guard.entry(module.to_string()).or_default();
    entry.events = Some((live, merged.clone()));
    entry.moves.extend(new_moves);
    entry.moves.sort_by(|a, b| a.created_at.total_cmp(&b.created_at));
    let extra = entry.moves.len().saturating_sub(moves::MAX_MOVES);
    entry.moves.drain(..extra);
    for (g, values) in carried {
        entry.incumbents.insert(g, values);
    }
    Ok(merged)
}

fn kind_name(kind: &LearningEventKind) -> String {
    match kind {
        LearningEventKind::Checkpoint => "checkpoint".into(),
        LearningEventKind::Rollback => "rollback".into(),
        LearningEventKind::Promotion => "promotion".into(),
        LearningEventKind::TradeOutcomeProcessed => "trade_outcome_processed".into(),
        LearningEventKind::Other(name) => name.clone(),
    }
}

/// `parameters_after` of an event, `{"session/regime": {"group.name": value}}`,
/// as `[context][parameter]`; `None` unless it names every value.
fn incumbents_of_event(event: &LearningEvent, space: &ModuleSpace) -> Option<Vec<Vec<f64>>> {
    let by_context: BTreeMap<String, BTreeMap<String, f64>> =
        serde_json::from_value(event.parameters_after.clone()).ok()?;
    Context::all()
        .map(|ctx| {
            let values = by_context.get(&ctx.to_string())?;
            space.params.iter().map(|p| values.get(&p.full_name).copied()).collect()
        })
        .collect()
}

/// Incumbents of each generation in `wanted`: from the cache, else from the
/// stored checkpoint (then cached; a stored generation never changes).
fn incumbents(
    cache: &Cache,
    store: &dyn CheckpointStore,
    space: &ModuleSpace,
    wanted: &[u64],
) -> Result<HashMap<u64, Incumbents>, StoreError> {
    let module = space.name.as_str();
    let mut out = HashMap::with_capacity(wanted.len());
    let mut missing = Vec::new();
    {
        let guard = cache.lock();
        let cached = guard.get(module);
        for &g in wanted {
            match cached.and_then(|c| c.incumbents.get(&g)) {
                Some(v) => {
                    out.insert(g, v.clone());
                }
                None => missing.push(g),
            }
        }
    }
    if missing.is_empty() {
        return Ok(out);
    }
    let mut loaded = Vec::with_capacity(missing.len());
    for g in missing {
        let checkpoint = match store.get(module, g) {
            Ok(c) => c,
            // Listed but gone is a store fault elsewhere; the chart skips the point.
            Err(StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        match incumbents_of_checkpoint(&checkpoint, space) {
            Some(values) => loaded.push((g, Arc::new(values))),
            None => tracing::warn!(module, generation = g, "checkpoint does not name this module's parameters"),
        }
    }
    tracing::debug!(module, loaded = loaded.len(), "dashboard read checkpoints");
    let mut guard = cache.lock();
    if guard.values().map(|c| c.incumbents.len()).sum::<usize>() + loaded.len() > MAX_CACHED_GENERATIONS {
        guard.values_mut().for_each(|c| c.incumbents.clear());
    }
    let entry = guard.entry(module.to_string()).or_default();
    for (g, values) in loaded {
        entry.incumbents.insert(g, values.clone());
        out.insert(g, values);
    }
    Ok(out)
}

/// A checkpoint's `incumbents` in the module's parameter order, matched by
/// name (a checkpoint carries its own `parameter_names`).
fn incumbents_of_checkpoint(checkpoint: &serde_json::Value, space: &ModuleSpace) -> Option<Vec<Vec<f64>>> {
    let names: Vec<&str> =
        checkpoint.get("parameter_names")?.as_array()?.iter().map(|v| v.as_str()).collect::<Option<_>>()?;
    let columns: Vec<usize> =
        space.params.iter().map(|p| names.iter().position(|n| *n == p.full_name)).collect::<Option<_>>()?;
    let rows = checkpoint.get("incumbents")?.as_array()?;
    if rows.len() != Context::COUNT {
        return None;
    }
    rows.iter()
        .map(|row| {
            let row = row.as_array()?;
            columns.iter().map(|&c| row.get(c)?.as_f64()).collect::<Option<Vec<f64>>>()
        })
        .collect()
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

    #[test]
    fn wilson_interval_holds_the_rate_and_stays_in_the_unit_interval() {
        let (lo, hi) = wilson(0.6, 50);
        assert!(lo < 0.6 && 0.6 < hi && lo > 0.4 && hi < 0.8, "{lo} {hi}");
        assert_eq!(wilson(0.0, 0), (0.0, 1.0));
        let (lo, hi) = wilson(1.0, 3);
        assert!(lo > 0.3 && hi == 1.0, "{lo} {hi}");
    }

    #[test]
    fn window_reward_comes_from_cumulative_sums_and_never_spans_a_rollback() {
        let m = |generation, outcomes, mean: f64| CheckpointSummary {
            module: "crypto".into(),
            generation,
            parent: None,
            created_at: generation as f64,
            outcomes,
            mean_reward: (outcomes > 0).then_some(mean),
        };
        let metas = vec![m(1, 100, 0.1), m(2, 300, 0.2), m(3, 0, 0.0), m(4, 100, 0.5)];
        let kinds = HashMap::from([(3, "rollback".to_string())]);
        let points = reward_points(&metas, &[0, 1, 2, 3], &kinds);
        let windows: Vec<Option<f64>> = points.iter().map(|p| p.window_reward).collect();
        assert_eq!(windows[0], Some(0.1));
        assert!((windows[1].unwrap() - 0.25).abs() < 1e-12, "{windows:?}");
        assert_eq!(windows[2], None);
        assert!((windows[3].unwrap() - 0.5).abs() < 1e-12, "{windows:?}");
        assert_eq!(points[2].kind, "rollback");
    }
}
