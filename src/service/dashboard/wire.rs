//! The JSON answers of the dashboard's read-only routes
//! (`docs/dashboard.md`), beside the handlers that build them. Like
//! `service::wire`'s, each derives `JsonSchema` for the OpenAPI document.
//!
//! Fields that other work will fill in (the defaults' off-policy estimate, A/B
//! tests, effectiveness rows) are already here, as null or empty, so the page
//! shows them as soon as they have values.

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

use crate::service::wire::{AbTestOut, ContextOut};

/// `GET /v1/dashboard/overview`: operations at a glance.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DashboardOverview {
    /// Seconds since the Unix epoch, by the server's clock: ages are relative to it.
    pub server_time: f64,
    pub store: DashboardStore,
    pub modules: Vec<ModuleOps>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DashboardStore {
    /// `local`, `firestore`, or `none` when the server runs without a store.
    pub kind: &'static str,
    pub healthy: bool,
    /// Store calls that failed since the server started.
    pub errors: u64,
}

/// One module's counters, as `/metrics` has them.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ModuleOps {
    pub module: String,
    pub generation: u64,
    pub outcomes: u64,
    pub decisions: u64,
    /// Decisions waiting for their outcome.
    pub pending: usize,
    pub expired: u64,
    /// Decisions refused (429) because the module's open decisions were full.
    pub refused_full: u64,
    pub rejected_outcomes: u64,
    /// Seconds since the newest stored checkpoint; null without a store.
    pub checkpoint_age_secs: Option<f64>,
    /// The loss budget (see `agent::budget`).
    pub safety: crate::agent::BudgetStatus,
}

/// `GET /v1/dashboard/modules/{module}/grid`: every incumbent in every context.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DashboardGrid {
    pub module: String,
    pub generation: u64,
    pub outcomes: u64,
    pub sessions: Vec<&'static str>,
    pub regimes: Vec<&'static str>,
    pub parameters: Vec<GridParameter>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct GridParameter {
    pub name: String,
    pub group: String,
    pub default: f64,
    pub lo: f64,
    pub hi: f64,
    /// One per context, session-major (the order of `sessions` × `regimes`).
    pub cells: Vec<GridCell>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct GridCell {
    pub session: &'static str,
    pub regime: &'static str,
    /// What `GET /v1/parameters` serves in this context.
    pub incumbent: f64,
    /// `(incumbent - default) / (hi - lo)`: how far it moved, as a signed fraction of the range.
    pub moved: f64,
}

/// `GET /v1/dashboard/modules/{module}/history`: one parameter's incumbent over generations.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DashboardHistory {
    pub module: String,
    pub parameter: String,
    pub context: ContextOut,
    pub default: f64,
    pub lo: f64,
    pub hi: f64,
    /// Stored generations in all; `points` holds every `stride`-th of them
    /// (oldest first), the newest, and every rollback and promotion.
    pub generations: usize,
    pub stride: usize,
    pub points: Vec<crate::store::HistoryPoint>,
    /// From `ml_learning_events`: every rollback and promotion, and the
    /// checkpoints among `points`; oldest first.
    pub events: Vec<EventMark>,
    /// The incumbent served now, which may be newer than the last generation.
    pub live: LivePoint,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EventMark {
    pub generation: Option<u64>,
    /// `checkpoint`, `rollback`, `promotion`, or any other event name.
    pub kind: String,
    pub created_at: f64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct LivePoint {
    pub generation: u64,
    pub outcomes: u64,
    pub incumbent: f64,
}

/// `GET /v1/dashboard/modules/{module}/progress`: is it learning?
#[derive(Debug, Serialize, JsonSchema)]
pub struct DashboardProgress {
    pub module: String,
    pub generation: u64,
    pub outcomes: u64,
    pub generations: usize,
    pub stride: usize,
    /// Per shown generation, oldest first.
    pub reward: Vec<RewardPoint>,
    /// The seed defaults' estimated mean reward (off-policy); null until an evaluator provides it.
    pub defaults_estimate: Option<f64>,
    /// That estimate with its 95% interval and how many decisions it is
    /// effectively worth (few when the agent rarely served the defaults).
    pub defaults_estimate_detail: Option<DefaultsEstimate>,
    /// The running A/B test; null when none runs.
    #[schemars(with = "Option<AbTestOut>")]
    pub ab_test: Option<Value>,
    /// Per parameter: widths of the 95% intervals of the arms' posterior means, now.
    pub posterior: Vec<PosteriorWidth>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DefaultsEstimate {
    pub estimator: &'static str,
    pub value: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub decisions: usize,
    pub effective_n: f64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RewardPoint {
    pub generation: u64,
    pub kind: String,
    pub created_at: f64,
    pub outcomes: u64,
    /// Mean reward of every outcome learned up to this generation; null before the first.
    pub mean_reward: Option<f64>,
    /// Mean reward of the outcomes learned since the previous point; null
    /// across a rollback or promotion, or when none were learned.
    pub window_reward: Option<f64>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PosteriorWidth {
    pub parameter: String,
    /// Mean and largest width over contexts and the arms the trust region reaches.
    pub mean_width: f64,
    pub max_width: f64,
}

/// `GET /v1/dashboard/modules/{module}/effectiveness`: rows of `parameter_effectiveness`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DashboardEffectiveness {
    pub module: String,
    /// Empty until something writes the collection.
    pub rows: Vec<EffectivenessRow>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct EffectivenessRow {
    pub parameter: String,
    pub value: f64,
    /// Null for a row over all sessions (or regimes).
    pub session: Option<&'static str>,
    pub regime: Option<&'static str>,
    pub success_rate: f64,
    /// Wilson 95% interval of the success rate.
    pub success_lo95: f64,
    pub success_hi95: f64,
    pub avg_return: f64,
    pub sample_size: u64,
    pub last_updated: String,
}
