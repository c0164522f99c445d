//! Thompson sampling over arms with Gaussian posteriors, and the exact
//! probability that each arm is the one sampled.
//!
//! Sampling and propensities use the same Gaussian per arm, so the recorded
//! propensity is the true probability of the choice (up to quadrature error
//! of about 1e-5), which is what off-policy estimators need.

use rand::Rng;
use rand_distr::StandardNormal;

/// Draws one value per arm and returns the arm with the largest draw.
pub fn sample_argmax<R: Rng + ?Sized>(means: &[f64], sds: &[f64], rng: &mut R) -> usize {
    let mut best = 0;
    let mut best_draw = f64::NEG_INFINITY;
    for (k, (&m, &s)) in means.iter().zip(sds).enumerate() {
        let z: f64 = rng.sample(StandardNormal);
        let draw = m + s * z;
        if draw > best_draw {
            best_draw = draw;
            best = k;
        }
    }
    best
}

/// P(arm k has the largest draw), for every k: the integral over arm k's
/// Gaussian of the product of the others' CDFs.
///
/// Arms can differ in spread by orders of magnitude (a well-tried arm next to
/// a cold one), which turns the others' CDFs into near-steps in arm k's
/// coordinates. So the integral is split at every other arm's mean +-4 sd and
/// each piece (arm k's own density is also cut at 0 and +-3 sd) gets 8-point
/// Gauss-Legendre: accurate to about 1e-5 throughout.
pub fn thompson_propensities(means: &[f64], sds: &[f64], out: &mut [f64]) {
    let k_arms = means.len();
    debug_assert_eq!(sds.len(), k_arms);
    debug_assert_eq!(out.len(), k_arms);
    if k_arms == 1 {
        out[0] = 1.0;
        return;
    }
    let mut breaks: Vec<f64> = Vec::with_capacity(3 * k_arms + 7);
    let inv_sds: Vec<f64> = sds.iter().map(|s| 1.0 / s).collect();
    let mut total = 0.0;
    for k in 0..k_arms {
        breaks.clear();
        breaks.extend([-Z_MAX, -3.0, 0.0, 3.0, Z_MAX]);
        // Only a much narrower arm makes a near-step; a wider one's CDF is
        // smooth on arm k's scale and the fixed pieces handle it.
        for j in (0..k_arms).filter(|&j| j != k && sds[j] < NARROW * sds[k]) {
            let centre = (means[j] - means[k]) / sds[k];
            let half = STEP_SDS * sds[j] / sds[k];
            breaks.extend([centre - half, centre, centre + half].into_iter().filter(|z| z.abs() < Z_MAX));
        }
        breaks.sort_by(f64::total_cmp);
        let mut p = 0.0;
        for w in breaks.windows(2) {
            let (a, b) = (w[0], w[1]);
            if b - a < 1e-12 {
                continue;
            }
            let (mid, half) = (0.5 * (a + b), 0.5 * (b - a));
            for (&t, &wt) in LEGENDRE_NODES.iter().zip(&LEGENDRE_WEIGHTS) {
                for z in [mid - half * t, mid + half * t] {
                    let x = means[k] + sds[k] * z;
                    let mut f = wt * half * (-0.5 * z * z).exp() * INV_SQRT_2PI;
                    for j in 0..k_arms {
                        if j != k {
                            f *= normal_cdf((x - means[j]) * inv_sds[j]);
                            if f < 1e-18 {
                                break;
                            }
                        }
                    }
                    p += f;
                }
            }
        }
        out[k] = p;
        total += p;
    }
    for p in out.iter_mut() {
        *p /= total;
    }
}

const Z_MAX: f64 = 8.5;
const STEP_SDS: f64 = 4.0;
const NARROW: f64 = 0.5;
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;
/// Positive half of the 8-point Gauss-Legendre rule on [-1, 1].
const LEGENDRE_NODES: [f64; 4] =
    [0.183_434_642_495_649_8, 0.525_532_409_916_329, 0.796_666_477_413_626_7, 0.960_289_856_497_536_3];
