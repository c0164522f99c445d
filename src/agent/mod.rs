//! Decisions, delayed outcomes and safety limits: the agent a trading module talks to.
//!
//! Readers use snapshots, one writer applies outcomes. [`Agent::decide`] loads
//! the module's current [`ModuleView`] (an `ArcSwap`, no lock), samples from it
//! and records the decision as pending. [`Agent::report`] validates an outcome,
//! settles the pending decision and hands it to the writer thread, which is the
//! only code that changes learned state. Decisions therefore never wait on
//! learning; [`Agent::flush`] waits for the writer when a caller needs to.

pub mod budget;
mod clock;
pub mod counterfactual;
mod decide;
mod decision;
mod error;
mod evidence;
pub mod joint;
mod learner;
mod pending;
mod report;
mod rollout;
pub mod safety;
mod serve;
mod status;
mod view;
mod writer;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::space::{Context, ModuleSpace, Spaces};
use crate::util::splitmix64;

pub use budget::{BudgetView, LossLedger};
pub use counterfactual::{
    alternatives, observe, ArmOutcome, CfServing, ExploreReason, Explored, ParamAlternatives, Unusable,
};
pub use evidence::{exit_on_path, Evidence};
pub use joint::{Joint, JointCounts, JointState, MoveEvent, MoveKind};
pub use learner::{eligible_arms, Applied, ModuleLearner, ReplicaState};
pub use pending::{tombstones_for, Evictions, Tombstone};
pub use rollout::{AbArm, AbAssignment, AbServing, AbTest, RewardWindow};
pub use serve::max_score_weights;
pub use view::{CellView, Choice, ModuleView, ParamView};

use pending::{Lookup, PendingTable};

pub use clock::{Clock, ManualClock, SystemClock};
pub use decision::{Accepted, Attachment, Decided, Decision, DecisionId, Outcome, Settled};
pub use error::AgentError;
pub use status::{BudgetStatus, Exploring};
pub use writer::WriterTask;
use writer::{writer_loop, WriterMsg};

/// Where accepted outcomes are made durable before they are acknowledged, and
/// decisions before they are answered. Sequence numbers are shared by all
/// modules and by both kinds of entry, start at 1 and have no gaps.
pub trait Journal: Send + Sync + fmt::Debug {
    /// Queues `settled` for the next flush under the next sequence number and
    /// calls `then` with that number before any later append gets one, so
    /// whatever `then` hands the outcome to sees outcomes in sequence order.
    fn append(&self, settled: &Settled, then: &mut dyn FnMut(u64)) -> std::io::Result<u64>;
    /// Queues a decision just opened for the next flush, so that a restart
    /// puts it back among the open ones.
    fn append_decision(&self, decision: &Decision) -> std::io::Result<u64>;
    /// Blocks until every outcome through `seq` is on disk.
    fn wait_durable(&self, seq: u64) -> std::io::Result<()>;
    /// [`Journal::wait_durable`] for async callers.
    fn durable(&self, seq: u64) -> Pin<Box<dyn Future<Output = std::io::Result<()>> + Send + '_>>;
}

#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// With a seed, the same sequence of calls gives the same decisions.
    /// Without one, the run id and seeds come from the OS.
    pub seed: Option<u64>,
    pub clock: Arc<dyn Clock>,
    /// When set, `report` appends each outcome here before acknowledging it.
    pub journal: Option<Arc<dyn Journal>>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions { seed: None, clock: Arc::new(SystemClock), journal: None }
    }
}

