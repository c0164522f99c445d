//! The JSON shapes of API.md: request types (strict, `deny_unknown_fields`)
//! and response types (which may grow fields, never lose or rename them).
//!
//! Request types keep context values as strings and validate them by hand,
//! so that the error names the field, the bad value and what was expected.
//!
//! Every type here also derives (or, where its serde is hand-written,
//! implements) `schemars::JsonSchema`: `super::openapi` builds the OpenAPI
//! document from these, so the document describes what the code sends.

use std::collections::BTreeMap;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::agent::{AbTest, Decision};
use crate::bandit::Stats;
use crate::rollout::{AbSettings, AbSettingsError};
use crate::runtime::{AbResult, Challenger};
use crate::space::{Context, ModuleSpace, Regime, Session, UndeclaredFeatures};
use crate::store::trade::shorten;

use super::error::ApiError;
use super::store::{CheckpointSummary, RollbackTarget};

/// `context` in a decision request, and the query of `GET /v1/parameters`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextBody {
    /// Read as an optional string, so that a missing or unknown value is a
    /// 422 saying what was expected; the schema gives what is accepted.
    #[schemars(with = "Session")]
    pub session: Option<String>,
    /// As `session`.
    #[schemars(with = "Regime")]
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
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    pub module: String,
    /// Optional to serde so that its absence is a 422 naming it; required by the schema.
    #[schemars(with = "ContextBody")]
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
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutcomeRequest {
    pub decision_id: String,
    pub reward: Option<f64>,
    /// Defaults to true: an outcome without the flag is a trade that happened.
    pub traded: Option<bool>,
    /// The module's own trade document: the plan's fields are typed when
    /// [`crate::store::TradeRecord::from_fields`] reads it, everything else is
    /// kept verbatim. Only this request's top level refuses unknown fields.
    #[schemars(with = "Option<TradeDocument>")]
    pub trade: Option<BTreeMap<String, Box<RawValue>>>,
    /// Per parameter (`group.name`): the value the module really applied where
    /// it capped or rounded the served one (docs/counterfactuals.md).
    pub applied: Option<BTreeMap<String, f64>>,
}

/// The schema of a trade in `POST /v1/outcomes`. The request keeps the trade
/// as raw JSON ([`OutcomeRequest::trade`]) and
/// [`crate::store::TradeRecord::from_fields`] types the plan's fields, so this
/// type is never deserialised: it describes those fields (`null` counts as
/// absent) and leaves every other field open, at any depth.
#[derive(JsonSchema)]
#[allow(dead_code)] // A schema only.
pub struct TradeDocument {
    /// Non-empty.
    symbol: Option<String>,
    /// `BUY` or `SELL`, any case.
    side: Option<String>,
    #[schemars(range(min = 0.0))]
    quantity: Option<f64>,
    #[schemars(range(min = 0.0))]
    price: Option<f64>,
    strategy: Option<String>,
    #[schemars(range(min = 0.0, max = 1.0))]
    confidence: Option<f64>,
    profit_loss: Option<f64>,
    /// The trade's return as a fraction; the reward is derived from it when `reward` is absent.
    return_pct: Option<f64>,
    exit_reason: Option<String>,
    entry_parameters: Option<serde_json::Map<String, Value>>,
    module_specific_params: Option<serde_json::Map<String, Value>>,
    exit_analysis: Option<ExitAnalysisDocument>,
    market_context: Option<serde_json::Map<String, Value>>,
    parameter_performance: Option<serde_json::Map<String, Value>>,
}

/// `trade.exit_analysis`: `path` is typed, every other field is the module's own.
#[derive(JsonSchema)]
#[allow(dead_code)] // A schema only.
pub struct ExitAnalysisDocument {
    /// The position's return (a fraction) at each check, in order.
    path: Option<Vec<f64>>,
}

/// `POST /v1/rollback`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    pub module: String,
    #[serde(deserialize_with = "de_rollback_target")]
    #[schemars(schema_with = "rollback_target_schema")]
    pub to: RollbackTarget,
}

/// What [`de_rollback_target`] takes and [`RollbackTarget`] serialises as.
pub fn rollback_target_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "A stored generation, or \"defaults\" for the seed defaults.",
        "oneOf": [{"type": "integer", "minimum": 0}, {"const": "defaults"}]
    })
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
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AbTestRequest {
    pub module: String,
    #[serde(deserialize_with = "de_challenger")]
    #[schemars(schema_with = "challenger_schema")]
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

/// What [`de_challenger`] takes.
fn challenger_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "A stored generation, \"defaults\", or values by `group.name` (the others keep their default).",
        "oneOf": [
            {"type": "integer", "minimum": 0},
            {"const": "defaults"},
            {"type": "object", "required": ["parameters"], "additionalProperties": false,
             "properties": {"parameters": {"type": "object", "additionalProperties": {"type": "number"}}}}
        ]
    })
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
    let arm = |s: &Stats| AbArmOut { outcomes: s.n, mean_reward: s.mean, sd: s.variance().map(f64::sqrt) };
    let out = AbTestOut {
        test: t.serving.test.to_string(),
        challenger: &t.challenger,
        split: t.settings.split,
        settings: t.settings,
        started_at: t.started_at,
        champion: arm(&t.champion_rewards),
        challenger_arm: arm(&t.challenger_rewards),
        looks_done: t.looks_done,
        next_look_at_outcomes: t.settings.looks().get(t.looks_done).copied(),
    };
    // Through a `Value`, as the store hooks hand tests on; its keys are sorted.
    serde_json::to_value(out).unwrap_or_default()
}

