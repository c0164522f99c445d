//! Checkpoints and rollbacks: built on the writer, written to the store
//! with retries, each a generation with its `ml_learning_events` row; the
//! background checkpointer and retention's pruning.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use crate::agent::module_seed;
use crate::space::Context;
use crate::store::{
    now_secs, rfc3339, Checkpoint, CheckpointKind, CheckpointMeta, LearningEvent, LearningEventKind, OptimizationData,
    PerformancePoint,
};

use super::analytics::EFFECTIVENESS_EVERY_SECS;
use super::watch::LineageEntry;
use super::{Runtime, RuntimeError};

pub(super) fn incumbents_map(cp: &Checkpoint) -> BTreeMap<String, BTreeMap<String, f64>> {
    Context::all()
        .zip(&cp.incumbents)
        .map(|(c, values)| (c.to_string(), cp.parameter_names.iter().cloned().zip(values.iter().copied()).collect()))
        .collect()
}

pub(super) fn incumbents_json(cp: &Checkpoint) -> serde_json::Value {
    json!(incumbents_map(cp))
}

/// Hands the memory freed after an analysis or a compaction back to the
/// system. Both allocate tens of megabytes for a moment; glibc keeps freed
/// memory in its per-thread arenas, so without this the service's RSS settles
/// at the sum of every arena's peak rather than at what it holds.
pub(super) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the kernel; it takes
    // the allocator's own locks and touches no memory the program holds.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How often retention prunes the decision log and trades of a module.
pub(super) const PRUNE_LOGS_EVERY_SECS: f64 = 3600.0;

/// Where a rollback goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RollbackTarget {
    Generation(u64),
    Defaults,
}

impl Runtime {
    /// Writes `module`'s current state as a new generation now.
    pub async fn checkpoint(&self, module: &str) -> Result<CheckpointMeta, RuntimeError> {
        let _guard = self.lock(module)?.lock().await;
        self.save(module, CheckpointKind::Checkpoint, None, None).await
    }

    /// Writes a new generation if the module learned anything since its last
    /// stored one. Decided under the module's lock, so the checkpointer and
    /// the final checkpoint at shutdown never both write the same state.
    pub async fn checkpoint_if_learned(&self, module: &str) -> Result<Option<CheckpointMeta>, RuntimeError> {
        let _guard = self.lock(module)?.lock().await;
        let stored = self.status.last.lock().get(module).map_or(0, |l| l.1);
        // The count after every outcome accepted so far is learned and
        // published (a flush, not a writer task: those republish every view).
        let agent = self.agent.clone();
        tokio::task::spawn_blocking(move || agent.flush()).await.expect("flush task");
        if self.agent.view(module)?.outcomes == stored {
            return Ok(None);
        }
        Ok(Some(self.save(module, CheckpointKind::Checkpoint, None, None).await?))
    }

