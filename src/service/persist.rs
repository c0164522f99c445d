//! The service's hooks backed by the runtime: checkpoint routes, rollback,
//! the final checkpoint, and the trades collection.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::runtime::Handle;

use serde_json::Value;

use crate::agent::Decision;
use crate::ope::Estimate;
use crate::rollout::AbSettings;
use crate::runtime::{self, Challenger, Runtime, RuntimeError};
use crate::store::{now_secs, CheckpointMeta, LearningEvent, ParameterEffectiveness, StoreError as BackendError};

use super::store::{
    CheckpointStore, CheckpointSummary, LogCounts, OutcomeRecord, OutcomeSink, RollbackTarget, SinkFuture, StoreError,
};
use super::wire::ab_test_json;

/// Checkpoints and trades through a [`Runtime`]. Its blocking methods run on
/// tokio's blocking pool (the service's contract) and wait on `handle`.
pub struct RuntimeHooks {
    runtime: Arc<Runtime>,
    handle: Handle,
}

impl RuntimeHooks {
    pub fn new(runtime: Arc<Runtime>, handle: Handle) -> RuntimeHooks {
        RuntimeHooks { runtime, handle }
    }
}

fn summary(m: &CheckpointMeta) -> CheckpointSummary {
    CheckpointSummary {
        module: m.module.clone(),
        generation: m.generation,
        parent: m.parent,
        created_at: m.created_at,
        outcomes: m.outcome_count,
        mean_reward: (m.outcome_count > 0).then_some(m.mean_reward),
    }
}

fn backend(e: BackendError) -> StoreError {
    match e {
        BackendError::NotFound { what } => StoreError::NotFound(format!("{what} not found")),
        e if e.is_transient() => StoreError::Unavailable("the store is unavailable; retry later".into()),
        e => StoreError::Internal(e.to_string()),
    }
}

fn runtime_error(e: RuntimeError) -> StoreError {
    match e {
        RuntimeError::Store(e) => backend(e),
        e @ RuntimeError::UnknownGeneration { .. } => StoreError::NotFound(e.to_string()),
        e @ RuntimeError::UnknownModule(_) => StoreError::Invalid(e.to_string()),
        e @ RuntimeError::BadChallenger { .. } => StoreError::Invalid(e.to_string()),
        e @ RuntimeError::AbTestRunning { .. } => StoreError::Conflict(e.to_string()),
        e @ RuntimeError::BudgetSpent { .. } => StoreError::Conflict(e.to_string()),
        e @ RuntimeError::NoAbTest(_) => StoreError::NotFound(e.to_string()),
        e => StoreError::Internal(e.to_string()),
    }
}

impl CheckpointStore for RuntimeHooks {
    fn kind(&self) -> &'static str {
        self.runtime.store.kind()
    }

    fn healthy(&self) -> bool {
        self.runtime.status.store_healthy.load(Ordering::Relaxed)
    }

    fn failures(&self) -> Vec<String> {
        self.runtime.status.tasks.failures()
    }

    fn list(&self, module: &str, before: Option<u64>, limit: usize) -> Result<Vec<CheckpointSummary>, StoreError> {
        let metas =
            self.handle.block_on(self.runtime.store.list_checkpoints_page(module, before, limit)).map_err(backend)?;
        Ok(metas.iter().map(summary).collect())
    }

    fn get(&self, module: &str, generation: u64) -> Result<serde_json::Value, StoreError> {
        let cp = self
            .handle
            .block_on(self.runtime.store.get_checkpoint(module, generation))
            .map_err(backend)?
            .ok_or_else(|| StoreError::NotFound(format!("module {module:?} has no generation {generation}")))?;
        serde_json::to_value(&cp).map_err(|e| StoreError::Internal(e.to_string()))
    }

    fn create(&self, module: &str) -> Result<CheckpointSummary, StoreError> {
        let meta = self.handle.block_on(self.runtime.checkpoint(module)).map_err(runtime_error)?;
        Ok(summary(&meta))
    }

    fn rollback(&self, module: &str, to: RollbackTarget) -> Result<CheckpointSummary, StoreError> {
        let target = match to {
            RollbackTarget::Generation(g) => runtime::RollbackTarget::Generation(g),
            RollbackTarget::Defaults => runtime::RollbackTarget::Defaults,
        };
        let meta = self.handle.block_on(self.runtime.rollback(module, target)).map_err(runtime_error)?;
        Ok(summary(&meta))
    }

    fn checkpoint_age_secs(&self, module: &str) -> Option<f64> {
        self.runtime.status.checkpoint_age(module, now_secs())
    }

    fn background_errors(&self) -> u64 {
        self.runtime.status.store_errors.load(Ordering::Relaxed)
            + self.runtime.decision_log.counters().store_errors.load(Ordering::Relaxed)
    }

    fn log_counts(&self) -> LogCounts {
        let c = self.runtime.decision_log.counters();
        LogCounts {
            decisions: c.written.load(Ordering::Relaxed),
            settlements: c.settled.load(Ordering::Relaxed),
            trades: c.trades.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
        }
    }

    fn on_shutdown(&self) -> Result<(), StoreError> {
        self.handle.block_on(self.runtime.shutdown());
        Ok(())
    }

    fn learning_events(&self, module: &str, limit: usize) -> Result<Vec<LearningEvent>, StoreError> {
        self.handle.block_on(self.runtime.store.list_learning_events(module, limit)).map_err(backend)
    }

    fn effectiveness(&self, module: &str) -> Result<Vec<ParameterEffectiveness>, StoreError> {
        self.handle.block_on(self.runtime.store.list_parameter_effectiveness(module)).map_err(backend)
    }

    fn defaults_estimate(&self, module: &str) -> Option<Estimate> {
        self.runtime.status.defaults_estimate(module)
    }

    fn start_ab(&self, module: &str, challenger: Challenger, settings: AbSettings) -> Result<Value, StoreError> {
        let test = self.handle.block_on(self.runtime.start_ab(module, challenger, settings)).map_err(runtime_error)?;
        Ok(ab_test_json(&test))
    }

    fn stop_ab(&self, module: &str) -> Result<Value, StoreError> {
        let result = self.handle.block_on(self.runtime.stop_ab(module)).map_err(runtime_error)?;
        serde_json::to_value(&result).map_err(|e| StoreError::Internal(e.to_string()))
    }

    fn last_ab_result(&self, module: &str) -> Option<Value> {
        self.runtime.status.last_ab_result(module).and_then(|r| serde_json::to_value(&r).ok())
    }

    fn rollout_counts(&self, module: &str) -> (u64, u64, Option<String>) {
        let (rollbacks, reason) = self.runtime.status.auto_rollbacks(module);
        (self.runtime.status.promotions(module), rollbacks, reason)
    }
}

impl OutcomeSink for RuntimeHooks {
    /// Nothing to do: the decision is in the journal already, and the
    /// decision log stores it from there.
    fn decided(&self, _: &Arc<Decision>, _: &[(String, f64)]) {}

    /// Nothing to do either: the journal took the outcome, with the trade
    /// as its module sent it, before the agent accepted it, and the decision
    /// log stores both from there (completing the trade as the handler did),
    /// so a slow or absent Firestore never turns an accepted outcome into an
    /// error, and a crash loses neither.
    fn record(&self, _: OutcomeRecord) -> SinkFuture<'_> {
        Box::pin(std::future::ready(Ok(())))
    }
}