/// What [`ab_test_json`] answers.
#[derive(Serialize, JsonSchema)]
pub struct AbTestOut<'a> {
    /// The test's id: an integer of at most 53 bits, as a string.
    pub test: String,
    /// What the challenger serves: `generation N`, `defaults` or `parameters`.
    pub challenger: &'a str,
    pub split: f64,
    pub settings: AbSettings,
    /// Seconds since the Unix epoch.
    pub started_at: f64,
    pub champion: AbArmOut,
    pub challenger_arm: AbArmOut,
    pub looks_done: usize,
    /// Outcomes per arm at the next planned look; null after the last.
    pub next_look_at_outcomes: Option<u64>,
}

/// One arm's rewards in a running A/B test.
#[derive(Serialize, JsonSchema)]
pub struct AbArmOut {
    pub outcomes: f64,
    pub mean_reward: f64,
    /// Null below two outcomes.
    pub sd: Option<f64>,
}

/// The 200 answer of `POST /v1/ab-tests`.
#[derive(Serialize, JsonSchema)]
pub struct AbTestStarted {
    /// The store hook answers it as JSON; it is [`ab_test_json`]'s.
    #[schemars(with = "AbTestOut")]
    pub ab_test: Value,
}

/// The 200 answer of `GET /v1/ab-tests/{module}`.
#[derive(Serialize, JsonSchema)]
pub struct AbTestStatus {
    pub module: String,
    /// The running test; null when none runs.
    #[schemars(with = "Option<AbTestOut>")]
    pub running: Option<Value>,
    /// How the last test ended; null before the first ended.
    #[schemars(with = "Option<AbResult>")]
    pub last: Option<Value>,
}

/// The 200 answer of `DELETE /v1/ab-tests/{module}`.
#[derive(Serialize, JsonSchema)]
pub struct AbTestStopped {
    #[schemars(with = "AbResult")]
    pub stopped: Value,
}

/// The 200 answer of `GET /v1/checkpoints?module=…`: newest first.
#[derive(Serialize, JsonSchema)]
pub struct CheckpointList {
    pub module: String,
    /// Newest first, at most `limit` of them.
    pub checkpoints: Vec<CheckpointSummary>,
    /// Pass as `before` for the next page; null on the last page.
    pub next_before: Option<u64>,
}

/// The 200 answer of `POST /v1/rollback`.
#[derive(Serialize, JsonSchema)]
pub struct RollbackResponse {
    #[schemars(schema_with = "rollback_target_schema")]
    pub rolled_back_to: RollbackTarget,
    /// The new generation, equal to the target.
    pub checkpoint: CheckpointSummary,
}

/// The 200 answer of `GET /healthz`.
#[derive(Serialize, JsonSchema)]
pub struct Health {
    /// Always `ok`: an unhealthy server answers 503 with an error body instead.
    pub status: &'static str,
    /// `local`, `firestore`, or `none` without a store.
    pub store: &'static str,
    pub store_healthy: bool,
    /// Each module's loss budget, by module name.
    pub safety: BTreeMap<String, crate::agent::BudgetStatus>,
}

/// `{"session": …, "regime": …}` in answers.
pub fn context_json(ctx: Context) -> ContextOut {
    ContextOut { session: ctx.session.as_str(), regime: ctx.regime.as_str() }
}

#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
pub struct ContextOut {
    #[schemars(with = "Session")]
    pub session: &'static str,
    #[schemars(with = "Regime")]
    pub regime: &'static str,
}

/// `{"<group>.<name>": value, …}` in the module's parameter order, written
/// straight from the decision's vectors without building a map.
pub struct NamedValues<'a, T: Serialize> {
    pub space: &'a ModuleSpace,
    pub values: &'a [T],
}

/// An object of `T` by parameter name: the names depend on the module.
impl<T: Serialize + JsonSchema> JsonSchema for NamedValues<'_, T> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("NamedValues_{}", T::schema_name()).into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let values = generator.subschema_for::<T>();
        json_schema!({
            "type": "object",
            "description": "By parameter name (`group.name`), every parameter of the module.",
            "additionalProperties": values,
        })
    }
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

