//! The agent with its storage: restore at start, journal outcomes before they
//! are acknowledged, checkpoint in the background, roll back on request.
//!
//! Decisions never wait on any of this. The journal is a local file (one
//! group-committed `fdatasync` per batch of reports); checkpoints are built on
//! the writer thread from its own state and written to the store by a tokio
//! task, retried with backoff while the store is down.
//!
//! `effectiveness`: the per-parameter-value rows it computes from the
//! decision log for the store.

pub mod effectiveness;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::json;

use crate::agent::{module_seed, AbServing, AbTest, Agent, AgentError, AgentOptions, Journal, ModuleLearner};
use crate::bandit::Stats;
use crate::decision_log::DecisionLog;
use crate::ope::{doubly_robust, Estimate, LoggedDecision, OpeError, TargetPolicy};
use crate::rollout::{
    ab_verdict, degraded, estimate_se, stratified, AbSettings, AbVerdict, Comparison, Degradation, Watch,
};
use crate::space::{Context, ModuleSpace, ParamKind, Spaces};
use crate::store::retention::Retention;
use crate::store::{
    now_secs, open_store, rfc3339, Checkpoint, CheckpointKind, CheckpointMeta, DecisionLimits, FileJournal,
    LearningEvent, LearningEventKind, MoveEvidence, OptimizationData, ParameterEffectiveness, PerformancePoint, Store,
    StoreError,
};
use crate::util::splitmix64;

use effectiveness::effectiveness;

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
    #[error("an A/B test (id {test}) is already running on module {module:?}")]
    AbTestRunning { module: String, test: u64 },
    #[error("no A/B test is running on module {0:?}")]
    NoAbTest(String),
    #[error("challenger for module {module:?}: {detail}")]
    BadChallenger { module: String, detail: String },
    #[error(
        "the loss budget of module {module:?} is spent (shortfall lower bound {shortfall_lower:.6} against a budget of {budget}): \
         it serves the defaults and runs no A/B test until a rollback"
    )]
    BudgetSpent { module: String, shortfall_lower: f64, budget: f64 },
}

/// What an A/B test's challenger serves.
#[derive(Debug, Clone, PartialEq)]
pub enum Challenger {
    /// The incumbents of a stored generation; a promotion restores its whole state.
    Generation(u64),
    /// The seed defaults.
    Defaults,
    /// Values by `group.name`, the same in every context; parameters not
    /// named keep their seed default.
    Parameters(BTreeMap<String, f64>),
}

/// How an A/B test ended.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct AbResult {
    pub test: u64,
    pub challenger: String,
    /// `promoted`, `rejected`, `inconclusive`, `stopped`, `ended by rollback`,
    /// `promotion failed` (the store refused the new generation) or
    /// `budget_spent` (the loss budget's breaker tripped while it ran).
    pub outcome: String,
    pub reason: String,
    pub champion_rewards: Stats,
    pub challenger_rewards: Stats,
    pub comparison: Option<Comparison>,
    pub ope: Option<Estimate>,
    /// The generation a promotion made.
    pub generation: Option<u64>,
    pub ended_at: f64,
}

/// What one review of a module did.
#[derive(Debug, Clone, PartialEq)]
pub enum Review {
    Nothing,
    /// An A/B test's planned look.
    AbLook(AbVerdict),
    /// The loss budget's breaker ended the A/B test: the defaults are served.
    AbEndedByBudget,
    /// The live policy fell below a reference and was rolled back.
    RolledBack {
        meta: CheckpointMeta,
        reason: String,
    },
}

/// A generation of the live policy's line, with the rolling reward it had
/// (and per context, when its checkpoint kept that).
#[derive(Debug, Clone, PartialEq)]
struct LineageEntry {
    generation: u64,
    outcome_count: u64,
    rolling: Stats,
    by_context: Option<Vec<Stats>>,
}

