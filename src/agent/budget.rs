//! The loss budget: conservative exploration against the seed defaults.
//!
//! A module may explore (serve a value other than its incumbents to learn)
//! only while its realised return, minus what the defaults would have earned
//! on the same decisions, stays above `-loss_budget` with room for every open
//! exploring trade at its worst case (Wu et al. 2016, "Conservative
//! Bandits"; Kazerouni et al. 2017). Once the room is gone it serves its
//! incumbents, still learning everything the incumbents' trades reveal, until
//! the ledger recovers.
//!
//! The ledger's terms, per closed decision:
//! - exactly `realised - defaults` where the outcome determines what the
//!   defaults would have earned (counterfactuals; or the decision served the
//!   defaults themselves, a difference of 0);
//! - elsewhere `realised - (mean + 2 se)` of the defaults' value, estimated
//!   from the decisions where it was exact: the defaults' expected value at
//!   the upper confidence bound of its mean (the conservative bandit's
//!   baseline is an expectation; the realised noise of a value never seen
//!   is not a loss).
//!
//! An open exploring trade counts at its worst case where the module declares
//! one (a stop-loss times the capital at risk). Elsewhere it counts at the
//! largest of: the worst difference an exploring trade has made so far, the
//! lower confidence bound of their mean difference (2 standard errors, with
//! a prior of [`PRIOR_TRADES`] trades at `prior_noise_sd`), and
//! [`PRIOR_WORST_SDS`] x `prior_noise_sd` before any was seen. A module whose
//! budget cannot hold one trade's worst case explores only out of what it has
//! earned over the defaults, which is the conservative bandit's rule.
//!
//! The ledger covers promotions too: a table that moved on evidence and
//! then loses shows in it. A promoted table's realised difference is noisy
//! (a trade's return has ten times the spread of the differences between
//! values), so the circuit breaks not on the realised sum but on the same
//! anytime-valid test as every promotion, turned round: once it shows, at the
//! module's `alpha`, that the module earns less in expectation than the
//! defaults by more than the budget ([`LossLedger::breaks`]), every incumbent
//! goes back to its default and nothing moves until a rollback
//! (`LossLedger::spent`).
//!
//! The writer keeps the ledger ([`LossLedger`]); decisions read its
//! published [`BudgetView`] from their snapshot and the count of open
//! exploring decisions from an atomic: deciding never waits on learning.

use serde::{Deserialize, Serialize};

use crate::bandit::PairedSums;

/// Pseudo-trades of the prior on an exploring trade's difference.
pub const PRIOR_TRADES: f64 = 4.0;

/// An exploring trade's worst case before any was seen, in prior standard deviations.
pub const PRIOR_WORST_SDS: f64 = 2.0;

/// Standard errors of the lower confidence bounds.
const Z: f64 = 2.0;

/// The writer's ledger of one module.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LossLedger {
    /// Sum of `realised - defaults` where the defaults' value was exact.
    pub exact: f64,
    /// Decisions where it was not, and their realised sum.
    pub estimated_n: f64,
    pub estimated_realised: f64,
    /// The defaults' value where exact: the estimate for the other decisions.
    pub defaults: PairedSums,
    /// `realised - defaults` of exploring decisions (exact or estimated).
    pub explored: PairedSums,
    /// The most negative of those, `<= 0`.
    #[serde(default)]
    pub worst_explored: f64,
    /// `realised - defaults` of every decision (exact or estimated): what
    /// the breaker tests.
    #[serde(default)]
    pub differences: PairedSums,
    /// Set once the shortfall's lower bound passed the budget: the module
    /// serves the defaults and moves nothing until a rollback restores
    /// another generation's ledger (the defaults' is empty).
    #[serde(default)]
    pub spent: bool,
}

impl LossLedger {
    /// Adds one closed decision: its realised reward, the defaults' value
    /// when the outcome determines it, and whether it explored.
    pub fn record(&mut self, realised: f64, defaults: Option<f64>, explored: bool) {
        let difference = match defaults {
            Some(d) => {
                self.exact += realised - d;
                self.defaults.push(d);
                realised - d
            }
            None => {
                self.estimated_n += 1.0;
                self.estimated_realised += realised;
                realised - self.defaults.mean()
            }
        };
        self.differences.push(difference);
        if explored {
            self.explored.push(difference);
            self.worst_explored = self.worst_explored.min(difference);
        }
    }

    /// Whether the anytime-valid test finds the module behind the defaults,
    /// in expectation, by more than `budget` (summed over its decisions).
    pub fn breaks(&self, test: &crate::bandit::MixtureTest, budget: f64) -> bool {
        let s = &self.differences;
        s.n > 0.0 && -s.sum - budget >= test.radius(s.sum_sq)
    }

