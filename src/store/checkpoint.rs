//! Checkpoints: one module's whole learned state at one generation, and the
//! versioned encoding every backend stores.
//!
//! The encoding is JSON (serde_json with `float_roundtrip`, so every `f64`
//! reads back bit-identical); the policy weights, opaque safetensors bytes,
//! are base64 inside it. Each document carries its `format_version`. Old
//! versions keep loading: [`decode`] lifts a document through [`MIGRATIONS`]
//! one version at a time before deserializing the current struct, and
//! `tests/fixtures/checkpoint-v{N}.json` holds a document of every version.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{StoreError, StoreResult};
use crate::agent::{AbTest, ModuleLearner, ReplicaState};
use crate::bandit::{ModuleStats, Stats};
use crate::policy::PolicyTrainer;
use crate::space::{Context, ModuleSpace};

/// The version [`encode`] writes.
pub const FORMAT_VERSION: u32 = 1;

/// A migration lifts a document of version `v` (at index `v - 1`) to `v + 1`.
/// To add version 2: append `v1_to_v2` here and bump [`FORMAT_VERSION`]; keep
/// the v1 fixture as it is and add a v2 one.
type Migration = fn(&mut Map<String, Value>) -> Result<(), String>;
pub const MIGRATIONS: &[Migration] = &[];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointKind {
    /// Periodic or on-demand save of what was learned.
    Checkpoint,
    /// A copy of an earlier generation (or of the seed defaults).
    Rollback,
    /// A candidate's state made current.
    Promotion,
}

impl CheckpointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointKind::Checkpoint => "checkpoint",
            CheckpointKind::Rollback => "rollback",
            CheckpointKind::Promotion => "promotion",
        }
    }
}

/// A checkpoint's header: what listings show, without the bulky state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format_version: u32,
    pub module: String,
    pub generation: u64,
    /// The generation this state was derived from; `None` for the first.
    pub parent: Option<u64>,
    /// Seconds since the Unix epoch.
    pub created_at: f64,
    pub outcome_count: u64,
    pub mean_reward: f64,
    pub kind: CheckpointKind,
    /// For a rollback, the generation it copies; `None` with kind `rollback`
    /// means the seed defaults.
    #[serde(default)]
    pub rollback_to: Option<u64>,
    #[serde(default)]
    pub note: Option<String>,
}

// One generation of one incumbent's history: its header's generation, kind,
// time and outcomes, and the incumbent of one parameter in one context.
// `paramopt inspect history` and the dashboard's history both answer with it.
// (Plain comments: a doc comment would change the OpenAPI schema.)
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct HistoryPoint {
    pub generation: u64,
    pub kind: String,
    pub created_at: f64,
    pub outcomes: u64,
    pub incumbent: f64,
}

/// One module's learned state at one generation. Self-describing: the
/// parameter names, arm values and context labels travel with it, so it can be
/// read, served and checked against a space without that space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub format_version: u32,
    pub module: String,
    pub generation: u64,
    pub parent: Option<u64>,
    pub created_at: f64,
    pub outcome_count: u64,
    pub mean_reward: f64,
    pub kind: CheckpointKind,
    #[serde(default)]
    pub rollback_to: Option<u64>,
    #[serde(default)]
    pub note: Option<String>,
    /// Exact sum of learned rewards; `mean_reward` is derived from it.
    pub reward_sum: f64,
    /// `group.name` per parameter, in the module's order.
    pub parameter_names: Vec<String>,
    /// `[param][arm]`: the arm values the statistics belong to.
    pub arms: Vec<Vec<f64>>,
    /// `session/regime` per context index.
    pub contexts: Vec<String>,
    /// Every posterior's sufficient statistics.
    pub stats: ModuleStats,
    /// `[context][param]`: the greedy values.
    pub incumbents: Vec<Vec<f64>>,
    /// The policy network's weights, safetensors bytes; opaque here.
    #[serde(default, with = "b64")]
    pub policy_weights: Option<Vec<u8>>,
    /// Every journaled outcome up to this sequence number is in `stats`:
    /// replay after a restart starts after it.
    #[serde(default)]
    pub journal_seq: u64,
    /// What this replica has shared with the others (see `paramopt serve --sync-every-secs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<ReplicaState>,
    /// The A/B test that was running, with its arms' rewards so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ab_test: Option<AbTest>,
    /// The live policy's rolling reward when this checkpoint was taken: what
    /// the rollback watch compares later generations with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_reward: Option<Stats>,
    /// The same per context (by `Context::index`); absent in older checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_by_context: Option<Vec<Stats>>,
    /// The counterfactual estimator's sums and tables (modules with declared roles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counterfactual: Option<crate::agent::JointState>,
    /// The loss budget's ledger (absent in checkpoints before it existed:
    /// they start a fresh ledger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_ledger: Option<crate::agent::LossLedger>,
}