/// Counters for metrics; read with `Relaxed`, they are advisory.
#[derive(Debug, Default)]
pub struct ModuleCounters {
    pub decisions: AtomicU64,
    pub outcomes: AtomicU64,
    pub expired: AtomicU64,
    /// Decisions refused (429) because the module's open decisions were full.
    pub refused_full: AtomicU64,
    /// Rewards beyond the module's `reward.clip`, learned clipped.
    pub clipped_rewards: AtomicU64,
    /// Features sent outside their declared range (the network clips them).
    pub features_out_of_range: AtomicU64,
    pub rejected_outcomes: AtomicU64,
    /// Open decisions that explored: what the loss budget reserves room for.
    pub open_exploring: AtomicU64,
    /// Exploring decisions served at the incumbents because the loss budget had no room.
    pub held_by_budget: AtomicU64,
}

struct ModuleHandle {
    space: Arc<ModuleSpace>,
    view: ArcSwap<ModuleView>,
    pending: PendingTable,
    counters: ModuleCounters,
}

struct Inner {
    handles: Vec<ModuleHandle>,
    by_name: HashMap<String, usize>,
    seed: u64,
    counter: AtomicU64,
    clock: Arc<dyn Clock>,
    journal: Option<Arc<dyn Journal>>,
    tx: Mutex<Option<Sender<WriterMsg>>>,
    writer: Mutex<Option<JoinHandle<Vec<ModuleLearner>>>>,
}

/// The agent. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

impl Agent {
    /// A cold agent over `spaces`: every incumbent is its seed default.
    pub fn new(spaces: &Spaces, options: AgentOptions) -> Agent {
        let seed = options.seed.unwrap_or_else(rand::random);
        let learners = spaces
            .iter()
            .map(|s| {
                // Building a network for a validated space only allocates
                // tensors of the shapes the space dictates; it cannot fail.
                ModuleLearner::new(s.clone(), module_seed(seed, &s.name)).expect("a validated space builds its network")
            })
            .collect();
        Agent::with_learners(learners, AgentOptions { seed: Some(seed), ..options })
    }