    /// Writes the module's state as a new generation of `kind`; with
    /// `incumbents`, a promotion of those values, which the live learner
    /// takes only once the generation is stored. The caller holds the
    /// module's lock.
    pub(super) async fn save(
        &self,
        module: &str,
        kind: CheckpointKind,
        reason: Option<String>,
        incumbents: Option<Vec<Vec<f64>>>,
    ) -> Result<CheckpointMeta, RuntimeError> {
        let index = self.agent.module_index(module)?;
        // Every attempt stores the state as it is then: a retry after an
        // outage must not store the state from before it.
        let snapshot = || async {
            let mut cp = self
                .on_writer(move |learners| {
                    let l = &learners[index];
                    let weights = l.policy.as_ref().and_then(|p| p.to_safetensors().ok());
                    let parent = (l.generation > 0).then_some(l.generation);
                    Checkpoint::from_learner(l, kind, parent, weights, now_secs())
                })
                .await?;
            cp.note.clone_from(&reason);
            if let Some(values) = &incumbents {
                cp.incumbents.clone_from(values);
                cp.rolling_reward = None;
                cp.rolling_by_context = None;
            }
            Ok(cp)
        };
        // Under the module's lock the generation changes only through this
        // function and `restore`, whose writer tasks republish the view: the
        // view has it, without another trip to the writer.
        let current = self.agent.view(module)?.generation;
        let parent = (current > 0).then_some(current);
        let before = self.previous_parameters(module, parent).await;
        let cp = self.put_checkpoint(snapshot).await?;
        let generation = cp.generation;
        let takes_over = kind != CheckpointKind::Checkpoint;
        self.on_writer(move |learners| {
            let l = &mut learners[index];
            l.generation = generation;
            if takes_over {
                l.rolling_since = generation;
            }
            if let Some(values) = incumbents {
                l.adopt_incumbents(values);
            }
        })
        .await?;
        {
            let mut lineage = self.lineage.lock();
            let line = lineage.entry(module.to_string()).or_default();
            if takes_over {
                line.clear();
            } else if let Some(entry) = LineageEntry::of(&cp) {
                line.push(entry);
            }
        }
        // Copying and fsyncing the journal is blocking file work: off the async workers.
        let (journal, name, through) = (self.journal.clone(), module.to_string(), cp.journal_seq);
        let compacted = tokio::task::spawn_blocking(move || {
            let compacted = journal.compact(&name, through);
            release_freed_memory();
            compacted
        })
        .await;
        match compacted {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(module, error = %e, "journal compaction failed; it will be retried at the next checkpoint")
            }
            Err(e) => {
                tracing::warn!(module, error = %e, "journal compaction task failed; retried at the next checkpoint")
            }
        }
        let event = match kind {
            CheckpointKind::Checkpoint => LearningEventKind::Checkpoint,
            CheckpointKind::Rollback => LearningEventKind::Rollback,
            CheckpointKind::Promotion => LearningEventKind::Promotion,
        };
        self.record(&cp, event, before, reason).await;
        Ok(cp.meta())
    }

    /// Makes a new generation equal to `target` and serves it from now on.
    /// History is never deleted: the target and everything after it stay.
    pub async fn rollback(&self, module: &str, target: RollbackTarget) -> Result<CheckpointMeta, RuntimeError> {
        let _guard = self.lock(module)?.lock().await;
        let note = match target {
            RollbackTarget::Generation(g) => format!("rollback to generation {g}"),
            RollbackTarget::Defaults => "rollback to the seed defaults".into(),
        };
        self.restore(module, target, CheckpointKind::Rollback, note).await
    }

    /// Replaces the module's learned state with `target`'s as a new
    /// generation of `kind`. Any A/B test ends with it. The caller holds the
    /// module's lock.
    pub(super) async fn restore(
        &self,
        module: &str,
        target: RollbackTarget,
        kind: CheckpointKind,
        note: String,
    ) -> Result<CheckpointMeta, RuntimeError> {
        let index = self.agent.module_index(module)?;
        let space = self.spaces.get(module).ok_or_else(|| RuntimeError::UnknownModule(module.to_string()))?.clone();
        let (current, journal_seq, test) = self
            .on_writer(move |learners| {
                let l = &learners[index];
                (l.generation, l.journal_seq, l.ab.clone())
            })
            .await?;
        let mut cp = match target {
            RollbackTarget::Defaults => Checkpoint::defaults(space.clone(), None, now_secs()),
            RollbackTarget::Generation(g) => self
                .store
                .get_checkpoint(module, g)
                .await?
                .ok_or(RuntimeError::UnknownGeneration { module: module.to_string(), generation: g })?,
        };
        cp.kind = kind;
        cp.rollback_to = match target {
            RollbackTarget::Generation(g) => Some(g),
            RollbackTarget::Defaults => None,
        };
        cp.note = Some(note.clone());
        cp.parent = (current > 0).then_some(current);
        cp.created_at = now_secs();
        cp.ab_test = None;
        // Outcomes learned before the rollback are deliberately not replayed onto it.
        cp.journal_seq = journal_seq;
        let mut learner = cp.to_learner(space, module_seed(self.seed, module))?;
        let before = self.previous_parameters(module, cp.parent).await;
        let cp = self.put_checkpoint(|| std::future::ready(Ok(cp.clone()))).await?;
        learner.generation = cp.generation;
        learner.rolling_since = cp.generation;
        self.on_writer(move |learners| {
            // A rollback is this replica's: what it has shared stays shared,
            // and later syncs bring only what others learn from now on.
            let replica = learners[index].replica.take();
            learners[index] = learner;
            learners[index].replica = replica;
        })
        .await?;
        self.lineage.lock().insert(module.to_string(), Vec::new());
        if let Some(test) = test.filter(|_| kind == CheckpointKind::Rollback) {
            let reason = format!("the module was rolled back ({note})");
            self.finish_ab(module, &test, "ended by rollback", reason, None, None, None);
        }
        let event = match kind {
            CheckpointKind::Promotion => LearningEventKind::Promotion,
            _ => LearningEventKind::Rollback,
        };
        self.record(&cp, event, before, Some(note)).await;
        tracing::warn!(module, generation = cp.generation, target = ?target, kind = kind.as_str(), "restored an earlier state");
        Ok(cp.meta())
    }

    /// Stores the checkpoint `make` makes, retrying transient failures with
    /// backoff, each time with a checkpoint made anew; returns the stored one,
    /// its generation set. Health and metrics follow the outcome.
    pub(super) async fn put_checkpoint<F, Fut>(&self, mut make: F) -> Result<Checkpoint, RuntimeError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Checkpoint, RuntimeError>>,
    {
        let mut delay = Duration::from_millis(100);
        for attempt in 1.. {
            let mut cp = make().await?;
            match self.store.put_checkpoint(&cp).await {
                Ok(g) => {
                    self.status.store_healthy.store(true, Ordering::Relaxed);
                    self.status.checkpoints_written.fetch_add(1, Ordering::Relaxed);
                    self.status.last.lock().insert(cp.module.clone(), (cp.created_at, cp.outcome_count));
                    cp.generation = g;
                    return Ok(cp);
                }
                Err(e) => {
                    self.status.store_errors.fetch_add(1, Ordering::Relaxed);
                    self.status.store_healthy.store(false, Ordering::Relaxed);
                    tracing::warn!(module = %cp.module, attempt, error = %e, "checkpoint write failed");
                    if !e.is_transient() || attempt >= 5 {
                        return Err(e.into());
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        unreachable!("the loop returns")
    }

    pub(super) async fn previous_parameters(&self, module: &str, parent: Option<u64>) -> serde_json::Value {
        match parent {
            Some(g) => match self.store.get_checkpoint(module, g).await {
                Ok(Some(cp)) => incumbents_json(&cp),
                _ => serde_json::Value::Null,
            },
            None => serde_json::Value::Null,
        }
    }

    /// The plan's `ml_learning_events` and `ml_optimization_data` for a new generation.
    /// Best effort: the generation itself is already stored.
    pub(super) async fn record(
        &self,
        cp: &Checkpoint,
        kind: LearningEventKind,
        before: serde_json::Value,
        reason: Option<String>,
    ) {
        let now = now_secs();
        let event = LearningEvent {
            model_name: format!("{}.bandit", cp.module),
            module_name: cp.module.clone(),
            learning_event: kind,
            parameters_before: before,
            parameters_after: incumbents_json(cp),
            performance_impact: 0.0,
            confidence_change: 0.0,
            timestamp: rfc3339(now),
            created_at: now,
            generation: Some(cp.generation),
            reason,
            evidence: None,
        };
        if let Err(e) = self.store.put_learning_event(&event).await {
            tracing::warn!(module = %cp.module, error = %e, "could not record the learning event");
        }
        let mut data = match self.store.get_optimization_data(&cp.module).await {
            Ok(Some(d)) => d,
            _ => OptimizationData {
                module_name: cp.module.clone(),
                optimized_parameters: BTreeMap::new(),
                performance_history: Vec::new(),
                optimization_generation: 0,
                last_optimization: String::new(),
                performance_improvement: 0.0,
            },
        };
        data.optimized_parameters = incumbents_map(cp);
        data.performance_history.push(PerformancePoint {
            generation: cp.generation,
            timestamp: rfc3339(now),
            outcome_count: cp.outcome_count,
            mean_reward: cp.mean_reward,
        });
        // Bounded, so the document stays far below Firestore's 1 MiB.
        let excess = data.performance_history.len().saturating_sub(1000);
        data.performance_history.drain(..excess);
        data.optimization_generation = cp.generation;
        data.last_optimization = rfc3339(now);
        if let Err(e) = self.store.put_optimization_data(&data).await {
            tracing::warn!(module = %cp.module, error = %e, "could not record the optimization data");
        }
    }

    /// Checkpoints every module that is due, forever; start it with `tokio::spawn`.
    pub async fn run_checkpointer(self: Arc<Self>) {
        let mut backoff_until: HashMap<String, f64> = HashMap::new();
        let mut backoff: HashMap<String, f64> = HashMap::new();
        let mut analysed: HashMap<String, f64> = HashMap::new();
        let mut analysing: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        let mut compacting: Option<tokio::task::JoinHandle<()>> = None;
        let mut pruned_logs: HashMap<String, f64> = HashMap::new();
        let mut pruning: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            // Decisions alone grow the journal; checkpoints compact it only
            // when outcomes arrive.
            if compacting.as_ref().is_none_or(|t| t.is_finished()) {
                let journal = self.journal.clone();
                compacting = Some(tokio::task::spawn_blocking(move || match journal.compact_if_grown() {
                    Ok(true) => release_freed_memory(),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "journal compaction failed; retried at the next tick"),
                }));
            }
            for module in self.spaces.names().map(String::from).collect::<Vec<_>>() {
                let now = now_secs();
                if let Err(e) = self.review(&module).await {
                    tracing::warn!(module, error = %e, "A/B look or rollback watch failed; retried at the next tick");
                }
                if let Err(e) = self.record_moves(&module).await {
                    tracing::warn!(module, error = %e, "could not collect the counterfactual moves; retried at the next tick");
                }
                if pruned_logs.get(&module).is_none_or(|&t| now - t >= PRUNE_LOGS_EVERY_SECS) {
                    pruned_logs.insert(module.clone(), now);
                    self.spawn_pruning(&mut pruning, &module, true);
                }
                if backoff_until.get(&module).is_some_and(|&t| now < t) {
                    continue;
                }
                let Ok(view) = self.agent.view(&module) else { continue };
                let (at, count) = self.status.last.lock().get(&module).copied().unwrap_or((now, 0));
                let new = view.outcomes.saturating_sub(count);
                let due = new >= self.options.checkpoint_every_outcomes
                    || (new > 0 && now - at >= self.options.checkpoint_every_secs);
                if !due {
                    continue;
                }
                match self.checkpoint_if_learned(&module).await {
                    Ok(None) => {}
                    Ok(Some(meta)) => {
                        backoff.remove(&module);
                        backoff_until.remove(&module);
                        self.spawn_pruning(&mut pruning, &module, false);
                        tracing::info!(
                            module,
                            generation = meta.generation,
                            outcomes = meta.outcome_count,
                            "checkpoint"
                        );
                        // One module's analysis at a time: each holds up to
                        // `EFFECTIVENESS_WINDOW` records, and the peak of all
                        // modules at once is what sets the service's RSS.
                        let idle = analysing.values().all(|task| task.is_finished());
                        if idle && analysed.get(&module).is_none_or(|&t| now - t >= EFFECTIVENESS_EVERY_SECS) {
                            analysed.insert(module.clone(), now);
                            // In a task of its own: reading and analysing the decision
                            // log takes seconds under load, and other modules' checkpoints
                            // must not wait for it.
                            let runtime = self.clone();
                            let m = module.clone();
                            let task = tokio::spawn(async move {
                                if let Err(e) = runtime.refresh_effectiveness(&m).await {
                                    tracing::warn!(module = m, error = %e, "could not refresh parameter effectiveness");
                                }
                                release_freed_memory();
                            });
                            analysing.insert(module.clone(), task);
                        }
                    }
                    Err(e) => {
                        let max = self.options.store_retry_max_secs;
                        let wait = backoff.get(&module).map_or(1.0f64.min(max), |w| (w * 2.0f64).min(max));
                        backoff.insert(module.clone(), wait);
                        backoff_until.insert(module.clone(), now + wait);
                        tracing::warn!(module, error = %e, retry_in_secs = wait, "checkpoint failed; decisions go on");
                    }
                }
            }
        }
    }

    /// Applies retention to `module` in a task of its own (one at a time per
    /// module): its checkpoints, and with `logs` its decisions and trades.
    pub(super) fn spawn_pruning(
        self: &Arc<Self>,
        tasks: &mut HashMap<String, tokio::task::JoinHandle<()>>,
        module: &str,
        logs: bool,
    ) {
        if tasks.get(module).is_some_and(|t| !t.is_finished()) {
            return;
        }
        let runtime = self.clone();
        let m = module.to_string();
        let task = tokio::spawn(async move {
            let retention = runtime.options.retention;
            let store = &*runtime.store;
            match retention.prune_checkpoints(store, &m).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(module = m, deleted = n, "retention: deleted old periodic checkpoints"),
                Err(e) => {
                    tracing::warn!(module = m, error = %e, "retention: could not prune checkpoints; retried later")
                }
            }
            if logs {
                match retention.prune_logs(store, &m, now_secs()).await {
                    Ok(p) if p.decisions + p.trades > 0 => {
                        tracing::info!(
                            module = m,
                            decisions = p.decisions,
                            trades = p.trades,
                            "retention: deleted old records"
                        )
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(module = m, error = %e, "retention: could not prune the decision log or trades")
                    }
                }
            }
        });
        tasks.insert(module.to_string(), task);
    }
}
