//! Safe rollout, the agent's side: what a running A/B test serves and what
//! each of its arms earned, and the live policy's rolling reward that the
//! runtime's rollback watch compares with earlier generations.
//!
//! The champion is the live policy, learning as always; the challenger is a
//! fixed set of values per context (an earlier generation's incumbents, the
//! seed defaults, or values a researcher gives). A seeded hash of the
//! decision's number assigns it, so the split holds for any traffic pattern
//! and a run replays exactly. Both arms' outcomes teach the bandit: the
//! challenger's decisions carry arms like any other.
//!
//! For off-policy evaluation each decision of the test is logged with the
//! probability of its whole choice under the test's mixture of the two arms
//! (`split * [challenger's choice] + (1 - split) * champion's propensity`),
//! which is the logging policy the decision really came from.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::bandit::Stats;
use crate::rollout::AbSettings;
use crate::util::splitmix64;

use super::view::{CellView, Choice};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbArm {
    Champion,
    Challenger,
}

/// Which test and arm served a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbAssignment {
    pub test: u64,
    pub arm: AbArm,
}

/// What decisions need of a test; immutable while it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbServing {
    pub test: u64,
    pub split: f64,
    /// `[context][param]`: the challenger's values and the arms they fall in.
    pub values: Vec<Vec<f64>>,
    pub arms: Vec<Vec<usize>>,
}

/// A running test, as the writer keeps it (and checkpoints it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbTest {
    pub serving: Arc<AbServing>,
    /// What the challenger is: `generation 12`, `defaults` or `parameters`.
    pub challenger: String,
    /// The generation whose state a promotion restores, when the challenger is one.
    pub challenger_generation: Option<u64>,
    pub settings: AbSettings,
    /// Seconds since the Unix epoch.
    pub started_at: f64,
    pub champion_rewards: Stats,
    pub challenger_rewards: Stats,
    /// Planned looks taken so far.
    pub looks_done: usize,
}

impl AbTest {
    /// A test that has just started: no rewards, no looks taken.
    pub fn new(
        serving: AbServing,
        challenger: String,
        challenger_generation: Option<u64>,
        settings: AbSettings,
        started_at: f64,
    ) -> AbTest {
        AbTest {
            serving: Arc::new(serving),
            challenger,
            challenger_generation,
            settings,
            started_at,
            champion_rewards: Stats::default(),
            challenger_rewards: Stats::default(),
            looks_done: 0,
        }
    }

    /// Learns the reward of a decision, if this test served it.
    pub fn record(&mut self, assignment: Option<AbAssignment>, reward: f64) {
        match assignment {
            Some(AbAssignment { test, arm: AbArm::Champion }) if test == self.serving.test => {
                self.champion_rewards.push(reward)
            }
            Some(AbAssignment { test, arm: AbArm::Challenger }) if test == self.serving.test => {
                self.challenger_rewards.push(reward)
            }
            _ => {}
        }
    }
}

impl AbServing {
    /// Decision number `n` goes to the challenger with probability `split`.
    pub fn assign(&self, n: u64) -> AbArm {
        let u = (splitmix64(self.test ^ n.wrapping_mul(0xa076_1d64_78bd_642f)) >> 11) as f64 / (1u64 << 53) as f64;
        if u < self.split {
            AbArm::Challenger
        } else {
            AbArm::Champion
        }
    }

    /// Serves the challenger's values in `context` instead of `choice`.
    pub fn serve_challenger(&self, context: usize, choice: &mut Choice) {
        choice.values.clone_from(&self.values[context]);
        choice.arms.clone_from(&self.arms[context]);
        choice.propensities.iter_mut().for_each(|p| *p = 1.0);
        choice.offsets.iter_mut().for_each(|o| *o = None);
        choice.offset_log_density = 0.0;
    }

    /// The probability of `arms` under the test's mixture of champion and
    /// challenger in a context whose champion view is `cell`.
    pub fn mixture_propensity(&self, context: usize, cell: &CellView, explore: bool, arms: &[usize]) -> f64 {
        let champion: f64 = cell
            .params
            .iter()
            .zip(arms)
            .map(|(pv, &k)| {
                if explore {
                    pv.arms.iter().zip(&pv.propensities).filter(|(&a, _)| a == k).map(|(_, &q)| q).sum()
                } else if pv.greedy_arm == k {
                    1.0
                } else {
                    0.0
                }
            })
            .product();
        let challenger = if self.arms[context] == arms { 1.0 } else { 0.0 };
        self.split * challenger + (1.0 - self.split) * champion
    }
}

/// The rewards of the live policy's last `capacity` decisions, with the
/// context each was decided in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RewardWindow {
    capacity: usize,
    rewards: VecDeque<(usize, f64)>,
}

impl RewardWindow {
    pub fn new(capacity: usize) -> RewardWindow {
        RewardWindow { capacity, rewards: VecDeque::with_capacity(capacity) }
    }

    pub fn push(&mut self, context: usize, reward: f64) {
        if self.rewards.len() == self.capacity {
            self.rewards.pop_front();
        }
        self.rewards.push_back((context, reward));
    }

    /// Mean and spread of the window, computed afresh (no drift from sliding sums).
    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        self.rewards.iter().for_each(|&(_, r)| s.push(r));
        s
    }

    /// The same per context, by [`Context::index`](crate::space::Context::index).
    pub fn by_context(&self) -> Vec<Stats> {
        let mut out = vec![Stats::default(); crate::space::Context::COUNT];
        self.rewards.iter().for_each(|&(c, r)| out[c].push(r));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_the_last_rewards() {
        let mut w = RewardWindow::new(3);
        [1.0, 2.0, 3.0, 4.0, 5.0].iter().enumerate().for_each(|(i, &r)| w.push(i % 2, r));
        let s = w.stats();
        assert_eq!((s.n, s.mean), (3.0, 4.0));
        let by = w.by_context();
        assert_eq!((by[0].n, by[0].mean, by[1].n, by[1].mean), (2.0, 4.0, 1.0, 4.0));
    }

    #[test]
    fn the_split_holds_over_many_decisions() {
        let serving = AbServing { test: 42, split: 0.2, values: vec![], arms: vec![] };
        let challenger = (0..100_000u64).filter(|&n| serving.assign(n) == AbArm::Challenger).count();
        // Binomial(100k, 0.2): sd 126, so 5 sd is 630.
        assert!((challenger as i64 - 20_000).abs() < 630, "{challenger}");
    }

    #[test]
    fn rewards_count_only_for_the_test_that_served_them() {
        let serving = Arc::new(AbServing { test: 7, split: 0.5, values: vec![], arms: vec![] });
        let mut t = AbTest {
            serving,
            challenger: "defaults".into(),
            challenger_generation: None,
            settings: AbSettings::new(0.5, 30, 60, 0.05, 0.0).unwrap(),
            started_at: 0.0,
            champion_rewards: Stats::default(),
            challenger_rewards: Stats::default(),
            looks_done: 0,
        };
        t.record(Some(AbAssignment { test: 7, arm: AbArm::Challenger }), 1.0);
        t.record(Some(AbAssignment { test: 7, arm: AbArm::Champion }), 2.0);
        t.record(Some(AbAssignment { test: 6, arm: AbArm::Challenger }), 5.0);
        t.record(None, 5.0);
        assert_eq!((t.challenger_rewards.n, t.challenger_rewards.mean), (1.0, 1.0));
        assert_eq!((t.champion_rewards.n, t.champion_rewards.mean), (1.0, 2.0));
    }
}