    /// An agent resuming from learned state, for instance a checkpoint.
    pub fn with_learners(learners: Vec<ModuleLearner>, options: AgentOptions) -> Agent {
        let seed = options.seed.unwrap_or_else(rand::random);
        let handles: Vec<ModuleHandle> = learners
            .iter()
            .map(|l| ModuleHandle {
                space: l.space.clone(),
                view: ArcSwap::from_pointee(l.view()),
                pending: PendingTable::new(l.space.pending.capacity, l.space.pending.ttl_secs),
                counters: ModuleCounters::default(),
            })
            .collect();
        let by_name = handles.iter().enumerate().map(|(i, h)| (h.space.name.clone(), i)).collect();
        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            handles,
            by_name,
            seed,
            counter: AtomicU64::new(0),
            clock: options.clock,
            journal: options.journal,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(None),
        });
        let weak = Arc::downgrade(&inner);
        let journal = inner.journal.clone();
        let writer = std::thread::Builder::new()
            .name("paramopt-writer".into())
            .spawn(move || writer_loop(learners, rx, weak, journal))
            .expect("spawn the writer thread");
        *inner.writer.lock() = Some(writer);
        Agent { inner }
    }

    pub fn modules(&self) -> impl Iterator<Item = &Arc<ModuleSpace>> {
        self.inner.handles.iter().map(|h| &h.space)
    }

    pub fn space(&self, module: &str) -> Result<&Arc<ModuleSpace>, AgentError> {
        Ok(&self.handle(module)?.1.space)
    }

    fn handle(&self, module: &str) -> Result<(usize, &ModuleHandle), AgentError> {
        let i = *self.inner.by_name.get(module).ok_or_else(|| AgentError::UnknownModule(module.to_string()))?;
        Ok((i, &self.inner.handles[i]))
    }

    /// Waits until every outcome accepted before this call has been learned
    /// and its view published.
    pub fn flush(&self) {
        let Some(tx) = self.inner.tx.lock().clone() else { return };
        let (done_tx, done_rx) = mpsc::channel();
        if tx.send(WriterMsg::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv();
        }
    }

    /// Runs `task` on the writer thread, after every outcome accepted before
    /// this call, and returns its result; views are republished afterwards.
    /// This is how checkpoints read, and rollbacks replace, learned state
    /// without a second writer.
    pub fn with_writer<R: Send + 'static>(
        &self,
        task: impl FnOnce(&mut [ModuleLearner]) -> R + Send + 'static,
    ) -> Result<R, AgentError> {
        let tx = self.inner.tx.lock().clone().ok_or(AgentError::ShuttingDown)?;
        let (done_tx, done_rx) = mpsc::channel();
        let run: WriterTask = Box::new(move |learners| {
            let _ = done_tx.send(task(learners));
        });
        tx.send(WriterMsg::Run(run)).map_err(|_| AgentError::ShuttingDown)?;
        let result = done_rx.recv().map_err(|_| AgentError::ShuttingDown)?;
        // Returns once decisions see the task's effect, not merely once it ran.
        self.flush();
        Ok(result)
    }

    /// Index of `module` in the learners `with_writer` tasks receive.
    pub fn module_index(&self, module: &str) -> Result<usize, AgentError> {
        Ok(self.handle(module)?.0)
    }

    /// The current view of a module, as decisions see it now.
    pub fn view(&self, module: &str) -> Result<Arc<ModuleView>, AgentError> {
        Ok(self.handle(module)?.1.view.load_full())
    }

    /// The greedy (incumbent) values of a module in a context.
    pub fn greedy(&self, module: &str, context: Context) -> Result<(Vec<f64>, u64), AgentError> {
        let view = self.view(module)?;
        Ok((view.cells[context.index()].params.iter().map(|p| p.incumbent).collect(), view.generation))
    }

    /// The module's loss budget and whether it lets a decision explore now.
    pub fn budget(&self, module: &str) -> Result<BudgetStatus, AgentError> {
        let (_, handle) = self.handle(module)?;
        let view = handle.view.load().budget;
        let open_exploring = handle.counters.open_exploring.load(Ordering::Relaxed);
        Ok(BudgetStatus {
            budget: view.budget,
            shortfall_lower: view.shortfall_lower,
            remaining: view.remaining,
            reserve_per_open_trade: view.reserve,
            open_exploring,
            exploring: view.allows(open_exploring),
            held_by_budget: handle.counters.held_by_budget.load(Ordering::Relaxed),
            spent: view.spent,
        })
    }

    pub fn pending_count(&self, module: &str) -> Result<usize, AgentError> {
        Ok(self.handle(module)?.1.pending.len())
    }

    /// Every decision of `module` still waiting for its outcome, oldest id first.
    pub fn open_decisions(&self, module: &str) -> Result<Vec<Arc<Decision>>, AgentError> {
        Ok(self.handle(module)?.1.pending.open_decisions())
    }

    pub fn counters(&self, module: &str) -> Result<&ModuleCounters, AgentError> {
        Ok(&self.handle(module)?.1.counters)
    }

    /// Stops the writer after it has learned everything accepted, and returns
    /// the learned state.
    /// Whether the writer thread still runs: false once it ended, shut down
    /// or panicked (decisions would then be served from a view that never
    /// learns again, so health checks ask).
    pub fn writer_alive(&self) -> bool {
        self.inner.writer.lock().as_ref().is_some_and(|w| !w.is_finished())
    }

    pub fn shutdown(&self) -> Vec<ModuleLearner> {
        self.inner.tx.lock().take();
        self.inner.writer.lock().take().map(|w| w.join().expect("writer thread panicked")).unwrap_or_default()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tx.lock().take();
        if let Some(w) = self.writer.lock().take() {
            let _ = w.join();
        }
    }
}

/// A module's own seed, derived from the agent's seed and the module's name
/// (FNV-1a, stable across builds).
pub fn module_seed(seed: u64, module: &str) -> u64 {
    let h = module.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    splitmix64(seed ^ h)
}

#[cfg(test)]
mod tests;
