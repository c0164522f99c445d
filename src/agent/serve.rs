//! Serving a module that declares roles: scopes, and exploration only where
//! it buys information.
//!
//! Thompson sampling has already drawn every parameter (`view.rs`); this
//! pass then
//! - serves every out-of-scope parameter at its incumbent, unexplored;
//! - serves every determined parameter (gate, scale, weights, exit) at its
//!   incumbent: one trade tells all their arms' rewards, so drawing them
//!   would only cost return;
//! - with probability `explore_rate`, on an exploring decision, serves the
//!   most permissive gate instead: every gate at the lowest value its trust
//!   region reaches, and the weights that maximise this decision's score
//!   inside theirs. That is the only way to see what trades today's gate
//!   skips would have returned (raising a gate is always observed).
//!
//! Opaque parameters in scope keep their Thompson draw. The decision records
//! both branches' values, so the probability that its trade was observed is
//! known exactly (`counterfactual::observe`), and what was explored and why.

use rand::Rng;

use crate::space::{Counterfactual, ModuleSpace, Role, Scope, ScoreSource, Session};

use super::counterfactual::{blend, CfServing, ExploreReason, Explored};
use super::view::{CellView, Choice};
use super::Exploring;

/// Adjusts `choice` (already sampled) to the declarations; returns how an
/// exploring decision was served (`None` for a greedy one) and the
/// probability of the whole choice. The permissive branch is one coin for
/// every gate and weight it moves, so it enters the whole choice's
/// probability once, while each of those parameters' own propensity is that
/// coin's marginal.
#[allow(clippy::too_many_arguments)]
pub fn serve<R: Rng + ?Sized>(
    space: &ModuleSpace,
    cf: &Counterfactual,
    cell: &CellView,
    session: Session,
    features: &[Option<f64>],
    strategy: Option<usize>,
    mode: Exploring,
    rng: &mut R,
    choice: &mut Choice,
) -> (Option<CfServing>, f64) {
    let explore = mode != Exploring::No;
    let incumbent: Vec<f64> = cell.params.iter().map(|p| p.incumbent).collect();
    let mut explored = Vec::new();
    for (p, pv) in cell.params.iter().enumerate() {
        let in_scope = cf.in_scope(p, session, strategy);
        if cf.roles[p].determined() || !in_scope {
            choice.values[p] = pv.incumbent;
            choice.arms[p] = pv.greedy_arm;
            choice.propensities[p] = 1.0;
            choice.offsets[p] = None;
        } else if mode == Exploring::Yes {
            explored
                .push(Explored { parameter: space.params[p].full_name.clone(), reason: ExploreReason::OpaqueThompson });
        }
    }
    if !explore {
        return (None, choice.propensities.iter().product());
    }
    // The permissive branch: gates that may still apply to this decision
    // (a strategy-scoped gate while the strategy is unknown may be its gate).
    let mut permissive = incumbent.clone();
    for &g in &cf.gates {
        let possible = match cf.scopes[g] {
            Scope::Session(s) => s == session,
            Scope::Strategy(s) => strategy.is_none_or(|x| x == s),
            Scope::Module => true,
        };
        if possible {
            let lowest = cell.params[g].served.iter().copied().fold(f64::INFINITY, f64::min);
            permissive[g] = lowest.min(incumbent[g]);
        }
    }
    let weight_features: Option<Vec<f64>> = cf
        .weights
        .as_ref()
        .filter(|_| cf.score == Some(ScoreSource::Weights))
        .and_then(|w| w.features.iter().map(|&f| features[f]).collect());
    if let (Some(w), Some(f)) = (&cf.weights, &weight_features) {
        let lo: Vec<f64> = w.members.iter().map(|&p| cell.params[p].trust.0).collect();
        let hi: Vec<f64> = w.members.iter().map(|&p| cell.params[p].trust.1).collect();
        for (&p, v) in w.members.iter().zip(max_score_weights(f, &lo, &hi)) {
            permissive[p] = v;
        }
    }
    // Held by the loss budget: the same record with the permissive branch's
    // probability at 0, so the incumbents' trade still teaches every
    // determined parameter what it reveals.
    let epsilon = if mode == Exploring::Yes { cf.explore_rate } else { 0.0 };
    let take = rng.random::<f64>() < epsilon;
    let mut coin = false;
    for (p, param) in space.params.iter().enumerate() {
        if permissive[p] == incumbent[p] || !matches!(cf.roles[p], Role::Gate | Role::Weights) {
            continue;
        }
        if take {
            choice.values[p] = permissive[p];
            choice.arms[p] = param.nearest_arm(permissive[p]);
            let reason = if cf.roles[p] == Role::Gate {
                ExploreReason::GateBelowIncumbent
            } else {
                ExploreReason::WeightsMaxScore
            };
            explored.push(Explored { parameter: param.full_name.clone(), reason });
        }
        choice.propensities[p] = if take { epsilon } else { 1.0 - epsilon };
        coin = true;
    }
    let mut propensity: f64 = (0..space.params.len())
        .filter(|&p| !(coin && matches!(cf.roles[p], Role::Gate | Role::Weights) && permissive[p] != incumbent[p]))
        .map(|p| choice.propensities[p])
        .product();
    if coin {
        propensity *= if take { epsilon } else { 1.0 - epsilon };
    }
    // Known now when the score is the weights' and the gate is known.
    let strategy_known = strategy.is_some() || !cf.strategy_scoped();
    let p_obs = match (&weight_features, strategy_known) {
        (Some(f), true) => {
            let gate = cf.in_scope_of(&cf.gates, session, strategy);
            let fires = |values: &[f64]| {
                let w = cf.weights.as_ref().expect("weights");
                let score = blend(w.members.iter().map(|&p| values[p]), f.iter().copied());
                gate.is_none_or(|g| score >= values[g])
            };
            let (perm, inc) = (fires(&permissive), fires(&incumbent));
            // A trade only the permissive gate takes is there to be seen, not
            // to earn: its return per unit of scale is what every arm learns
            // (the estimator divides the applied scale out), so it is taken
            // at the smallest scale in reach, which is what it costs when
            // today's gate is right to skip it.
            if take && perm && !inc {
                if let Some(m) = cf.in_scope_of(&cf.scales, session, strategy) {
                    let pv = &cell.params[m];
                    let smallest = pv.served.iter().copied().fold(f64::INFINITY, f64::min).min(pv.incumbent);
                    if smallest < choice.values[m] {
                        choice.values[m] = smallest;
                        choice.arms[m] = space.params[m].nearest_arm(smallest);
                        // Its marginal; the whole choice counts the coin once.
                        choice.propensities[m] = epsilon;
                        explored.push(Explored {
                            parameter: space.params[m].full_name.clone(),
                            reason: ExploreReason::SmallestScaleToSee,
                        });
                    }
                }
            }
            Some(epsilon * f64::from(u8::from(perm)) + (1.0 - epsilon) * f64::from(u8::from(inc)))
        }
        _ => None,
    };
    (
        Some(CfServing {
            permissive: take,
            epsilon,
            incumbent,
            permissive_values: permissive,
            p_obs,
            explored,
            held_by_budget: mode == Exploring::HeldByBudget,
        }),
        propensity,
    )
}