const LEGENDRE_WEIGHTS: [f64; 4] =
    [0.362_683_783_378_362, 0.313_706_645_877_887_3, 0.222_381_034_453_374_5, 0.101_228_536_290_376_3];

/// The standard normal CDF to 1.5e-7 absolute (Abramowitz & Stegun 7.1.26):
/// far below the propensities' other errors, and a few times cheaper than a
/// full-precision erfc, which dominated the writer's time.
pub fn normal_cdf(x: f64) -> f64 {
    const P: f64 = 0.327_591_1;
    const A: [f64; 5] = [0.254_829_592, -0.284_496_736, 1.421_413_741, -1.453_152_027, 1.061_405_429];
    let z = x.abs() * std::f64::consts::FRAC_1_SQRT_2;
    if z > 6.0 {
        // The tail is below 1e-17; exp would only underflow slowly.
        return if x >= 0.0 { 1.0 } else { 0.0 };
    }
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let tail = 0.5 * poly * (-z * z).exp();
    if x >= 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_pcg::Pcg64Mcg;

    #[test]
    fn normal_cdf_known_values() {
        for (x, want) in [
            (0.0, 0.5),
            (1.96, 0.9750021048517795),
            (-3.0, 0.0013498980316301),
            (5.0, 0.9999997133484281),
            (-0.5, 0.3085375387259869),
        ] {
            assert!((normal_cdf(x) - want).abs() < 1.5e-7, "{x}: {} vs {want}", normal_cdf(x));
        }
    }

    #[test]
    fn legendre_rule_integrates_polynomials_exactly() {
        // 8 points are exact to degree 15: the integral of t^14 over [-1, 1] is 2/15.
        let integral: f64 = LEGENDRE_NODES.iter().zip(&LEGENDRE_WEIGHTS).map(|(t, w)| 2.0 * w * t.powi(14)).sum();
        assert!((integral - 2.0 / 15.0).abs() < 1e-14, "{integral}");
        let total: f64 = LEGENDRE_WEIGHTS.iter().sum();
        assert!((total - 1.0).abs() < 1e-14);
    }

    #[test]
    fn two_equal_arms_are_a_coin_flip() {
        let mut out = [0.0; 2];
        thompson_propensities(&[0.1, 0.1], &[0.02, 0.02], &mut out);
        assert!((out[0] - 0.5).abs() < 1e-12);
        // Two Gaussians: P(A > B) = Phi((ma - mb) / sqrt(sa^2 + sb^2)).
        thompson_propensities(&[0.1, 0.0], &[0.1, 0.05], &mut out);
        let exact = normal_cdf(0.1 / (0.01f64 + 0.0025).sqrt());
        assert!((out[0] - exact).abs() < 1e-6, "{} vs {exact}", out[0]);
    }

    #[test]
    fn propensities_match_the_sampler() {
        let means = [0.01, 0.012, 0.0, -0.01, 0.011];
        let sds = [0.004, 0.01, 0.002, 0.02, 0.0005];
        let mut exact = [0.0; 5];
        thompson_propensities(&means, &sds, &mut exact);
        let mut rng = Pcg64Mcg::seed_from_u64(7);
        let draws = 200_000;
        let mut counts = [0usize; 5];
        for _ in 0..draws {
            counts[sample_argmax(&means, &sds, &mut rng)] += 1;
        }
        for k in 0..5 {
            let freq = counts[k] as f64 / draws as f64;
            // 4 binomial standard errors plus the quadrature's own error.
            let tol = 4.0 * (exact[k] * (1.0 - exact[k]) / draws as f64).sqrt() + 5e-4;
            assert!((freq - exact[k]).abs() < tol, "arm {k}: sampled {freq}, computed {}", exact[k]);
        }
    }
}
