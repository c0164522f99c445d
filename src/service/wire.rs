//! The JSON shapes of API.md: request types (strict, `deny_unknown_fields`)
//! and response types (which may grow fields, never lose or rename them).
//!
//! Request types keep context values as strings and validate them by hand,
//! so that the error names the field, the bad value and what was expected.

use std::collections::BTreeMap;

use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::agent::{AbTest, Decision};
use crate::bandit::Stats;
use crate::eval::ab::{AbSettings, AbSettingsError};
use crate::runtime::Challenger;
use crate::space::{Context, ModuleSpace, Regime, Session, UndeclaredFeatures};
use crate::store::trade::shorten;

use super::error::ApiError;
use super::store::RollbackTarget;

/// `context` in a decision request, and the query of `GET /v1/parameters`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextBody {
    pub session: Option<String>,
    pub regime: Option<String>,
}

impl ContextBody {
    /// The context, or an error naming the missing or unknown value. `prefix`
    /// is how the fields are called where they came from (`context.` or a query).
    pub fn resolve(&self, prefix: &str) -> Result<Context, ApiError> {
        let session = resolve_one(prefix, "session", self.session.as_deref(), &Session::ALL.map(Session::as_str))?;
        let regime = resolve_one(prefix, "regime", self.regime.as_deref(), &Regime::ALL.map(Regime::as_str))?;
        Context::parse(session, regime).map_err(|e| ApiError::Invalid(e.to_string()))
    }
}

fn resolve_one<'a>(prefix: &str, field: &str, value: Option<&'a str>, allowed: &[&str]) -> Result<&'a str, ApiError> {
    match value {
        None => Err(ApiError::Invalid(format!("{prefix}{field} is missing; expected one of {}", allowed.join(", ")))),
        Some(v) if allowed.contains(&v) => Ok(v),
        Some(v) => {
            Err(ApiError::Invalid(format!("unknown {prefix}{field} {v:?}; expected one of {}", allowed.join(", "))))
        }
    }
}

/// `POST /v1/decisions`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    pub module: String,
    pub context: Option<ContextBody>,
    #[serde(default)]
    pub features: Option<BTreeMap<String, f64>>,
    /// Defaults to true: API.md.
    pub explore: Option<bool>,
    /// The strategy this trade will belong to, when the module's file lists
    /// strategies: parameters scoped to other strategies are served at their
    /// incumbents and learn nothing from its outcome (docs/counterfactuals.md).
    pub strategy: Option<String>,
}

/// A request's features: the declared ones (name, value), then the undeclared.
pub type SplitFeatures<'a> = (Vec<(&'a str, f64)>, Vec<(String, f64)>);

impl DecisionRequest {
    /// Splits the features into those the module declares and those it does
    /// not (kept in the decision log, never learned from). A non-finite value
    /// is an error either way, and so is an undeclared one where the module's
    /// file says to refuse them.
    pub fn split_features(&self, space: &ModuleSpace) -> Result<SplitFeatures<'_>, ApiError> {
        let mut declared = Vec::new();
        let mut undeclared = Vec::new();
        for (name, &value) in self.features.iter().flatten() {
            if !value.is_finite() {
                return Err(ApiError::Invalid(format!("features.{}: not a finite number: {value}", shorten(name))));
            }
            if space.feature_index(name).is_some() {
                declared.push((name.as_str(), value));
            } else if space.undeclared_features == UndeclaredFeatures::Reject {
                return Err(ApiError::Invalid(format!(
                    "unknown feature {:?} for module {:?}: its models file declares {} and refuses others \
                     (undeclared_features = \"reject\")",
                    shorten(name),
                    space.name,
                    space.features.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", ")
                )));
            } else {
                undeclared.push((name.clone(), value));
            }
        }
        Ok((declared, undeclared))
    }
}

/// `POST /v1/outcomes`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeRequest {
    pub decision_id: String,
    pub reward: Option<f64>,
    /// Defaults to true: an outcome without the flag is a trade that happened.
    pub traded: Option<bool>,
    /// The module's own trade document: the plan's fields are typed when
    /// [`crate::store::TradeRecord::from_fields`] reads it, everything else is
    /// kept verbatim. Only this request's top level refuses unknown fields.
    pub trade: Option<BTreeMap<String, Box<RawValue>>>,
    /// Per parameter (`group.name`): the value the module really applied where
    /// it capped or rounded the served one (docs/counterfactuals.md).
    pub applied: Option<BTreeMap<String, f64>>,
}

