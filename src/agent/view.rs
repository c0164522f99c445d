//! The read side: immutable views that decisions sample from without locks.
//!
//! The writer builds a new [`ModuleView`] after applying outcomes and swaps it
//! in; a decision holds whichever view it loaded for its whole computation.

use std::sync::Arc;

use rand::Rng;

use crate::bandit::sample_argmax;
use crate::space::ModuleSpace;

use super::safety::project_simplex;

#[derive(Debug, Clone)]
pub struct ParamView {
    pub incumbent: f64,
    /// The trust region cut to the range: no served value leaves it.
    pub trust: (f64, f64),
    /// The arm nearest the incumbent; what a greedy decision reports as chosen.
    pub greedy_arm: usize,
    /// Arms the trust region reaches, and in the same order:
    pub arms: Vec<usize>,
    pub served: Vec<f64>,
    pub means: Vec<f64>,
    pub sds: Vec<f64>,
    pub propensities: Vec<f64>,
}

#[derive(Debug, Clone)]
pub struct CellView {
    pub params: Vec<ParamView>,
}

#[derive(Debug, Clone)]
pub struct ModuleView {
    pub generation: u64,
    pub outcomes: u64,
    pub cells: Vec<Arc<CellView>>,
}

/// Values chosen for one decision, before any refinement.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub values: Vec<f64>,
    pub arms: Vec<usize>,
    pub propensities: Vec<f64>,
}

impl CellView {
    /// Thompson sampling, one arm per parameter, then the simplex projection.
    /// Without exploration: the incumbents, with propensity 1.
    pub fn choose<R: Rng + ?Sized>(&self, space: &ModuleSpace, explore: bool, rng: &mut R) -> Choice {
        let n = self.params.len();
        let mut choice =
            Choice { values: Vec::with_capacity(n), arms: Vec::with_capacity(n), propensities: Vec::with_capacity(n) };
        for pv in &self.params {
            if explore {
                let i = sample_argmax(&pv.means, &pv.sds, rng);
                choice.values.push(pv.served[i]);
                choice.arms.push(pv.arms[i]);
                choice.propensities.push(pv.propensities[i]);
            } else {
                choice.values.push(pv.incumbent);
                choice.arms.push(pv.greedy_arm);
                choice.propensities.push(1.0);
            }
        }
        if explore {
            self.project_groups(space, &mut choice.values);
        }
        choice
    }

    /// Projects each simplex group onto {sum = 1} within its trust boxes. The
    /// incumbents are feasible, so the set is never empty.
    pub fn project_groups(&self, space: &ModuleSpace, values: &mut [f64]) {
        for group in &space.simplex_groups {
            let mut y: Vec<f64> = group.members.iter().map(|&p| values[p]).collect();
            let lo: Vec<f64> = group.members.iter().map(|&p| self.params[p].trust.0).collect();
            let hi: Vec<f64> = group.members.iter().map(|&p| self.params[p].trust.1).collect();
            project_simplex(&mut y, &lo, &hi);
            for (&p, v) in group.members.iter().zip(y) {
                values[p] = v;
            }
        }
    }
}
