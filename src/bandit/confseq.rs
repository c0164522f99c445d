//! An anytime-valid one-sided test on paired differences: does a candidate
//! earn more than the incumbent on the same opportunities?
//!
//! The statistic is the sum `S_n = sum (d_i - margin)` of the paired
//! differences beyond the margin, with intrinsic time `V_n = sum (d_i -
//! margin)^2`. Robbins' normal mixture of the exponential supermartingales
//! `exp(lambda S - lambda^2 V / 2)` over `lambda ~ N(0, 1/rho)` is
//! `sqrt(rho / (V + rho)) exp(S^2 / (2 (V + rho)))`; by Ville's inequality it
//! exceeds `1/alpha` at any time with probability at most `alpha` when the
//! differences have mean `margin` (self-normalised, de la Pena 1999: exact for
//! conditionally symmetric differences). So the candidate is favoured once
//!
//! `S_n >= sqrt((V_n + rho) (ln((V_n + rho) / rho) + 2 ln(1 / alpha)))`,
//!
//! and looking after every outcome does not inflate false promotions (the
//! two-sided mixture bounds both tails together, so as a one-sided test it is
//! conservative). `rho` is the intrinsic time at which the boundary is
//! tightest: fix it in advance, never from the data being tested.
//!
//! Pure: a function of the sums, so the writer, replay and issue 15's
//! grouped tests all get the same verdicts.

use serde::{Deserialize, Serialize};

/// Sums of the paired differences `d_i = v_candidate(i) - v_incumbent(i)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PairedSums {
    pub n: f64,
    pub sum: f64,
    pub sum_sq: f64,
}

impl PairedSums {
    pub fn push(&mut self, d: f64) {
        self.n += 1.0;
        self.sum += d;
        self.sum_sq += d * d;
    }

    pub fn mean(&self) -> f64 {
        if self.n > 0.0 {
            self.sum / self.n
        } else {
            0.0
        }
    }
}

/// The test's settings: level and the mixture's scale.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MixtureTest {
    pub alpha: f64,
    pub rho: f64,
}

/// What one look concluded, with its evidence.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub favours: bool,
    /// Mean paired difference.
    pub estimate: f64,
    /// The confidence sequence's lower bound on the mean difference.
    pub lower: f64,
    pub n: f64,
}

impl MixtureTest {
    pub fn new(alpha: f64, rho: f64) -> MixtureTest {
        debug_assert!(alpha > 0.0 && alpha < 1.0 && rho > 0.0);
        MixtureTest { alpha, rho }
    }

    /// The boundary `S` must reach at intrinsic time `v`.
    pub fn radius(&self, v: f64) -> f64 {
        let t = v.max(0.0) + self.rho;
        (t * ((t / self.rho).ln() + 2.0 * (1.0 / self.alpha).ln())).sqrt()
    }

    /// Whether the sums favour the candidate by more than `margin`.
    pub fn judge(&self, s: &PairedSums, margin: f64) -> Verdict {
        let excess = s.sum - s.n * margin;
        let v = (s.sum_sq - 2.0 * margin * s.sum + s.n * margin * margin).max(0.0);
        let r = self.radius(v);
        let n = s.n.max(1.0);
        Verdict { favours: s.n > 0.0 && excess >= r, estimate: s.mean(), lower: margin + (excess - r) / n, n: s.n }
    }
}

/// The anytime-valid p-value of "the mean exceeds the margin" for a sum of
/// excesses `excess` at intrinsic time `v`: one over the mixture martingale,
/// `sqrt((v + rho) / rho) exp(-excess^2 / (2 (v + rho)))`, or 1 while the sum
/// is not positive. It is below `alpha` exactly when
/// [`MixtureTest::judge`] favours the candidate at `alpha`, so a report can
/// give one number that every level reads.
pub fn mixture_p_value(rho: f64, excess: f64, v: f64) -> f64 {
    if excess <= 0.0 || rho.is_nan() || rho <= 0.0 {
        return 1.0;
    }
    let t = v.max(0.0) + rho;
    (0.5 * (t / rho).ln() - excess * excess / (2.0 * t)).exp().min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_distr::StandardNormal;
    use rand_pcg::Pcg64Mcg;

    /// Under the null (mean difference 0), the share of runs that are ever
    /// favoured, looking after every one of 3,000 differences, stays below
    /// alpha; the bound is 4 binomial standard errors above it.
    #[test]
    fn looking_every_time_keeps_false_promotions_below_alpha() {
        let test = MixtureTest::new(0.2, 50.0);
        let runs = 400;
        let mut rng = Pcg64Mcg::seed_from_u64(11);
        let mut promoted = 0;
        for _ in 0..runs {
            let mut s = PairedSums::default();
            for _ in 0..3_000 {
                s.push(rng.sample::<f64, _>(StandardNormal));
                if test.judge(&s, 0.0).favours {
                    promoted += 1;
                    break;
                }
            }
        }
        let share = promoted as f64 / runs as f64;
        let bound = 0.2 + 4.0 * (0.2f64 * 0.8 / runs as f64).sqrt();
        assert!(share <= bound, "{promoted} of {runs} runs promoted under the null");
    }

    /// A real edge of a quarter of the noise is found, and the lower bound
    /// is below the true mean.
    #[test]
    fn a_real_edge_is_found_within_a_few_hundred_pairs() {
        let test = MixtureTest::new(0.2, 50.0);
        let mut rng = Pcg64Mcg::seed_from_u64(5);
        let mut s = PairedSums::default();
        let mut found = None;
        for i in 0..2_000 {
            s.push(0.25 + rng.sample::<f64, _>(StandardNormal));
            let v = test.judge(&s, 0.0);
            if v.favours && found.is_none() {
                found = Some(i);
                assert!(v.lower > 0.0 && v.lower < 0.25 + 0.1, "{v:?}");
            }
        }
        let at = found.expect("the edge is found");
        assert!(at < 600, "found after {at} pairs");
        assert!(!test.judge(&s, 0.5).favours, "a margin above the edge is not met");
    }

    #[test]
    fn nothing_favours_nothing() {
        let test = MixtureTest::new(0.2, 1.0);
        assert!(!test.judge(&PairedSums::default(), 0.0).favours);
        let mut s = PairedSums::default();
        (0..100).for_each(|_| s.push(0.0));
        assert!(!test.judge(&s, 0.0).favours);
    }

    /// The p-value and the verdict are one test: below alpha exactly when favoured.
    #[test]
    fn the_p_value_is_below_alpha_exactly_when_the_test_favours() {
        let mut rng = Pcg64Mcg::seed_from_u64(3);
        for _ in 0..2_000 {
            let alpha = rng.random_range(0.001..0.3);
            let test = MixtureTest::new(alpha, rng.random_range(0.5..200.0));
            let (edge, sd) = (rng.random_range(-0.5..1.0), rng.random_range(0.1..2.0));
            let mut s = PairedSums::default();
            for _ in 0..rng.random_range(1..400) {
                s.push(edge + sd * rng.sample::<f64, _>(StandardNormal));
            }
            let verdict = test.judge(&s, 0.0);
            let p = mixture_p_value(test.rho, s.sum, s.sum_sq);
            if (p - alpha).abs() > 1e-9 {
                assert_eq!(verdict.favours, p < alpha, "p {p} alpha {alpha} {verdict:?}");
            }
        }
    }
}