    /// A lower confidence bound on the sum of `realised - defaults` so far.
    pub fn lower(&self) -> f64 {
        if self.estimated_n == 0.0 {
            return self.exact;
        }
        let (mean, sd) = mean_sd(&self.defaults, 0.0, 0.0, 0.0);
        let n = self.defaults.n.max(1.0);
        // What the defaults would have earned there in expectation (the
        // conservative bandit's baseline), at the upper bound of its mean.
        let upper_defaults = self.estimated_n * (mean + Z * sd / n.sqrt());
        self.exact + self.estimated_realised - upper_defaults
    }

    /// What one open exploring trade may still cost, `>= 0` (see the module's docs).
    pub fn reserve(&self, declared_worst: Option<f64>, prior_sd: f64) -> f64 {
        if let Some(w) = declared_worst {
            return w.abs();
        }
        let (mean, sd) = mean_sd(&self.explored, PRIOR_TRADES, 0.0, prior_sd);
        let n = self.explored.n + PRIOR_TRADES;
        let lcb = -(mean - Z * sd / n.sqrt());
        let seen = if self.explored.n > 0.0 { -self.worst_explored } else { PRIOR_WORST_SDS * prior_sd };
        lcb.max(seen).max(0.0)
    }

    /// The view decisions read.
    pub fn view(&self, budget: f64, declared_worst: Option<f64>, prior_sd: f64) -> BudgetView {
        let lower = self.lower();
        BudgetView {
            budget,
            shortfall_lower: lower,
            remaining: budget + lower,
            reserve: self.reserve(declared_worst, prior_sd),
            spent: self.spent,
        }
    }
}

/// Mean and standard deviation of `s`, with `prior_n` pseudo-observations of
/// mean `prior_mean` and standard deviation `prior_sd`.
fn mean_sd(s: &PairedSums, prior_n: f64, prior_mean: f64, prior_sd: f64) -> (f64, f64) {
    let n = s.n + prior_n;
    if n <= 0.0 {
        return (0.0, 0.0);
    }
    let mean = (s.sum + prior_n * prior_mean) / n;
    let second = (s.sum_sq + prior_n * (prior_sd * prior_sd + prior_mean * prior_mean)) / n;
    (mean, (second - mean * mean).max(0.0).sqrt())
}

/// What a decision needs to know of the budget, published with the module's view.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BudgetView {
    /// The module's `safety.loss_budget`.
    pub budget: f64,
    /// Lower confidence bound on `realised - defaults` over closed decisions.
    pub shortfall_lower: f64,
    /// `budget + shortfall_lower`: what is left before any open trade.
    pub remaining: f64,
    /// What each open exploring trade may still cost.
    pub reserve: f64,
    /// The breaker tripped: the module serves the defaults, its A/B test
    /// included, until a rollback.
    pub spent: bool,
}

impl BudgetView {
    pub fn unlimited() -> BudgetView {
        BudgetView { budget: f64::INFINITY, shortfall_lower: 0.0, remaining: f64::INFINITY, reserve: 0.0, spent: false }
    }

    /// Whether one more exploring trade fits beside `open` others at their worst case.
    pub fn allows(&self, open: u64) -> bool {
        self.remaining - (open as f64 + 1.0) * self.reserve >= 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_differences_add_up_and_estimated_ones_are_charged_an_upper_bound() {
        let mut l = LossLedger::default();
        l.record(0.03, Some(0.01), false);
        l.record(-0.02, Some(0.0), true);
        assert!((l.lower() - 0.0).abs() < 1e-12);
        // Unknown defaults: charged more than their mean (0.005).
        l.record(0.005, None, false);
        assert!(l.lower() < 0.0, "{}", l.lower());
        assert_eq!(l.explored.n, 1.0);
    }

    #[test]
    fn the_reserve_is_the_worst_exploring_trade_seen_or_the_prior_and_a_declared_worst_case_wins() {
        let mut l = LossLedger::default();
        assert!((l.reserve(None, 0.02) - PRIOR_WORST_SDS * 0.02).abs() < 1e-12);
        l.record(0.03, Some(0.0), true);
        // One winning trade seen: the prior's lower confidence bound remains.
        let after_win = l.reserve(None, 0.02);
        assert!(after_win > 0.0 && after_win < PRIOR_WORST_SDS * 0.02, "{after_win}");
        l.record(-0.07, Some(0.0), true);
        assert!((l.reserve(None, 0.02) - 0.07).abs() < 1e-12, "the worst trade seen");
        for _ in 0..1000 {
            l.record(0.01, Some(0.0), true);
        }
        assert!((l.reserve(None, 0.02) - 0.07).abs() < 1e-12, "a worst case is not averaged away");
        assert_eq!(l.reserve(Some(-0.05), 0.02), 0.05);
    }

    #[test]
    fn the_view_allows_what_fits_beside_the_open_trades() {
        let v = BudgetView { budget: 0.02, shortfall_lower: -0.005, remaining: 0.015, reserve: 0.005, spent: false };
        assert!(v.allows(0) && v.allows(2));
        assert!(!v.allows(3));
        assert!(BudgetView::unlimited().allows(u64::MAX));
    }
}
