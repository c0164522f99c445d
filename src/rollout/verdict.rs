//! When the evidence says one policy earns more than another: the verdicts of
//! A/B tests (promote a challenger?) and of the rollback watch (has the live
//! policy fallen below an earlier generation or the seed defaults?).
//!
//! Pure functions of summary statistics; the runtime gathers them and acts.
//!
//! Every verdict here is the test that moves a cell off the defaults
//! ([`crate::bandit::MixtureTest`], a normal-mixture confidence sequence),
//! applied to the difference of two means read as the mean of paired
//! differences (issue 15: one notion of "significantly better or worse", not
//! three). It is anytime-valid: the runtime may look after every outcome,
//! and the chance of a false verdict stays below alpha however often it
//! does, so an A/B test's level is not split over its looks and the rollback
//! watch, which looks at every tick, does not inflate its false alarms. The
//! mixture's scale is fixed before any data, from the module's prior noise
//! ([`mixture_rho`]). Looks are still planned (at `min`, `2 min`, `4 min`
//! ... outcomes per arm, up to `max`), for the report and to end a test, and
//! every side needs at least [`MIN_OUTCOMES`](super::MIN_OUTCOMES), since the standard errors come
//! from the samples.

use serde::{Deserialize, Serialize};

use crate::bandit::{mixture_p_value, Stats};
use crate::ope::{Estimate, Z95};

use super::settings::AbSettings;

/// A candidate's mean reward against a reference's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Comparison {
    /// Candidate mean minus reference mean.
    pub difference: f64,
    /// Standard error of the difference.
    pub se: f64,
    /// Anytime-valid one-sided p-value of "the candidate is better by more
    /// than the margin".
    pub p_better: f64,
    /// Anytime-valid one-sided p-value of "the candidate is worse by more
    /// than the margin".
    pub p_worse: f64,
}

/// The mixture's scale for a module whose rewards have prior noise
/// `noise_sd`: tightest around a hundred pairs of outcomes (a pair's
/// difference has twice one outcome's variance), as the counterfactual
/// tests are tightest around a hundred paired differences.
pub fn mixture_rho(noise_sd: f64) -> f64 {
    200.0 * noise_sd * noise_sd
}

/// Mean and standard error of the mean of `s`; `None` below two outcomes.
fn mean_se(s: &Stats) -> Option<(f64, f64)> {
    let var = s.variance()?;
    Some((s.mean, (var / s.n).sqrt()))
}

/// Compares `candidate` with a reference by their means, `margin` being the
/// smallest difference that matters, in a module of prior noise `noise_sd`.
/// `reference_se` is the reference's standard error: of its sample, or of an
/// estimate (the defaults' off-policy estimate). The difference is read as
/// the mean of `candidate.n` paired differences with the combined standard
/// error: the sums [`crate::bandit::MixtureTest::judge`] tests are then
/// `S = n (difference - margin)` and `V = n^2 se^2`.
pub fn compare(
    candidate: &Stats,
    reference_mean: f64,
    reference_se: f64,
    margin: f64,
    noise_sd: f64,
) -> Option<Comparison> {
    let (mean, se) = mean_se(candidate)?;
    let se = (se * se + reference_se * reference_se).sqrt().max(f64::MIN_POSITIVE);
    let difference = mean - reference_mean;
    let (n, rho) = (candidate.n, mixture_rho(noise_sd));
    let v = n * n * se * se;
    Some(Comparison {
        difference,
        se,
        p_better: mixture_p_value(rho, n * (difference - margin), v),
        p_worse: mixture_p_value(rho, n * (-difference - margin), v),
    })
}

/// [`compare`] of two samples.
pub fn compare_samples(candidate: &Stats, reference: &Stats, margin: f64, noise_sd: f64) -> Option<Comparison> {
    let (mean, se) = mean_se(reference)?;
    compare(candidate, mean, se, margin, noise_sd)
}

/// What an A/B test's look concluded.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum AbVerdict {
    /// Not enough outcomes for the next planned look.
    Wait,
    /// A look without a conclusion; the test goes on.
    Continue { comparison: Comparison },
    /// The significance test and the off-policy estimate both favour the challenger.
    Promote { comparison: Comparison, ope: Estimate },
    /// The challenger is significantly worse than the champion.
    Reject { comparison: Comparison },
    /// The last look came without a conclusion; the champion stays.
    Inconclusive { comparison: Comparison, ope: Option<Estimate> },
}