/// `POST /v1/rollback`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    pub module: String,
    #[serde(deserialize_with = "de_rollback_target")]
    pub to: RollbackTarget,
}

fn de_rollback_target<'de, D: Deserializer<'de>>(d: D) -> Result<RollbackTarget, D::Error> {
    let v = Value::deserialize(d)?;
    match &v {
        Value::Number(n) if n.as_u64().is_some() => Ok(RollbackTarget::Generation(n.as_u64().unwrap_or_default())),
        Value::String(s) if s == "defaults" => Ok(RollbackTarget::Defaults),
        other => Err(serde::de::Error::custom(format!(
            "expected a generation number (a non-negative integer) or \"defaults\", got {other}"
        ))),
    }
}

/// `POST /v1/ab-tests`. Settings left out take the defaults of [`AbTestRequest::settings`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbTestRequest {
    pub module: String,
    #[serde(deserialize_with = "de_challenger")]
    pub challenger: Challenger,
    pub split: Option<f64>,
    pub min_outcomes: Option<u64>,
    pub max_outcomes: Option<u64>,
    pub alpha: Option<f64>,
    pub margin: Option<f64>,
}

impl AbTestRequest {
    /// The validated settings: split 0.2, looks from 200 to 6,400 outcomes
    /// per arm, alpha 0.05 and margin 0 unless given.
    pub fn settings(&self) -> Result<AbSettings, AbSettingsError> {
        AbSettings::new(
            self.split.unwrap_or(0.2),
            self.min_outcomes.unwrap_or(200),
            self.max_outcomes.unwrap_or(6400),
            self.alpha.unwrap_or(0.05),
            self.margin.unwrap_or(0.0),
        )
    }
}

fn de_challenger<'de, D: Deserializer<'de>>(d: D) -> Result<Challenger, D::Error> {
    let v = Value::deserialize(d)?;
    let parameters =
        v.as_object().filter(|o| o.len() == 1).and_then(|o| o.get("parameters")).and_then(Value::as_object);
    match (&v, parameters) {
        (Value::Number(n), _) if n.as_u64().is_some() => Ok(Challenger::Generation(n.as_u64().unwrap_or_default())),
        (Value::String(s), _) if s == "defaults" => Ok(Challenger::Defaults),
        (_, Some(map)) => map
            .iter()
            .map(|(k, v)| match v.as_f64() {
                Some(x) => Ok((k.clone(), x)),
                None => Err(serde::de::Error::custom(format!("challenger.parameters.{k}: expected a number, got {v}"))),
            })
            .collect::<Result<_, _>>()
            .map(Challenger::Parameters),
        (other, _) => Err(serde::de::Error::custom(format!(
            "expected a generation number, \"defaults\" or {{\"parameters\": {{\"group.name\": value, …}}}}, got {other}"
        ))),
    }
}

/// A running A/B test as answered by the API and shown by the dashboard.
pub fn ab_test_json(t: &AbTest) -> Value {
    let arm = |s: &Stats| json!({ "outcomes": s.n, "mean_reward": s.mean, "sd": s.variance().map(f64::sqrt) });
    json!({
        "test": t.serving.test.to_string(),
        "challenger": t.challenger,
        "split": t.settings.split,
        "settings": t.settings,
        "started_at": t.started_at,
        "champion": arm(&t.champion_rewards),
        "challenger_arm": arm(&t.challenger_rewards),
        "looks_done": t.looks_done,
        "next_look_at_outcomes": t.settings.looks().get(t.looks_done),
    })
}

/// `{"session": …, "regime": …}` in answers.
pub fn context_json(ctx: Context) -> ContextOut {
    ContextOut { session: ctx.session.as_str(), regime: ctx.regime.as_str() }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct ContextOut {
    pub session: &'static str,
    pub regime: &'static str,
}

/// `{"<group>.<name>": value, …}` in the module's parameter order, written
/// straight from the decision's vectors without building a map.
pub struct NamedValues<'a, T: Serialize> {
    pub space: &'a ModuleSpace,
    pub values: &'a [T],
}

