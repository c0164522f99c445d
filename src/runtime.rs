//! The agent with its storage: restore at start, journal outcomes before they
//! are acknowledged, checkpoint in the background, roll back on request.
//!
//! Decisions never wait on any of this. The journal is a local file (one
//! group-committed `fdatasync` per batch of reports); checkpoints are built on
//! the writer thread from its own state and written to the store by a tokio
//! task, retried with backoff while the store is down.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::json;

use crate::agent::{module_seed, Agent, AgentError, AgentOptions, Journal, ModuleLearner};
use crate::bandit::ModuleStats;
use crate::decision_log::DecisionLog;
use crate::eval::effectiveness::effectiveness;
use crate::eval::ope::{doubly_robust, Estimate, LoggedDecision, TargetPolicy};
use crate::space::{Context, Spaces};
use crate::store::{
    now_secs, open_store, rfc3339, Checkpoint, CheckpointKind, CheckpointMeta, FileJournal, LearningEvent,
    LearningEventKind, OptimizationData, PerformancePoint, Store, StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("outcome journal in {dir}: {source}")]
    Journal {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("restoring module {module:?}: {detail}")]
    Restore { module: String, detail: String },
    #[error("unknown module {0:?}")]
    UnknownModule(String),
    #[error("module {0:?} is not set up as a replica (no sync interval)")]
    NotAReplica(String),
    #[error("module {module:?} has no generation {generation}")]
    UnknownGeneration { module: String, generation: u64 },
}

#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// A store URL (`data/`, `local:///path`, `firestore://PROJECT`).
    pub store: String,
    /// Where the outcome journal lives; always local.
    pub data_dir: PathBuf,
    pub seed: Option<u64>,
    /// Checkpoint a module after this many new outcomes...
    pub checkpoint_every_outcomes: u64,
    /// ...or this many seconds after its last checkpoint, if it learned anything.
    pub checkpoint_every_secs: f64,
    /// When set, this process is one of several replicas sharing one store:
    /// every module merges its new evidence into the store's shared totals,
    /// and takes in the other replicas', this often.
    pub sync_every_secs: Option<f64>,
    /// The longest wait between checkpoint attempts while the store is down
    /// (the wait doubles from 1 s up to this).
    pub store_retry_max_secs: f64,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            store: "data/".into(),
            data_dir: "data".into(),
            seed: None,
            checkpoint_every_outcomes: 10_000,
            checkpoint_every_secs: 60.0,
            sync_every_secs: None,
            store_retry_max_secs: 60.0,
        }
    }
}

/// What operations can see of the storage side, for health and metrics.
#[derive(Debug, Default)]
pub struct RuntimeStatus {
    pub store_healthy: AtomicBool,
    pub store_errors: AtomicU64,
    pub checkpoints_written: AtomicU64,
    /// Per module: (when, outcome count) of the last stored checkpoint.
    last: Mutex<HashMap<String, (f64, u64)>>,
    /// Per module: the seed defaults' mean reward estimated off-policy (doubly robust)
    /// from the decision log, as of the last effectiveness refresh.
    defaults_estimates: Mutex<HashMap<String, Estimate>>,
}

impl RuntimeStatus {
    /// Seconds since `module`'s last stored checkpoint (or since start).
    pub fn checkpoint_age(&self, module: &str, now: f64) -> Option<f64> {
        self.last.lock().get(module).map(|(at, _)| now - at)
    }

    pub fn defaults_estimate(&self, module: &str) -> Option<Estimate> {
        self.defaults_estimates.lock().get(module).copied()
    }
}

/// Where a rollback goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RollbackTarget {
    Generation(u64),
    Defaults,
}

/// Decisions read per module when parameter effectiveness is recomputed.
pub const EFFECTIVENESS_WINDOW: usize = 50_000;
/// Parameter effectiveness is recomputed at most this often per module (it
/// reads the decision log), after a checkpoint and at shutdown.
const EFFECTIVENESS_EVERY_SECS: f64 = 60.0;

pub struct Runtime {
    pub agent: Agent,
    pub store: Arc<dyn Store>,
    pub journal: Arc<FileJournal>,
    pub spaces: Spaces,
    pub status: Arc<RuntimeStatus>,
    /// Every decision and its reward, for off-policy evaluation.
    pub decision_log: DecisionLog,
    options: RuntimeOptions,
    seed: u64,
    /// One checkpoint or rollback per module at a time.
    module_locks: HashMap<String, tokio::sync::Mutex<()>>,
}