impl AbVerdict {
    pub fn ends_test(&self) -> bool {
        matches!(self, AbVerdict::Promote { .. } | AbVerdict::Reject { .. } | AbVerdict::Inconclusive { .. })
    }

    pub fn name(&self) -> &'static str {
        match self {
            AbVerdict::Wait => "wait",
            AbVerdict::Continue { .. } => "continue",
            AbVerdict::Promote { .. } => "promote",
            AbVerdict::Reject { .. } => "reject",
            AbVerdict::Inconclusive { .. } => "inconclusive",
        }
    }
}

/// The verdict of look number `look` (0-based) of a test, given each arm's
/// rewards and the off-policy estimate of the challenger's value from the
/// test's logged decisions. Returns [`AbVerdict::Wait`] until both arms have
/// the outcomes that look was planned at.
///
/// Promotion needs both: the anytime-valid test says the challenger beats
/// the champion by more than the margin at the test's alpha, and the off-policy estimate
/// of the challenger (a different estimator, which also weighs the
/// champion's decisions that happen to agree with the challenger) is above
/// the champion's mean by more than the margin.
pub fn ab_verdict(
    settings: &AbSettings,
    look: usize,
    champion: &Stats,
    challenger: &Stats,
    ope: Option<&Estimate>,
    noise_sd: f64,
) -> AbVerdict {
    let looks = settings.looks();
    let Some(&due) = looks.get(look) else { return AbVerdict::Wait };
    if champion.n < due as f64 || challenger.n < due as f64 {
        return AbVerdict::Wait;
    }
    let Some(comparison) = compare_samples(challenger, champion, settings.margin, noise_sd) else {
        return AbVerdict::Wait;
    };
    let level = settings.alpha;
    let ope_favours = ope.filter(|e| e.value.is_finite() && e.value > champion.mean + settings.margin);
    if comparison.p_better < level {
        if let Some(ope) = ope_favours {
            return AbVerdict::Promote { comparison, ope: *ope };
        }
    }
    // Worse by any amount: a challenger that costs money is not run to the end.
    if compare_samples(challenger, champion, 0.0, noise_sd).is_some_and(|c| c.p_worse < level) {
        return AbVerdict::Reject { comparison };
    }
    if look + 1 >= looks.len() {
        return AbVerdict::Inconclusive { comparison, ope: ope.copied() };
    }
    AbVerdict::Continue { comparison }
}

/// Why the live policy should be rolled back, when it should.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Degradation {
    /// What the live policy was compared with: `generation N` or `the seed defaults`.
    pub against: String,
    pub live_mean: f64,
    pub reference_mean: f64,
    pub comparison: Comparison,
}

impl Degradation {
    /// One line for logs, events and checkpoint notes.
    pub fn reason(&self, live_n: f64) -> String {
        format!(
            "automatic rollback: rolling reward {:.6} over {} outcomes is below the mean reward of {} ({:.6}) by more than the margin (p = {:.2e})",
            self.live_mean,
            live_n.round(),
            self.against,
            self.reference_mean,
            self.comparison.p_worse
        )
    }
}

/// What the rollback watch compares with, and how.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Watch {
    pub margin: f64,
    pub alpha: f64,
    /// The module's prior noise, which sets the test's scale.
    pub noise_sd: f64,
}

/// The rollback watch's test: is `live` (the live policy's rolling rewards)
/// below the reference by more than the margin, at the watch's alpha?
pub fn degraded(
    live: &Stats,
    against: String,
    reference_mean: f64,
    reference_se: f64,
    watch: Watch,
) -> Option<Degradation> {
    let Watch { margin, alpha, noise_sd } = watch;
    let comparison = compare(live, reference_mean, reference_se, margin, noise_sd)?;
    (comparison.p_worse < alpha).then_some(Degradation { against, live_mean: live.mean, reference_mean, comparison })
}

/// Contexts with fewer rewards than this in the reference window are left out
/// of a stratified comparison: their means say too little.
const MIN_PER_CONTEXT: f64 = 10.0;

/// A live window and a reference window over the same mix of contexts.
#[derive(Debug, Clone, PartialEq)]
pub struct Stratified {
    /// The live rewards in the contexts both windows saw.
    pub live: Stats,
    /// The reference's per-context means, weighted by the live window's
    /// share of each context.
    pub reference_mean: f64,
    pub reference_se: f64,
}