impl LineageEntry {
    /// `cp`'s place in the line; `None` when it kept no rolling reward.
    fn of(cp: &Checkpoint) -> Option<LineageEntry> {
        Some(LineageEntry {
            generation: cp.generation,
            outcome_count: cp.outcome_count,
            rolling: cp.rolling_reward?,
            by_context: cp.rolling_by_context.clone(),
        })
    }
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
    /// What the store keeps of checkpoints, decisions and trades.
    pub retention: Retention,
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
            retention: Retention::default(),
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
    /// Per module: how its last A/B test ended.
    ab_results: Mutex<HashMap<String, AbResult>>,
    /// Per module: automatic rollbacks, and the last one's reason.
    auto_rollbacks: Mutex<HashMap<String, (u64, String)>>,
    /// Per module: A/B promotions.
    promotions: Mutex<HashMap<String, u64>>,
    /// Per module: the counterfactual moves already recorded as learning events.
    moves_recorded: Mutex<HashMap<String, u64>>,
    /// The background tasks (checkpointer, syncer, decision log) and how any died.
    pub tasks: std::sync::Arc<crate::supervisor::Supervisor>,
}

impl RuntimeStatus {
    /// Seconds since `module`'s last stored checkpoint (or since start).
    pub fn checkpoint_age(&self, module: &str, now: f64) -> Option<f64> {
        self.last.lock().get(module).map(|(at, _)| now - at)
    }

    pub fn defaults_estimate(&self, module: &str) -> Option<Estimate> {
        self.defaults_estimates.lock().get(module).copied()
    }

    pub fn last_ab_result(&self, module: &str) -> Option<AbResult> {
        self.ab_results.lock().get(module).cloned()
    }

    /// Automatic rollbacks of `module` so far, and the last one's reason.
    pub fn auto_rollbacks(&self, module: &str) -> (u64, Option<String>) {
        self.auto_rollbacks.lock().get(module).map_or((0, None), |(n, r)| (*n, Some(r.clone())))
    }

