//! The handlers of API.md. Each validates everything it can before calling the
//! agent or a store, so a refused request leaves no trace in learned state.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::agent::{Attachment, Evidence, Outcome};
use crate::store::trade::{StoredTrade, TradeError, TradeRecord};

use super::error::ApiError;
use super::extract::{JsonBody, PathParams, QueryPairs};
use super::store::{CheckpointStore, OutcomeRecord, StoreError};
use super::wire::{
    ab_test_json, context_json, AbTestRequest, AbTestStarted, AbTestStatus, AbTestStopped, CheckpointList, ContextBody,
    DecisionRequest, DecisionResponse, Health, NamedValues, OutcomeRequest, OutcomeResponse, ParametersResponse,
    RollbackRequest, RollbackResponse,
};
use super::AppState;

/// Serialises `value` as the 200 answer.
fn json<T: Serialize>(value: &T) -> Result<Response, ApiError> {
    let body = serde_json::to_vec(value).map_err(|e| ApiError::Internal(format!("serialising the answer: {e}")))?;
    Ok(json_bytes(body))
}

/// [`json`] through a `serde_json::Value`, whose keys are sorted: the answers
/// that were built as `Value`s keep the order they always had.
fn json_sorted<T: Serialize>(value: &T) -> Result<Response, ApiError> {
    let value = serde_json::to_value(value).map_err(|e| ApiError::Internal(format!("serialising the answer: {e}")))?;
    json(&value)
}

fn json_bytes(body: impl Into<axum::body::Body>) -> Response {
    let mut response = (StatusCode::OK, body.into()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `POST /v1/decisions`.
pub async fn decide(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<DecisionRequest>,
) -> Result<Response, ApiError> {
    let agent = state.agent();
    // The module first: the other checks depend on its declared features.
    let space = agent.space(&req.module)?.clone();
    let context = req
        .context
        .as_ref()
        .ok_or_else(|| ApiError::Invalid("context is missing; expected {\"session\": …, \"regime\": …}".into()))?
        .resolve("context.")?;
    let (features, ignored_features) = req.split_features(&space)?;
    let decided = agent.decide_recorded(
        &req.module,
        context,
        &features,
        req.strategy.as_deref(),
        req.explore.unwrap_or(true),
        ignored_features.clone(),
    )?;
    // Answered only once the journal holds it, so a restart still knows every
    // decision handed out; concurrent decisions share one fdatasync.
    agent.durable(decided.seq).await?;
    let decision = decided.decision;
    if !ignored_features.is_empty() {
        state.metrics().undeclared.count(&space.name, &ignored_features);
    }
    state.hooks().outcomes.decided(&decision, &ignored_features);
    tracing::debug!(decision_id = %decision.id, module = %decision.module, %context, "decided");
    json(&DecisionResponse { decision: &decision, space: &space, ignored_features: &ignored_features })
}

/// `POST /v1/outcomes`.
pub async fn report(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<OutcomeRequest>,
) -> Result<Response, ApiError> {
    let OutcomeRequest { decision_id, reward, traded, trade, applied } = req;
    // Everything is read and checked before the agent sees the outcome, so a
    // refused trade leaves the decision pending and unlearned.
    let mut trade = trade.map(TradeRecord::from_fields).transpose().map_err(trade_error)?;
    if let Some(t) = &trade {
        t.check().map_err(trade_error)?;
    }
    let evidence = Evidence {
        strategy: trade.as_ref().and_then(|t| t.strategy.clone()),
        confidence: trade.as_ref().and_then(|t| t.confidence),
        path: trade.as_ref().map(TradeRecord::exit_path).unwrap_or_default(),
        applied: applied.unwrap_or_default(),
    };
    let outcome = Outcome {
        reward,
        traded: traded.unwrap_or(true),
        return_pct: trade.as_ref().and_then(|t| t.return_pct),
        evidence,
    };
    let agent = state.agent();
    // Awaits the journal's group commit without holding a worker thread, so
    // decisions keep flowing and concurrent reports share one fdatasync.
    // The trade as sent is journaled with the outcome: the decision log
    // stores it from there, so it is as durable as the acknowledgement.
    let attachment = match &trade {
        Some(t) => Some(Attachment(
            serde_json::value::to_raw_value(&StoredTrade(t.clone())).map_err(|e| ApiError::Internal(e.to_string()))?,
        )),
        None => None,
    };
    let settled = agent.accept_with(&decision_id, outcome, attachment)?.durable().await?;
    if let Some(t) = &mut trade {
        t.complete(agent.space(&settled.decision.module)?, &settled);
    }
    let record = OutcomeRecord {
        decision: settled.decision.clone(),
        outcome: settled.outcome,
        reward: settled.reward,
        trade,
        received_at: unix_now(),
    };
    if let Err(e) = state.hooks().outcomes.record(record).await {
        state.metrics().store_error();
        tracing::warn!(%decision_id, error = %e, "outcome learned but the sink refused it");
        return Err(e.into());
    }
    json(&OutcomeResponse { accepted: true, decision_id, reward: settled.reward })
}

/// A trade the service cannot take is a bad value (422): a non-finite number
/// as anywhere else in a body, and the limits, since the body itself was
/// within the size limit.
fn trade_error(e: TradeError) -> ApiError {
    ApiError::Invalid(e.to_string())
}

/// `GET /v1/parameters/{module}?session=…&regime=…`: the greedy values.
pub async fn parameters(
    State(state): State<AppState>,
    PathParams(module): PathParams<String>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let agent = state.agent();
    let space = agent.space(&module)?.clone();
    let [session, regime] = query.take(["session", "regime"])?;
    let context = ContextBody { session, regime }.resolve("")?;
    let (values, generation) = agent.greedy(&module, context)?;
    json(&ParametersResponse {
        module: &space.name,
        context: context_json(context),
        parameters: NamedValues { space: &space, values: &values },
        policy_generation: generation,
    })
}

/// `GET /v1/modules`.
pub async fn modules(State(state): State<AppState>) -> Response {
    json_bytes(state.inner.modules_json.clone())
}

/// The store, or the 503 that says there is none yet.
fn store(state: &AppState) -> Result<Arc<dyn CheckpointStore>, ApiError> {
    state.hooks().checkpoints.clone().ok_or_else(|| {
        ApiError::Store(StoreError::Unavailable(
            "checkpoints are not available: this server runs without a checkpoint store".into(),
        ))
    })
}

/// Runs a blocking store call off the request workers, counting failures.
async fn on_store<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&dyn CheckpointStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = store(state)?;
    let result = tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| ApiError::Internal(format!("store task failed: {e}")))?;
    result.map_err(|e| {
        if matches!(e, StoreError::Unavailable(_) | StoreError::Internal(_)) {
            state.metrics().store_error();
        }
        ApiError::Store(e)
    })
}

