//! The read side: immutable views that decisions sample from without locks.
//!
//! The writer builds a new [`ModuleView`] after applying outcomes and swaps it
//! in; a decision holds whichever view it loaded for its whole computation.

use std::sync::Arc;

use rand::Rng;

use rand_distr::StandardNormal;

use crate::bandit::{sample_argmax, Stats};
use crate::ope::TargetPolicy;
use crate::policy::{gaussian_log_density, offset_value, refine_box, PolicySnapshot};
use crate::space::{Context, ModuleSpace};
use crate::util::project_simplex;

use super::rollout::AbTest;

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
    /// The policy network's weights, when the module refines values.
    pub policy: Option<Arc<PolicySnapshot>>,
    /// The declarations decisions serve by (see `ModuleLearner::cf`).
    pub cf: Option<Arc<crate::space::Counterfactual>>,
    /// The A/B test running on the module, as of this view (a copy; the writer owns the test).
    pub ab: Option<Arc<AbTest>>,
    /// The live policy's rolling reward (see [`ModuleLearner::rolling`](super::ModuleLearner)).
    pub rolling: Stats,
    /// The same per context, so the rollback watch can compare like with like.
    pub rolling_by_context: Vec<Stats>,
    pub rolling_since: u64,
    /// The loss budget, as of this view.
    pub budget: super::budget::BudgetView,
    /// Counterfactual moves made since start: the runtime drains their
    /// events when this changes.
    pub moves_made: u64,
}

/// Values chosen for one decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub values: Vec<f64>,
    pub arms: Vec<usize>,
    pub propensities: Vec<f64>,
    /// Per parameter: the policy network's offset, where it refined the value.
    pub offsets: Vec<Option<f64>>,
    /// Log density of the drawn offsets (0 when none were drawn).
    pub offset_log_density: f64,
}

impl CellView {
    /// Thompson sampling, one arm per parameter; the policy network's offset
    /// inside each continuous parameter's arm cell; then the simplex
    /// projection. Without exploration: the incumbents with propensity 1;
    /// a trained network moves each to its peak inside the greedy arm's cell.
    pub fn choose<R: Rng + ?Sized>(
        &self,
        space: &ModuleSpace,
        policy: Option<&PolicySnapshot>,
        context: Context,
        features: &[Option<f64>],
        explore: bool,
        rng: &mut R,
    ) -> Choice {
        let n = self.params.len();
        let mut choice = Choice {
            values: Vec::with_capacity(n),
            arms: Vec::with_capacity(n),
            propensities: Vec::with_capacity(n),
            offsets: vec![None; n],
            offset_log_density: 0.0,
        };
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
        if let Some(policy) = policy {
            self.refine(space, policy, context, features, explore, rng, &mut choice);
        }
        self.project_groups(space, explore, &mut choice.values);
        choice
    }

    #[allow(clippy::too_many_arguments)]
    fn refine<R: Rng + ?Sized>(
        &self,
        space: &ModuleSpace,
        policy: &PolicySnapshot,
        context: Context,
        features: &[Option<f64>],
        explore: bool,
        rng: &mut R,
        choice: &mut Choice,
    ) {
        let mut input = Vec::with_capacity(policy.layout.input_dim);
        policy.layout.encode(space, context, features, &mut input);
        let means = policy.means(space, &input, &choice.arms);
        for (&p, &mean) in policy.layout.refined.iter().zip(&means) {
            let (param, pv, arm) = (&space.params[p], &self.params[p], choice.arms[p]);
            let Some(bounds) = refine_box(param, arm, pv.trust) else { continue };
            let u = if explore {
                let z: f64 = rng.sample(StandardNormal);
                let u = mean + policy.spread * z;
                choice.offset_log_density += gaussian_log_density(u, mean, policy.spread);
                u
            } else if policy.train_steps == 0 {
                // An untrained network says nothing: a cold agent serves its defaults.
                continue;
            } else {
                mean
            };
            choice.offsets[p] = Some(u);
            choice.values[p] = offset_value(param, arm, u, bounds);
        }
    }

    /// Projects each simplex group onto {sum = 1} within its trust boxes. The
    /// incumbents are feasible, so the set is never empty; a greedy group left
    /// exactly at its incumbents is not touched, so a cold agent serves the
    /// defaults bit for bit.
    pub fn project_groups(&self, space: &ModuleSpace, explore: bool, values: &mut [f64]) {
        for group in &space.simplex_groups {
            if !explore && group.members.iter().all(|&p| values[p] == self.params[p].incumbent) {
                continue;
            }
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

// The off-policy estimator is pure (`crate::ope`); a view's policies, as
// targets to estimate, are the agent's to build, as the agent knows the view.
impl TargetPolicy {
    /// A view's (a checkpoint's) greedy policy: the arm nearest each incumbent.
    pub fn greedy(space: &ModuleSpace, view: &ModuleView) -> TargetPolicy {
        let arms: Vec<Vec<usize>> =
            view.cells.iter().map(|cell| cell.params.iter().map(|p| p.greedy_arm).collect()).collect();
        TargetPolicy::fixed("greedy", space, &arms)
    }

    /// A view's exploring (Thompson sampling) policy.
    pub fn thompson(space: &ModuleSpace, view: &ModuleView) -> TargetPolicy {
        let probs = view
            .cells
            .iter()
            .map(|cell| {
                space
                    .params
                    .iter()
                    .zip(&cell.params)
                    .map(|(param, pv)| {
                        let mut p = vec![0.0; param.arms.len()];
                        for (&k, &q) in pv.arms.iter().zip(&pv.propensities) {
                            p[k] += q;
                        }
                        p
                    })
                    .collect()
            })
            .collect();
        TargetPolicy { name: "thompson".into(), probs }
    }
}