impl Checkpoint {
    /// A snapshot of `learner`. The store allocates the generation; `parent`
    /// is the generation the learner's state was restored from or last saved as.
    pub fn from_learner(
        learner: &ModuleLearner,
        kind: CheckpointKind,
        parent: Option<u64>,
        policy_weights: Option<Vec<u8>>,
        created_at: f64,
    ) -> Checkpoint {
        let space = &learner.space;
        Checkpoint {
            format_version: FORMAT_VERSION,
            module: space.name.clone(),
            generation: 0,
            parent,
            created_at,
            outcome_count: learner.outcomes,
            mean_reward: if learner.outcomes > 0 { learner.reward_sum / learner.outcomes as f64 } else { 0.0 },
            kind,
            rollback_to: None,
            note: None,
            reward_sum: learner.reward_sum,
            parameter_names: space.params.iter().map(|p| p.full_name.clone()).collect(),
            arms: space.params.iter().map(|p| p.arms.clone()).collect(),
            contexts: Context::all().map(|c| c.to_string()).collect(),
            stats: learner.stats.clone(),
            incumbents: learner.incumbents.clone(),
            policy_weights,
            journal_seq: learner.journal_seq,
            replica: learner.replica.clone(),
            ab_test: learner.ab.clone(),
            rolling_reward: Some(learner.rolling.stats()).filter(|s| s.n > 0.0),
            rolling_by_context: Some(learner.rolling.by_context()).filter(|c| c.iter().any(|s| s.n > 0.0)),
            counterfactual: learner.joint.as_ref().map(|j| j.state.clone()),
            loss_ledger: Some(learner.ledger.clone()).filter(|l| *l != crate::agent::LossLedger::default()),
        }
    }

    /// The seed defaults of `space` as a checkpoint: what a rollback to
    /// "defaults" writes.
    pub fn defaults(space: Arc<ModuleSpace>, parent: Option<u64>, created_at: f64) -> Checkpoint {
        let learner = ModuleLearner::with_policy(space, None).expect("no network to build");
        let mut cp = Checkpoint::from_learner(&learner, CheckpointKind::Rollback, parent, None, created_at);
        cp.note = Some("rollback to the seed defaults".into());
        cp
    }

    /// A learner over `space` holding this checkpoint's state. Fails, naming
    /// the difference, when the space no longer matches (renamed parameters,
    /// changed arms): stats of other arms must not be applied silently.
    /// The policy network comes from the stored weights; a checkpoint without
    /// weights (the defaults, or a module that had refinement off) gets a
    /// fresh network initialised from `seed` when the space enables one.
    pub fn to_learner(&self, space: Arc<ModuleSpace>, seed: u64) -> StoreResult<ModuleLearner> {
        let what = format!("checkpoint {}/{}", self.module, self.generation);
        let mismatch = |detail: String| StoreError::ShapeMismatch { module: self.module.clone(), detail };
        let names: Vec<&str> = space.params.iter().map(|p| p.full_name.as_str()).collect();
        if names != self.parameter_names.iter().map(String::as_str).collect::<Vec<_>>() {
            return Err(mismatch(format!("{what} has parameters {:?}, the space has {names:?}", self.parameter_names)));
        }
        for (p, arms) in space.params.iter().zip(&self.arms) {
            if &p.arms != arms {
                return Err(mismatch(format!("{what}: {} has arms {arms:?}, the space has {:?}", p.full_name, p.arms)));
            }
        }
        let policy = match (&self.policy_weights, space.policy.enabled) {
            (_, false) => None,
            // Weights of another network (an older layout, another hidden
            // size) must not cost the bandit's state: the network starts afresh.
            (Some(bytes), true) => match PolicyTrainer::from_safetensors(&space, bytes, seed) {
                Ok(trainer) => Some(trainer),
                Err(e) => {
                    tracing::warn!(module = %self.module, generation = self.generation, error = %e,
                        "the checkpoint's policy weights do not fit the space's network; it starts afresh");
                    Some(PolicyTrainer::new(&space, seed).map_err(|e| mismatch(e.to_string()))?)
                }
            },
            (None, true) => Some(PolicyTrainer::new(&space, seed).map_err(|e| mismatch(e.to_string()))?),
        };
        let mut learner = ModuleLearner::with_policy(space, policy).map_err(|e| mismatch(e.to_string()))?;
        if !learner.stats.same_shape(&self.stats) {
            return Err(mismatch(format!("{what}: its statistics have another shape than the space")));
        }
        check_incumbents(&learner.space, &self.incumbents).map_err(|e| mismatch(format!("{what}: {e}")))?;
        learner.stats = self.stats.clone();
        learner.incumbents = self.incumbents.clone();
        learner.generation = self.generation;
        learner.outcomes = self.outcome_count;
        learner.reward_sum = self.reward_sum;
        learner.journal_seq = self.journal_seq;
        learner.replica = self.replica.clone();
        learner.ab = self.ab_test.clone();
        if let Some(state) = &self.counterfactual {
            learner.restore_joint(state.clone());
        }
        if let Some(ledger) = &self.loss_ledger {
            learner.ledger = ledger.clone();
        }
        Ok(learner)
    }