/// `GET /v1/checkpoints?module=…`.
pub async fn list_checkpoints(State(state): State<AppState>, query: QueryPairs) -> Result<Response, ApiError> {
    let [module, limit, before] = query.take(["module", "limit", "before"])?;
    let module = module.ok_or_else(|| ApiError::Invalid("query parameter module is missing".into()))?;
    state.agent().space(&module)?;
    let limit = match limit {
        None => CHECKPOINT_PAGE,
        Some(text) => match text.parse::<usize>() {
            Ok(n @ 1..=MAX_CHECKPOINT_PAGE) => n,
            _ => {
                return Err(ApiError::Invalid(format!(
                    "limit {text:?} is not a number from 1 to {MAX_CHECKPOINT_PAGE}"
                )))
            }
        },
    };
    let before = before
        .map(|text| {
            text.parse::<u64>().map_err(|_| {
                ApiError::Invalid(format!("before {text:?} is not a generation number (a non-negative integer)"))
            })
        })
        .transpose()?;
    let m = module.clone();
    // One more than asked says whether there is a next page.
    let mut list = on_store(&state, move |s| s.list(&m, before, limit + 1)).await?;
    let next_before = (list.len() > limit).then(|| {
        list.truncate(limit);
        list.last().map(|c| c.generation)
    });
    json_sorted(&CheckpointList { module, checkpoints: list, next_before: next_before.flatten() })
}

/// Generations listed per page unless `limit` says otherwise, and at most.
const CHECKPOINT_PAGE: usize = 100;
const MAX_CHECKPOINT_PAGE: usize = 1000;

