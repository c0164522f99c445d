//! Parameter spaces: what each module lets paramopt tune, loaded from `models/*.toml`.
//!
//! Two types per config: the `*Spec` structs mirror the TOML with
//! `deny_unknown_fields`, and [`ModuleSpace`] is the validated form built from
//! them. The engine only ever sees a `ModuleSpace`, so every range, arm grid
//! and simplex group it works with has already been checked. This module does
//! no IO beyond reading the files it is pointed at.

mod context;
pub mod roles;
mod spec;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use context::{Context, Regime, Session};
pub use roles::{Counterfactual, CounterfactualSpec, Role, RoleSpec, Scope, ScoreSource};
pub use spec::{
    FeatureSpec, GroupSpec, LearningSpec, ModuleSpec, ParamSpec, PendingSpec, PolicySpec, RewardSpec, RollbackSpec,
    SafetySpec,
};

/// Why a space could not be loaded. Every variant names where and what.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: field `{field}` = {value}: {reason}")]
    Invalid { file: String, field: String, value: String, reason: String },
    #[error("unknown {field} {value:?}")]
    UnknownContextValue { field: &'static str, value: String },
    #[error("{dir}: no module files (*.toml) found")]
    NoModules { dir: PathBuf },
    #[error("module {module:?} is defined twice, in {first} and {second}")]
    DuplicateModule { module: String, first: String, second: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    Continuous,
    Integer,
}

/// One tunable parameter, validated.
#[derive(Debug, Clone, Serialize)]
pub struct Parameter {
    /// `<group>.<name>`, the name on the wire.
    pub full_name: String,
    pub group: String,
    pub name: String,
    pub default: f64,
    pub lo: f64,
    pub hi: f64,
    pub kind: ParamKind,
    /// Arm values, strictly increasing, spanning `[lo, hi]`. The default is one of them.
    pub arms: Vec<f64>,
    /// Index of the arm equal to `default`.
    pub default_arm: usize,
    /// Fraction of the range the incumbent may move per update, and the widest
    /// the exploration trust region may get.
    pub max_change_rate: f64,
    /// Whether this parameter is in a simplex group.
    pub simplex: bool,
}

impl Parameter {
    pub fn range(&self) -> f64 {
        self.hi - self.lo
    }

    /// Where `value` lies in the range: 0 at `lo`, 1 at `hi`.
    pub fn unit(&self, value: f64) -> f64 {
        (value - self.lo) / self.range()
    }

    /// The largest step, in value units, that the incumbent may take at once.
    pub fn max_step(&self) -> f64 {
        self.max_change_rate * self.range()
    }

    /// The interval of values that belong to arm `k`: half-way to each neighbour,
    /// closed at the range ends. The policy network refines values inside it.
    pub fn arm_cell(&self, k: usize) -> (f64, f64) {
        let lo = if k == 0 { self.lo } else { 0.5 * (self.arms[k - 1] + self.arms[k]) };
        let hi = if k + 1 == self.arms.len() { self.hi } else { 0.5 * (self.arms[k] + self.arms[k + 1]) };
        (lo, hi)
    }

    /// The arm whose value is nearest `value`; ties go to the lower arm.
    pub fn nearest_arm(&self, value: f64) -> usize {
        let mut best = 0;
        for (k, &a) in self.arms.iter().enumerate() {
            if (a - value).abs() < (self.arms[best] - value).abs() {
                best = k;
            }
        }
        best
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Feature {
    pub name: String,
    pub lo: f64,
    pub hi: f64,
}

impl Feature {
    /// Maps the declared range onto [0, 1]; values outside it are clipped, not refused.
    pub fn normalise(&self, value: f64) -> f64 {
        ((value - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0)
    }
}

/// Parameters whose served values must sum to 1, each within its own box.
#[derive(Debug, Clone, Serialize)]
pub struct SimplexGroup {
    pub name: String,
    /// Indices into [`ModuleSpace::params`].
    pub members: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardSource {
    ReturnPct,
}

#[derive(Debug, Clone, Serialize)]
pub struct RewardConfig {
    pub source: RewardSource,
    pub scale: f64,
    pub clip: f64,
    pub objective: Objective,
}

impl RewardConfig {
    /// The reward an outcome carries, before clipping: the one it gives,
    /// else 0 for a trade not taken, else the trade's return times `scale`.
    /// `None` for a taken trade with neither: the agent refuses that
    /// outcome, a counterfactual reads it as 0. The one place this rule is
    /// written (the agent, its counterfactuals and the backtest all use it).
    pub fn raw(&self, reward: Option<f64>, traded: bool, return_pct: Option<f64>) -> Option<f64> {
        match (reward, traded, return_pct) {
            (Some(r), _, _) => Some(r),
            (None, false, _) => Some(0.0),
            (None, true, Some(rp)) => Some(rp * self.scale),
            (None, true, None) => None,
        }
    }

    /// `raw` held to `[-clip, clip]`, as learners see it.
    pub fn clipped(&self, raw: f64) -> f64 {
        raw.clamp(-self.clip, self.clip)
    }
}

/// What the counterfactual estimator maximises per opportunity, for a
/// table whose return on it is `v`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "objective", rename_all = "snake_case")]
pub enum Objective {
    /// `E[v]`: a scale parameter then goes to its largest value whenever the
    /// mean return is positive, however noisy.
    Mean,
    /// `E[v] - risk_aversion * Var[v]`.
    MeanVariance { risk_aversion: f64 },
    /// Log growth, `E[ln(1 + v)]`, to second order `E[v] - E[v^2] / 2`, with
    /// the risk taken at `fraction` of Kelly: `E[v] - E[v^2] / (2 fraction)`,
    /// whose best scale is `fraction` times the Kelly scale `E[u] / E[u^2]`.
    Kelly { fraction: f64 },
}

impl Objective {
    /// `c` of the per-opportunity utility `v - c v^2`: the objective to
    /// second order. Mean-variance uses the second moment for the variance;
    /// they differ by the squared mean, which for a trade's return is about a
    /// hundredth of its second moment (its standard deviation is about ten
    /// times its mean).
    pub fn curvature(&self) -> f64 {
        match *self {
            Objective::Mean => 0.0,
            Objective::MeanVariance { risk_aversion } => risk_aversion,
            Objective::Kelly { fraction } => 1.0 / (2.0 * fraction),
        }
    }

    /// The utility's total over opportunities whose returns have sum `s` and sum of squares `ss`.
    pub fn total(&self, s: f64, ss: f64) -> f64 {
        s - self.curvature() * ss
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LearningConfig {
    pub prior_mean: f64,
    pub prior_strength: f64,
    pub prior_shape: f64,
    pub prior_noise_sd: f64,
    pub pooling_strength: f64,
    pub discount: f64,
    pub baseline_window: f64,
    pub pool_refresh_outcomes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SafetyConfig {
    pub max_change_rate: f64,
    pub trust_initial: f64,
    pub trust_growth_outcomes: f64,
    /// Reward units: the realised shortfall against the defaults that stops
    /// exploration (see `agent::budget`).
    pub loss_budget: f64,
}

/// Fewer outcomes per side than this and the normal approximation is not
/// trusted: the least rollback window a model file may set, and the least
/// `min_outcomes` of an A/B test (`rollout::AbSettings`).
pub const MIN_OUTCOMES: u64 = 30;

/// The automatic rollback watch: the live policy's rolling reward over the
/// last `window` decisions against an earlier generation's and the seed
/// defaults' off-policy estimate.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackConfig {
    pub enabled: bool,
    pub window: usize,
    /// A fall smaller than this (reward units) never triggers a rollback.
    pub margin: f64,
    /// Significance level of each check.
    pub alpha: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PendingConfig {
    pub capacity: usize,
    pub ttl_secs: f64,
}

/// Settings of the per-module policy network that refines continuous values.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyConfig {
    pub enabled: bool,
    pub hidden: usize,
    pub learning_rate: f64,
    /// Spread of the Gaussian offset at the start, as a fraction of the arm's cell width.
    pub initial_spread: f64,
    /// The spread anneals towards this floor.
    pub min_spread: f64,
    /// Outcomes over which the spread halves its distance to the floor.
    pub spread_half_life: f64,
    pub batch_size: usize,
    pub replay_capacity: usize,
    /// Outcomes between training steps.
    pub train_every: usize,
}

/// A module's validated parameter space and settings.
#[derive(Debug, Clone, Serialize)]
pub struct ModuleSpace {
    pub name: String,
    /// Where it was loaded from, for error messages.
    pub origin: String,
    pub undeclared_features: UndeclaredFeatures,
    pub reward: RewardConfig,
    pub learning: LearningConfig,
    pub safety: SafetyConfig,
    pub pending: PendingConfig,
    pub policy: PolicyConfig,
    pub rollback: RollbackConfig,
    pub features: Vec<Feature>,
    pub params: Vec<Parameter>,
    pub simplex_groups: Vec<SimplexGroup>,
    /// Roles, scopes and strategies; `None` when the file declares none
    /// (every parameter is then opaque, learning from bandit feedback).
    pub counterfactual: Option<Counterfactual>,
}

/// What a decision's features that the module does not declare get.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UndeclaredFeatures {
    /// Accepted, listed in the answer's `ignored_features`, kept in the
    /// decision log and counted; never learned from. Trading code sends what
    /// it has, so refusing would cost the module its parameters.
    #[default]
    Accept,
    /// Refused with a 422 that names the feature (for modules that want typos caught).
    Reject,
}

impl ModuleSpace {
    pub fn from_toml_str(text: &str, origin: &str) -> Result<ModuleSpace, SpaceError> {
        let spec: ModuleSpec =
            toml::from_str(text).map_err(|e| SpaceError::Parse { file: origin.to_string(), message: one_line(&e) })?;
        spec.validate(origin)
    }

    pub fn load(path: &Path) -> Result<ModuleSpace, SpaceError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| SpaceError::Io { file: path.to_path_buf(), source })?;
        ModuleSpace::from_toml_str(&text, &path.display().to_string())
    }

    pub fn param_index(&self, full_name: &str) -> Option<usize> {
        self.params.iter().position(|p| p.full_name == full_name)
    }

    pub fn feature_index(&self, name: &str) -> Option<usize> {
        self.features.iter().position(|f| f.name == name)
    }

    pub fn defaults(&self) -> Vec<f64> {
        self.params.iter().map(|p| p.default).collect()
    }
}

fn one_line(e: &toml::de::Error) -> String {
    e.to_string().lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join(" ")
}

/// Every module's space, keyed by module name.
#[derive(Debug, Clone, Default)]
pub struct Spaces {
    modules: BTreeMap<String, Arc<ModuleSpace>>,
}

impl Spaces {
    /// Loads every `*.toml` in `dir`.
    pub fn load_dir(dir: &Path) -> Result<Spaces, SpaceError> {
        let entries = std::fs::read_dir(dir).map_err(|source| SpaceError::Io { file: dir.to_path_buf(), source })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(SpaceError::NoModules { dir: dir.to_path_buf() });
        }
        let mut spaces = Spaces::default();
        for path in paths {
            spaces.insert(ModuleSpace::load(&path)?)?;
        }
        Ok(spaces)
    }

    /// The three modules shipped in `models/`, compiled in so that tests and
    /// benchmarks never depend on the working directory.
    pub fn builtin() -> Spaces {
        let mut spaces = Spaces::default();
        for (origin, text) in BUILTIN {
            let space = ModuleSpace::from_toml_str(text, origin).expect("models/ files are valid");
            spaces.insert(space).expect("models/ modules are distinct");
        }
        spaces
    }

    /// The built-in modules with `edit` applied to each (tests and
    /// benchmarks that vary one setting).
    pub fn builtin_with(edit: impl Fn(&mut ModuleSpace)) -> Spaces {
        let mut spaces = Spaces::default();
        for space in Spaces::builtin().iter() {
            let mut space = (**space).clone();
            edit(&mut space);
            spaces.insert(space).expect("the built-in modules are distinct");
        }
        spaces
    }

    /// The built-in models files as (path in the repository, text).
    pub fn builtin_files() -> &'static [(&'static str, &'static str)] {
        &BUILTIN
    }

    pub fn insert(&mut self, space: ModuleSpace) -> Result<(), SpaceError> {
        if let Some(first) = self.modules.get(&space.name) {
            return Err(SpaceError::DuplicateModule {
                module: space.name.clone(),
                first: first.origin.clone(),
                second: space.origin.clone(),
            });
        }
        self.modules.insert(space.name.clone(), Arc::new(space));
        Ok(())
    }

    pub fn get(&self, module: &str) -> Option<&Arc<ModuleSpace>> {
        self.modules.get(module)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<ModuleSpace>> {
        self.modules.values()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.modules.keys().map(String::as_str)
    }
}

const BUILTIN: [(&str, &str); 3] = [
    ("models/crypto.toml", include_str!("../../models/crypto.toml")),
    ("models/options.toml", include_str!("../../models/options.toml")),
    ("models/stocks.toml", include_str!("../../models/stocks.toml")),
];

#[cfg(test)]
mod tests;