    pub fn meta(&self) -> CheckpointMeta {
        CheckpointMeta {
            format_version: self.format_version,
            module: self.module.clone(),
            generation: self.generation,
            parent: self.parent,
            created_at: self.created_at,
            outcome_count: self.outcome_count,
            mean_reward: self.mean_reward,
            kind: self.kind,
            rollback_to: self.rollback_to,
            note: self.note.clone(),
        }
    }
}

/// Incumbents as the engine needs them: a row per context, a finite value
/// per parameter, within the span of its arms (a value refined inside an
/// arm's cell lies at most one arm gap outside the outer arms).
fn check_incumbents(space: &ModuleSpace, rows: &[Vec<f64>]) -> Result<(), String> {
    if rows.len() != Context::COUNT {
        return Err(format!("{} incumbent rows, expected one per context ({})", rows.len(), Context::COUNT));
    }
    for (c, row) in rows.iter().enumerate() {
        if row.len() != space.params.len() {
            return Err(format!(
                "incumbent row {c} has {} values, the space has {} parameters",
                row.len(),
                space.params.len()
            ));
        }
        for (p, &v) in space.params.iter().zip(row) {
            let lo = p.arms.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = p.arms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let gap = p.arms.windows(2).map(|w| (w[1] - w[0]).abs()).fold(0.0, f64::max);
            if !v.is_finite() || v < lo - gap || v > hi + gap {
                return Err(format!("incumbent {} = {v} in row {c} lies outside its arms [{lo}, {hi}]", p.full_name));
            }
        }
    }
    Ok(())
}

/// The stored form of a checkpoint, always the current [`FORMAT_VERSION`].
pub fn encode(checkpoint: &Checkpoint) -> StoreResult<Vec<u8>> {
    let mut cp = std::borrow::Cow::Borrowed(checkpoint);
    if cp.format_version != FORMAT_VERSION {
        cp.to_mut().format_version = FORMAT_VERSION;
    }
    serde_json::to_vec(&*cp).map_err(|source| StoreError::Encode { what: format!("checkpoint {}", cp.module), source })
}

