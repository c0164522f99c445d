//! Discounted sufficient statistics of a stream of rewards.
//!
//! Kept as (weight, mean, sum of squared deviations) rather than raw sums so
//! that small returns (around 1e-2) keep their precision, and merged with
//! Chan's formula so replicas can add their increments in any order.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Stats {
    /// Effective number of observations; fractional once discounting is on.
    pub n: f64,
    pub mean: f64,
    /// Sum of squared deviations from `mean`.
    pub m2: f64,
}

impl Stats {
    pub fn push(&mut self, x: f64) {
        self.push_weighted(x, 1.0);
    }

    pub fn push_weighted(&mut self, x: f64, w: f64) {
        let n = self.n + w;
        let delta = x - self.mean;
        self.mean += delta * w / n;
        self.m2 += w * delta * (x - self.mean);
        self.n = n;
    }

    /// Forgets a fraction `1 - gamma` of the evidence; the mean is unchanged.
    pub fn decay(&mut self, gamma: f64) {
        self.n *= gamma;
        self.m2 *= gamma;
    }

    /// Adds another stream's statistics, as if its observations had been pushed here.
    pub fn merge(&mut self, other: &Stats) {
        if other.n <= 0.0 {
            return;
        }
        if self.n <= 0.0 {
            *self = *other;
            return;
        }
        let n = self.n + other.n;
        let delta = other.mean - self.mean;
        self.mean += delta * other.n / n;
        self.m2 += other.m2 + delta * delta * self.n * other.n / n;
        self.n = n;
    }

    /// The statistics of the observations in `self` that are not in `earlier`,
    /// where `earlier` is a prefix of the same undiscounted stream. Replicas use
    /// it to compute the increment they have not yet published.
    pub fn since(&self, earlier: &Stats) -> Stats {
        let n = self.n - earlier.n;
        if n <= 1e-12 {
            return Stats::default();
        }
        let mean = (self.n * self.mean - earlier.n * earlier.mean) / n;
        let m2 = self.m2 - earlier.m2 - (mean - earlier.mean).powi(2) * earlier.n * n / self.n;
        Stats { n, mean, m2: m2.max(0.0) }
    }

    pub fn variance(&self) -> Option<f64> {
        (self.n > 1.0).then(|| self.m2 / (self.n - 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn of(xs: &[f64]) -> Stats {
        let mut s = Stats::default();
        xs.iter().for_each(|&x| s.push(x));
        s
    }

    proptest! {
        #[test]
        fn merge_equals_one_stream(a in prop::collection::vec(-1.0f64..1.0, 0..40), b in prop::collection::vec(-1.0f64..1.0, 0..40)) {
            let mut merged = of(&a);
            merged.merge(&of(&b));
            let whole = of(&[a.clone(), b.clone()].concat());
            prop_assert!((merged.n - whole.n).abs() < 1e-9);
            prop_assert!((merged.mean - whole.mean).abs() < 1e-9);
            prop_assert!((merged.m2 - whole.m2).abs() < 1e-9);
        }

        #[test]
        fn since_inverts_merge(a in prop::collection::vec(-1.0f64..1.0, 0..40), b in prop::collection::vec(-1.0f64..1.0, 1..40)) {
            let earlier = of(&a);
            let whole = of(&[a.clone(), b.clone()].concat());
            let inc = whole.since(&earlier);
            let direct = of(&b);
            prop_assert!((inc.n - direct.n).abs() < 1e-9);
            prop_assert!((inc.mean - direct.mean).abs() < 1e-9);
            prop_assert!((inc.m2 - direct.m2).abs() < 1e-7);
        }
    }

    #[test]
    fn decay_keeps_the_mean_and_shrinks_the_weight() {
        let mut s = of(&[1.0, 2.0, 3.0]);
        s.decay(0.5);
        assert_eq!(s.n, 1.5);
        assert_eq!(s.mean, 2.0);
        assert_eq!(s.m2, 1.0);
    }
}
