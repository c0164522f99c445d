//! The seams where persistence plugs into the service: checkpoints and outcomes.
//!
//! The storage layer is built separately; the service only depends on these
//! two traits. [`CheckpointStore`] backs the `/v1/checkpoints*` and
//! `/v1/rollback` routes and the final checkpoint at shutdown; while the
//! service has none, those routes answer 503 after validating their input, so
//! a client already sees the contract's request checks. [`OutcomeSink`]
//! receives every accepted outcome with its decision and validated trade, so
//! the store can keep the trades collection; the default [`LogSink`] only logs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agent::{Decision, Outcome};
use crate::ope::Estimate;
use crate::rollout::AbSettings;
use crate::runtime::Challenger;
use crate::store::TradeRecord;
use crate::store::{LearningEvent, ParameterEffectiveness};

/// Why a store call failed. The message is what the caller sees, so variants
/// meant for callers must name the bad value; [`StoreError::Internal`] is logged only.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// No such checkpoint, e.g. an unknown generation. Answered 404.
    #[error("{0}")]
    NotFound(String),
    /// The request is well-formed but the store cannot honour it. Answered 422.
    #[error("{0}")]
    Invalid(String),
    /// No store is configured, or it is down. Answered 503.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Conflict(String),
    /// Anything else; logged with its details, answered 500 without them.
    #[error("store failure: {0}")]
    Internal(String),
}

impl StoreError {
    pub fn status(&self) -> StatusCode {
        match self {
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            StoreError::Conflict(_) => StatusCode::CONFLICT,
            StoreError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub(crate) fn public_message(&self) -> String {
        match self {
            StoreError::Internal(_) => "store failure; the server log has the details".to_string(),
            other => other.to_string(),
        }
    }
}

/// One line of `GET /v1/checkpoints?module=…`, and the answer of
/// `POST /v1/checkpoints/{module}` and `POST /v1/rollback`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CheckpointSummary {
    pub module: String,
    pub generation: u64,
    /// The generation this one was made from; `None` for the first.
    pub parent: Option<u64>,
    /// Seconds since the Unix epoch.
    pub created_at: f64,
    /// Outcomes learned from, in total, when the checkpoint was taken.
    pub outcomes: u64,
    /// Mean reward of those outcomes; `None` before the first.
    pub mean_reward: Option<f64>,
}

/// Where `POST /v1/rollback` goes: a generation, or the seed defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RollbackTarget {
    Generation(u64),
    #[serde(serialize_with = "ser_defaults")]
    Defaults,
}

fn ser_defaults<S: serde::Serializer>(s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("defaults")
}

/// Records the decision log wrote, by kind, and entries it dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogCounts {
    pub decisions: u64,
    pub settlements: u64,
    pub trades: u64,
    pub dropped: u64,
}

