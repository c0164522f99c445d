//! Posteriors and Thompson sampling. Pure and synchronous: no IO, no async,
//! no clocks. Everything here is a function of its inputs, which is what makes
//! decisions reproducible from a seed.
//!
//! Layout of the evidence for one module: `cells[context][param][arm]` holds
//! the discounted reward statistics of that context, and `pool[param][arm]`
//! the module-wide statistics every sparse cell borrows from.
//!
//! Arms learn the *advantage* of a reward over their cell's running mean
//! reward, not the raw reward. One decision's reward is shared by every
//! parameter, and while the other parameters improve the raw level drifts
//! upward; an arm tried early would otherwise keep a stale low mean that
//! Thompson sampling never revisits. Advantages are comparable across cells,
//! which is also what makes pooling them sound.

pub mod confseq;
mod nig;
mod propensity;
mod stats;

use serde::{Deserialize, Serialize};

pub use confseq::{mixture_p_value, MixtureTest, PairedSums, Verdict};
pub use nig::Nig;
pub use propensity::{normal_cdf, sample_argmax, thompson_propensities};
pub use stats::Stats;

/// How a module's arms learn: the global prior, pooling and forgetting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BanditSettings {
    pub prior: Nig,
    pub pooling_strength: f64,
    /// Per-outcome forgetting; 1.0 keeps everything.
    pub discount: f64,
    /// Forgetting of the cell's running mean reward, the advantage's baseline.
    pub baseline_decay: f64,
}

/// Every reward statistic of one module.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleStats {
    /// `[context][param][arm]`
    pub cells: Vec<Vec<Vec<Stats>>>,
    /// `[param][arm]`, over all contexts.
    pub pool: Vec<Vec<Stats>>,
    /// Discounted number of outcomes per context.
    pub cell_outcomes: Vec<f64>,
    /// Running reward statistics per context: the advantage's baseline.
    pub baselines: Vec<Stats>,
}

impl ModuleStats {
    pub fn new(contexts: usize, arms_per_param: &[usize]) -> ModuleStats {
        let param_arms: Vec<Vec<Stats>> = arms_per_param.iter().map(|&k| vec![Stats::default(); k]).collect();
        ModuleStats {
            cells: vec![param_arms.clone(); contexts],
            pool: param_arms,
            cell_outcomes: vec![0.0; contexts],
            baselines: vec![Stats::default(); contexts],
        }
    }

    /// Statistics of the same shape with no evidence.
    pub fn empty_like(&self) -> ModuleStats {
        let arms: Vec<usize> = self.pool.iter().map(Vec::len).collect();
        ModuleStats::new(self.cells.len(), &arms)
    }

    /// One decision's reward updates every arm it chose, in its cell and in
    /// the pool, as an advantage over the cell's baseline. Returns the advantage.
    pub fn record(&mut self, settings: &BanditSettings, context: usize, chosen_arms: &[usize], reward: f64) -> f64 {
        self.record_masked(settings, context, chosen_arms, reward, None)
    }

    /// [`ModuleStats::record`] crediting only the parameters `credit` marks
    /// (all when `None`): the cell's outcome count and baseline still move,
    /// so its trust region widens with every outcome.
    pub fn record_masked(
        &mut self,
        settings: &BanditSettings,
        context: usize,
        chosen_arms: &[usize],
        reward: f64,
        credit: Option<&[bool]>,
    ) -> f64 {
        let discount = settings.discount;
        let baseline = &mut self.baselines[context];
        // The first reward of a cell is its own baseline: it says nothing about arms yet.
        let advantage = if baseline.n > 0.0 { reward - baseline.mean } else { 0.0 };
        baseline.decay(settings.baseline_decay);
        baseline.push(reward);
        let cell = &mut self.cells[context];
        debug_assert_eq!(cell.len(), chosen_arms.len());
        if discount < 1.0 {
            self.cell_outcomes[context] *= discount;
            cell.iter_mut().flatten().for_each(|s| s.decay(discount));
            self.pool.iter_mut().flatten().for_each(|s| s.decay(discount));
        }
        self.cell_outcomes[context] += 1.0;
        for (p, &arm) in chosen_arms.iter().enumerate() {
            if credit.is_none_or(|c| c[p]) {
                cell[p][arm].push(advantage);
                self.pool[p][arm].push(advantage);
            }
        }
        advantage
    }

    /// Adds one outcome whose advantage was computed elsewhere, without any
    /// forgetting: the form of a replica's increment, which adds up exactly
    /// however replicas' increments are interleaved.
    pub fn push_outcome(&mut self, context: usize, chosen_arms: &[usize], reward: f64, advantage: f64) {
        self.push_outcome_masked(context, chosen_arms, reward, advantage, None);
    }

    /// [`ModuleStats::push_outcome`] crediting only the marked parameters.
    pub fn push_outcome_masked(
        &mut self,
        context: usize,
        chosen_arms: &[usize],
        reward: f64,
        advantage: f64,
        credit: Option<&[bool]>,
    ) {
        self.baselines[context].push(reward);
        self.cell_outcomes[context] += 1.0;
        for (p, &arm) in chosen_arms.iter().enumerate() {
            if credit.is_none_or(|c| c[p]) {
                self.cells[context][p][arm].push(advantage);
                self.pool[p][arm].push(advantage);
            }
        }
    }