impl<T: Serialize> Serialize for NamedValues<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.values.len()))?;
        for (p, v) in self.space.params.iter().zip(self.values) {
            map.serialize_entry(&p.full_name, v)?;
        }
        map.end()
    }
}

/// Feature values sent with a decision, by name; unsent ones are left out.
struct SentFeatures<'a> {
    space: &'a ModuleSpace,
    values: &'a [Option<f64>],
}

impl Serialize for SentFeatures<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (f, v) in self.space.features.iter().zip(self.values) {
            if let Some(v) = v {
                map.serialize_entry(&f.name, v)?;
            }
        }
        map.end()
    }
}

/// The 200 answer of `POST /v1/decisions`.
pub struct DecisionResponse<'a> {
    pub decision: &'a Decision,
    pub space: &'a ModuleSpace,
    /// Features the request sent that the module does not declare.
    pub ignored_features: &'a [(String, f64)],
}

impl Serialize for DecisionResponse<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let d = self.decision;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("decision_id", &d.id)?;
        map.serialize_entry("module", &d.module)?;
        map.serialize_entry("parameters", &NamedValues { space: self.space, values: &d.values })?;
        map.serialize_entry("policy_generation", &d.generation)?;
        map.serialize_entry("explore", &d.explore)?;
        map.serialize_entry("context", &context_json(d.context))?;
        map.serialize_entry("features", &SentFeatures { space: self.space, values: &d.features })?;
        map.serialize_entry("arms", &NamedValues { space: self.space, values: &d.arms })?;
        map.serialize_entry("propensities", &NamedValues { space: self.space, values: &d.propensities })?;
        map.serialize_entry("propensity", &d.propensity)?;
        map.serialize_entry("created_at", &d.created_at)?;
        if let Some(strategy) = &d.strategy {
            map.serialize_entry("strategy", strategy)?;
        }
        if let Some(cf) = &d.counterfactual {
            // What was explored and why, beside the propensities (Vowpal Wabbit's cb labels).
            map.serialize_entry(
                "exploration",
                &json!({
                    "permissive": cf.permissive, "epsilon": cf.epsilon, "p_obs": cf.p_obs, "explored": cf.explored,
                }),
            )?;
        }
        if let Some(ab) = &d.ab {
            map.serialize_entry("ab_test", &json!({ "test": ab.test.to_string(), "arm": ab.arm }))?;
        }
        if !self.ignored_features.is_empty() {
            let names: Vec<&str> = self.ignored_features.iter().map(|(n, _)| n.as_str()).collect();
            map.serialize_entry("ignored_features", &names)?;
        }
        map.end()
    }
}

/// The 200 answer of `GET /v1/parameters/{module}`.
#[derive(Serialize)]
pub struct ParametersResponse<'a> {
    pub module: &'a str,
    pub context: ContextOut,
    pub parameters: NamedValues<'a, f64>,
    pub policy_generation: u64,
}

/// The 200 answer of `POST /v1/outcomes`.
#[derive(Debug, Serialize, Deserialize)]
pub struct OutcomeResponse {
    pub accepted: bool,
    pub decision_id: String,
    /// The reward learned from, after derivation and clipping.
    pub reward: f64,
}

