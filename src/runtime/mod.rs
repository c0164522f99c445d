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

mod analytics;
pub mod effectiveness;
mod persist;
mod replicas;
mod rollout;
mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::agent::{module_seed, Agent, AgentError, AgentOptions, Journal, ModuleLearner};
use crate::decision_log::DecisionLog;
use crate::ope::Estimate;
use crate::space::Spaces;
use crate::store::retention::Retention;
use crate::store::{now_secs, open_store, DecisionLimits, FileJournal, Store, StoreError};

pub use analytics::{analyse_decision_log, LogAnalysis, EFFECTIVENESS_WINDOW};
pub use persist::RollbackTarget;
pub use rollout::{AbResult, Challenger, Review};
use watch::LineageEntry;

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

    /// Starts the background tasks a serving runtime runs, on `handle` and
    /// watched by [`RuntimeStatus::tasks`]: the checkpointer (which also
    /// reviews A/B tests, watches for rollbacks and prunes), and the replica
    /// syncer when this process is a replica (`sync_every_secs`).
    pub fn spawn_background(self: &Arc<Self>, handle: &tokio::runtime::Handle) {
        let tasks = &self.status.tasks;
        tasks.spawn(handle, "checkpointer", self.clone().run_checkpointer());
        // Only a replica's: the syncer of any other returns at once, which the supervisor would report.
        if self.options.sync_every_secs.is_some() {
            tasks.spawn(handle, "replica syncer", self.clone().run_syncer());
        }
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