    /// The posterior of one arm in one context, with the hierarchical prior.
    pub fn posterior(&self, settings: &BanditSettings, context: usize, param: usize, arm: usize) -> Nig {
        Nig::borrowing(&settings.prior, &self.pool[param][arm], settings.pooling_strength)
            .update(&self.cells[context][param][arm])
    }

    /// Adds another replica's increments.
    pub fn merge(&mut self, other: &ModuleStats) {
        for (a, b) in self.all_mut().zip(other.all()) {
            a.merge(b);
        }
        for (a, b) in self.cell_outcomes.iter_mut().zip(&other.cell_outcomes) {
            *a += b;
        }
        for (a, b) in self.baselines.iter_mut().zip(&other.baselines) {
            a.merge(b);
        }
    }

    /// What was added since `earlier`, a prefix of the same undiscounted history.
    pub fn since(&self, earlier: &ModuleStats) -> ModuleStats {
        let mut out = self.clone();
        for (o, e) in out.all_mut().zip(earlier.all()) {
            *o = o.since(e);
        }
        for (o, e) in out.cell_outcomes.iter_mut().zip(&earlier.cell_outcomes) {
            *o -= e;
        }
        for (o, e) in out.baselines.iter_mut().zip(&earlier.baselines) {
            *o = o.since(e);
        }
        out
    }

    /// Whether `other` has the same contexts, parameters and arms: state
    /// read back from a store must, or indexing it by arm would panic.
    pub fn same_shape(&self, other: &ModuleStats) -> bool {
        let rows =
            |a: &[Vec<Stats>], b: &[Vec<Stats>]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.len() == y.len());
        self.cells.len() == other.cells.len()
            && self.cells.iter().zip(&other.cells).all(|(a, b)| rows(a, b))
            && rows(&self.pool, &other.pool)
            && self.cell_outcomes.len() == other.cell_outcomes.len()
            && self.baselines.len() == other.baselines.len()
    }

    fn all(&self) -> impl Iterator<Item = &Stats> {
        self.cells.iter().flatten().flatten().chain(self.pool.iter().flatten())
    }

    fn all_mut(&mut self) -> impl Iterator<Item = &mut Stats> {
        self.cells.iter_mut().flatten().flatten().chain(self.pool.iter_mut().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BanditSettings {
        BanditSettings {
            prior: Nig::prior(0.0, 1.0, 2.0, 0.02),
            pooling_strength: 4.0,
            discount: 1.0,
            baseline_decay: 1.0,
        }
    }

    #[test]
    fn a_sparse_cell_borrows_from_the_pool() {
        let mut s = ModuleStats::new(12, &[3]);
        for i in 0..100 {
            // Arm 2 earns 0.03 more than arm 0 in context 0.
            s.record(&settings(), 0, &[if i % 2 == 0 { 2 } else { 0 }], if i % 2 == 0 { 0.03 } else { 0.0 });
        }
        let good = s.posterior(&settings(), 11, 0, 2);
        let bad = s.posterior(&settings(), 11, 0, 0);
        let prior_only = settings().prior;
        assert!(good.m - bad.m > 0.02, "the pooled advantage reaches the cold cell: {} vs {}", good.m, bad.m);
        assert!(good.mean_sd() < prior_only.mean_sd());
        // An arm the pool knows nothing about stays at the prior.
        assert_eq!(s.posterior(&settings(), 11, 0, 1), prior_only);
    }

    #[test]
    fn discount_bounds_the_evidence() {
        let mut s = ModuleStats::new(1, &[2]);
        let forgetting = BanditSettings { discount: 0.99, ..settings() };
        for _ in 0..10_000 {
            s.record(&forgetting, 0, &[0], 0.01);
        }
        assert!((s.cells[0][0][0].n - 100.0).abs() < 1.0, "{}", s.cells[0][0][0].n);
    }

    #[test]
    fn increments_merge_back_to_the_whole() {
        let mut whole = ModuleStats::new(2, &[2, 3]);
        let mut a = whole.clone();
        let mut b = whole.clone();
        for i in 0..40 {
            let r = (i as f64 * 0.37).sin() * 0.02;
            let arms = [i % 2, i % 3];
            whole.record(&settings(), i % 2, &arms, r);
            // Each replica sees whole contexts, as replicas behind a
            // context-sticky balancer do; baselines then agree exactly.
            if i % 2 == 0 {
                a.record(&settings(), i % 2, &arms, r)
            } else {
                b.record(&settings(), i % 2, &arms, r)
            };
        }
        let base = ModuleStats::new(2, &[2, 3]);
        let mut merged = base.clone();
        merged.merge(&a.since(&base));
        merged.merge(&b.since(&base));
        for (x, y) in merged.all().zip(whole.all()) {
            assert!((x.n - y.n).abs() < 1e-9 && (x.mean - y.mean).abs() < 1e-12 && (x.m2 - y.m2).abs() < 1e-12);
        }
    }
}