/// `GET /v1/modules`: every module's parameter space.
pub fn modules_json<'a>(spaces: impl Iterator<Item = &'a std::sync::Arc<ModuleSpace>>) -> Value {
    let modules: Vec<Value> = spaces
        .map(|s| {
            serde_json::json!({
                "module": s.name,
                "features": s.features.iter().map(|f| serde_json::json!({
                    "name": f.name, "range": [f.lo, f.hi],
                })).collect::<Vec<_>>(),
                "simplex_groups": s.simplex_groups.iter().map(|g| serde_json::json!({
                    "group": g.name,
                    "parameters": g.members.iter().map(|&m| &s.params[m].full_name).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "parameters": s.params.iter().map(|p| serde_json::json!({
                    "name": p.full_name,
                    "group": p.group,
                    "short_name": p.name,
                    "default": p.default,
                    "range": [p.lo, p.hi],
                    "lo": p.lo,
                    "hi": p.hi,
                    "kind": p.kind,
                    "arms": p.arms,
                    "max_change_rate": p.max_change_rate,
                    "simplex": p.simplex,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({ "modules": modules })
}

// ----- The dashboard's read-only routes (`docs/dashboard.md`) -----
//
// Fields that other work will fill in (the defaults' off-policy estimate, A/B
// tests, effectiveness rows) are already here, as null or empty, so the page
// shows them as soon as they have values.

/// `GET /v1/dashboard/overview`: operations at a glance.
#[derive(Debug, Serialize)]
pub struct DashboardOverview {
    /// Seconds since the Unix epoch, by the server's clock: ages are relative to it.
    pub server_time: f64,
    pub store: DashboardStore,
    pub modules: Vec<ModuleOps>,
}

#[derive(Debug, Serialize)]
pub struct DashboardStore {
    /// `local`, `firestore`, or `none` when the server runs without a store.
    pub kind: &'static str,
    pub healthy: bool,
    /// Store calls that failed since the server started.
    pub errors: u64,
}

/// One module's counters, as `/metrics` has them.
#[derive(Debug, Serialize)]
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
#[derive(Debug, Serialize)]
pub struct DashboardGrid {
    pub module: String,
    pub generation: u64,
    pub outcomes: u64,
    pub sessions: Vec<&'static str>,
    pub regimes: Vec<&'static str>,
    pub parameters: Vec<GridParameter>,
}

#[derive(Debug, Serialize)]
pub struct GridParameter {
    pub name: String,
    pub group: String,
    pub default: f64,
    pub lo: f64,
    pub hi: f64,
    /// One per context, session-major (the order of `sessions` × `regimes`).
    pub cells: Vec<GridCell>,
}

#[derive(Debug, Serialize)]
pub struct GridCell {
    pub session: &'static str,
    pub regime: &'static str,
    /// What `GET /v1/parameters` serves in this context.
    pub incumbent: f64,
    /// `(incumbent - default) / (hi - lo)`: how far it moved, as a signed fraction of the range.
    pub moved: f64,
}

/// `GET /v1/dashboard/modules/{module}/history`: one parameter's incumbent over generations.
#[derive(Debug, Serialize)]
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
    pub points: Vec<crate::inspect::HistoryPoint>,
    /// From `ml_learning_events`: every rollback and promotion, and the
    /// checkpoints among `points`; oldest first.
    pub events: Vec<EventMark>,
    /// The incumbent served now, which may be newer than the last generation.
    pub live: LivePoint,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventMark {
    pub generation: Option<u64>,
    /// `checkpoint`, `rollback`, `promotion`, or any other event name.
    pub kind: String,
    pub created_at: f64,
}

#[derive(Debug, Serialize)]
pub struct LivePoint {
    pub generation: u64,
    pub outcomes: u64,
    pub incumbent: f64,
}

/// `GET /v1/dashboard/modules/{module}/progress`: is it learning?
#[derive(Debug, Serialize)]
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
    pub ab_test: Option<Value>,
    /// Per parameter: widths of the 95% intervals of the arms' posterior means, now.
    pub posterior: Vec<PosteriorWidth>,
}

#[derive(Debug, Serialize)]
pub struct DefaultsEstimate {
    pub estimator: &'static str,
    pub value: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub decisions: usize,
    pub effective_n: f64,
}

#[derive(Debug, Serialize)]
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

#[derive(Debug, Serialize)]
pub struct PosteriorWidth {
    pub parameter: String,
    /// Mean and largest width over contexts and the arms the trust region reaches.
    pub mean_width: f64,
    pub max_width: f64,
}

/// `GET /v1/dashboard/modules/{module}/effectiveness`: rows of `parameter_effectiveness`.
#[derive(Debug, Serialize)]
pub struct DashboardEffectiveness {
    pub module: String,
    /// Empty until something writes the collection.
    pub rows: Vec<EffectivenessRow>,
}

#[derive(Debug, Serialize)]
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
