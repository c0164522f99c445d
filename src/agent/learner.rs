//! The writer's side of one module: its evidence, its incumbents, and how an
//! outcome changes them. Only the writer thread holds a `ModuleLearner`; it
//! publishes immutable [`ModuleView`]s for decisions to read.

use std::sync::Arc;

use crate::bandit::{thompson_propensities, BanditSettings, ModuleStats, Nig};
use crate::space::{Context, ModuleSpace, Parameter};

use super::safety::{project_simplex, trust_box, trust_width};
use super::view::{CellView, ModuleView, ParamView};

#[derive(Debug, Clone)]
pub struct ModuleLearner {
    pub space: Arc<ModuleSpace>,
    pub settings: BanditSettings,
    pub stats: ModuleStats,
    /// `[context][param]`: the greedy value served with `explore = false`.
    pub incumbents: Vec<Vec<f64>>,
    pub generation: u64,
    pub outcomes: u64,
    pub reward_sum: f64,
    outcomes_since_refresh: u64,
}

impl ModuleLearner {
    pub fn new(space: Arc<ModuleSpace>) -> ModuleLearner {
        let l = &space.learning;
        let settings = BanditSettings {
            prior: Nig::prior(l.prior_mean, l.prior_strength, l.prior_shape, l.prior_noise_sd),
            pooling_strength: l.pooling_strength,
            discount: l.discount,
            baseline_decay: 1.0 - 1.0 / l.baseline_window,
        };
        let arms: Vec<usize> = space.params.iter().map(|p| p.arms.len()).collect();
        ModuleLearner {
            stats: ModuleStats::new(Context::COUNT, &arms),
            incumbents: vec![space.defaults(); Context::COUNT],
            settings,
            space,
            generation: 0,
            outcomes: 0,
            reward_sum: 0.0,
            outcomes_since_refresh: 0,
        }
    }

    /// Learns from one outcome. Returns true when every cell's view must be
    /// rebuilt (the pooled prior was refreshed), false when only `context`'s.
    pub fn apply(&mut self, context: usize, arms: &[usize], reward: f64) -> bool {
        self.stats.record(&self.settings, context, arms, reward);
        self.outcomes += 1;
        self.reward_sum += reward;
        self.move_incumbents(context);
        self.outcomes_since_refresh += 1;
        if self.outcomes_since_refresh >= self.space.learning.pool_refresh_outcomes {
            self.outcomes_since_refresh = 0;
            return true;
        }
        false
    }

    /// Each incumbent steps towards the arm with the best posterior mean among
    /// those its trust region reaches, by at most the region's width; a simplex
    /// group is then projected back onto its constraints inside the same region.
    fn move_incumbents(&mut self, context: usize) {
        let evidence = self.stats.cell_outcomes[context];
        let old = self.incumbents[context].clone();
        let mut new = old.clone();
        for (p, param) in self.space.params.iter().enumerate() {
            let w = trust_width(param, &self.space.safety, evidence);
            let eligible = eligible_arms(param, old[p], w);
            let mut target = param.nearest_arm(old[p]);
            let mut best = self.stats.posterior(&self.settings, context, p, target).m;
            for &k in &eligible {
                let m = self.stats.posterior(&self.settings, context, p, k).m;
                let closer = (param.arms[k] - old[p]).abs() < (param.arms[target] - old[p]).abs();
                if m > best || (m == best && closer) {
                    best = m;
                    target = k;
                }
            }
            let step = (param.arms[target] - old[p]).clamp(-w, w);
            new[p] = (old[p] + step).clamp(param.lo, param.hi);
        }
        for group in &self.space.simplex_groups {
            let (mut y, mut lo, mut hi) = (vec![], vec![], vec![]);
            for &p in &group.members {
                let param = &self.space.params[p];
                let (l, h) = trust_box(param, old[p], trust_width(param, &self.space.safety, evidence));
                y.push(new[p]);
                lo.push(l);
                hi.push(h);
            }
            project_simplex(&mut y, &lo, &hi);
            for (&p, v) in group.members.iter().zip(y) {
                new[p] = v;
            }
        }
        self.incumbents[context] = new;
    }

    /// What decisions in `context` read: per parameter, the arms the trust
    /// region reaches, the values they serve, their posteriors and propensities.
    pub fn cell_view(&self, context: usize) -> CellView {
        let evidence = self.stats.cell_outcomes[context];
        let params = self
            .space
            .params
            .iter()
            .enumerate()
            .map(|(p, param)| {
                let incumbent = self.incumbents[context][p];
                let width = trust_width(param, &self.space.safety, evidence);
                let trust = trust_box(param, incumbent, width);
                let arms = eligible_arms(param, incumbent, width);
                let posts: Vec<Nig> =
                    arms.iter().map(|&k| self.stats.posterior(&self.settings, context, p, k)).collect();
                let means: Vec<f64> = posts.iter().map(|n| n.m).collect();
                let sds: Vec<f64> = posts.iter().map(|n| n.mean_sd()).collect();
                let mut propensities = vec![0.0; arms.len()];
                thompson_propensities(&means, &sds, &mut propensities);
                ParamView {
                    incumbent,
                    trust,
                    greedy_arm: param.nearest_arm(incumbent),
                    served: arms.iter().map(|&k| param.arms[k].clamp(trust.0, trust.1)).collect(),
                    arms,
                    means,
                    sds,
                    propensities,
                }
            })
            .collect();
        CellView { params }
    }

    pub fn view(&self) -> ModuleView {
        ModuleView {
            generation: self.generation,
            outcomes: self.outcomes,
            cells: (0..Context::COUNT).map(|c| Arc::new(self.cell_view(c))).collect(),
        }
    }

    /// The next view after an outcome: only the touched cell is rebuilt unless
    /// the pooled prior was refreshed.
    pub fn next_view(&self, previous: &ModuleView, touched: &[bool], all: bool) -> ModuleView {
        if all {
            return self.view();
        }
        ModuleView {
            generation: self.generation,
            outcomes: self.outcomes,
            cells: (0..Context::COUNT)
                .map(|c| if touched[c] { Arc::new(self.cell_view(c)) } else { previous.cells[c].clone() })
                .collect(),
        }
    }

    /// The arm with the best posterior mean in `context`, over all arms:
    /// what the agent believes, regardless of how far the incumbent has moved.
    pub fn best_arm(&self, context: usize, param: usize) -> usize {
        let k_arms = self.space.params[param].arms.len();
        (0..k_arms)
            .max_by(|&a, &b| {
                let ma = self.stats.posterior(&self.settings, context, param, a).m;
                let mb = self.stats.posterior(&self.settings, context, param, b).m;
                ma.total_cmp(&mb)
            })
            .expect("at least two arms")
    }
}

/// Arms inside the trust region, plus the nearest arm beyond each edge so the
/// region can always be pushed outward. Those beyond serve the edge's value.
pub fn eligible_arms(param: &Parameter, incumbent: f64, width: f64) -> Vec<usize> {
    let tol = 1e-12 * param.range();
    let mut out = Vec::with_capacity(param.arms.len());
    let below = param.arms.iter().rposition(|&a| a < incumbent - width - tol);
    let above = param.arms.iter().position(|&a| a > incumbent + width + tol);
    out.extend(below);
    out.extend((0..param.arms.len()).filter(|&k| (param.arms[k] - incumbent).abs() <= width + tol));
    out.extend(above);
    out
}
