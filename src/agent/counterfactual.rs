//! What one trade reveals about the values that were not served.
//!
//! From a decision (its features, served values and how it was served) and
//! its outcome (traded, reward, [`Evidence`]) this module builds an
//! [`Observation`]: everything needed to say exactly what any other parameter
//! table would have earned on the same opportunity, or that it cannot be
//! known. Pure functions only; the writer's estimator (`joint.rs`), the
//! trade records' `alternative_outcomes` ([`alternatives`]) and the tests all
//! read the same numbers.
//!
//! The rule the declarations describe (docs/counterfactuals.md): the score is
//! the weights' normalised blend `sum w_i f_i / sum w_i` (or the reported
//! confidence); the trade happens iff score >= the in-scope gate; a skip
//! earns exactly 0; a taken trade earns `scale x u`, and along its path the
//! exit moves its return by `capital x (pnl_exit - pnl_served)`.

use serde::{Deserialize, Serialize};

use crate::space::{Counterfactual, ModuleSpace, Role, ScoreSource};

use super::evidence::{exit_on_path, Evidence};
use super::{Decision, Outcome};

/// How an exploring decision was served, recorded so that the observation
/// probability of its trade can be recomputed exactly (replay, evaluation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CfServing {
    /// Whether the most permissive gate (and score-maximising weights) was served.
    pub permissive: bool,
    /// The probability of serving it.
    pub epsilon: f64,
    /// Per parameter: the values of either branch. The served values are one of them.
    pub incumbent: Vec<f64>,
    pub permissive_values: Vec<f64>,
    /// The probability that this opportunity's trade is taken (and so its
    /// return seen), when it is known at decide time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_obs: Option<f64>,
    /// What was explored and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub explored: Vec<Explored>,
    /// It asked to explore but the loss budget had no room: nothing was.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held_by_budget: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explored {
    pub parameter: String,
    pub reason: ExploreReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExploreReason {
    /// A gate served below its incumbent: the returns of trades today's gate skips.
    GateBelowIncumbent,
    /// Weights that maximise this decision's score, with the permissive gate.
    WeightsMaxScore,
    /// An opaque parameter, Thompson-sampled as before.
    OpaqueThompson,
    /// A trade only the permissive gate takes, sized at the smallest scale in
    /// reach: it is taken to be seen, and every scale learns from it alike.
    SmallestScaleToSee,
}

/// Why an outcome teaches the determined parameters nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unusable {
    #[error("the decision was not served for counterfactuals (greedy, A/B challenger or no declarations)")]
    NotServed,
    #[error("the strategy is not known")]
    NoStrategy,
    #[error("feature {0:?} of the score was not sent")]
    MissingFeature(String),
    #[error("the outcome carries no trade.confidence")]
    NoConfidence,
    #[error("trade.confidence {reported} disagrees with the weights' score {computed}")]
    ConfidenceMismatch { reported: f64, computed: f64 },
    #[error("traded = {traded} but the served gate says {fires} (score {score}, threshold {threshold})")]
    GateMismatch { traded: bool, fires: bool, score: f64, threshold: f64 },
    #[error("the outcome carries no trade.exit_analysis.path")]
    NoPath,
    #[error("the outcome carries no applied capital {0:?}")]
    NoCapital(String),
    #[error("a scale of {0} cannot be divided out")]
    ZeroScale(f64),
}

/// Reported and computed scores differ by more than this: the module does
/// not score as declared.
pub const SCORE_TOLERANCE: f64 = 1e-6;

/// The position's path and what the served exit did on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitPath {
    pub path: Vec<f64>,
    /// Capital per unit of scale: returns move by this x the change of P&L.
    pub capital_per_scale: f64,
    pub pnl_served: f64,
}

/// One opportunity, as the estimator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// The strategy's index, or 0 when no parameter is strategy-scoped.
    pub slot: usize,
    /// The in-scope gate and scale parameters.
    pub gate: Option<usize>,
    pub scale: Option<usize>,
    pub traded: bool,
    /// The weights group's features, in its members' order (score = weights).
    pub features: Vec<f64>,
    /// The reported confidence (score = confidence).
    pub confidence: Option<f64>,
    /// Return per unit of scale under the served exit; 0 when not traded.
    pub u: f64,
    /// The applied scale, when the module capped it below the served value.
    pub cap: Option<f64>,
    pub exit: Option<ExitPath>,
    /// The probability that the trade was taken, under the serving policy.
    pub p_obs: f64,
}

impl Observation {
    /// The score the table `values` gives this opportunity.
    pub fn score(&self, cf: &Counterfactual, values: &[f64]) -> f64 {
        match (&cf.weights, self.confidence) {
            (Some(w), _) if cf.score == Some(ScoreSource::Weights) => {
                blend(w.members.iter().map(|&p| values[p]), self.features.iter().copied())
            }
            (_, Some(c)) => c,
            _ => 0.0,
        }
    }

