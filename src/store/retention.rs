//! What the store keeps, and what it lets go: the newest checkpoints of each
//! module and every generation a rollback or promotion made or pointed at
//! (those are the history an operator rolls back to, and what an audit
//! asks about); decision-log records and trades for a number of days.
//!
//! Without it the store only grows: about 650 MB after a million decisions,
//! most of it periodic checkpoints nobody will roll back to.

use super::checkpoint::{CheckpointKind, CheckpointMeta};
use super::{Store, StoreResult};

/// Retention as given: `0` days means "keep forever".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetentionArgs {
    pub keep_checkpoints: usize,
    pub decision_log_days: f64,
    pub trade_days: f64,
}

/// Retention, checked: at least one checkpoint is kept, and the ages are
/// finite and not negative.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    keep_checkpoints: usize,
    decision_log_secs: Option<f64>,
    trade_secs: Option<f64>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RetentionError {
    #[error("keep_checkpoints = {0}: at least 1 (the newest generation is never deleted)")]
    KeepNothing(usize),
    #[error("{field} = {value}: a number of days, 0 (keep forever) or more")]
    BadDays { field: &'static str, value: f64 },
}

impl Default for Retention {
    /// 500 periodic checkpoints per module (about 8 hours at one a minute)
    /// besides every marked one, decisions for 30 days, trades forever (they
    /// are the modules' own records).
    fn default() -> Retention {
        Retention { keep_checkpoints: 500, decision_log_secs: Some(30.0 * 86_400.0), trade_secs: None }
    }
}

impl TryFrom<RetentionArgs> for Retention {
    type Error = RetentionError;
    fn try_from(a: RetentionArgs) -> Result<Retention, RetentionError> {
        if a.keep_checkpoints == 0 {
            return Err(RetentionError::KeepNothing(0));
        }
        let secs = |field, days: f64| match days {
            d if !d.is_finite() || d < 0.0 => Err(RetentionError::BadDays { field, value: d }),
            0.0 => Ok(None),
            d => Ok(Some(d * 86_400.0)),
        };
        Ok(Retention {
            keep_checkpoints: a.keep_checkpoints,
            decision_log_secs: secs("decision_log_days", a.decision_log_days)?,
            trade_secs: secs("trade_days", a.trade_days)?,
        })
    }
}

/// What one pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub checkpoints: u64,
    pub decisions: u64,
    pub trades: u64,
}

impl Retention {
    /// The generations in `metas` (newest first) that retention deletes:
    /// neither among the newest `keep_checkpoints`, nor made by a rollback or
    /// promotion, nor a rollback's target.
    pub fn doomed(&self, metas: &[CheckpointMeta]) -> Vec<u64> {
        let targets: std::collections::HashSet<u64> = metas.iter().filter_map(|m| m.rollback_to).collect();
        metas
            .iter()
            .skip(self.keep_checkpoints)
            .filter(|m| m.kind == CheckpointKind::Checkpoint && !targets.contains(&m.generation))
            .map(|m| m.generation)
            .collect()
    }

    /// Deletes the checkpoints of `module` retention does not keep.
    pub async fn prune_checkpoints(&self, store: &dyn Store, module: &str) -> StoreResult<u64> {
        let mut deleted = 0;
        for generation in self.doomed(&store.list_checkpoints(module).await?) {
            deleted += u64::from(store.delete_checkpoint(module, generation).await?);
        }
        Ok(deleted)
    }

    /// Deletes the decision-log records and trades of `module` older than
    /// their retention at `now`.
    pub async fn prune_logs(&self, store: &dyn Store, module: &str, now: f64) -> StoreResult<Pruned> {
        let mut pruned = Pruned::default();
        if let Some(age) = self.decision_log_secs {
            pruned.decisions = store.prune_decisions(module, now - age).await?;
        }
        if let Some(age) = self.trade_secs {
            pruned.trades = store.prune_trades(module, now - age).await?;
        }
        Ok(pruned)
    }
}

impl From<Retention> for RetentionArgs {
    fn from(r: Retention) -> RetentionArgs {
        RetentionArgs {
            keep_checkpoints: r.keep_checkpoints,
            decision_log_days: r.decision_log_secs.map_or(0.0, |s| s / 86_400.0),
            trade_days: r.trade_secs.map_or(0.0, |s| s / 86_400.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(generation: u64, kind: CheckpointKind, rollback_to: Option<u64>) -> CheckpointMeta {
        CheckpointMeta {
            format_version: super::super::checkpoint::FORMAT_VERSION,
            module: "crypto".into(),
            generation,
            parent: generation.checked_sub(1),
            created_at: generation as f64,
            outcome_count: generation,
            mean_reward: 0.0,
            kind,
            rollback_to,
            note: None,
        }
    }

    #[test]
    fn keeps_the_newest_and_every_marked_generation() {
        use CheckpointKind::*;
        // Newest first: 10 is a rollback to 3, 7 a promotion.
        let metas: Vec<CheckpointMeta> = (1..=10)
            .rev()
            .map(|g| match g {
                10 => meta(g, Rollback, Some(3)),
                7 => meta(g, Promotion, None),
                _ => meta(g, Checkpoint, None),
            })
            .collect();
        let r = Retention::try_from(RetentionArgs { keep_checkpoints: 2, decision_log_days: 30.0, trade_days: 0.0 })
            .unwrap();
        assert_eq!(r.doomed(&metas), vec![8, 6, 5, 4, 2, 1]);
        let everything = Retention::try_from(RetentionArgs { keep_checkpoints: 50, ..RetentionArgs::from(r) }).unwrap();
        assert!(everything.doomed(&metas).is_empty());
    }

    #[test]
    fn bad_settings_name_the_value() {
        let ok = RetentionArgs { keep_checkpoints: 1, decision_log_days: 0.0, trade_days: 0.0 };
        assert_eq!(
            Retention::try_from(RetentionArgs { keep_checkpoints: 0, ..ok }),
            Err(RetentionError::KeepNothing(0))
        );
        let e = Retention::try_from(RetentionArgs { decision_log_days: -1.0, ..ok }).unwrap_err();
        assert!(e.to_string().contains("decision_log_days = -1"), "{e}");
        let e = Retention::try_from(RetentionArgs { trade_days: f64::NAN, ..ok }).unwrap_err();
        assert!(e.to_string().contains("trade_days = NaN"), "{e}");
    }
}