/// Compares like with like: per-context windows `live` and `reference` (by
/// context index) reduced to the contexts both saw, the reference re-weighted
/// to the live mix. `None` when they share no context.
pub fn stratified(live: &[Stats], reference: &[Stats]) -> Option<Stratified> {
    let shared = |l: &Stats, r: &Stats| l.n > 0.0 && r.n >= MIN_PER_CONTEXT;
    let mut covered = Stats::default();
    live.iter().zip(reference).filter(|(l, r)| shared(l, r)).for_each(|(l, _)| covered.merge(l));
    if covered.n <= 0.0 {
        return None;
    }
    let (mut mean, mut variance) = (0.0, 0.0);
    for (l, r) in live.iter().zip(reference).filter(|(l, r)| shared(l, r)) {
        let w = l.n / covered.n;
        mean += w * r.mean;
        variance += w * w * r.variance().unwrap_or(0.0) / r.n;
    }
    Some(Stratified { live: covered, reference_mean: mean, reference_se: variance.sqrt() })
}

/// The standard error an estimate's 95% interval implies.
pub fn estimate_se(e: &Estimate) -> f64 {
    (e.ci_high - e.ci_low) / (2.0 * Z95)
}

#[cfg(test)]
mod tests {
    use super::super::MIN_OUTCOMES;
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_distr::StandardNormal;
    use rand_pcg::Pcg64Mcg;

    fn sample(rng: &mut Pcg64Mcg, n: usize, mean: f64, sd: f64) -> Stats {
        let mut s = Stats::default();
        for _ in 0..n {
            let z: f64 = rng.sample(StandardNormal);
            s.push(mean + sd * z);
        }
        s
    }

    fn estimate(value: f64) -> Estimate {
        Estimate { value, ci_low: value - 0.001, ci_high: value + 0.001, n: 1000, effective_n: 500.0, mean_weight: 1.0 }
    }

    /// The noise the samples are drawn with, as a module would declare it.
    const SD: f64 = 0.01;

    fn watch(margin: f64, alpha: f64) -> Watch {
        Watch { margin, alpha, noise_sd: SD }
    }

    fn settings() -> AbSettings {
        AbSettings::new(0.2, 100, 1600, 0.05, 0.0).unwrap()
    }

    #[test]
    fn a_clearly_better_challenger_is_promoted_and_a_worse_one_rejected() {
        let mut rng = Pcg64Mcg::seed_from_u64(7);
        let champion = sample(&mut rng, 400, 0.002, 0.01);
        let better = sample(&mut rng, 400, 0.006, 0.01);
        let worse = sample(&mut rng, 400, -0.002, 0.01);
        assert!(matches!(
            ab_verdict(&settings(), 2, &champion, &better, Some(&estimate(0.006)), SD),
            AbVerdict::Promote { .. }
        ));
        assert!(matches!(
            ab_verdict(&settings(), 2, &champion, &worse, Some(&estimate(-0.002)), SD),
            AbVerdict::Reject { .. }
        ));
        // Without the off-policy estimate's agreement there is no promotion.
        let doubtful = ab_verdict(&settings(), 2, &champion, &better, Some(&estimate(0.001)), SD);
        assert!(matches!(doubtful, AbVerdict::Continue { .. }), "{doubtful:?}");
        // Not yet at the look's planned outcomes.
        assert_eq!(ab_verdict(&settings(), 3, &champion, &better, Some(&estimate(0.006)), SD), AbVerdict::Wait);
    }

    /// Seeded: over 2,000 A/A tests run to the last look, the share that
    /// promotes the challenger stays below alpha, looks and all.
    #[test]
    fn equal_arms_are_promoted_less_often_than_alpha() {
        let s = AbSettings::new(0.5, 50, 400, 0.05, 0.0).unwrap();
        let mut rng = Pcg64Mcg::seed_from_u64(11);
        let mut promoted = 0;
        let runs = 2000;
        for _ in 0..runs {
            let (mut a, mut b) = (Stats::default(), Stats::default());
            for (look, &due) in s.looks().iter().enumerate() {
                while a.n < due as f64 {
                    a.push(rng.sample::<f64, _>(StandardNormal) * 0.01);
                    b.push(rng.sample::<f64, _>(StandardNormal) * 0.01);
                }
                // The off-policy estimate agrees with the challenger's sample:
                // the worst case, where only the significance test protects.
                let verdict = ab_verdict(&s, look, &a, &b, Some(&estimate(b.mean)), SD);
                if matches!(verdict, AbVerdict::Promote { .. }) {
                    promoted += 1;
                }
                if verdict.ends_test() {
                    break;
                }
            }
        }
        let rate = promoted as f64 / runs as f64;
        assert!(rate < 0.05, "false promotions {rate}");
    }