    /// Whether the table's gate lets the trade through.
    pub fn fires(&self, cf: &Counterfactual, values: &[f64]) -> bool {
        self.gate.is_none_or(|g| self.score(cf, values) >= values[g])
    }

    /// Return per unit of scale of the taken trade with the table's exit.
    pub fn unit_return(&self, cf: &Counterfactual, values: &[f64]) -> f64 {
        match (&self.exit, &cf.exit) {
            (Some(e), Some(roles)) => {
                let stop = roles.stop_loss.map(|p| values[p]);
                let target = roles.profit_target.map(|p| values[p]);
                let (_, pnl) = exit_on_path(&e.path, stop, target).expect("a path is never empty here");
                self.u + e.capital_per_scale * (pnl - e.pnl_served)
            }
            _ => self.u,
        }
    }

    /// The scale the table applies (capped as the module capped the served one).
    pub fn applied_scale(&self, values: &[f64]) -> f64 {
        let m = self.scale.map_or(1.0, |s| values[s]);
        self.cap.map_or(m, |c| m.min(c))
    }

    /// What the table `values` would have earned on this opportunity: 0 when
    /// its gate skips, the trade's return at its scale and exit when the trade
    /// was taken, and `None` when its gate lets through a trade that was not
    /// taken (that return was never seen).
    pub fn value(&self, cf: &Counterfactual, values: &[f64]) -> Option<f64> {
        if !self.fires(cf, values) {
            return Some(0.0);
        }
        if !self.traded {
            return None;
        }
        Some(self.unit_return(cf, values) * self.applied_scale(values))
    }
}

/// `sum w_i f_i / sum w_i`.
pub fn blend(weights: impl Iterator<Item = f64>, features: impl Iterator<Item = f64>) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for (w, f) in weights.zip(features) {
        num += w * f;
        den += w;
    }
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

/// The strategy of a decision and its outcome, as an index of the module's
/// strategies: the outcome's confirms or supplies the decision's (the agent
/// refused a disagreement when it accepted the outcome).
pub fn strategy_of(cf: &Counterfactual, decision: &Decision, evidence: &Evidence) -> Option<usize> {
    decision.strategy.as_deref().or(evidence.strategy.as_deref()).and_then(|s| cf.strategy_index(s))
}

/// The raw reward of the outcome, before clipping: counterfactual returns
/// are exact, and clipping one arm's but not another's would bias their
/// difference.
pub fn raw_reward(space: &ModuleSpace, outcome: &Outcome) -> f64 {
    space.reward.raw(outcome.reward, outcome.traded, outcome.return_pct).unwrap_or(0.0)
}

/// What the outcome of `decision` reveals, or why it reveals nothing about
/// the determined parameters.
pub fn observe(
    space: &ModuleSpace,
    cf: &Counterfactual,
    decision: &Decision,
    outcome: &Outcome,
) -> Result<Observation, Unusable> {
    let serving = decision.counterfactual.as_ref().ok_or(Unusable::NotServed)?;
    let observed = observe_with(space, cf, decision, outcome, &decision.values)?;
    // The probability of the trade being taken: either branch's gate.
    let fires_inc = observed.fires(cf, &serving.incumbent);
    let fires_perm = observed.fires(cf, &serving.permissive_values);
    let p_obs =
        serving.epsilon * f64::from(u8::from(fires_perm)) + (1.0 - serving.epsilon) * f64::from(u8::from(fires_inc));
    if observed.traded && p_obs <= 0.0 {
        return Err(Unusable::GateMismatch {
            traded: true,
            fires: false,
            score: observed.score(cf, &decision.values),
            threshold: f64::NAN,
        });
    }
    Ok(Observation { p_obs, ..observed })
}