    pub fn promotions(&self, module: &str) -> u64 {
        self.promotions.lock().get(module).copied().unwrap_or(0)
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
/// What the newest window of a module's decision log says: its parameter
/// effectiveness rows and the seed defaults' off-policy estimate.
pub struct LogAnalysis {
    pub decisions: usize,
    pub rows: Vec<ParameterEffectiveness>,
    pub defaults: Result<Estimate, OpeError>,
}

/// Reads the newest [`EFFECTIVENESS_WINDOW`] decisions of the last 7 days
/// (streamed by the store, so memory follows the window, not the log) and
/// analyses them; `None` when there are none.
pub async fn analyse_decision_log(
    store: &dyn Store,
    space: &ModuleSpace,
    now: f64,
) -> Result<Option<LogAnalysis>, RuntimeError> {
    let records = store.list_decisions(&space.name, now - 7.0 * 86_400.0, EFFECTIVENESS_WINDOW).await?;
    let logs: Vec<LoggedDecision> = records.iter().filter_map(LoggedDecision::from_record).collect();
    drop(records);
    if logs.is_empty() {
        return Ok(None);
    }
    // Doubly robust: the agent seldom serves every default at once, so
    // importance weights alone have almost no support; the reward model
    // (additive arm effects per context) carries the estimate then.
    let defaults = doubly_robust(&logs, &TargetPolicy::defaults(space));
    let rows = effectiveness(space, &logs, &rfc3339(now));
    Ok(Some(LogAnalysis { decisions: logs.len(), rows, defaults }))
}

/// How often retention prunes the decision log and trades of a module.
const PRUNE_LOGS_EVERY_SECS: f64 = 3600.0;

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
    /// Per module: the generations of the live policy since its last
    /// rollback or promotion, oldest first; the rollback watch's references.
    lineage: Mutex<HashMap<String, Vec<LineageEntry>>>,
}

impl Runtime {
    /// Opens the store and the journal, restores every module from its newest
    /// checkpoint, replays the outcomes journaled after it, and starts the agent.
    pub async fn start(spaces: Spaces, options: RuntimeOptions) -> Result<Arc<Runtime>, RuntimeError> {
        let store = open_store(&options.store).await?;
        let journal_dir = options.data_dir.join("journal");
        let journal = FileJournal::open(&journal_dir)
            .map_err(|source| RuntimeError::Journal { dir: journal_dir.clone(), source })?;
        journal.set_decision_limits(spaces.iter().map(|s| {
            let settled_ids = crate::agent::tombstones_for(s.pending.capacity);
            (s.name.clone(), DecisionLimits { ttl_secs: s.pending.ttl_secs, settled_ids })
        }));
        let journal = Arc::new(journal);
        let seed = options.seed.unwrap_or_else(rand::random);
        let status = Arc::new(RuntimeStatus { store_healthy: AtomicBool::new(true), ..Default::default() });
        let mut learners = Vec::new();
        let mut lineage = HashMap::new();
        for space in spaces.iter() {
            let module = space.name.clone();
            let restore = |detail: String| RuntimeError::Restore { module: module.clone(), detail };
            let module_seed = module_seed(seed, &module);
            let mut learner = match store.latest_checkpoint(&module).await? {
                Some(cp) => {
                    status.last.lock().insert(module.clone(), (cp.created_at, cp.outcome_count));
                    if let Some(entry) = LineageEntry::of(&cp) {
                        lineage.insert(module.clone(), vec![entry]);
                    }
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
                if let Err(why) = settled.decision.fits(space) {
                    // Journaled under an older space of the module: skipped, not learned wrongly.
                    tracing::warn!(module, seq, why, "a journaled outcome no longer fits its module; skipped");
                    continue;
                }
                learner.apply_settled(&settled).map_err(|e| restore(e.to_string()))?;
            }
            status.last.lock().entry(module.clone()).or_insert((now_secs(), learner.outcomes));
            tracing::info!(module, generation = learner.generation, outcomes = learner.outcomes, replayed, "restored");
            learners.push(learner);
        }
        let agent = Agent::with_learners(
            learners,
            AgentOptions { seed: Some(seed), journal: Some(journal.clone() as Arc<dyn Journal>), ..Default::default() },
        );
        let pending = journal
            .open_decisions(now_secs())
            .map_err(|source| RuntimeError::Journal { dir: journal_dir.clone(), source })?;
        let open = pending.open.len();
        let skipped = agent.restore_pending(pending.open, &pending.settled);
        if open > 0 || skipped > 0 {
            tracing::info!(open = open - skipped, skipped, "reopened the decisions open when the service stopped");
        }
        let module_locks = spaces.names().map(|m| (m.to_string(), tokio::sync::Mutex::new(()))).collect();
        let decision_log = DecisionLog::start(store.clone(), spaces.clone(), journal.clone(), &status.tasks)
            .map_err(|source| RuntimeError::Journal { dir: journal_dir.clone(), source })?;
        let runtime = Arc::new(Runtime {
            agent,
            store,
            journal,
            spaces,
            status,
            decision_log,
            options,
            seed,
            module_locks,
            lineage: Mutex::new(lineage),
        });
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

    /// Runs `task` on the writer thread (see [`Agent::with_writer`]) from a
    /// blocking-pool thread: under load the writer's queue can be long, and
    /// async workers must not wait on it.
    async fn on_writer<R: Send + 'static>(
        &self,
        task: impl FnOnce(&mut [ModuleLearner]) -> R + Send + 'static,
    ) -> Result<R, RuntimeError> {
        let agent = self.agent.clone();
        Ok(tokio::task::spawn_blocking(move || agent.with_writer(task)).await.expect("writer task")?)
    }

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
    async fn save(
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
    async fn restore(
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

    /// Starts an A/B test on `module`: from now on a share `settings.split`
    /// of its decisions serve `challenger`, the rest the live policy.
    pub async fn start_ab(
        &self,
        module: &str,
        challenger: Challenger,
        settings: AbSettings,
    ) -> Result<AbTest, RuntimeError> {
        let _guard = self.lock(module)?.lock().await;
        let space = self.spaces.get(module).ok_or_else(|| RuntimeError::UnknownModule(module.to_string()))?.clone();
        let view = self.agent.view(module)?;
        if let Some(test) = &view.ab {
            return Err(RuntimeError::AbTestRunning { module: module.to_string(), test: test.serving.test });
        }
        if view.budget.spent {
            let (shortfall_lower, budget) = (view.budget.shortfall_lower, view.budget.budget);
            return Err(RuntimeError::BudgetSpent { module: module.to_string(), shortfall_lower, budget });
        }
        let bad = |detail: String| RuntimeError::BadChallenger { module: module.to_string(), detail };
        let (label, generation, values) = match &challenger {
            Challenger::Generation(g) => {
                let cp = self
                    .store
                    .get_checkpoint(module, *g)
                    .await?
                    .ok_or(RuntimeError::UnknownGeneration { module: module.to_string(), generation: *g })?;
                // Refuses a generation of another parameter space, naming the difference.
                cp.to_learner(space.clone(), 0)?;
                (format!("generation {g}"), Some(*g), cp.incumbents)
            }
            Challenger::Defaults => ("defaults".to_string(), None, vec![space.defaults(); Context::COUNT]),
            Challenger::Parameters(given) => {
                let values = challenger_values(&space, given).map_err(bad)?;
                ("parameters".to_string(), None, vec![values; Context::COUNT])
            }
        };
        let arms =
            values.iter().map(|ctx| space.params.iter().zip(ctx).map(|(p, &v)| p.nearest_arm(v)).collect()).collect();
        let started_at = now_secs();
        let serving = AbServing {
            // 53 bits: exact as a Firestore integer and as a JavaScript number.
            test: splitmix64(self.seed ^ started_at.to_bits() ^ module_seed(0, module)) & ((1 << 53) - 1),
            split: settings.split,
            values,
            arms,
        };
        let test = AbTest::new(serving, label, generation, settings, started_at);
        let snapshot = test.clone();
        let index = self.agent.module_index(module)?;
        self.on_writer(move |learners| learners[index].ab = Some(test)).await?;
        tracing::info!(module, test = snapshot.serving.test, challenger = %snapshot.challenger, split = settings.split, "A/B test started");
        Ok(snapshot)
    }

    /// Ends `module`'s A/B test without a verdict; the live policy stays.
    pub async fn stop_ab(&self, module: &str) -> Result<AbResult, RuntimeError> {
        let _guard = self.lock(module)?.lock().await;
        let test = self.take_ab(module, None).await?.ok_or_else(|| RuntimeError::NoAbTest(module.to_string()))?;
        Ok(self.finish_ab(module, &test, "stopped", "stopped on request".into(), None, None, None))
    }

    /// Takes the module's test off the writer (only test `id`, when given).
    async fn take_ab(&self, module: &str, id: Option<u64>) -> Result<Option<AbTest>, RuntimeError> {
        let index = self.agent.module_index(module)?;
        self.on_writer(move |learners| {
            let l = &mut learners[index];
            let matches = l.ab.as_ref().is_some_and(|t| id.is_none_or(|id| t.serving.test == id));
            if matches {
                l.ab.take()
            } else {
                None
            }
        })
        .await
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_ab(
        &self,
        module: &str,
        test: &AbTest,
        outcome: &str,
        reason: String,
        comparison: Option<Comparison>,
        ope: Option<Estimate>,
        generation: Option<u64>,
    ) -> AbResult {
        let result = AbResult {
            test: test.serving.test,
            challenger: test.challenger.clone(),
            outcome: outcome.to_string(),
            reason,
            champion_rewards: test.champion_rewards,
            challenger_rewards: test.challenger_rewards,
            comparison,
            ope,
            generation,
            ended_at: now_secs(),
        };
        tracing::info!(module, test = result.test, outcome, reason = %result.reason, "A/B test ended");
        self.status.ab_results.lock().insert(module.to_string(), result.clone());
        result
    }

    /// Looks at `module`'s A/B test when a planned look is due, and watches
    /// its live policy for a fall that calls for an automatic rollback. Cheap
    /// when there is nothing to do; the checkpointer runs it every tick.
    pub async fn review(&self, module: &str) -> Result<Review, RuntimeError> {
        let view = self.agent.view(module)?;
        if let (Some(test), true) = (&view.ab, view.budget.spent) {
            // The same budget binds the test: decisions already serve the
            // defaults (`Agent::decide`); the test ends here, with its record.
            let _guard = self.lock(module)?.lock().await;
            if let Some(test) = self.take_ab(module, Some(test.serving.test)).await? {
                let reason = format!(
                    "A/B test {}: the loss budget is spent (shortfall lower bound {:.6} against a budget of {}); \
                     the defaults are served until a rollback",
                    test.serving.test, view.budget.shortfall_lower, view.budget.budget
                );
                self.finish_ab(module, &test, "budget_spent", reason, None, None, None);
                return Ok(Review::AbEndedByBudget);
            }
        }
        if let Some(test) = &view.ab {
            let due = test.settings.looks().get(test.looks_done).copied();
            let n = test.champion_rewards.n.min(test.challenger_rewards.n);
            if due.is_some_and(|due| n >= due as f64) {
                return Ok(Review::AbLook(self.look_at_ab(module, test).await?));
            }
        }
        self.watch(module, &view.rolling, &view.rolling_by_context, view.rolling_since, view.outcomes).await
    }

    async fn look_at_ab(&self, module: &str, test: &AbTest) -> Result<AbVerdict, RuntimeError> {
        let space = self.spaces.get(module).ok_or_else(|| RuntimeError::UnknownModule(module.to_string()))?.clone();
        // Everything decided and settled so far is in the log before it is read.
        self.decision_log.flush().await;
        let serving = &test.serving;
        let expected = test.settings.max_outcomes as f64 / serving.split.min(1.0 - serving.split);
        let limit = (4.0 * expected).min(400_000.0) as usize;
        let records = self.store.list_decisions(module, test.started_at - 1.0, limit).await?;
        let logs: Vec<LoggedDecision> = records
            .iter()
            .filter(|r| r.ab.is_some_and(|a| a.test == serving.test))
            .filter_map(LoggedDecision::from_record)
            .collect();
        let target = TargetPolicy::fixed("challenger", &space, &serving.arms);
        let ope = doubly_robust(&logs, &target).ok().filter(|e| e.value.is_finite());
        let verdict = ab_verdict(
            &test.settings,
            test.looks_done,
            &test.champion_rewards,
            &test.challenger_rewards,
            ope.as_ref(),
            space.learning.prior_noise_sd,
        );
        let id = serving.test;
        tracing::info!(
            module,
            test = id,
            look = test.looks_done,
            verdict = verdict.name(),
            logged = logs.len(),
            "A/B look"
        );
        let level = test.settings.alpha;
        let summary = |c: &Comparison| {
            format!(
                "A/B test {id}: challenger ({}) mean {:.6} over {} outcomes vs champion {:.6} over {}; anytime-valid one-sided p = {:.2e} better, {:.2e} worse (level {:.2e})",
                test.challenger,
                test.challenger_rewards.mean,
                test.challenger_rewards.n,
                test.champion_rewards.mean,
                test.champion_rewards.n,
                c.p_better,
                c.p_worse,
                level
            )
        };
        let ope_text = |e: &Option<Estimate>| match e {
            Some(e) => format!(
                "; doubly robust estimate of the challenger {:.6} [{:.6}, {:.6}] over {} decisions",
                e.value, e.ci_low, e.ci_high, e.n
            ),
            None => "; no off-policy estimate".to_string(),
        };
        let _guard = self.lock(module)?.lock().await;
        match &verdict {
            AbVerdict::Wait => {}
            AbVerdict::Continue { .. } => {
                let index = self.agent.module_index(module)?;
                self.on_writer(move |learners| {
                    if let Some(t) = learners[index].ab.as_mut().filter(|t| t.serving.test == id) {
                        t.looks_done += 1;
                    }
                })
                .await?;
            }
            AbVerdict::Promote { comparison, ope } => {
                let Some(test) = self.take_ab(module, Some(id)).await? else { return Ok(AbVerdict::Wait) };
                let reason = format!("promoted: {}{}", summary(comparison), ope_text(&Some(*ope)));
                let promoted = match test.challenger_generation {
                    Some(g) => {
                        self.restore(module, RollbackTarget::Generation(g), CheckpointKind::Promotion, reason.clone())
                            .await
                    }
                    None => {
                        let values = test.serving.values.clone();
                        self.save(module, CheckpointKind::Promotion, Some(reason.clone()), Some(values)).await
                    }
                };
                let meta = match promoted {
                    Ok(meta) => meta,
                    Err(e) => {
                        // The test is over either way; say why nothing changed.
                        let why = format!("promotion failed ({e}); the live policy stays. {reason}");
                        self.finish_ab(module, &test, "promotion failed", why, Some(*comparison), Some(*ope), None);
                        return Err(e);
                    }
                };
                *self.status.promotions.lock().entry(module.to_string()).or_default() += 1;
                self.finish_ab(module, &test, "promoted", reason, Some(*comparison), Some(*ope), Some(meta.generation));
            }
            AbVerdict::Reject { comparison } | AbVerdict::Inconclusive { comparison, .. } => {
                let Some(test) = self.take_ab(module, Some(id)).await? else { return Ok(AbVerdict::Wait) };
                let (outcome, ope) = match &verdict {
                    AbVerdict::Inconclusive { ope, .. } => ("inconclusive", *ope),
                    _ => ("rejected", ope),
                };
                let reason = format!("{outcome}: {}{}", summary(comparison), ope_text(&ope));
                self.record_event(
                    module,
                    LearningEventKind::Other(format!("ab_test_{outcome}")),
                    reason.clone(),
                    comparison,
                )
                .await;
                self.finish_ab(module, &test, outcome, reason, Some(*comparison), ope, None);
            }
        }
        Ok(verdict)
    }

    /// The rollback watch: rolls the module back when the live policy's
    /// rolling reward is significantly below an earlier generation's (one
    /// whose window does not overlap the live one) or below the seed
    /// defaults' off-policy estimate, by more than the module's margin.
    ///
    /// The earlier window is re-weighted to the live window's mix of
    /// contexts: a market that moved from bullish to bearish sessions lowers
    /// every policy's reward, and must not read as the live policy's fault.
    async fn watch(
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

    /// Merges `module`'s evidence since the last sync into the store's shared
    /// totals (a transaction, so no replica's increment is lost), and takes in
    /// what the other replicas merged meanwhile. Decisions go on throughout:
    /// the learner changes only in two short tasks on the writer thread.
    pub async fn sync(&self, module: &str) -> Result<(), RuntimeError> {
        let _guard = self.lock(module)?.lock().await;
        let index = self.agent.module_index(module)?;
        let Some(own) = self.on_writer(move |learners| learners[index].take_increment()).await? else {
            return Err(RuntimeError::NotAReplica(module.to_string()));
        };
        match self.store.merge_increment(module, &own).await {
            Ok(merged) => {
                self.status.store_healthy.store(true, Ordering::Relaxed);
                self.on_writer(move |learners| learners[index].absorb_shared(&own, merged)).await?;
                Ok(())
            }
            Err(e) => {
                self.status.store_errors.fetch_add(1, Ordering::Relaxed);
                self.status.store_healthy.store(false, Ordering::Relaxed);
                self.on_writer(move |learners| learners[index].return_increment(own)).await?;
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
        let Some(analysis) = analyse_decision_log(&*self.store, &space, now_secs()).await? else { return Ok(0) };
        match analysis.defaults {
            Ok(e) if e.value.is_finite() && e.ci_low.is_finite() && e.ci_high.is_finite() => {
                self.status.defaults_estimates.lock().insert(module.to_string(), e);
            }
            Ok(e) => tracing::debug!(module, estimate = ?e, "no usable off-policy estimate of the defaults"),
            Err(e) => tracing::debug!(module, error = %e, "no off-policy estimate of the defaults"),
        }
        self.store.put_parameter_effectiveness(&analysis.rows).await?;
        tracing::debug!(
            module,
            decisions = analysis.decisions,
            rows = analysis.rows.len(),
            "parameter effectiveness refreshed"
        );
        Ok(analysis.rows.len())
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

    /// Stores the checkpoint `make` makes, retrying transient failures with
    /// backoff, each time with a checkpoint made anew; returns the stored one,
    /// its generation set. Health and metrics follow the outcome.
    async fn put_checkpoint<F, Fut>(&self, mut make: F) -> Result<Checkpoint, RuntimeError>
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
    async fn record(
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

    /// An `ml_learning_event` that made no generation: an A/B test that ended
    /// without a promotion. Best effort, like [`Runtime::record`].
    async fn record_event(&self, module: &str, kind: LearningEventKind, reason: String, comparison: &Comparison) {
        let now = now_secs();
        let event = LearningEvent {
            model_name: format!("{module}.bandit"),
            module_name: module.to_string(),
            learning_event: kind,
            parameters_before: serde_json::Value::Null,
            parameters_after: serde_json::Value::Null,
            performance_impact: comparison.difference,
            confidence_change: 0.0,
            timestamp: rfc3339(now),
            created_at: now,
            generation: None,
            reason: Some(reason),
            evidence: None,
        };
        if let Err(e) = self.store.put_learning_event(&event).await {
            tracing::warn!(module, error = %e, "could not record the learning event");
        }
    }

    /// Records the counterfactual estimator's moves since the last call
    /// (promotions, replacements, detected changes, a spent budget) as `ml_learning_events`,
    /// each with its evidence. Cheap when nothing moved: it reads the view.
    pub async fn record_moves(&self, module: &str) -> Result<usize, RuntimeError> {
        let made = self.agent.view(module)?.moves_made;
        if self.status.moves_recorded.lock().get(module).copied().unwrap_or(0) == made {
            return Ok(0);
        }
        let index = self.agent.module_index(module)?;
        let events = self
            .on_writer(move |learners| {
                learners[index].joint.as_mut().map(|j| std::mem::take(&mut j.events)).unwrap_or_default()
            })
            .await?;
        self.status.moves_recorded.lock().insert(module.to_string(), made);
        let space = self.spaces.get(module).ok_or_else(|| RuntimeError::UnknownModule(module.to_string()))?.clone();
        for e in &events {
            let named = |values: &[f64]| -> serde_json::Value {
                let map: serde_json::Map<String, serde_json::Value> =
                    space.params.iter().zip(values).map(|(p, v)| (p.full_name.clone(), serde_json::json!(v))).collect();
                serde_json::json!({ "context": e.context.to_string(), "values": map })
            };
            let cf = space.counterfactual.as_ref();
            let paired = e.scope.paired();
            let reason = format!(
                "{}: context {}, paired {}, estimate {:.6}, confidence-sequence lower bound {:.6}, n {}; \
                 normal-mixture confidence sequence at alpha {}, margin {}",
                e.kind.event_name(),
                e.context,
                paired,
                e.verdict.estimate,
                e.verdict.lower,
                e.verdict.n,
                e.alpha,
                cf.map_or(0.0, |c| c.margin),
            );
            tracing::info!(module, context = %e.context, kind = e.kind.event_name(), estimate = e.verdict.estimate,
                lower = e.verdict.lower, n = e.verdict.n, "counterfactual move");
            let now = now_secs();
            let event = LearningEvent {
                model_name: LearningEvent::counterfactual_model(module),
                module_name: module.to_string(),
                learning_event: LearningEventKind::Other(e.kind.event_name().to_string()),
                parameters_before: named(&e.before),
                parameters_after: named(&e.values),
                performance_impact: e.verdict.estimate,
                confidence_change: e.verdict.lower,
                timestamp: rfc3339(now),
                created_at: now,
                generation: None,
                reason: Some(reason),
                evidence: Some(MoveEvidence {
                    context: e.context.to_string(),
                    paired: paired.to_string(),
                    estimate: e.verdict.estimate,
                    lower_bound: e.verdict.lower,
                    n: e.verdict.n,
                    alpha: e.alpha,
                    margin: cf.map_or(0.0, |c| c.margin),
                }),
            };
            if let Err(err) = self.store.put_learning_event(&event).await {
                tracing::warn!(module, error = %err, "could not record the counterfactual move");
            }
        }
        Ok(events.len())
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
    fn spawn_pruning(
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
            if let Err(e) = self.checkpoint_if_learned(&module).await {
                tracing::error!(module, error = %e, "final checkpoint failed; the journal still holds the outcomes");
            }
        }
    }
}

/// A challenger's values from `group.name -> value`, checked against the
/// safety limits: known names, inside the range, whole numbers for integer
/// parameters, and groups of weights that still sum to 1. Parameters not
/// named keep their seed default.
fn challenger_values(space: &ModuleSpace, given: &BTreeMap<String, f64>) -> Result<Vec<f64>, String> {
    let mut values = space.defaults();
    for (name, &v) in given {
        let p = space.param_index(name).ok_or_else(|| format!("unknown parameter {name:?}"))?;
        let param = &space.params[p];
        if !(v.is_finite() && v >= param.lo && v <= param.hi) {
            return Err(format!("{name} = {v} is outside its range [{}, {}]", param.lo, param.hi));
        }
        if param.kind == ParamKind::Integer && v.fract() != 0.0 {
            return Err(format!("{name} = {v} must be a whole number"));
        }
        values[p] = v;
    }
    for group in &space.simplex_groups {
        let sum: f64 = group.members.iter().map(|&p| values[p]).sum();
        if (sum - 1.0).abs() > 1e-6 {
            return Err(format!("the weights of group {:?} sum to {sum}, not 1", group.name));
        }
    }
    Ok(values)
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

/// Hands the memory freed after an analysis or a compaction back to the
/// system. Both allocate tens of megabytes for a moment; glibc keeps freed
/// memory in its per-thread arenas, so without this the service's RSS settles
/// at the sum of every arena's peak rather than at what it holds.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the kernel; it takes
    // the allocator's own locks and touches no memory the program holds.
    unsafe {
        libc::malloc_trim(0);
    }
}
