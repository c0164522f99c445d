//! Parameter effectiveness: how each parameter value has done, per context
//! and overall, from a log of decisions and their outcomes.
//!
//! Rows are [`ParameterEffectiveness`], the store's `parameter_effectiveness`
//! collection. A served value is attributed to its nearest arm, so rows stay
//! few even when values are refined between arms. [`attribution`] adds, per
//! parameter and context, how the value served relates to the return: the
//! Pearson correlation and the least-squares slope.

use serde::Serialize;

use crate::ope::LoggedDecision;
use crate::space::{Context, ModuleSpace, Regime, Session};
use crate::store::records::ParameterEffectiveness;

/// Rows per parameter, arm value and context (and per parameter and value
/// over all contexts, with no session or regime), for values that were
/// served. `success_rate` is the share of decisions with a positive return,
/// `avg_return` the mean return per decision (0 when it did not trade).
/// `last_updated` is written as given (RFC 3339).
pub fn effectiveness(space: &ModuleSpace, logs: &[LoggedDecision], last_updated: &str) -> Vec<ParameterEffectiveness> {
    // [context or overall][param][arm] -> (n, wins, sum)
    let shape: Vec<Vec<(u64, u64, f64)>> = space.params.iter().map(|p| vec![(0, 0, 0.0); p.arms.len()]).collect();
    let mut acc = vec![shape; Context::COUNT + 1];
    for l in logs {
        for (p, param) in space.params.iter().enumerate() {
            let Some(&v) = l.values.get(p) else { continue };
            let k = param.nearest_arm(v);
            for slot in [l.context.index(), Context::COUNT] {
                let cell = &mut acc[slot][p][k];
                cell.0 += 1;
                cell.1 += u64::from(l.reward > 0.0);
                cell.2 += l.reward;
            }
        }
    }
    let mut rows = Vec::new();
    for (slot, table) in acc.iter().enumerate() {
        let context = Context::from_index(slot);
        for (param, arms) in space.params.iter().zip(table) {
            for (k, &(n, wins, sum)) in arms.iter().enumerate() {
                if n == 0 {
                    continue;
                }
                rows.push(ParameterEffectiveness {
                    module_name: space.name.clone(),
                    parameter_type: param.full_name.clone(),
                    parameter_value: param.arms[k],
                    success_rate: wins as f64 / n as f64,
                    avg_return: sum / n as f64,
                    sample_size: n,
                    last_updated: last_updated.to_string(),
                    session: context.map(|c| c.session),
                    regime: context.map(|c| c.regime),
                });
            }
        }
    }
    rows
}

/// How one parameter's served value relates to the return, in one context
/// (or over all, with no session or regime).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attribution {
    pub module_name: String,
    pub parameter_type: String,
    pub session: Option<Session>,
    pub regime: Option<Regime>,
    pub sample_size: u64,
    /// Pearson correlation of value and return; 0 when either is constant.
    pub correlation: f64,
    /// Return per unit of value, by least squares.
    pub slope: f64,
}

pub fn attribution(space: &ModuleSpace, logs: &[LoggedDecision]) -> Vec<Attribution> {
    let mut rows = Vec::new();
    for slot in 0..=Context::COUNT {
        let context = Context::from_index(slot);
        let mine: Vec<&LoggedDecision> = logs.iter().filter(|l| context.is_none_or(|c| c == l.context)).collect();
        if mine.len() < 2 {
            continue;
        }
        for (p, param) in space.params.iter().enumerate() {
            let pairs: Vec<(f64, f64)> = mine.iter().filter_map(|l| Some((*l.values.get(p)?, l.reward))).collect();
            let n = pairs.len() as f64;
            let (mx, my) = pairs.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
            let (sxy, sxx, syy) = pairs.iter().fold((0.0, 0.0, 0.0), |(a, b, c), (x, y)| {
                (a + (x - mx) * (y - my), b + (x - mx).powi(2), c + (y - my).powi(2))
            });
            rows.push(Attribution {
                module_name: space.name.clone(),
                parameter_type: param.full_name.clone(),
                session: context.map(|c| c.session),
                regime: context.map(|c| c.regime),
                sample_size: pairs.len() as u64,
                correlation: if sxx > 0.0 && syy > 0.0 { sxy / (sxx * syy).sqrt() } else { 0.0 },
                slope: if sxx > 0.0 { sxy / sxx } else { 0.0 },
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::Spaces;

    #[test]
    fn rows_count_wins_and_returns_per_arm_and_context() {
        let spaces = Spaces::builtin();
        let space = spaces.get("crypto").unwrap();
        let ctx = Context::from_index(4).unwrap();
        let p0 = &space.params[0];
        let log = |arm: usize, reward: f64| {
            let mut values = space.defaults();
            values[0] = p0.arms[arm];
            LoggedDecision {
                context: ctx,
                arms: vec![],
                values,
                propensities: vec![],
                propensity: 1.0,
                traded: reward != 0.0,
                reward,
            }
        };
        let logs = vec![log(0, 0.02), log(0, -0.01), log(0, 0.03), log(4, -0.02)];
        let rows = effectiveness(space, &logs, "2026-01-01T00:00:00Z");
        let row = |arm: usize, overall: bool| {
            rows.iter()
                .find(|r| {
                    r.parameter_type == p0.full_name
                        && r.parameter_value == p0.arms[arm]
                        && r.session.is_none() == overall
                })
                .unwrap()
        };
        for overall in [false, true] {
            let r = row(0, overall);
            assert_eq!(r.sample_size, 3);
            assert!((r.success_rate - 2.0 / 3.0).abs() < 1e-12);
            assert!((r.avg_return - 0.04 / 3.0).abs() < 1e-12);
            assert_eq!(row(4, overall).sample_size, 1);
        }
        assert_eq!(row(0, false).regime, Some(ctx.regime));
        // Higher values of parameter 0 went with lower returns here.
        let a = attribution(space, &logs);
        let overall = a.iter().find(|a| a.parameter_type == p0.full_name && a.session.is_none()).unwrap();
        assert!(overall.correlation < -0.5 && overall.slope < 0.0, "{overall:?}");
    }
}