/// [`observe`] with the served `values` given and `p_obs` left at 1: what
/// [`alternatives`] needs, for greedy decisions too.
pub fn observe_with(
    space: &ModuleSpace,
    cf: &Counterfactual,
    decision: &Decision,
    outcome: &Outcome,
    values: &[f64],
) -> Result<Observation, Unusable> {
    let evidence = &outcome.evidence;
    let strategy = strategy_of(cf, decision, evidence);
    if strategy.is_none() && cf.strategy_scoped() {
        return Err(Unusable::NoStrategy);
    }
    let session = decision.context.session;
    let gate = cf.in_scope_of(&cf.gates, session, strategy);
    let scale = cf.in_scope_of(&cf.scales, session, strategy);
    let slot = if cf.strategy_scoped() { strategy.unwrap_or(0) } else { 0 };

    let mut features = Vec::new();
    if let (Some(w), Some(ScoreSource::Weights)) = (&cf.weights, cf.score) {
        for &f in &w.features {
            match decision.features[f] {
                Some(v) => features.push(v),
                None => return Err(Unusable::MissingFeature(space.features[f].name.clone())),
            }
        }
    }
    let confidence = evidence.confidence;
    let mut obs = Observation {
        slot,
        gate,
        scale,
        traded: outcome.traded,
        features,
        confidence,
        u: 0.0,
        cap: None,
        exit: None,
        p_obs: 1.0,
    };
    match cf.score {
        Some(ScoreSource::Confidence) if gate.is_some() && confidence.is_none() => return Err(Unusable::NoConfidence),
        Some(ScoreSource::Weights) => {
            if let Some(reported) = confidence {
                let computed = obs.score(cf, values);
                if (reported - computed).abs() > SCORE_TOLERANCE {
                    return Err(Unusable::ConfidenceMismatch { reported, computed });
                }
            }
        }
        _ => {}
    }
    if let Some(g) = gate {
        let fires = obs.fires(cf, values);
        if fires != outcome.traded {
            return Err(Unusable::GateMismatch {
                traded: outcome.traded,
                fires,
                score: obs.score(cf, values),
                threshold: values[g],
            });
        }
    }
    if !outcome.traded {
        return Ok(obs);
    }
    let reward = raw_reward(space, outcome);
    let served_scale = scale.map_or(1.0, |s| values[s]);
    let applied = scale.and_then(|s| evidence.applied.get(&space.params[s].full_name).copied()).unwrap_or(served_scale);
    if applied.abs() < 1e-12 {
        return Err(Unusable::ZeroScale(applied));
    }
    if applied < served_scale {
        obs.cap = Some(applied);
    }
    obs.u = reward / applied;
    if let Some(roles) = &cf.exit {
        if evidence.path.is_empty() {
            return Err(Unusable::NoPath);
        }
        let capital =
            evidence.applied.get(&roles.capital).copied().ok_or_else(|| Unusable::NoCapital(roles.capital.clone()))?;
        let stop = roles.stop_loss.map(|p| values[p]);
        let target = roles.profit_target.map(|p| values[p]);
        let (_, pnl_served) = exit_on_path(&evidence.path, stop, target).expect("non-empty");
        obs.exit = Some(ExitPath { path: evidence.path.clone(), capital_per_scale: capital / applied, pnl_served });
    }
    Ok(obs)
}

/// What one arm of one parameter would have done on this trade, the other
/// parameters as served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmOutcome {
    pub value: f64,
    /// Whether the trade would have been taken.
    pub traded: bool,
    /// Its reward, where the outcome determines it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward: Option<f64>,
}

impl ArmOutcome {
    /// The plan's wording for `parameter_performance.alternative_outcomes`.
    pub fn label(&self) -> &'static str {
        match (self.traded, self.reward.is_some()) {
            (false, _) => "would_have_skipped",
            (true, true) => "would_have_triggered",
            (true, false) => "would_have_triggered_unseen",
        }
    }
}

/// Per determined parameter in scope: every arm's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamAlternatives {
    pub parameter: String,
    pub role: Role,
    pub arms: Vec<ArmOutcome>,
}

/// For a decision and its outcome, per parameter the outcome determines,
/// what each of its arms would have done: the trade record's
/// `parameter_performance.alternative_outcomes`. Opaque and out-of-scope
/// parameters are left out; an outcome that determines nothing (see
/// [`Unusable`]) gives the reason instead.
pub fn alternatives(
    space: &ModuleSpace,
    decision: &Decision,
    outcome: &Outcome,
) -> Result<Vec<ParamAlternatives>, Unusable> {
    let cf = space.counterfactual.as_ref().ok_or(Unusable::NotServed)?;
    let obs = observe_with(space, cf, decision, outcome, &decision.values)?;
    let strategy = strategy_of(cf, decision, &outcome.evidence);
    let session = decision.context.session;
    let mut out = Vec::new();
    for (p, param) in space.params.iter().enumerate() {
        let role = cf.roles[p];
        if !role.determined() || !cf.in_scope(p, session, strategy) {
            continue;
        }
        // A gate or scale of another slot is in scope only through its own slot.
        if (role == Role::Gate && obs.gate != Some(p)) || (role == Role::Scale && obs.scale != Some(p)) {
            continue;
        }
        let arms = param
            .arms
            .iter()
            .map(|&a| {
                let mut values = decision.values.clone();
                values[p] = a;
                ArmOutcome { value: a, traded: obs.fires(cf, &values), reward: obs.value(cf, &values) }
            })
            .collect();
        out.push(ParamAlternatives { parameter: param.full_name.clone(), role, arms });
    }
    Ok(out)
}