impl Runtime {
    /// Opens the store and the journal, restores every module from its newest
    /// checkpoint, replays the outcomes journaled after it, and starts the agent.
    pub async fn start(spaces: Spaces, options: RuntimeOptions) -> Result<Arc<Runtime>, RuntimeError> {
        let store = open_store(&options.store).await?;
        let journal_dir = options.data_dir.join("journal");
        let journal = FileJournal::open(&journal_dir)
            .map_err(|source| RuntimeError::Journal { dir: journal_dir.clone(), source })?;
        let journal = Arc::new(journal);
        let seed = options.seed.unwrap_or_else(rand::random);
        let status = Arc::new(RuntimeStatus { store_healthy: AtomicBool::new(true), ..Default::default() });
        let mut learners = Vec::new();
        for space in spaces.iter() {
            let module = space.name.clone();
            let restore = |detail: String| RuntimeError::Restore { module: module.clone(), detail };
            let module_seed = module_seed(seed, &module);
            let mut learner = match store.latest_checkpoint(&module).await? {
                Some(cp) => {
                    status.last.lock().insert(module.clone(), (cp.created_at, cp.outcome_count));
                    cp.to_learner(space.clone(), module_seed)?
                }
                None => ModuleLearner::new(space.clone(), module_seed).map_err(|e| restore(e.to_string()))?,
            };
            if options.sync_every_secs.is_some() {
                learner.enable_replica();
            }
            let replay = journal
                .replay(&module, learner.journal_seq)
                .map_err(|source| RuntimeError::Journal { dir: journal_dir.clone(), source })?;
            let replayed = replay.len();
            for (seq, settled) in replay {
                learner.mark_journaled(seq);
                learner.apply(&settled.decision, settled.reward).map_err(|e| restore(e.to_string()))?;
            }
            status.last.lock().entry(module.clone()).or_insert((now_secs(), learner.outcomes));
            tracing::info!(module, generation = learner.generation, outcomes = learner.outcomes, replayed, "restored");
            learners.push(learner);
        }
        let agent = Agent::with_learners(
            learners,
            AgentOptions { seed: Some(seed), journal: Some(journal.clone() as Arc<dyn Journal>), ..Default::default() },
        );
        let module_locks = spaces.names().map(|m| (m.to_string(), tokio::sync::Mutex::new(()))).collect();
        let decision_log = DecisionLog::start(store.clone(), spaces.clone());
        let runtime =
            Arc::new(Runtime { agent, store, journal, spaces, status, decision_log, options, seed, module_locks });
        // What the decision log already holds, analysed without delaying the start.
        let analyse = runtime.clone();
        tokio::spawn(async move {
            for module in analyse.spaces.names().map(String::from).collect::<Vec<_>>() {
                if let Err(e) = analyse.refresh_effectiveness(&module).await {
                    tracing::warn!(module, error = %e, "could not refresh parameter effectiveness");
                }
            }
        });
        Ok(runtime)
    }

    fn lock(&self, module: &str) -> Result<&tokio::sync::Mutex<()>, RuntimeError> {
        self.module_locks.get(module).ok_or_else(|| RuntimeError::UnknownModule(module.to_string()))
    }

    /// Writes `module`'s current state as a new generation now.
    pub async fn checkpoint(&self, module: &str) -> Result<CheckpointMeta, RuntimeError> {
        let _guard = self.lock(module)?.lock().await;
        let index = self.agent.module_index(module)?;
        let agent = self.agent.clone();
        let mut cp = tokio::task::spawn_blocking(move || {
            agent.with_writer(move |learners| {
                let l = &learners[index];
                let weights = l.policy.as_ref().and_then(|p| p.to_safetensors().ok());
                let parent = (l.generation > 0).then_some(l.generation);
                Checkpoint::from_learner(l, CheckpointKind::Checkpoint, parent, weights, now_secs())
            })
        })
        .await
        .expect("checkpoint task")?;
        let before = self.previous_parameters(module, cp.parent).await;
        cp.generation = self.put_checkpoint(&cp).await?;
        self.adopt_generation(index, cp.generation)?;
        if let Err(e) = self.journal.compact(module, cp.journal_seq) {
            tracing::warn!(module, error = %e, "journal compaction failed; it will be retried at the next checkpoint");
        }
        self.record(&cp, LearningEventKind::Checkpoint, before).await;
        Ok(cp.meta())
    }

