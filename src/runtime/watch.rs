//! The rollback watch: the live policy's rolling reward against its
//! lineage and the defaults' estimate, rolling back on evidence.

use crate::bandit::Stats;
use crate::rollout::{degraded, estimate_se, stratified, Degradation, Watch};
use crate::store::{Checkpoint, CheckpointKind};

use super::persist::RollbackTarget;
use super::rollout::Review;
use super::{Runtime, RuntimeError};

/// A generation of the live policy's line, with the rolling reward it had
/// (and per context, when its checkpoint kept that).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct LineageEntry {
    generation: u64,
    outcome_count: u64,
    rolling: Stats,
    by_context: Option<Vec<Stats>>,
}

impl LineageEntry {
    /// `cp`'s place in the line; `None` when it kept no rolling reward.
    pub(super) fn of(cp: &Checkpoint) -> Option<LineageEntry> {
        Some(LineageEntry {
            generation: cp.generation,
            outcome_count: cp.outcome_count,
            rolling: cp.rolling_reward?,
            by_context: cp.rolling_by_context.clone(),
        })
    }
}

impl Runtime {
    /// The rollback watch: rolls the module back when the live policy's
    /// rolling reward is significantly below an earlier generation's (one
    /// whose window does not overlap the live one) or below the seed
    /// defaults' off-policy estimate, by more than the module's margin.
    ///
    /// The earlier window is re-weighted to the live window's mix of
    /// contexts: a market that moved from bullish to bearish sessions lowers
    /// every policy's reward, and must not read as the live policy's fault.
    pub(super) async fn watch(
        &self,
        module: &str,
        live: &Stats,
        live_by_context: &[Stats],
        since: u64,
        outcomes: u64,
    ) -> Result<Review, RuntimeError> {
        let space = self.spaces.get(module).ok_or_else(|| RuntimeError::UnknownModule(module.to_string()))?;
        let cfg = &space.rollback;
        if !cfg.enabled || live.n < cfg.window as f64 {
            return Ok(Review::Nothing);
        }
        let test = Watch { margin: cfg.margin, alpha: cfg.alpha, noise_sd: space.learning.prior_noise_sd };
        let window = cfg.window as u64;
        let reference = self.lineage.lock().get(module).and_then(|line| {
            line.iter()
                .rev()
                .find(|e| e.outcome_count + window <= outcomes && e.rolling.n >= cfg.window as f64)
                .cloned()
        });
        let mut found: Option<(RollbackTarget, Degradation)> = None;
        if let Some(r) = reference {
            let against = format!("generation {}", r.generation);
            let degradation = match &r.by_context {
                // Judged only when the contexts both windows saw hold most of the live one.
                Some(by_context) => stratified(live_by_context, by_context)
                    .filter(|s| s.live.n >= live.n / 2.0)
                    .and_then(|s| degraded(&s.live, against, s.reference_mean, s.reference_se, test)),
                None => {
                    let se = r.rolling.variance().map_or(0.0, |v| (v / r.rolling.n).sqrt());
                    degraded(live, against, r.rolling.mean, se, test)
                }
            };
            found = degradation.map(|d| (RollbackTarget::Generation(r.generation), d));
        }
        // A module with declared roles is judged against the defaults by its
        // loss budget's breaker, on what the defaults would have earned on
        // the same decisions (exact where counterfactuals allow): one test,
        // not a second one on an off-policy estimate, which on held and
        // counterfactual decisions compares unlike with unlike.
        let declares_roles = self.spaces.get(module).is_some_and(|s| s.counterfactual.is_some());
        if found.is_none() && !declares_roles {
            // Only an estimate the log supports, not the reward model's word alone.
            if let Some(e) = self.status.defaults_estimate(module).filter(|e| e.effective_n >= 30.0) {
                found = degraded(live, "the seed defaults".into(), e.value, estimate_se(&e), test)
                    .map(|d| (RollbackTarget::Defaults, d));
            }
        }
        let Some((target, degradation)) = found else { return Ok(Review::Nothing) };
        let reason = degradation.reason(live.n);
        let _guard = self.lock(module)?.lock().await;
        // Still the policy that was judged? (A rollback or promotion may have
        // raced; new outcomes of the same policy do not matter.)
        if self.agent.view(module)?.rolling_since != since {
            return Ok(Review::Nothing);
        }
        tracing::warn!(module, target = ?target, reason = %reason, "automatic rollback");
        let meta = self.restore(module, target, CheckpointKind::Rollback, reason.clone()).await?;
        {
            let mut counts = self.status.auto_rollbacks.lock();
            let entry = counts.entry(module.to_string()).or_insert((0, String::new()));
            entry.0 += 1;
            entry.1 = reason.clone();
        }
        Ok(Review::RolledBack { meta, reason })
    }
}