/// Hand-written as its `Serialize` is; the service tests validate every
/// decision they get against it.
impl JsonSchema for DecisionResponse<'_> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DecisionResponse".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let context = generator.subschema_for::<ContextOut>();
        let values = generator.subschema_for::<NamedValues<f64>>();
        let arms = generator.subschema_for::<NamedValues<usize>>();
        json_schema!({
            "type": "object",
            "required": ["decision_id", "module", "parameters", "policy_generation", "explore", "context",
                         "features", "arms", "propensities", "propensity", "created_at"],
            "properties": {
                "decision_id": {"type": "string", "description": "What `POST /v1/outcomes` names the decision by."},
                "module": {"type": "string"},
                "parameters": values,
                "policy_generation": {"type": "integer", "minimum": 0},
                "explore": {"type": "boolean"},
                "context": context,
                "features": {"type": "object", "description": "The declared features that were sent, by name.",
                             "additionalProperties": {"type": "number"}},
                "arms": arms,
                "propensities": values,
                "propensity": {"type": "number", "minimum": 0, "maximum": 1},
                "created_at": {"type": "number", "description": "Seconds since the Unix epoch."},
                "strategy": {"type": "string"},
                "exploration": {
                    "type": "object",
                    "required": ["permissive", "epsilon", "p_obs", "explored"],
                    "properties": {
                        "permissive": {"type": "boolean"},
                        "epsilon": {"type": "number"},
                        "p_obs": {"type": ["number", "null"]},
                        "explored": {"type": "array", "items": {
                            "type": "object", "required": ["parameter", "reason"],
                            "properties": {"parameter": {"type": "string"}, "reason": {"type": "string"}}
                        }}
                    }
                },
                "ab_test": {
                    "type": "object",
                    "required": ["test", "arm"],
                    "properties": {"test": {"type": "string"}, "arm": {"enum": ["champion", "challenger"]}}
                },
                "ignored_features": {"type": "array", "items": {"type": "string"},
                                     "description": "The request's features the module does not declare."}
            }
        })
    }
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
#[derive(Serialize, JsonSchema)]
pub struct ParametersResponse<'a> {
    pub module: &'a str,
    pub context: ContextOut,
    pub parameters: NamedValues<'a, f64>,
    pub policy_generation: u64,
}

/// The 200 answer of `POST /v1/outcomes`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct OutcomeResponse {
    pub accepted: bool,
    pub decision_id: String,
    /// The reward learned from, after derivation and clipping.
    pub reward: f64,
}

/// `GET /v1/modules`: every module's parameter space.
pub fn modules_json<'a>(spaces: impl Iterator<Item = &'a std::sync::Arc<ModuleSpace>>) -> Value {
    let modules = spaces
        .map(|s| ModuleOut {
            module: &s.name,
            features: s.features.iter().map(|f| FeatureOut { name: &f.name, range: [f.lo, f.hi] }).collect(),
            simplex_groups: s
                .simplex_groups
                .iter()
                .map(|g| SimplexGroupOut {
                    group: &g.name,
                    parameters: g.members.iter().map(|&m| s.params[m].full_name.as_str()).collect(),
                })
                .collect(),
            parameters: s
                .params
                .iter()
                .map(|p| ParameterOut {
                    name: &p.full_name,
                    group: &p.group,
                    short_name: &p.name,
                    default: p.default,
                    range: [p.lo, p.hi],
                    lo: p.lo,
                    hi: p.hi,
                    kind: p.kind,
                    arms: &p.arms,
                    max_change_rate: p.max_change_rate,
                    simplex: p.simplex,
                })
                .collect(),
        })
        .collect();
    // Through a `Value`, so the keys come out sorted as they always have.
    serde_json::to_value(ModulesResponse { modules }).unwrap_or_default()
}

/// The 200 answer of `GET /v1/modules`.
#[derive(Serialize, JsonSchema)]
pub struct ModulesResponse<'a> {
    pub modules: Vec<ModuleOut<'a>>,
}

/// One module's parameter space in `GET /v1/modules`.
#[derive(Serialize, JsonSchema)]
pub struct ModuleOut<'a> {
    pub module: &'a str,
    pub features: Vec<FeatureOut<'a>>,
    pub simplex_groups: Vec<SimplexGroupOut<'a>>,
    pub parameters: Vec<ParameterOut<'a>>,
}

/// A declared feature: its name and the range it is normalised over.
#[derive(Serialize, JsonSchema)]
pub struct FeatureOut<'a> {
    pub name: &'a str,
    /// `[lo, hi]`.
    pub range: [f64; 2],
}

/// Parameters served as a vector that sums to 1.
#[derive(Serialize, JsonSchema)]
pub struct SimplexGroupOut<'a> {
    pub group: &'a str,
    /// Full names (`group.name`).
    pub parameters: Vec<&'a str>,
}

/// One parameter of a module.
#[derive(Serialize, JsonSchema)]
pub struct ParameterOut<'a> {
    /// `group.name`, the name on the wire.
    pub name: &'a str,
    pub group: &'a str,
    pub short_name: &'a str,
    pub default: f64,
    /// `[lo, hi]`.
    pub range: [f64; 2],
    pub lo: f64,
    pub hi: f64,
    pub kind: crate::space::ParamKind,
    /// The arm values, increasing, spanning the range.
    pub arms: &'a [f64],
    pub max_change_rate: f64,
    pub simplex: bool,
}

// ----- The dashboard's read-only routes (`docs/dashboard.md`) -----
//
// Fields that other work will fill in (the defaults' off-policy estimate, A/B
// tests, effectiveness rows) are already here, as null or empty, so the page
// shows them as soon as they have values.

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
