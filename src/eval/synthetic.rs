//! A seeded synthetic environment with a known optimum, for tests, benchmarks
//! and `paramopt simulate`.
//!
//! Each (context, parameter) has a hidden optimum; the expected reward falls
//! quadratically with the distance of each served value from its optimum,
//! relative to the parameter's range. Optima can sit on an arm (so "the best
//! arm" is well defined) or between arms, and can move with a feature.

use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rand_pcg::Pcg64Mcg;

use crate::space::{Context, ModuleSpace, ParamKind};
use crate::util::project_simplex;

#[derive(Debug, Clone)]
pub struct SyntheticEnv {
    /// `[context][param]` optimum when the driving feature is 0.5.
    pub optimum: Vec<Vec<f64>>,
    /// `[param]`: how far, as a fraction of the range, the optimum moves
    /// across the driving feature's range. 0 means features carry no signal.
    pub feature_slope: Vec<f64>,
    /// Index of the feature that drives the optimum, if any.
    pub driving_feature: Option<usize>,
    /// Reward lost per parameter served at the far end of its range from its optimum.
    pub penalty: f64,
    /// Expected reward at the optimum.
    pub peak: f64,
    pub noise_sd: f64,
}

/// One arm value per parameter, drawn uniformly; simplex groups by rejection.
pub fn random_arms<R: Rng + ?Sized>(space: &ModuleSpace, rng: &mut R) -> Vec<f64> {
    let mut values: Vec<f64> = space.params.iter().map(|p| p.arms[rng.random_range(0..p.arms.len())]).collect();
    for group in &space.simplex_groups {
        let feasible = (0..1000).find_map(|_| {
            let draw: Vec<f64> = group
                .members
                .iter()
                .map(|&p| space.params[p].arms[rng.random_range(0..space.params[p].arms.len())])
                .collect();
            ((draw.iter().sum::<f64>() - 1.0).abs() < 1e-9).then_some(draw)
        });
        let draw = feasible.unwrap_or_else(|| group.members.iter().map(|&p| space.params[p].default).collect());
        for (&p, v) in group.members.iter().zip(draw) {
            values[p] = v;
        }
    }
    values
}

impl SyntheticEnv {
    /// Optima drawn on arm values, different per context. A simplex group's
    /// optima are a combination of arms that sums to 1 (the defaults' arms if
    /// no other is found), so the optimum is always feasible.
    pub fn on_arms(space: &ModuleSpace, seed: u64) -> SyntheticEnv {
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        let optimum = (0..Context::COUNT).map(|_| random_arms(space, &mut rng)).collect();
        SyntheticEnv {
            optimum,
            feature_slope: vec![0.0; space.params.len()],
            driving_feature: None,
            penalty: 0.05,
            peak: 0.01,
            noise_sd: 0.01,
        }
    }

    /// Optima between arm values, moving with feature `feature`: in each
    /// context a continuous parameter's optimum sits between two grid points
    /// (never nearer than a fifth of the spacing to either), and shifts by
    /// `slope` of its range across the feature's range. Integer parameters keep
    /// their optimum on an arm. Simplex groups are projected back to feasibility.
    pub fn between_arms(space: &ModuleSpace, seed: u64, feature: usize, slope: f64) -> SyntheticEnv {
        let mut env = SyntheticEnv::on_arms(space, seed);
        let mut rng = Pcg64Mcg::seed_from_u64(seed ^ 0x00be_7ee4);
        for optima in env.optimum.iter_mut() {
            for (p, param) in space.params.iter().enumerate() {
                if param.kind == ParamKind::Integer {
                    continue;
                }
                let k = rng.random_range(0..param.arms.len() - 1);
                let t = rng.random_range(0.2..0.8);
                optima[p] = param.arms[k] + t * (param.arms[k + 1] - param.arms[k]);
            }
            for group in &space.simplex_groups {
                let mut y: Vec<f64> = group.members.iter().map(|&p| optima[p]).collect();
                let lo: Vec<f64> = group.members.iter().map(|&p| space.params[p].lo).collect();
                let hi: Vec<f64> = group.members.iter().map(|&p| space.params[p].hi).collect();
                project_simplex(&mut y, &lo, &hi);
                for (&p, v) in group.members.iter().zip(y) {
                    optima[p] = v;
                }
            }
        }
        env.driving_feature = Some(feature);
        env.feature_slope =
            space.params.iter().map(|p| if p.kind == ParamKind::Integer || p.simplex { 0.0 } else { slope }).collect();
        env
    }

    /// Feature values for one decision: each uniform over its declared range.
    pub fn draw_features<R: Rng + ?Sized>(space: &ModuleSpace, rng: &mut R) -> Vec<(String, f64)> {
        space.features.iter().map(|f| (f.name.clone(), rng.random_range(f.lo..f.hi))).collect()
    }

    /// Expected reward of `values` in `context` with feature values `features`.
    pub fn expected(&self, space: &ModuleSpace, context: Context, values: &[f64], features: &[Option<f64>]) -> f64 {
        let optima = self.optima(space, context, features);
        let loss: f64 =
            space.params.iter().zip(values).zip(&optima).map(|((p, v), o)| ((v - o) / p.range()).powi(2)).sum::<f64>();
        self.peak - self.penalty * loss
    }

    /// The optimum of every parameter in `context` given the features.
    pub fn optima(&self, space: &ModuleSpace, context: Context, features: &[Option<f64>]) -> Vec<f64> {
        let shift = match self.driving_feature {
            Some(f) => features[f].map(|x| space.features[f].normalise(x) - 0.5).unwrap_or(0.0),
            None => 0.0,
        };
        space
            .params
            .iter()
            .enumerate()
            .map(|(p, param)| {
                (self.optimum[context.index()][p] + shift * self.feature_slope[p] * param.range())
                    .clamp(param.lo, param.hi)
            })
            .collect()
    }

    /// One noisy reward.
    pub fn sample<R: Rng + ?Sized>(
        &self,
        space: &ModuleSpace,
        context: Context,
        values: &[f64],
        features: &[Option<f64>],
        rng: &mut R,
    ) -> f64 {
        let z: f64 = rng.sample(StandardNormal);
        self.expected(space, context, values, features) + self.noise_sd * z
    }
}
