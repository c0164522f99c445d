//! The raw, serde-facing form of a `models/*.toml` file and its validation.
//!
//! Every check reports the file, the dotted field path and the offending value,
//! so a typo in a model file is found from the error message alone.

use std::collections::HashSet;

use serde::Deserialize;

use super::{
    Feature, LearningConfig, ModuleSpace, Objective, ParamKind, Parameter, PendingConfig, PolicyConfig, RewardConfig,
    RewardSource, RollbackConfig, SafetyConfig, SimplexGroup, SpaceError, UndeclaredFeatures,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleSpec {
    pub module: String,
    /// What a decision's undeclared features get: `accept` (kept in the
    /// decision log, not learned from; the default) or `reject` (a 422).
    #[serde(default)]
    pub undeclared_features: UndeclaredFeatures,
    pub reward: RewardSpec,
    pub learning: LearningSpec,
    pub safety: SafetySpec,
    pub pending: PendingSpec,
    #[serde(default)]
    pub policy: Option<PolicySpec>,
    #[serde(default)]
    pub rollback: Option<RollbackSpec>,
    #[serde(default)]
    pub features: Vec<FeatureSpec>,
    pub groups: Vec<GroupSpec>,
    /// Roles, scopes and strategies (see `space::roles`); absent: every parameter is opaque.
    #[serde(default)]
    pub counterfactual: Option<super::roles::CounterfactualSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardSpec {
    pub source: String,
    pub scale: f64,
    pub clip: f64,
    /// What the counterfactual estimator maximises: `"mean"` (the default),
    /// `"mean_variance"` (with `risk_aversion`) or `"kelly"` (with `kelly_fraction`).
    #[serde(default)]
    pub objective: Option<String>,
    #[serde(default)]
    pub risk_aversion: Option<f64>,
    #[serde(default)]
    pub kelly_fraction: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearningSpec {
    pub prior_mean: f64,
    pub prior_strength: f64,
    pub prior_shape: f64,
    pub prior_noise_sd: f64,
    pub pooling_strength: f64,
    pub discount: f64,
    pub baseline_window: f64,
    pub pool_refresh_outcomes: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetySpec {
    pub max_change_rate: f64,
    pub trust_initial: f64,
    pub trust_growth_outcomes: f64,
    /// How far (reward units, summed over decisions) the module's realised
    /// return may fall below the defaults' before exploration stops.
    #[serde(default = "default_loss_budget")]
    pub loss_budget: f64,
}

fn default_loss_budget() -> f64 {
    0.02
}

/// The automatic rollback watch (see `rollout`'s verdicts).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackSpec {
    pub enabled: bool,
    pub window: usize,
    pub margin: f64,
    pub alpha: f64,
}

impl Default for RollbackSpec {
    fn default() -> Self {
        RollbackSpec { enabled: true, window: 500, margin: 0.002, alpha: 0.001 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingSpec {
    pub capacity: usize,
    pub ttl_secs: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    pub enabled: bool,
    pub hidden: usize,
    pub learning_rate: f64,
    pub initial_spread: f64,
    pub min_spread: f64,
    pub spread_half_life: f64,
    pub batch_size: usize,
    pub replay_capacity: usize,
    pub train_every: usize,
}

impl Default for PolicySpec {
    fn default() -> Self {
        PolicySpec {
            enabled: true,
            hidden: 16,
            learning_rate: 0.01,
            initial_spread: 0.5,
            min_spread: 0.1,
            spread_half_life: 500.0,
            batch_size: 32,
            replay_capacity: 4096,
            train_every: 8,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    pub name: String,
    pub lo: f64,
    pub hi: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub name: String,
    #[serde(default)]
    pub simplex: bool,
    #[serde(default)]
    pub parameters: Vec<ParamSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    pub name: String,
    pub default: f64,
    pub lo: f64,
    pub hi: f64,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub arms: Option<usize>,
    #[serde(default)]
    pub max_change_rate: Option<f64>,
}

const DEFAULT_ARMS: usize = 5;
const MAX_ARMS: usize = 64;
const SIMPLEX_TOLERANCE: f64 = 1e-9;

/// Collects the file name so each check is one line.
struct Checker<'a> {
    file: &'a str,
}

impl Checker<'_> {
    fn fail(&self, field: impl Into<String>, value: impl std::fmt::Display, reason: impl Into<String>) -> SpaceError {
        SpaceError::Invalid {
            file: self.file.to_string(),
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    fn finite(&self, field: &str, v: f64) -> Result<f64, SpaceError> {
        if v.is_finite() {
            Ok(v)
        } else {
            Err(self.fail(field, v, "must be a finite number"))
        }
    }

    fn positive(&self, field: &str, v: f64) -> Result<f64, SpaceError> {
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(self.fail(field, v, "must be a finite number > 0"))
        }
    }

    /// `(0, 1]`
    fn fraction(&self, field: &str, v: f64) -> Result<f64, SpaceError> {
        if v > 0.0 && v <= 1.0 {
            Ok(v)
        } else {
            Err(self.fail(field, v, "must be in (0, 1]"))
        }
    }

    fn name(&self, field: &str, v: &str) -> Result<(), SpaceError> {
        let ok = !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok {
            Ok(())
        } else {
            Err(self.fail(field, format!("{v:?}"), "must be a non-empty name of letters, digits and '_'"))
        }
    }
}

impl ModuleSpec {
    pub fn validate(self, file: &str) -> Result<ModuleSpace, SpaceError> {
        let c = Checker { file };
        c.name("module", &self.module)?;

        let reward = RewardConfig {
            source: match self.reward.source.as_str() {
                "return_pct" => RewardSource::ReturnPct,
                other => return Err(c.fail("reward.source", format!("{other:?}"), "must be \"return_pct\"")),
            },
            scale: c.positive("reward.scale", self.reward.scale)?,
            clip: c.positive("reward.clip", self.reward.clip)?,
            objective: objective(&c, &self.reward)?,
        };

        let l = &self.learning;
        let learning = LearningConfig {
            prior_mean: c.finite("learning.prior_mean", l.prior_mean)?,
            prior_strength: c.positive("learning.prior_strength", l.prior_strength)?,
            prior_shape: if l.prior_shape.is_finite() && l.prior_shape > 1.0 {
                l.prior_shape
            } else {
                return Err(c.fail(
                    "learning.prior_shape",
                    l.prior_shape,
                    "must be > 1 so the prior noise variance is finite",
                ));
            },
            prior_noise_sd: c.positive("learning.prior_noise_sd", l.prior_noise_sd)?,
            pooling_strength: if l.pooling_strength.is_finite() && l.pooling_strength >= 0.0 {
                l.pooling_strength
            } else {
                return Err(c.fail("learning.pooling_strength", l.pooling_strength, "must be a finite number >= 0"));
            },
            discount: c.fraction("learning.discount", l.discount)?,
            baseline_window: if l.baseline_window.is_finite() && l.baseline_window >= 1.0 {
                l.baseline_window
            } else {
                return Err(c.fail("learning.baseline_window", l.baseline_window, "must be a finite number >= 1"));
            },
            pool_refresh_outcomes: if l.pool_refresh_outcomes >= 1 {
                l.pool_refresh_outcomes
            } else {
                return Err(c.fail("learning.pool_refresh_outcomes", 0, "must be >= 1"));
            },
        };

        let s = &self.safety;
        let safety = SafetyConfig {
            max_change_rate: c.fraction("safety.max_change_rate", s.max_change_rate)?,
            trust_initial: c.fraction("safety.trust_initial", s.trust_initial)?,
            trust_growth_outcomes: c.positive("safety.trust_growth_outcomes", s.trust_growth_outcomes)?,
            loss_budget: if s.loss_budget.is_finite() && s.loss_budget >= 0.0 {
                s.loss_budget
            } else {
                return Err(c.fail("safety.loss_budget", s.loss_budget, "must be a finite number >= 0"));
            },
        };

        let r = self.rollback.clone().unwrap_or_default();
        let rollback = RollbackConfig {
            enabled: r.enabled,
            window: if r.window as u64 >= super::MIN_OUTCOMES {
                r.window
            } else {
                return Err(c.fail("rollback.window", r.window, format!("must be >= {}", super::MIN_OUTCOMES)));
            },
            margin: if r.margin.is_finite() && r.margin >= 0.0 {
                r.margin
            } else {
                return Err(c.fail("rollback.margin", r.margin, "must be a finite number >= 0"));
            },
            alpha: if r.alpha > 0.0 && r.alpha <= 0.5 {
                r.alpha
            } else {
                return Err(c.fail("rollback.alpha", r.alpha, "must be in (0, 0.5]"));
            },
        };

        if self.pending.capacity == 0 {
            return Err(c.fail("pending.capacity", 0, "must be >= 1"));
        }
        let pending = PendingConfig {
            capacity: self.pending.capacity,
            ttl_secs: c.positive("pending.ttl_secs", self.pending.ttl_secs)?,
        };

        let p = self.policy.unwrap_or_default();
        let policy = PolicyConfig {
            enabled: p.enabled,
            hidden: if (1..=256).contains(&p.hidden) {
                p.hidden
            } else {
                return Err(c.fail("policy.hidden", p.hidden, "must be in 1..=256"));
            },
            learning_rate: c.positive("policy.learning_rate", p.learning_rate)?,
            initial_spread: c.fraction("policy.initial_spread", p.initial_spread)?,
            min_spread: c.fraction("policy.min_spread", p.min_spread)?,
            spread_half_life: c.positive("policy.spread_half_life", p.spread_half_life)?,
            batch_size: if p.batch_size >= 1 {
                p.batch_size
            } else {
                return Err(c.fail("policy.batch_size", 0, "must be >= 1"));
            },
            replay_capacity: if p.replay_capacity >= p.batch_size {
                p.replay_capacity
            } else {
                return Err(c.fail("policy.replay_capacity", p.replay_capacity, "must be >= policy.batch_size"));
            },
            train_every: if p.train_every >= 1 {
                p.train_every
            } else {
                return Err(c.fail("policy.train_every", 0, "must be >= 1"));
            },
        };
        if policy.min_spread > policy.initial_spread {
            return Err(c.fail("policy.min_spread", policy.min_spread, "must not exceed policy.initial_spread"));
        }

        let mut features = Vec::with_capacity(self.features.len());
        let mut seen = HashSet::new();
        for (i, f) in self.features.into_iter().enumerate() {
            let at = |k: &str| format!("features[{i}].{k}");
            c.name(&at("name"), &f.name)?;
            if !seen.insert(f.name.clone()) {
                return Err(c.fail(at("name"), format!("{:?}", f.name), "is declared twice"));
            }
            c.finite(&at("lo"), f.lo)?;
            c.finite(&at("hi"), f.hi)?;
            if f.lo >= f.hi {
                return Err(c.fail(at("lo"), f.lo, format!("must be below hi = {}", f.hi)));
            }
            features.push(Feature { name: f.name, lo: f.lo, hi: f.hi });
        }

        if self.groups.is_empty() {
            return Err(c.fail("groups", "[]", "a module needs at least one group"));
        }
        let mut params = Vec::new();
        let mut simplex_groups = Vec::new();
        let mut group_names = HashSet::new();
        for (g, group) in self.groups.into_iter().enumerate() {
            let gat = |k: &str| format!("groups[{g}].{k}");
            c.name(&gat("name"), &group.name)?;
            if !group_names.insert(group.name.clone()) {
                return Err(c.fail(gat("name"), format!("{:?}", group.name), "is declared twice"));
            }
            if group.parameters.is_empty() {
                return Err(c.fail(gat("parameters"), "[]", format!("group {:?} is empty", group.name)));
            }
            let first = params.len();
            let mut names = HashSet::new();
            for (i, spec) in group.parameters.into_iter().enumerate() {
                let field_prefix = format!("groups[{g}].parameters[{i}]");
                if !names.insert(spec.name.clone()) {
                    return Err(c.fail(
                        format!("{field_prefix}.name"),
                        format!("{:?}", spec.name),
                        "is declared twice in its group",
                    ));
                }
                params.push(validate_param(&c, &field_prefix, &group.name, group.simplex, &safety, spec)?);
            }
            if group.simplex {
                let members: Vec<usize> = (first..params.len()).collect();
                check_simplex(&c, &gat("parameters"), &params[first..])?;
                simplex_groups.push(SimplexGroup { name: group.name, members });
            }
        }

        let counterfactual = match self.counterfactual {
            None => None,
            Some(cf) => {
                let groups: Vec<(String, Vec<usize>)> =
                    simplex_groups.iter().map(|g: &SimplexGroup| (g.name.clone(), g.members.clone())).collect();
                let fail = |field: String, value: String, reason: String| c.fail(field, value, reason);
                Some(super::roles::validate(cf, &params, &features, &groups, &fail)?)
            }
        };

        Ok(ModuleSpace {
            counterfactual,
            name: self.module,
            origin: file.to_string(),
            undeclared_features: self.undeclared_features,
            reward,
            learning,
            safety,
            pending,
            policy,
            rollback,
            features,
            params,
            simplex_groups,
        })
    }
}

/// `[reward] objective` and the one setting it takes; a setting of
/// another objective is refused rather than silently ignored.
fn objective(c: &Checker<'_>, r: &RewardSpec) -> Result<Objective, SpaceError> {
    let name = r.objective.as_deref().unwrap_or("mean");
    let stray = |field: &str, wanted: &str| {
        c.fail(
            format!("reward.{field}"),
            "set",
            format!("only applies with objective = \"{wanted}\" (objective is {name:?})"),
        )
    };
    match name {
        "mean" | "mean_variance" | "kelly" => {}
        other => {
            return Err(c.fail(
                "reward.objective",
                format!("{other:?}"),
                "must be \"mean\", \"mean_variance\" or \"kelly\"",
            ))
        }
    }
    if r.risk_aversion.is_some() && name != "mean_variance" {
        return Err(stray("risk_aversion", "mean_variance"));
    }
    if r.kelly_fraction.is_some() && name != "kelly" {
        return Err(stray("kelly_fraction", "kelly"));
    }
    Ok(match name {
        "mean_variance" => {
            let l =
                r.risk_aversion.ok_or_else(|| c.fail("reward.risk_aversion", "missing", "mean_variance needs it"))?;
            Objective::MeanVariance { risk_aversion: c.positive("reward.risk_aversion", l)? }
        }
        "kelly" => Objective::Kelly { fraction: c.fraction("reward.kelly_fraction", r.kelly_fraction.unwrap_or(1.0))? },
        _ => Objective::Mean,
    })
}

fn validate_param(
    c: &Checker,
    at: &str,
    group: &str,
    simplex: bool,
    safety: &SafetyConfig,
    spec: ParamSpec,
) -> Result<Parameter, SpaceError> {
    let field = |k: &str| format!("{at}.{k}");
    c.name(&field("name"), &spec.name)?;
    let lo = c.finite(&field("lo"), spec.lo)?;
    let hi = c.finite(&field("hi"), spec.hi)?;
    let default = c.finite(&field("default"), spec.default)?;
    if lo >= hi {
        return Err(c.fail(field("lo"), lo, format!("must be below hi = {hi}")));
    }
    if !(lo..=hi).contains(&default) {
        return Err(c.fail(field("default"), default, format!("is outside its range [{lo}, {hi}]")));
    }
    let kind = match spec.kind.as_deref() {
        None | Some("continuous") => ParamKind::Continuous,
        Some("integer") => ParamKind::Integer,
        Some(other) => {
            return Err(c.fail(field("kind"), format!("{other:?}"), "must be \"continuous\" or \"integer\""))
        }
    };
    let n_arms = spec.arms.unwrap_or(DEFAULT_ARMS);
    if !(2..=MAX_ARMS).contains(&n_arms) {
        return Err(c.fail(field("arms"), n_arms, format!("must be in 2..={MAX_ARMS}")));
    }
    if kind == ParamKind::Integer {
        for (k, v) in [("lo", lo), ("hi", hi), ("default", default)] {
            if v.fract() != 0.0 {
                return Err(c.fail(field(k), v, "must be a whole number for an integer parameter"));
            }
        }
        if simplex {
            return Err(c.fail(field("kind"), "\"integer\"", "a simplex group holds continuous weights only"));
        }
        let values = hi - lo + 1.0;
        if n_arms as f64 > values {
            return Err(c.fail(
                field("arms"),
                n_arms,
                format!("an integer range [{lo}, {hi}] holds only {values} values"),
            ));
        }
    }
    let max_change_rate = match spec.max_change_rate {
        Some(v) => c.fraction(&field("max_change_rate"), v)?,
        None => safety.max_change_rate,
    };
    let (arms, default_arm) = arm_grid(lo, hi, default, n_arms, kind);
    Ok(Parameter {
        full_name: format!("{group}.{}", spec.name),
        group: group.to_string(),
        name: spec.name,
        default,
        lo,
        hi,
        kind,
        arms,
        default_arm,
        max_change_rate,
        simplex,
    })
}

/// Evenly spaced arms over `[lo, hi]`, with the grid point nearest the default
/// moved onto it, so a cold agent's greedy arm is exactly the seed default.
fn arm_grid(lo: f64, hi: f64, default: f64, n: usize, kind: ParamKind) -> (Vec<f64>, usize) {
    let mut arms: Vec<f64> = (0..n).map(|k| lo + (hi - lo) * k as f64 / (n - 1) as f64).collect();
    if kind == ParamKind::Integer {
        for a in &mut arms {
            *a = a.round();
        }
    }
    // End points stay exact, whatever the float steps did.
    arms[0] = lo;
    arms[n - 1] = hi;
    let nearest =
        (0..n).min_by(|&a, &b| (arms[a] - default).abs().total_cmp(&(arms[b] - default).abs())).expect("n >= 2");
    arms[nearest] = default;
    (arms, nearest)
}

fn check_simplex(c: &Checker, at: &str, members: &[Parameter]) -> Result<(), SpaceError> {
    let sum_default: f64 = members.iter().map(|p| p.default).sum();
    if (sum_default - 1.0).abs() > SIMPLEX_TOLERANCE {
        return Err(c.fail(format!("{at}[*].default"), sum_default, "defaults of a simplex group must sum to 1"));
    }
    let sum_lo: f64 = members.iter().map(|p| p.lo).sum();
    let sum_hi: f64 = members.iter().map(|p| p.hi).sum();
    if sum_lo > 1.0 + SIMPLEX_TOLERANCE {
        return Err(c.fail(format!("{at}[*].lo"), sum_lo, "lower bounds of a simplex group must sum to <= 1"));
    }
    if sum_hi < 1.0 - SIMPLEX_TOLERANCE {
        return Err(c.fail(format!("{at}[*].hi"), sum_hi, "upper bounds of a simplex group must sum to >= 1"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arm_grid_holds_the_default_and_both_ends() {
        let (arms, k) = arm_grid(0.8, 1.4, 1.0, 5, ParamKind::Continuous);
        assert_eq!(arms[k], 1.0);
        assert_eq!(arms[0], 0.8);
        assert_eq!(arms[4], 1.4);
        assert!(arms.windows(2).all(|w| w[0] < w[1]), "{arms:?}");
    }

    #[test]
    fn integer_grid_is_whole_numbers() {
        let (arms, k) = arm_grid(1.0, 5.0, 2.0, 5, ParamKind::Integer);
        assert_eq!(arms, vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(k, 1);
        let (arms, _) = arm_grid(1.0, 9.0, 4.0, 3, ParamKind::Integer);
        assert!(arms.iter().all(|a| a.fract() == 0.0), "{arms:?}");
        assert!(arms.contains(&4.0));
    }
}