/// The weights inside the boxes `[lo, hi]`, summing to 1, that maximise
/// `sum w_i f_i`: every member at its floor, then what is left of the unit
/// sum goes to the largest features first (the linear program's vertex).
/// The boxes must admit a point (`sum lo <= 1 <= sum hi`).
pub fn max_score_weights(features: &[f64], lo: &[f64], hi: &[f64]) -> Vec<f64> {
    let mut w = lo.to_vec();
    let mut left = 1.0 - lo.iter().sum::<f64>();
    let mut order: Vec<usize> = (0..features.len()).collect();
    order.sort_by(|&a, &b| features[b].total_cmp(&features[a]));
    for i in order {
        let add = (hi[i] - lo[i]).min(left).max(0.0);
        // Never past the box by a rounding step.
        w[i] = (lo[i] + add).min(hi[i]);
        left -= add;
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_score_weights_fill_the_best_feature_first() {
        let w = max_score_weights(&[0.2, 0.9, 0.5], &[0.2, 0.15, 0.15], &[0.6, 0.45, 0.45]);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{w:?}");
        assert_eq!(w[1], 0.45);
        assert!((w[2] - 0.35).abs() < 1e-12 && w[0] == 0.2, "{w:?}");
        // No other feasible vector scores higher: check the box's vertices.
        let best = blend(w.iter().copied(), [0.2, 0.9, 0.5].into_iter());
        for a in [0.2, 0.6] {
            for b in [0.15, 0.45] {
                let c = 1.0 - a - b;
                if (0.15..=0.45).contains(&c) {
                    assert!(blend([a, b, c].into_iter(), [0.2, 0.9, 0.5].into_iter()) <= best + 1e-12);
                }
            }
        }
    }
}