    /// Makes a new generation equal to `target` and serves it from now on.
    /// History is never deleted: the target and everything after it stay.
    pub async fn rollback(&self, module: &str, target: RollbackTarget) -> Result<CheckpointMeta, RuntimeError> {
        let _guard = self.lock(module)?.lock().await;
        let index = self.agent.module_index(module)?;
        let space = self.spaces.get(module).ok_or_else(|| RuntimeError::UnknownModule(module.to_string()))?.clone();
        let agent = self.agent.clone();
        let (current, journal_seq) = tokio::task::spawn_blocking(move || {
            agent.with_writer(move |learners| (learners[index].generation, learners[index].journal_seq))
        })
        .await
        .expect("rollback task")?;
        let mut cp = match target {
            RollbackTarget::Defaults => Checkpoint::defaults(space.clone(), None, now_secs()),
            RollbackTarget::Generation(g) => self
                .store
                .get_checkpoint(module, g)
                .await?
                .ok_or(RuntimeError::UnknownGeneration { module: module.to_string(), generation: g })?,
        };
        cp.kind = CheckpointKind::Rollback;
        cp.rollback_to = match target {
            RollbackTarget::Generation(g) => Some(g),
            RollbackTarget::Defaults => None,
        };
        cp.note = Some(match target {
            RollbackTarget::Generation(g) => format!("rollback to generation {g}"),
            RollbackTarget::Defaults => "rollback to the seed defaults".into(),
        });
        cp.parent = (current > 0).then_some(current);
        cp.created_at = now_secs();
        // Outcomes learned before the rollback are deliberately not replayed onto it.
        cp.journal_seq = journal_seq;
        let mut learner = cp.to_learner(space, module_seed(self.seed, module))?;
        let before = self.previous_parameters(module, cp.parent).await;
        cp.generation = self.put_checkpoint(&cp).await?;
        learner.generation = cp.generation;
        let agent = self.agent.clone();
        tokio::task::spawn_blocking(move || {
            agent.with_writer(move |learners| {
                // A rollback is this replica's: what it has shared stays shared,
                // and later syncs bring only what others learn from now on.
                let replica = learners[index].replica.take();
                learners[index] = learner;
                learners[index].replica = replica;
            })
        })
        .await
        .expect("rollback task")?;
        self.record(&cp, LearningEventKind::Rollback, before).await;
        tracing::warn!(module, generation = cp.generation, target = ?target, "rolled back");
        Ok(cp.meta())
    }

    /// Merges `module`'s evidence since the last sync into the store's shared
    /// totals (a transaction, so no replica's increment is lost), and takes in
    /// what the other replicas merged meanwhile. Decisions go on throughout:
    /// the learner changes only in two short tasks on the writer thread.
    pub async fn sync(&self, module: &str) -> Result<(), RuntimeError> {
        let _guard = self.lock(module)?.lock().await;
        let index = self.agent.module_index(module)?;
        let on_writer = |task: Box<dyn FnOnce(&mut ModuleLearner) -> Option<ModuleStats> + Send>| {
            let agent = self.agent.clone();
            tokio::task::spawn_blocking(move || agent.with_writer(move |learners| task(&mut learners[index])))
        };
        let Some(own) = on_writer(Box::new(ModuleLearner::take_increment)).await.expect("sync task")? else {
            return Err(RuntimeError::NotAReplica(module.to_string()));
        };
        match self.store.merge_increment(module, &own).await {
            Ok(merged) => {
                self.status.store_healthy.store(true, Ordering::Relaxed);
                on_writer(Box::new(move |l| {
                    l.absorb_shared(&own, merged);
                    None
                }))
                .await
                .expect("sync task")?;
                Ok(())
            }
            Err(e) => {
                self.status.store_errors.fetch_add(1, Ordering::Relaxed);
                self.status.store_healthy.store(false, Ordering::Relaxed);
                on_writer(Box::new(move |l| {
                    l.return_increment(own);
                    None
                }))
                .await
                .expect("sync task")?;
                Err(e.into())
            }
        }
    }

    /// Recomputes `module`'s rows of `parameter_effectiveness` from the
    /// decision log (the settled decisions of the last week, at most
    /// [`EFFECTIVENESS_WINDOW`]) and stores them, and the seed defaults'
    /// off-policy estimate from the same decisions. Returns the rows written.
    pub async fn refresh_effectiveness(&self, module: &str) -> Result<usize, RuntimeError> {
        let space = self.spaces.get(module).ok_or_else(|| RuntimeError::UnknownModule(module.to_string()))?.clone();
        let now = now_secs();
        let records = self.store.list_decisions(module, now - 7.0 * 86_400.0, EFFECTIVENESS_WINDOW).await?;
        let logs: Vec<LoggedDecision> = records.iter().filter_map(LoggedDecision::from_record).collect();
        if logs.is_empty() {
            return Ok(0);
        }
        // Doubly robust: the agent seldom serves every default at once, so
        // importance weights alone have almost no support; the reward model
        // (additive arm effects per context) carries the estimate then.
        match doubly_robust(&logs, &TargetPolicy::defaults(&space)) {
            Ok(e) if e.value.is_finite() && e.ci_low.is_finite() && e.ci_high.is_finite() => {
                self.status.defaults_estimates.lock().insert(module.to_string(), e);
            }
            Ok(e) => tracing::debug!(module, estimate = ?e, "no usable off-policy estimate of the defaults"),
            Err(e) => tracing::debug!(module, error = %e, "no off-policy estimate of the defaults"),
        }
        let rows = effectiveness(&space, &logs, &rfc3339(now));
        self.store.put_parameter_effectiveness(&rows).await?;
        tracing::debug!(module, decisions = logs.len(), rows = rows.len(), "parameter effectiveness refreshed");
        Ok(rows.len())
    }

