//! Off-policy evaluation: what another policy would have earned on the
//! decisions the agent logged, from the probabilities it logged them with.
//!
//! Target policies are factorised like the agent: per context and parameter, a
//! distribution over the arms (one-hot for fixed or greedy parameters). Three
//! estimators, each with a 95% normal confidence interval:
//! inverse propensity scoring (unbiased, high variance), self-normalised IPS
//! (slightly biased, steadier) and doubly robust (a reward model corrected by
//! IPS on its residuals: unbiased if either the propensities or the model are
//! right). The reward model is cross-fitted on two halves of the log so it is
//! never scored on the decisions it was fitted to.
//!
//! Limits. Weights are products over every parameter, so a deterministic
//! target over many parameters matches few decisions of an exploring log
//! (`effective_n` says how few). And the agent only explores inside its trust
//! regions: a target that puts weight outside those regions has no support in
//! the log, which shows as a `mean_weight` well below 1.
//!
//! Pure: the estimators know the parameter spaces and nothing above them.
//! What reads the layers above lives there: a [`LoggedDecision`] from a
//! stored record is `store::records`' (`LoggedDecision::from_record`), a
//! target policy from the agent's view is `agent::view`'s
//! (`TargetPolicy::greedy`, `TargetPolicy::thompson`).

use serde::Serialize;

use crate::space::{Context, ModuleSpace};

/// One logged decision and what it earned.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoggedDecision {
    pub context: Context,
    /// Per parameter, in the module's order.
    pub arms: Vec<usize>,
    pub values: Vec<f64>,
    /// Per parameter, the probability the logging policy chose that arm.
    pub propensities: Vec<f64>,
    /// Their product.
    pub propensity: f64,
    pub traded: bool,
    /// The decision's return (0 when it did not trade).
    pub reward: f64,
}

/// An estimate of a policy's mean reward per decision.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Estimate {
    pub value: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// Decisions used.
    pub n: usize,
    /// (sum of weights)^2 / sum of squared weights: how many decisions the
    /// estimate is effectively worth.
    pub effective_n: f64,
    /// Mean importance weight. Near 1 when the logging policy could have
    /// taken every action the target takes; well below 1 means the target
    /// puts weight where the logger never went (for the agent: outside the
    /// trust regions it logged with), and IPS and DR are then biased low.
    pub mean_weight: f64,
}

impl Estimate {
    pub fn contains(&self, x: f64) -> bool {
        self.ci_low <= x && x <= self.ci_high
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OpeError {
    #[error("no logged decisions to evaluate")]
    Empty,
    #[error("logged decision {index}: propensity {value} is not in (0, 1]")]
    BadPropensity { index: usize, value: f64 },
    #[error("logged decision {index} has {got} arms; the target policy has {want} parameters")]
    Shape { index: usize, got: usize, want: usize },
}

/// Per `[context][param]`, a probability for every arm.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetPolicy {
    pub name: String,
    pub probs: Vec<Vec<Vec<f64>>>,
}

impl TargetPolicy {
    /// Always the same arms in a context.
    pub fn fixed(name: &str, space: &ModuleSpace, arms: &[Vec<usize>]) -> TargetPolicy {
        let probs = arms
            .iter()
            .map(|ctx| {
                space
                    .params
                    .iter()
                    .zip(ctx)
                    .map(|(p, &k)| (0..p.arms.len()).map(|j| if j == k { 1.0 } else { 0.0 }).collect())
                    .collect()
            })
            .collect();
        TargetPolicy { name: name.to_string(), probs }
    }

    pub fn defaults(space: &ModuleSpace) -> TargetPolicy {
        let arms: Vec<usize> = space.params.iter().map(|p| p.default_arm).collect();
        TargetPolicy::fixed("defaults", space, &vec![arms; Context::COUNT])
    }

    /// The probability of choosing `arms` in `context`.
    pub fn probability(&self, context: Context, arms: &[usize]) -> f64 {
        self.probs[context.index()].iter().zip(arms).map(|(p, &k)| p.get(k).copied().unwrap_or(0.0)).product()
    }