    /// The rollback watch looks at every tick. Seeded: 1,000 A/A streams of
    /// 2,000 outcomes, looked at after every 10th, cross alpha in fewer than
    /// alpha of them with the mixture test; a fixed-level z-test looked at as
    /// often (what the watch used before) crosses it in several times more.
    #[test]
    fn looking_after_every_few_outcomes_keeps_false_verdicts_below_alpha() {
        let alpha = 0.05;
        let mut rng = Pcg64Mcg::seed_from_u64(21);
        let (mut mixture, mut fixed, runs) = (0, 0, 1_000);
        for _ in 0..runs {
            let (mut a, mut b) = (Stats::default(), Stats::default());
            let (mut m_hit, mut z_hit) = (false, false);
            for i in 1..=2_000 {
                a.push(rng.sample::<f64, _>(StandardNormal) * SD);
                b.push(rng.sample::<f64, _>(StandardNormal) * SD);
                if i % 10 != 0 || i < MIN_OUTCOMES {
                    continue;
                }
                let c = compare_samples(&b, &a, 0.0, SD).unwrap();
                m_hit |= c.p_better < alpha;
                z_hit |= 1.0 - crate::bandit::normal_cdf(c.difference / c.se) < alpha;
            }
            mixture += usize::from(m_hit);
            fixed += usize::from(z_hit);
        }
        let (m, z) = (mixture as f64 / runs as f64, fixed as f64 / runs as f64);
        eprintln!("false verdicts over 1,000 A/A streams: mixture {m}, fixed-level z {z}");
        assert!(m < alpha, "mixture test: {m} of runs falsely favoured");
        assert!(z > 3.0 * alpha, "a fixed-level test looked at as often: {z}");
    }

    #[test]
    fn degradation_needs_significance_beyond_the_margin() {
        let mut rng = Pcg64Mcg::seed_from_u64(3);
        let live = sample(&mut rng, 300, 0.000, 0.01);
        assert!(degraded(&live, "generation 4".into(), 0.004, 0.0005, watch(0.001, 0.01)).is_some());
        // Within the margin: no rollback.
        assert!(degraded(&live, "generation 4".into(), 0.0015, 0.0005, watch(0.002, 0.01)).is_none());
        let d = degraded(&live, "the seed defaults".into(), 0.004, 0.0005, watch(0.001, 0.01)).unwrap();
        assert!(d.reason(live.n).contains("below the mean reward of the seed defaults"), "{}", d.reason(live.n));
    }

    /// A market that moved from a good context to a bad one lowers the live
    /// window's mean; compared context by context, the same policy is not worse.
    #[test]
    fn a_shift_in_the_mix_of_contexts_is_not_a_degradation() {
        let mut rng = Pcg64Mcg::seed_from_u64(11);
        let mut window = |counts: [usize; 2], shift: f64| -> Vec<Stats> {
            let mut by = vec![Stats::default(); 12];
            by[0] = sample(&mut rng, counts[0], 0.01 + shift, 0.005);
            by[1] = sample(&mut rng, counts[1], -0.01 + shift, 0.005);
            by
        };
        let reference = window([250, 250], 0.0);
        let merged = |by: &[Stats]| {
            let mut s = Stats::default();
            by.iter().for_each(|c| s.merge(c));
            s
        };
        let moved = window([50, 450], 0.0);
        let (r, l) = (merged(&reference), merged(&moved));
        let se = (r.variance().unwrap() / r.n).sqrt();
        assert!(degraded(&l, "g".into(), r.mean, se, watch(0.002, 0.001)).is_some(), "the naive comparison is fooled");
        let s = stratified(&moved, &reference).unwrap();
        assert_eq!(s.live.n, 500.0);
        assert!(
            degraded(&s.live, "g".into(), s.reference_mean, s.reference_se, watch(0.002, 0.001)).is_none(),
            "{s:?}"
        );

        let worse = window([50, 450], -0.01);
        let s = stratified(&worse, &reference).unwrap();
        assert!(
            degraded(&s.live, "g".into(), s.reference_mean, s.reference_se, watch(0.002, 0.001)).is_some(),
            "{s:?}"
        );

        // Contexts the reference barely saw are left out.
        let mut sparse = reference.clone();
        sparse[0] = sample(&mut rng, 3, 0.01, 0.005);
        assert_eq!(stratified(&moved, &sparse).unwrap().live.n, 450.0);
        assert!(stratified(&moved, &vec![Stats::default(); 12]).is_none());
    }
}