/// Checkpoints of learned state. Implemented by the storage layer.
///
/// Methods are blocking (files, network): the service calls them on tokio's
/// blocking pool, never on a request worker, so a slow store cannot delay
/// decisions. Module names reaching these methods are already validated.
pub trait CheckpointStore: Send + Sync + 'static {
    /// `"local"` or `"firestore"`, as `/healthz` reports it.
    fn kind(&self) -> &'static str;
    /// Whether the store answered its last operation; `/healthz` reports it.
    fn healthy(&self) -> bool;
    /// At most `limit` generations of `module` older than `before` (all
    /// when `None`), newest first.
    fn list(&self, module: &str, before: Option<u64>, limit: usize) -> Result<Vec<CheckpointSummary>, StoreError>;
    /// One whole checkpoint in readable JSON; [`StoreError::NotFound`] for an unknown generation.
    fn get(&self, module: &str, generation: u64) -> Result<serde_json::Value, StoreError>;
    /// Checkpoints `module` now.
    fn create(&self, module: &str) -> Result<CheckpointSummary, StoreError>;
    /// Makes a new generation equal to `to` and serves it; history is never deleted.
    fn rollback(&self, module: &str, to: RollbackTarget) -> Result<CheckpointSummary, StoreError>;
    /// Seconds since `module`'s newest checkpoint, for `/metrics`.
    fn checkpoint_age_secs(&self, module: &str) -> Option<f64>;
    /// Store operations that failed outside any request (background
    /// checkpoints, trade writes), for `paramopt_store_errors_total`.
    fn background_errors(&self) -> u64 {
        0
    }
    /// What the decision log has written and dropped, for `/metrics`.
    fn log_counts(&self) -> LogCounts {
        LogCounts::default()
    }
    /// Called once at graceful shutdown, after in-flight requests finished and
    /// the agent learned every accepted outcome: the place for the final checkpoint.
    fn on_shutdown(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// The newest `limit` rows of `ml_learning_events` for `module`, newest
    /// first; read by the dashboard. A store that keeps none answers empty.
    fn learning_events(&self, module: &str, limit: usize) -> Result<Vec<LearningEvent>, StoreError> {
        let _ = (module, limit);
        Ok(Vec::new())
    }
    /// Every `parameter_effectiveness` row of `module`; read by the dashboard.
    /// A store that keeps none answers empty.
    fn effectiveness(&self, module: &str) -> Result<Vec<ParameterEffectiveness>, StoreError> {
        let _ = module;
        Ok(Vec::new())
    }
    /// The seed defaults' mean reward estimated off-policy from the decision
    /// log, if there is one yet; read by the dashboard.
    fn defaults_estimate(&self, module: &str) -> Option<Estimate> {
        let _ = module;
        None
    }
    /// Starts an A/B test; answers its state as JSON.
    fn start_ab(&self, module: &str, challenger: Challenger, settings: AbSettings) -> Result<Value, StoreError> {
        let _ = (module, challenger, settings);
        Err(StoreError::Unavailable("A/B tests need a checkpoint store: this server runs without one".into()))
    }
    /// Stops the running A/B test without a verdict; answers how it ended.
    fn stop_ab(&self, module: &str) -> Result<Value, StoreError> {
        let _ = module;
        Err(StoreError::Unavailable("A/B tests need a checkpoint store: this server runs without one".into()))
    }
    /// How the module's last A/B test ended, if one has.
    fn last_ab_result(&self, module: &str) -> Option<Value> {
        let _ = module;
        None
    }
    /// Why background tasks died, if any did: `/healthz` answers 503 with them.
    fn failures(&self) -> Vec<String> {
        Vec::new()
    }
    /// A/B promotions and automatic rollbacks so far, and the last rollback's reason.
    fn rollout_counts(&self, module: &str) -> (u64, u64, Option<String>) {
        let _ = module;
        (0, 0, None)
    }
}

/// An accepted outcome, as the store's trades collection will keep it.
#[derive(Debug, Clone, Serialize)]
pub struct OutcomeRecord {
    /// The decision, with its parameters, arms, propensities and context.
    pub decision: Arc<Decision>,
    pub outcome: Outcome,
    /// The reward learned from, after derivation and clipping.
    pub reward: f64,
    /// The trade as sent, with `entry_parameters` and `market_context` filled
    /// in from the decision by the server.
    #[serde(serialize_with = "flat_trade")]
    pub trade: Option<TradeRecord>,
    /// Seconds since the Unix epoch when the server accepted it.
    pub received_at: f64,
}

/// A trade as one flat object, the module's own fields beside the plan's.
fn flat_trade<S: serde::Serializer>(trade: &Option<TradeRecord>, s: S) -> Result<S::Ok, S::Error> {
    trade.as_ref().map(TradeRecord::flat).serialize(s)
}

pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>>;

/// Receives every outcome the agent accepted, before the client hears
/// `{"accepted": true}`; API.md promises the outcome is durable from then on.
///
/// It runs on a request worker, so an implementation must not block: await a
/// channel or a blocking-pool task instead. An error answers the client 503
/// and counts in `paramopt_store_errors_total`; the agent has already learned
/// from the outcome by then, so a retry answers 409.
pub trait OutcomeSink: Send + Sync + 'static {
    fn record(&self, record: OutcomeRecord) -> SinkFuture<'_>;
    /// Every decision served, for the decision log; must only queue.
    /// `ignored_features` are the request's features that the module does not declare.
    fn decided(&self, _decision: &Arc<Decision>, _ignored_features: &[(String, f64)]) {}
    /// Called once at graceful shutdown, after the last `record`.
    fn on_shutdown(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The sink until a store exists: logs each outcome at debug level and keeps nothing.
#[derive(Debug, Default)]
pub struct LogSink;

impl OutcomeSink for LogSink {
    fn record(&self, record: OutcomeRecord) -> SinkFuture<'_> {
        tracing::debug!(
            decision_id = %record.decision.id,
            module = %record.decision.module,
            reward = record.reward,
            traded = record.outcome.traded,
            has_trade = record.trade.is_some(),
            "outcome accepted (no store: not persisted)"
        );
        Box::pin(std::future::ready(Ok(())))
    }
}