/// Reads a stored checkpoint of any known version; `what` names it in errors.
pub fn decode(bytes: &[u8], what: &str) -> StoreResult<Checkpoint> {
    // The common case, a current document, deserializes directly without an
    // intermediate tree.
    if let Ok(cp) = serde_json::from_slice::<Checkpoint>(bytes) {
        if cp.format_version == FORMAT_VERSION {
            return Ok(cp);
        }
    }
    let corrupt = |detail: String| StoreError::Corrupt { what: what.to_string(), detail };
    let mut doc: Map<String, Value> = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    let version =
        doc.get("format_version").and_then(Value::as_u64).ok_or_else(|| corrupt("no numeric format_version".into()))?
            as u32;
    if version == 0 || version > FORMAT_VERSION {
        return Err(StoreError::UnsupportedVersion {
            what: what.to_string(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    for (v, migrate) in MIGRATIONS.iter().enumerate().skip(version as usize - 1) {
        migrate(&mut doc).map_err(|e| corrupt(format!("migrating from version {}: {e}", v + 1)))?;
        doc.insert("format_version".into(), Value::from(v as u32 + 2));
    }
    serde_json::from_value(Value::Object(doc)).map_err(|e| corrupt(e.to_string()))
}

/// `Option<Vec<u8>>` as a base64 string (or null): compact and readable JSON.
mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => s.serialize_str(&STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| STANDARD.decode(s.as_bytes()).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::Spaces;

    fn learned() -> ModuleLearner {
        let space = Spaces::builtin().get("crypto").expect("builtin crypto").clone();
        let mut l = ModuleLearner::new(space.clone(), 1).unwrap();
        for i in 0..50 {
            let arms: Vec<usize> = space.params.iter().map(|p| i % p.arms.len()).collect();
            l.learn(i % Context::COUNT, &arms, (i as f64 * 0.7).sin() * 0.01);
        }
        l
    }

    #[test]
    fn encode_decode_is_bit_identical() {
        let mut cp =
            Checkpoint::from_learner(&learned(), CheckpointKind::Checkpoint, Some(4), Some(vec![0, 1, 255]), 1.5);
        cp.stats.cells[0][0][0].mean = 0.1 + 0.2; // a value with a long shortest representation
        let back = decode(&encode(&cp).unwrap(), "test").unwrap();
        assert_eq!(back, cp);
        assert_eq!(back.stats.cells[0][0][0].mean.to_bits(), (0.1f64 + 0.2).to_bits());
    }

    #[test]
    fn restores_a_learner_and_refuses_another_space() {
        let l = learned();
        let cp = Checkpoint::from_learner(&l, CheckpointKind::Checkpoint, None, None, 0.0);
        let back = cp.to_learner(l.space.clone(), 1).unwrap();
        assert_eq!((back.stats, back.incumbents, back.outcomes), (l.stats, l.incumbents, l.outcomes));
        let other = Spaces::builtin().get("options").unwrap().clone();
        let err = cp.to_learner(other, 1).unwrap_err().to_string();
        assert!(err.contains("crypto") && err.contains("parameters"), "{err}");
    }

    #[test]
    fn corrupt_state_is_refused_by_name_not_panicked_on() {
        let l = learned();
        let good = Checkpoint::from_learner(&l, CheckpointKind::Checkpoint, None, None, 0.0);
        let refused = |edit: &dyn Fn(&mut Checkpoint), expect: &str| {
            let mut cp = good.clone();
            edit(&mut cp);
            let err = cp.to_learner(l.space.clone(), 1).unwrap_err().to_string();
            assert!(err.contains(expect), "{expect:?} not in {err}");
        };
        refused(&|cp| cp.incumbents[3].pop().map(drop).unwrap_or(()), "incumbent row 3 has");
        refused(&|cp| cp.incumbents.truncate(2), "incumbent rows");
        refused(&|cp| cp.incumbents[0][1] = f64::NAN, "NaN");
        refused(&|cp| cp.incumbents[5][0] = 1e9, "1000000000 in row 5");
        refused(&|cp| cp.stats.cells[2][1].truncate(1), "statistics");
        refused(&|cp| cp.stats.baselines.clear(), "statistics");
        // Counterfactual state of another shape is dropped with a warning; the
        // learner still serves.
        let mut cp = good.clone();
        cp.counterfactual.as_mut().expect("crypto declares roles").cells[0].opportunities.clear();
        let back = cp.to_learner(l.space.clone(), 1).unwrap();
        assert_eq!(back.incumbents, l.incumbents);
    }

    #[test]
    fn a_newer_version_is_refused_by_number() {
        let cp = Checkpoint::from_learner(&learned(), CheckpointKind::Checkpoint, None, None, 0.0);
        let mut doc: Value = serde_json::from_slice(&encode(&cp).unwrap()).unwrap();
        doc["format_version"] = Value::from(FORMAT_VERSION + 1);
        let err = decode(&serde_json::to_vec(&doc).unwrap(), "cp-x").unwrap_err();
        assert!(matches!(err, StoreError::UnsupportedVersion { found, .. } if found == FORMAT_VERSION + 1), "{err}");
    }
}