    /// Syncs every module every `sync_every_secs`, forever, when this process
    /// is a replica; start it with `tokio::spawn`.
    pub async fn run_syncer(self: Arc<Self>) {
        let Some(every) = self.options.sync_every_secs else { return };
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(every.max(0.05)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            for module in self.spaces.names().map(String::from).collect::<Vec<_>>() {
                if let Err(e) = self.sync(&module).await {
                    tracing::warn!(module, error = %e, "replica sync failed; retried at the next tick");
                }
            }
        }
    }

    fn adopt_generation(&self, index: usize, generation: u64) -> Result<(), RuntimeError> {
        // A cheap task; blocking here for it is shorter than spawning.
        Ok(self.agent.with_writer(move |learners| learners[index].generation = generation)?)
    }

    /// Stores a checkpoint, retrying transient failures with backoff; health
    /// and metrics follow the outcome.
    async fn put_checkpoint(&self, cp: &Checkpoint) -> Result<u64, RuntimeError> {
        let mut delay = Duration::from_millis(100);
        for attempt in 1.. {
            match self.store.put_checkpoint(cp).await {
                Ok(g) => {
                    self.status.store_healthy.store(true, Ordering::Relaxed);
                    self.status.checkpoints_written.fetch_add(1, Ordering::Relaxed);
                    self.status.last.lock().insert(cp.module.clone(), (cp.created_at, cp.outcome_count));
                    return Ok(g);
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

    async fn previous_parameters(&self, module: &str, parent: Option<u64>) -> serde_json::Value {
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
    async fn record(&self, cp: &Checkpoint, kind: LearningEventKind, before: serde_json::Value) {
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
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            for module in self.spaces.names().map(String::from).collect::<Vec<_>>() {
                let now = now_secs();
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
                match self.checkpoint(&module).await {
                    Ok(meta) => {
                        backoff.remove(&module);
                        backoff_until.remove(&module);
                        tracing::info!(
                            module,
                            generation = meta.generation,
                            outcomes = meta.outcome_count,
                            "checkpoint"
                        );
                        if analysed.get(&module).is_none_or(|&t| now - t >= EFFECTIVENESS_EVERY_SECS) {
                            analysed.insert(module.clone(), now);
                            if let Err(e) = self.refresh_effectiveness(&module).await {
                                tracing::warn!(module, error = %e, "could not refresh parameter effectiveness");
                            }
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

    /// At shutdown: everything queued for the decision log is written, every
    /// module's parameter effectiveness recomputed from it, and a final
    /// checkpoint taken of every module that learned since its last one.
    pub async fn shutdown(&self) {
        self.final_checkpoint().await;
        self.decision_log.flush().await;
        for module in self.spaces.names().map(String::from).collect::<Vec<_>>() {
            if let Err(e) = self.refresh_effectiveness(&module).await {
                tracing::warn!(module, error = %e, "could not refresh parameter effectiveness");
            }
        }
    }

    /// A final checkpoint of every module that learned since its last one.
    pub async fn final_checkpoint(&self) {
        for module in self.spaces.names().map(String::from).collect::<Vec<_>>() {
            let count = self.status.last.lock().get(&module).map(|l| l.1).unwrap_or(0);
            if self.agent.view(&module).map(|v| v.outcomes > count).unwrap_or(false) {
                if let Err(e) = self.checkpoint(&module).await {
                    tracing::error!(module, error = %e, "final checkpoint failed; the journal still holds the outcomes");
                }
            }
        }
    }
}

fn incumbents_map(cp: &Checkpoint) -> BTreeMap<String, BTreeMap<String, f64>> {
    Context::all()
        .zip(&cp.incumbents)
        .map(|(c, values)| (c.to_string(), cp.parameter_names.iter().cloned().zip(values.iter().copied()).collect()))
        .collect()
}

fn incumbents_json(cp: &Checkpoint) -> serde_json::Value {
    json!(incumbents_map(cp))
}