/// `GET /v1/checkpoints/{module}/{generation}`.
pub async fn get_checkpoint(
    State(state): State<AppState>,
    PathParams((module, generation)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    state.agent().space(&module)?;
    let generation: u64 = generation.parse().map_err(|_| {
        ApiError::Invalid(format!("generation {generation:?} is not a generation number (a non-negative integer)"))
    })?;
    let checkpoint = on_store(&state, move |s| s.get(&module, generation)).await?;
    json(&checkpoint)
}

/// `POST /v1/checkpoints/{module}`: checkpoint now. The body, if any, is ignored.
pub async fn create_checkpoint(
    State(state): State<AppState>,
    PathParams(module): PathParams<String>,
) -> Result<Response, ApiError> {
    state.agent().space(&module)?;
    let summary = on_store(&state, move |s| s.create(&module)).await?;
    tracing::info!(module = %summary.module, generation = summary.generation, "checkpoint created");
    json(&summary)
}

/// `POST /v1/rollback`. With an `Idempotency-Key` header, a retry of the
/// same key gets the first answer and makes no second generation.
pub async fn rollback(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    JsonBody(req): JsonBody<RollbackRequest>,
) -> Result<Response, ApiError> {
    state.agent().space(&req.module)?;
    let key = idempotency_key(&headers)?;
    let RollbackRequest { module, to } = req;
    let work = {
        let state = state.clone();
        async move {
            let answer = async {
                let summary = on_store(&state, move |s| s.rollback(&module, to)).await?;
                tracing::info!(module = %summary.module, generation = summary.generation, ?to, "rolled back");
                json_sorted(&RollbackResponse { rolled_back_to: to, checkpoint: summary })
            };
            let response = answer.await.unwrap_or_else(IntoResponse::into_response);
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap_or_default();
            (status, body)
        }
    };
    let (status, body) = match key {
        Some(key) => state.idempotency().once(format!("rollback:{key}"), work).await,
        None => work.await,
    };
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// The request's `Idempotency-Key`, if any: printable ASCII, at most 200 bytes.
fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value.to_str().ok().filter(|k| !k.is_empty() && k.len() <= super::idempotency::MAX_KEY_LEN);
    key.map(|k| Some(k.to_string())).ok_or_else(|| {
        ApiError::Invalid(format!(
            "Idempotency-Key must be 1 to {} printable ASCII characters",
            super::idempotency::MAX_KEY_LEN
        ))
    })
}

/// `POST /v1/ab-tests`: starts an A/B test.
pub async fn start_ab_test(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<AbTestRequest>,
) -> Result<Response, ApiError> {
    state.agent().space(&req.module)?;
    let settings = req.settings().map_err(|e| ApiError::Invalid(e.to_string()))?;
    let AbTestRequest { module, challenger, .. } = req;
    let test = on_store(&state, move |s| s.start_ab(&module, challenger, settings)).await?;
    json_sorted(&AbTestStarted { ab_test: test })
}

/// `GET /v1/ab-tests/{module}`: the running test, and how the last one ended.
pub async fn ab_test_status(
    State(state): State<AppState>,
    PathParams(module): PathParams<String>,
) -> Result<Response, ApiError> {
    let view = state.agent().view(&module)?;
    let last = state.hooks().checkpoints.as_ref().and_then(|s| s.last_ab_result(&module));
    json_sorted(&AbTestStatus { module, running: view.ab.as_deref().map(ab_test_json), last })
}

/// `DELETE /v1/ab-tests/{module}`: ends the running test without a verdict.
pub async fn stop_ab_test(
    State(state): State<AppState>,
    PathParams(module): PathParams<String>,
) -> Result<Response, ApiError> {
    state.agent().space(&module)?;
    let result = on_store(&state, move |s| s.stop_ab(&module)).await?;
    json_sorted(&AbTestStopped { stopped: result })
}

/// `GET /healthz`: 200 while every part works; 503 naming what died (a
/// background task, or the agent's writer, without which nothing is learned).
pub async fn healthz(State(state): State<AppState>) -> Result<Response, ApiError> {
    let (kind, healthy) = match &state.hooks().checkpoints {
        Some(s) => (s.kind(), s.healthy()),
        None => ("none", false),
    };
    let mut failures = state.hooks().checkpoints.as_ref().map(|s| s.failures()).unwrap_or_default();
    if !state.agent().writer_alive() {
        failures.push("the agent's writer thread stopped: outcomes are no longer learned".to_string());
    }
    if !failures.is_empty() {
        return Err(ApiError::Unavailable(format!("unhealthy: {}", failures.join("; "))));
    }
    // The safety state is a detail, not a failure: a module whose loss
    // budget is spent still serves (its incumbents) and learns.
    let mut safety = std::collections::BTreeMap::new();
    for space in state.agent().modules() {
        safety.insert(space.name.clone(), state.agent().budget(&space.name)?);
    }
    json_sorted(&Health { status: "ok", store: kind, store_healthy: healthy, safety })
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.metrics().render(state.agent(), state.hooks().checkpoints.as_deref());
    let mut response = (StatusCode::OK, text).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

/// `GET /v1/openapi.json`: the document of this contract (`super::openapi`).
pub async fn openapi() -> Response {
    json_bytes(super::openapi::json())
}

/// Anything the router does not know.
pub async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!("no route {} {}", req.method(), req.uri().path()))
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
