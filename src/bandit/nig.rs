//! Normal-Inverse-Gamma posteriors on an arm's mean reward, and the
//! hierarchical prior that lets a sparse context cell borrow from its module.
//!
//! Returns are continuous and often negative, so the model is Normal with
//! unknown mean and variance; the conjugate prior is NIG(m, kappa, alpha, beta).

use serde::{Deserialize, Serialize};

use super::Stats;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Nig {
    /// Location of the mean.
    pub m: f64,
    /// Pseudo-observations behind `m`.
    pub kappa: f64,
    pub alpha: f64,
    pub beta: f64,
}

impl Nig {
    /// The module-wide prior: mean `prior_mean`, noise sd `noise_sd` expected a priori.
    pub fn prior(mean: f64, strength: f64, shape: f64, noise_sd: f64) -> Nig {
        Nig { m: mean, kappa: strength, alpha: shape, beta: (shape - 1.0) * noise_sd * noise_sd }
    }

    /// The conjugate update with a batch of observations.
    pub fn update(&self, s: &Stats) -> Nig {
        if s.n <= 0.0 {
            return *self;
        }
        let kappa = self.kappa + s.n;
        let d = s.mean - self.m;
        Nig {
            m: (self.kappa * self.m + s.n * s.mean) / kappa,
            kappa,
            alpha: self.alpha + 0.5 * s.n,
            beta: self.beta + 0.5 * s.m2 + self.kappa * s.n * d * d / (2.0 * kappa),
        }
    }

    /// Expected noise variance, E[sigma^2].
    pub fn noise_variance(&self) -> f64 {
        self.beta / (self.alpha - 1.0)
    }

    /// Standard deviation of the marginal posterior of the mean, a Student-t
    /// with 2*alpha degrees of freedom; finite because alpha > 1 always.
    pub fn mean_sd(&self) -> f64 {
        let nu = 2.0 * self.alpha;
        (self.beta / (self.alpha * self.kappa) * nu / (nu - 2.0)).sqrt()
    }

    /// The prior of a context cell: the module-wide (pooled) posterior for the
    /// same arm, worth at most `pooling_strength` pseudo-observations. With an
    /// empty pool this is exactly `global`.
    pub fn borrowing(global: &Nig, pool: &Stats, pooling_strength: f64) -> Nig {
        let tau = pool.n.min(pooling_strength);
        if tau <= 0.0 {
            return *global;
        }
        let pooled = global.update(pool);
        Nig {
            m: pooled.m,
            kappa: global.kappa + tau,
            alpha: global.alpha + 0.5 * tau,
            beta: global.beta + 0.5 * tau * pooled.noise_variance(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_moves_towards_data_and_tightens() {
        let prior = Nig::prior(0.0, 1.0, 2.0, 0.02);
        let mut s = Stats::default();
        for _ in 0..100 {
            s.push(0.01);
        }
        let post = prior.update(&s);
        assert!((post.m - 0.01 * 100.0 / 101.0).abs() < 1e-12);
        assert!(post.mean_sd() < prior.mean_sd() / 5.0);
    }

    #[test]
    fn empty_pool_borrows_nothing() {
        let global = Nig::prior(0.0, 1.0, 2.0, 0.02);
        assert_eq!(Nig::borrowing(&global, &Stats::default(), 4.0), global);
    }

    #[test]
    fn borrowing_is_capped_at_the_pooling_strength() {
        let global = Nig::prior(0.0, 1.0, 2.0, 0.02);
        let mut pool = Stats::default();
        for i in 0..1000 {
            pool.push(0.05 + 0.001 * (i % 3) as f64);
        }
        let cell = Nig::borrowing(&global, &pool, 4.0);
        assert!((cell.m - 0.051).abs() < 1e-3, "centred on the pool: {}", cell.m);
        assert_eq!(cell.kappa, 5.0);
        // Ten own observations outweigh the borrowed four.
        let mut own = Stats::default();
        (0..10).for_each(|_| own.push(-0.05));
        assert!(cell.update(&own).m < 0.0);
    }
}
