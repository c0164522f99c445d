//! The records of the trading plan's collections, and the decision log.
//!
//! Field names are the plan's (`ml-parameter-optimization-plan.md`), so the
//! documents researchers already query keep their shape; what paramopt adds
//! (module name, context, creation time, generation) is additive. Every type
//! here maps to a Firestore document as it is: no arrays of arrays, no
//! unsigned integers beyond `i64` (the seed travels as a string).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agent::{AbAssignment, Decision};
use crate::ope::LoggedDecision;
use crate::space::{Context, ModuleSpace, Regime, Session};

pub use super::trade::{Object, TradeRecord};

/// One row of `parameter_effectiveness`: how a parameter value has done, in
/// one context or (with no session/regime) over all of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParameterEffectiveness {
    pub module_name: String,
    /// The parameter, `group.name`.
    pub parameter_type: String,
    pub parameter_value: f64,
    pub success_rate: f64,
    pub avg_return: f64,
    pub sample_size: u64,
    /// RFC 3339.
    pub last_updated: String,
    #[serde(default)]
    pub session: Option<Session>,
    #[serde(default)]
    pub regime: Option<Regime>,
}

impl ParameterEffectiveness {
    /// The row's identity: one row per module, parameter, value and context.
    pub fn key(&self) -> String {
        format!(
            "{}__{}__{}__{}__{}",
            self.module_name,
            self.parameter_type,
            self.parameter_value,
            self.session.map_or("all", Session::as_str),
            self.regime.map_or("all", Regime::as_str)
        )
    }
}

/// What happened to a model, in `ml_learning_events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LearningEventKind {
    Checkpoint,
    Rollback,
    Promotion,
    TradeOutcomeProcessed,
    /// Any other event name, kept as written.
    #[serde(untagged)]
    Other(String),
}

/// One row of `ml_learning_events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearningEvent {
    /// The plan's model name, e.g. `crypto.bandit`.
    pub model_name: String,
    pub module_name: String,
    pub learning_event: LearningEventKind,
    /// Parameter values (`group.name` -> value, or per context) before and after.
    pub parameters_before: Value,
    pub parameters_after: Value,
    pub performance_impact: f64,
    pub confidence_change: f64,
    /// RFC 3339.
    pub timestamp: String,
    /// Seconds since the Unix epoch; listings order by it.
    pub created_at: f64,
    /// The checkpoint generation the event produced, if any.
    #[serde(default)]
    pub generation: Option<u64>,
    /// Why it happened, when it was not routine: an A/B test's verdict, an
    /// automatic rollback's trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The test behind a move made on evidence (a counterfactual promotion,
    /// replacement, change detected or budget spent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<MoveEvidence>,
}

impl LearningEvent {
    /// The `model_name` of a module's counterfactual moves.
    pub fn counterfactual_model(module: &str) -> String {
        format!("{module}.counterfactual")
    }
}

/// The figures of the test that made a move: what the row's `reason` says, as numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveEvidence {
    /// The session × regime context that moved, `session/regime`.
    pub context: String,
    /// The paired difference tested: the leaders against the served tables
    /// (per cell or per module), the defaults against the served table (the
    /// change detector), or the ledger (the loss budget).
    pub paired: String,
    /// Its mean per opportunity, and the confidence sequence's lower bound.
    pub estimate: f64,
    pub lower_bound: f64,
    /// Paired opportunities behind it.
    pub n: f64,
    /// The level of the test that decided it: a share of the module's `alpha`.
    pub alpha: f64,
    pub margin: f64,
}

/// One point of a module's performance history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerformancePoint {
    pub generation: u64,
    /// RFC 3339.
    pub timestamp: String,
    pub outcome_count: u64,
    pub mean_reward: f64,
}

/// The one `ml_optimization_data` document of a module.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizationData {
    pub module_name: String,
    /// Context (`session/regime`) -> parameter (`group.name`) -> value.
    pub optimized_parameters: BTreeMap<String, BTreeMap<String, f64>>,
    pub performance_history: Vec<PerformancePoint>,
    pub optimization_generation: u64,
    /// RFC 3339.
    pub last_optimization: String,
    pub performance_improvement: f64,
}

/// One decision as logged for off-policy evaluation: what was chosen, with
/// which probability, from which seed and policy generation; later its reward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionLogRecord {
    pub decision_id: String,
    pub module: String,
    pub context: Context,
    /// The features sent, by name. (A map, not a list with gaps: Firestore
    /// drops nulls from arrays.)
    pub features: BTreeMap<String, f64>,
    pub explore: bool,
    /// Per parameter, in the module's order (see the checkpoint's `parameter_names`).
    pub values: Vec<f64>,
    pub arms: Vec<u32>,
    pub propensities: Vec<f64>,
    pub propensity: f64,
    /// A string: Firestore's integers are signed 64-bit.
    #[serde(with = "u64_string")]
    pub seed: u64,
    pub generation: u64,
    /// Seconds since the Unix epoch.
    pub created_at: f64,
    #[serde(default)]
    pub reward: Option<f64>,
    #[serde(default)]
    pub settled_at: Option<f64>,
    /// The A/B test and arm that served the decision, when a test was running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ab: Option<AbAssignment>,
    /// Features the request sent that the module does not declare: kept as
    /// sent, never learned from.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ignored_features: BTreeMap<String, f64>,
}

impl DecisionLogRecord {
    /// The log record of decision `d`, made in `space`.
    pub fn new(d: &Decision, space: &ModuleSpace) -> Self {
        DecisionLogRecord {
            decision_id: d.id.to_string(),
            module: d.module.clone(),
            context: d.context,
            features: space
                .features
                .iter()
                .zip(&d.features)
                .filter_map(|(f, v)| Some((f.name.clone(), (*v)?)))
                .collect(),
            explore: d.explore,
            values: d.values.clone(),
            arms: d.arms.iter().map(|&a| a as u32).collect(),
            propensities: d.propensities.clone(),
            propensity: d.propensity,
            seed: d.seed,
            generation: d.generation,
            created_at: d.created_at,
            reward: None,
            settled_at: None,
            ab: d.ab,
            ignored_features: BTreeMap::new(),
        }
    }
}

// The estimator is pure (`crate::ope`); a logged decision read from a stored
// record is the store's to build, as the store knows the record.
impl LoggedDecision {
    /// From a stored decision log record; `None` until its reward is known.
    pub fn from_record(r: &DecisionLogRecord) -> Option<LoggedDecision> {
        let reward = r.reward?;
        Some(LoggedDecision {
            context: r.context,
            arms: r.arms.iter().map(|&a| a as usize).collect(),
            values: r.values.clone(),
            propensities: r.propensities.clone(),
            propensity: r.propensity,
            traded: reward != 0.0,
            reward,
        })
    }
}

mod u64_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}
