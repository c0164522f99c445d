//! The shared candidates of a cell's tables: the weight vectors on a grid
//! of the simplex, and the exits.

use crate::space::{Counterfactual, ModuleSpace, Parameter};

/// Weight vectors closer than this (largest member difference) count as one.
pub const WEIGHT_RESOLUTION: f64 = 0.03;

/// The shared candidates of a module: weight vectors and exits. Index 0 of
/// each is the seed defaults. Rebuilt from the space, never stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidates {
    /// Member values (summing to 1, inside their boxes); one empty vector without weights.
    pub weights: Vec<Vec<f64>>,
    /// `(stop, target)`; one `(None, None)` without exits.
    pub exits: Vec<(Option<f64>, Option<f64>)>,
    /// Per slot and session: the in-scope gate and scale parameters.
    pub slots: usize,
}

impl Candidates {
    pub fn new(space: &ModuleSpace, cf: &Counterfactual) -> Candidates {
        let weights = match &cf.weights {
            None => vec![vec![]],
            Some(w) => weight_candidates(&w.members.iter().map(|&p| &space.params[p]).collect::<Vec<_>>()),
        };
        let exits = match &cf.exit {
            None => vec![(None, None)],
            Some(e) => {
                let arms = |p: Option<usize>| -> Vec<Option<f64>> {
                    match p {
                        None => vec![None],
                        Some(p) => {
                            let param = &space.params[p];
                            // The default first, then the other arms.
                            let mut a = vec![Some(param.default)];
                            a.extend(param.arms.iter().filter(|&&x| x != param.default).map(|&x| Some(x)));
                            a
                        }
                    }
                };
                let (stops, targets) = (arms(e.stop_loss), arms(e.profit_target));
                stops.iter().flat_map(|&s| targets.iter().map(move |&t| (s, t))).collect()
            }
        };
        let slots = if cf.strategy_scoped() { cf.strategies.len().max(1) } else { 1 };
        Candidates { weights, exits, slots }
    }

    pub fn shared(&self) -> usize {
        self.weights.len() * self.exits.len()
    }
}

/// Every combination of the members' arms, normalised to sum 1, that stays
/// inside the members' boxes, with near-duplicates dropped; the defaults first.
pub fn weight_candidates(members: &[&Parameter]) -> Vec<Vec<f64>> {
    let mut out: Vec<Vec<f64>> = vec![members.iter().map(|p| p.default).collect()];
    let mut idx = vec![0usize; members.len()];
    loop {
        let raw: Vec<f64> = members.iter().zip(&idx).map(|(p, &k)| p.arms[k]).collect();
        let sum: f64 = raw.iter().sum();
        let w: Vec<f64> = raw.iter().map(|x| x / sum).collect();
        let inside = members.iter().zip(&w).all(|(p, &x)| x >= p.lo - 1e-12 && x <= p.hi + 1e-12);
        let near = |o: &Vec<f64>| o.iter().zip(&w).all(|(a, b)| (a - b).abs() < WEIGHT_RESOLUTION);
        if inside && !out.iter().any(near) {
            out.push(w);
        }
        // Odometer over the arm indices.
        let mut i = 0;
        loop {
            if i == members.len() {
                return out;
            }
            idx[i] += 1;
            if idx[i] < members[i].arms.len() {
                break;
            }
            idx[i] = 0;
            i += 1;
        }
    }
}

/// The declarations with the weights group made opaque: gates score with
/// the outcome's reported confidence instead.
pub fn without_weights(cf: &Counterfactual) -> Counterfactual {
    let mut out = cf.clone();
    if let Some(w) = out.weights.take() {
        for p in w.members {
            out.roles[p] = crate::space::Role::Opaque;
        }
        if out.score == Some(crate::space::ScoreSource::Weights) {
            out.score = Some(crate::space::ScoreSource::Confidence);
        }
    }
    out
}