    /// The arm each parameter takes most often in `context`.
    pub fn modal_arms(&self, context: Context) -> Vec<usize> {
        self.probs[context.index()]
            .iter()
            .map(|p| (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0))
            .collect()
    }
}

fn check(logs: &[LoggedDecision], target: &TargetPolicy) -> Result<(), OpeError> {
    if logs.is_empty() {
        return Err(OpeError::Empty);
    }
    let want = target.probs[0].len();
    for (index, l) in logs.iter().enumerate() {
        if !(l.propensity > 0.0 && l.propensity <= 1.0 + 1e-9) {
            return Err(OpeError::BadPropensity { index, value: l.propensity });
        }
        if l.arms.len() != want {
            return Err(OpeError::Shape { index, got: l.arms.len(), want });
        }
    }
    Ok(())
}

fn weights(logs: &[LoggedDecision], target: &TargetPolicy) -> Vec<f64> {
    logs.iter().map(|l| target.probability(l.context, &l.arms) / l.propensity).collect()
}

/// The normal quantile of a two-sided 95% interval.
pub(crate) const Z95: f64 = 1.959_963_984_540_054;

/// Mean and a 95% interval from per-decision contributions.
fn mean_ci(xs: &[f64], w: &[f64]) -> Estimate {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let half = Z95 * (var / n).sqrt();
    Estimate {
        value: mean,
        ci_low: mean - half,
        ci_high: mean + half,
        n: xs.len(),
        effective_n: effective_n(w),
        mean_weight: w.iter().sum::<f64>() / n,
    }
}

fn effective_n(w: &[f64]) -> f64 {
    let (s, s2) = w.iter().fold((0.0, 0.0), |(s, s2), x| (s + x, s2 + x * x));
    if s2 > 0.0 {
        s * s / s2
    } else {
        0.0
    }
}

/// Inverse propensity scoring: mean of w * r.
pub fn ips(logs: &[LoggedDecision], target: &TargetPolicy) -> Result<Estimate, OpeError> {
    check(logs, target)?;
    let w = weights(logs, target);
    let xs: Vec<f64> = logs.iter().zip(&w).map(|(l, w)| w * l.reward).collect();
    Ok(mean_ci(&xs, &w))
}

/// Self-normalised IPS: sum w r / sum w, with a delta-method interval.
pub fn snips(logs: &[LoggedDecision], target: &TargetPolicy) -> Result<Estimate, OpeError> {
    check(logs, target)?;
    let w = weights(logs, target);
    let n = logs.len() as f64;
    let sw: f64 = w.iter().sum();
    if sw <= 0.0 {
        return Ok(Estimate {
            value: 0.0,
            ci_low: f64::NEG_INFINITY,
            ci_high: f64::INFINITY,
            n: logs.len(),
            effective_n: 0.0,
            mean_weight: 0.0,
        });
    }
    let value = logs.iter().zip(&w).map(|(l, w)| w * l.reward).sum::<f64>() / sw;
    let mean_w = sw / n;
    let var = logs.iter().zip(&w).map(|(l, w)| (w * (l.reward - value)).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let half = Z95 * (var / n).sqrt() / mean_w;
    Ok(Estimate {
        value,
        ci_low: value - half,
        ci_high: value + half,
        n: logs.len(),
        effective_n: effective_n(&w),
        mean_weight: mean_w,
    })
}

/// An additive reward model per context: the context's mean plus, per
/// parameter, the shrunk effect of its arm.
#[derive(Debug, Clone)]
pub struct RewardModel {
    mean: Vec<f64>,
    /// `[context][param][arm]`
    effect: Vec<Vec<Vec<f64>>>,
}

/// Pseudo-decisions an arm's effect is shrunk towards zero with.
const SHRINK: f64 = 20.0;

impl RewardModel {
    pub fn fit(logs: &[&LoggedDecision], target: &TargetPolicy) -> RewardModel {
        let shape: Vec<usize> = target.probs[0].iter().map(Vec::len).collect();
        let mut sum = [0.0; Context::COUNT];
        let mut count = [0.0; Context::COUNT];
        for l in logs {
            sum[l.context.index()] += l.reward;
            count[l.context.index()] += 1.0;
        }
        let mean: Vec<f64> = sum.iter().zip(&count).map(|(s, c)| if *c > 0.0 { s / c } else { 0.0 }).collect();
        let mut acc: Vec<Vec<Vec<(f64, f64)>>> =
            vec![shape.iter().map(|&k| vec![(0.0, 0.0); k]).collect(); Context::COUNT];
        for l in logs {
            let c = l.context.index();
            for (p, &k) in l.arms.iter().enumerate() {
                let cell = &mut acc[c][p][k];
                cell.0 += l.reward - mean[c];
                cell.1 += 1.0;
            }
        }
        let effect = acc
            .into_iter()
            .map(|ctx| ctx.into_iter().map(|arms| arms.into_iter().map(|(s, n)| s / (n + SHRINK)).collect()).collect())
            .collect();
        RewardModel { mean, effect }
    }

    pub fn predict(&self, context: Context, arms: &[usize]) -> f64 {
        let c = context.index();
        self.mean[c] + arms.iter().enumerate().map(|(p, &k)| self.effect[c][p][k]).sum::<f64>()
    }

    /// The model's expected reward under the target policy in `context`.
    pub fn expected(&self, context: Context, target: &TargetPolicy) -> f64 {
        let c = context.index();
        self.mean[c]
            + target.probs[c]
                .iter()
                .zip(&self.effect[c])
                .map(|(p, e)| p.iter().zip(e).map(|(p, e)| p * e).sum::<f64>())
                .sum::<f64>()
    }
}

/// Doubly robust: the model's value under the target, plus the
/// importance-weighted residuals of the logged rewards, cross-fitted.
pub fn doubly_robust(logs: &[LoggedDecision], target: &TargetPolicy) -> Result<Estimate, OpeError> {
    check(logs, target)?;
    let w = weights(logs, target);
    type Numbered<'a> = Vec<(usize, &'a LoggedDecision)>;
    let (even, odd): (Numbered, Numbered) = logs.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let fit =
        |part: &[(usize, &LoggedDecision)]| RewardModel::fit(&part.iter().map(|p| p.1).collect::<Vec<_>>(), target);
    let (on_even, on_odd) = (fit(&even), fit(&odd));
    let xs: Vec<f64> = logs
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let model = if i % 2 == 0 { &on_odd } else { &on_even };
            model.expected(l.context, target) + w[i] * (l.reward - model.predict(l.context, &l.arms))
        })
        .collect();
    Ok(mean_ci(&xs, &w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::Spaces;
    use rand::{Rng, SeedableRng};
    use rand_pcg::Pcg64Mcg;

    /// A two-parameter bandit logged uniformly at random, evaluated for a
    /// fixed arm pair whose true mean is known: all three estimators cover it.
    #[test]
    fn estimators_cover_a_known_value_under_uniform_logging() {
        let spaces = Spaces::builtin();
        let space = spaces.get("crypto").unwrap();
        let mut rng = Pcg64Mcg::seed_from_u64(9);
        let k = 5usize;
        let p = 1.0 / (k as f64).powi(space.params.len() as i32);
        let truth = |arms: &[usize]| 0.1 * arms[0] as f64 - 0.05 * arms[1] as f64;
        let logs: Vec<LoggedDecision> = (0..200_000)
            .map(|_| {
                let arms: Vec<usize> = space.params.iter().map(|_| rng.random_range(0..k)).collect();
                let reward = truth(&arms) + rng.random_range(-0.5..0.5);
                LoggedDecision {
                    context: Context::from_index(0).unwrap(),
                    values: vec![],
                    propensities: vec![1.0 / k as f64; arms.len()],
                    propensity: p,
                    arms,
                    traded: true,
                    reward,
                }
            })
            .collect();
        // Target: parameter 0 on arm 4, parameter 1 on arm 0, the rest as logged
        // (uniform), so the weights stay bounded.
        let mut target = TargetPolicy::defaults(space);
        for ctx in target.probs.iter_mut() {
            for (i, probs) in ctx.iter_mut().enumerate() {
                *probs = match i {
                    0 => vec![0.0, 0.0, 0.0, 0.0, 1.0],
                    1 => vec![1.0, 0.0, 0.0, 0.0, 0.0],
                    _ => vec![0.2; 5],
                };
            }
        }
        let want = 0.4;
        for (name, est) in [
            ("ips", ips(&logs, &target).unwrap()),
            ("snips", snips(&logs, &target).unwrap()),
            ("dr", doubly_robust(&logs, &target).unwrap()),
        ] {
            assert!(est.contains(want), "{name}: {est:?}");
            assert!(est.ci_high - est.ci_low < 0.05, "{name}: {est:?}");
        }
    }

    #[test]
    fn a_zero_propensity_is_refused_with_its_index() {
        let spaces = Spaces::builtin();
        let space = spaces.get("crypto").unwrap();
        let l = LoggedDecision {
            context: Context::from_index(0).unwrap(),
            arms: vec![0; space.params.len()],
            values: vec![],
            propensities: vec![],
            propensity: 0.0,
            traded: false,
            reward: 0.0,
        };
        assert_eq!(
            ips(&[l.clone(), l], &TargetPolicy::defaults(space)),
            Err(OpeError::BadPropensity { index: 0, value: 0.0 })
        );
    }
}
