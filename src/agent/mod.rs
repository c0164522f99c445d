//! Decisions, delayed outcomes and safety limits: the agent a trading module talks to.
//!
//! Readers use snapshots, one writer applies outcomes. [`Agent::decide`] loads
//! the module's current [`ModuleView`] (an `ArcSwap`, no lock), samples from it
//! and records the decision as pending. [`Agent::report`] validates an outcome,
//! settles the pending decision and hands it to the writer thread, which is the
//! only code that changes learned state. Decisions therefore never wait on
//! learning; [`Agent::flush`] waits for the writer when a caller needs to.

pub mod budget;
pub mod counterfactual;
mod evidence;
pub mod joint;
mod learner;
mod pending;
mod rollout;
pub mod safety;
mod serve;
mod view;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

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

/// Errors of the agent's API. Each carries the value that was wrong; none of
/// them leaves any state changed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AgentError {
    #[error("unknown module {0:?}")]
    UnknownModule(String),
    #[error("unknown feature {feature:?} for module {module:?}")]
    UnknownFeature { module: String, feature: String },
    #[error("feature {feature:?} is not a finite number: {value}")]
    NonFiniteFeature { feature: String, value: f64 },
    #[error("unknown decision_id {0:?}")]
    UnknownDecision(String),
    #[error("decision_id {0:?} has expired")]
    ExpiredDecision(String),
    #[error("an outcome is already recorded for decision_id {0:?}")]
    DuplicateOutcome(String),
    #[error("{field} is not a finite number: {value}")]
    NonFiniteReward { field: &'static str, value: f64 },
    #[error("decision_id {0:?}: the outcome has no reward and no trade.return_pct")]
    MissingReward(String),
    #[error("module {module:?} has no strategy {strategy:?}")]
    UnknownStrategy { module: String, strategy: String },
    #[error("trade.strategy {reported:?} disagrees with the decision's strategy {decided:?}")]
    StrategyMismatch { decided: String, reported: String },
    #[error("{field} is not a finite number: {value}")]
    NonFiniteEvidence { field: String, value: f64 },
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// The outcome or decision could not be made durable, so it was not accepted.
    #[error("could not record durably: {0}")]
    Journal(String),
    /// Refused, not evicting an open one: report outcomes (or let them expire) first.
    #[error("module {module:?} already has {capacity} open decisions (its pending.capacity); report outcomes or wait for them to expire")]
    TooManyOpenDecisions { module: String, capacity: usize },
}

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

/// A decision id, written as 32 hex digits: the time it was made in
/// milliseconds since the Unix epoch (48 bits, so ids sort by time), the
/// module's index (8 bits) and 72 bits from the operating system's random
/// source. An id proves its holder was given the decision: knowing others
/// does not help guess one (the seed, even when set, plays no part). The
/// module index lets an outcome find its pending table without a search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DecisionId(pub u128);

impl DecisionId {
    const RANDOM_BITS: u32 = 72;

    /// A fresh id for a decision of module `module` made at `unix_secs`.
    pub fn generate(module: usize, unix_secs: f64) -> DecisionId {
        let millis = (unix_secs.max(0.0) * 1000.0) as u128 & ((1 << 48) - 1);
        let random = rand::random::<u128>() & ((1 << Self::RANDOM_BITS) - 1);
        DecisionId((millis << 80) | ((module as u128 & 0xff) << Self::RANDOM_BITS) | random)
    }

    pub fn module_index(self) -> usize {
        ((self.0 >> Self::RANDOM_BITS) & 0xff) as usize
    }

    /// When the decision was made, to the millisecond.
    pub fn unix_secs(self) -> f64 {
        (self.0 >> 80) as f64 / 1000.0
    }
}

impl fmt::Display for DecisionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl FromStr for DecisionId {
    type Err = AgentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 {
            return Err(AgentError::UnknownDecision(s.to_string()));
        }
        u128::from_str_radix(s, 16).map(DecisionId).map_err(|_| AgentError::UnknownDecision(s.to_string()))
    }
}

impl Serialize for DecisionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DecisionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One decision, as served and as logged: enough to learn from its outcome and
/// to evaluate other policies on it later (propensities, seed, generation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub id: DecisionId,
    pub module: String,
    pub context: Context,
    /// Per declared feature, in the module's order; `None` when not sent.
    pub features: Vec<Option<f64>>,
    pub explore: bool,
    /// Per parameter, in the module's order.
    pub values: Vec<f64>,
    pub arms: Vec<usize>,
    /// Per parameter: the probability that the sampling policy chose that arm.
    pub propensities: Vec<f64>,
    /// The probability of the whole choice: the product of `propensities`.
    pub propensity: f64,
    /// Per parameter: the policy network's offset inside the arm's cell, in
    /// units of the cell's half-width, where it refined the value.
    pub offsets: Vec<Option<f64>>,
    /// Log density of the drawn offsets under the network's Gaussian policy;
    /// 0 when nothing was drawn.
    pub offset_log_density: f64,
    pub seed: u64,
    pub generation: u64,
    /// Seconds since the Unix epoch, by the agent's clock.
    pub created_at: f64,
    /// The A/B test arm that served the decision, when a test was running.
    /// `propensity` is then the probability under the test's mixture of arms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ab: Option<AbAssignment>,
    /// The trade's strategy, when the decision named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// How an exploring decision of a module with declared roles was served:
    /// both branches' values, so the trade's observation probability is
    /// known exactly, and what was explored and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counterfactual: Option<CfServing>,
    /// Features the module sent that its space does not declare: kept with
    /// the decision (the decision log shows them), never learned from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored_features: Vec<(String, f64)>,
}

impl Decision {
    /// Whether it served anything to learn rather than to earn: what the
    /// loss budget reserves room for while it is open.
    pub fn explored(&self) -> bool {
        match &self.counterfactual {
            Some(serving) => !serving.explored.is_empty(),
            None => self.explore && self.propensity < 1.0,
        }
    }
}

/// What a module reports when its trade closes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub reward: Option<f64>,
    pub traded: bool,
    pub return_pct: Option<f64>,
    /// What the counterfactuals need; absent from older journals.
    #[serde(default, skip_serializing_if = "Evidence::is_empty")]
    pub evidence: Evidence,
}

impl Outcome {
    /// An outcome with a reward and nothing else.
    pub fn reward(reward: f64) -> Outcome {
        Outcome { reward: Some(reward), traded: true, ..Outcome::default() }
    }
}

impl Decision {
    /// Whether this decision (read back from a journal, say) has the shape
    /// of `space`: a value, arm and propensity per parameter, each arm one
    /// of its parameter's, finite values, a feature slot per feature.
    pub fn fits(&self, space: &ModuleSpace) -> Result<(), String> {
        let n = space.params.len();
        let lens = [self.values.len(), self.arms.len(), self.propensities.len(), self.offsets.len()];
        if lens.iter().any(|&l| l != n) {
            return Err(format!(
                "values, arms, propensities and offsets have {lens:?} entries, the space {n} parameters"
            ));
        }
        if self.features.len() != space.features.len() {
            return Err(format!("{} feature slots, the space declares {}", self.features.len(), space.features.len()));
        }
        for (p, (&arm, &value)) in space.params.iter().zip(self.arms.iter().zip(&self.values)) {
            if arm >= p.arms.len() || !value.is_finite() {
                return Err(format!("{}: arm {arm} of {}, value {value}", p.full_name, p.arms.len()));
            }
        }
        Ok(())
    }
}

/// A decision just made, and its entry in the journal (when there is one).
#[derive(Debug, Clone)]
pub struct Decided {
    pub decision: Arc<Decision>,
    pub seq: Option<u64>,
}

/// An accepted outcome, as handed to the writer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settled {
    pub decision: Arc<Decision>,
    pub outcome: Outcome,
    /// The reward learned from, after derivation and clipping.
    pub reward: f64,
    /// Seconds since the Unix epoch, by the agent's clock, when accepted.
    #[serde(default)]
    pub settled_at: f64,
    /// What the caller keeps beside the outcome (the service: the trade
    /// record as the module sent it), journaled with it so that it is as
    /// durable as the outcome. The agent never reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
}

/// JSON the agent carries for its caller without reading it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Attachment(pub Box<serde_json::value::RawValue>);

impl PartialEq for Attachment {
    fn eq(&self, other: &Attachment) -> bool {
        self.0.get() == other.0.get()
    }
}

/// An outcome the agent has taken, not yet acknowledged: see [`Agent::accept`].
#[must_use = "an accepted outcome is acknowledged only once it is durable"]
pub struct Accepted {
    agent: Agent,
    module: usize,
    settled: Settled,
    seq: Option<u64>,
}

impl Accepted {
    pub fn settled(&self) -> &Settled {
        &self.settled
    }

    /// Blocks until the outcome is durable.
    pub fn wait(self) -> Result<Settled, AgentError> {
        let result = match (&self.agent.inner.journal, self.seq) {
            (Some(journal), Some(seq)) => journal.wait_durable(seq),
            _ => Ok(()),
        };
        self.finish(result)
    }

    /// Awaits the flush that makes the outcome durable.
    pub async fn durable(self) -> Result<Settled, AgentError> {
        let result = match (&self.agent.inner.journal, self.seq) {
            (Some(journal), Some(seq)) => journal.durable(seq).await,
            _ => Ok(()),
        };
        self.finish(result)
    }

    fn finish(self, written: std::io::Result<()>) -> Result<Settled, AgentError> {
        match written {
            Ok(()) => Ok(self.settled),
            Err(e) => {
                // Never acknowledged and never learned: it may be reported again.
                let handle = &self.agent.inner.handles[self.module];
                handle.pending.reopen(self.settled.decision.clone());
                handle.counters.outcomes.fetch_sub(1, Ordering::Relaxed);
                tracing::error!(module = %handle.space.name, decision = %self.settled.decision.id, error = %e, "journal flush failed");
                Err(AgentError::Journal(e.to_string()))
            }
        }
    }
}

pub trait Clock: Send + Sync + fmt::Debug {
    /// Seconds since the Unix epoch.
    fn now(&self) -> f64;
}

#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> f64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
    }
}

/// A clock that moves only when told to, for tests of expiry.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start_secs: f64) -> ManualClock {
        ManualClock(AtomicU64::new(start_secs.to_bits()))
    }
    pub fn advance(&self, secs: f64) {
        let now = f64::from_bits(self.0.load(Ordering::SeqCst));
        self.0.store((now + secs).to_bits(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::SeqCst))
    }
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

/// Work for the writer thread on the learners it owns.
pub type WriterTask = Box<dyn FnOnce(&mut [ModuleLearner]) + Send>;

enum WriterMsg {
    Outcome {
        module: usize,
        settled: Settled,
        seq: Option<u64>,
    },
    Flush(Sender<()>),
    /// Runs on the writer; afterwards every module's view is republished.
    Run(WriterTask),
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

    /// Chooses every parameter of `module` for one decision in `context`.
    pub fn decide(
        &self,
        module: &str,
        context: Context,
        features: &[(&str, f64)],
        explore: bool,
    ) -> Result<Arc<Decision>, AgentError> {
        self.decide_for(module, context, features, None, explore)
    }

    /// [`Agent::decide`] for one trade of `strategy`: parameters scoped to
    /// other strategies are served at their incumbents and learn nothing
    /// from its outcome.
    pub fn decide_for(
        &self,
        module: &str,
        context: Context,
        features: &[(&str, f64)],
        strategy: Option<&str>,
        explore: bool,
    ) -> Result<Arc<Decision>, AgentError> {
        Ok(self.decide_recorded(module, context, features, strategy, explore, Vec::new())?.decision)
    }

    /// [`Agent::decide_for`], also giving the decision's journal entry, which
    /// [`Agent::durable`] awaits. The decision is open (reportable) at once;
    /// with a journal it survives a crash once that entry is durable.
    /// `ignored_features` are kept with the decision, never learned from.
    pub fn decide_recorded(
        &self,
        module: &str,
        context: Context,
        features: &[(&str, f64)],
        strategy: Option<&str>,
        explore: bool,
        ignored_features: Vec<(String, f64)>,
    ) -> Result<Decided, AgentError> {
        let (module_index, handle) = self.handle(module)?;
        let space = &handle.space;
        let strategy_index = match strategy {
            Some(s) => declared_strategy(space, s)?,
            None => None,
        };
        let mut feature_values = vec![None; space.features.len()];
        for &(name, value) in features {
            let i = space
                .feature_index(name)
                .ok_or_else(|| AgentError::UnknownFeature { module: module.to_string(), feature: name.to_string() })?;
            if !value.is_finite() {
                return Err(AgentError::NonFiniteFeature { feature: name.to_string(), value });
            }
            let declared = &space.features[i];
            if !(declared.lo..=declared.hi).contains(&value) {
                note_out_of_range(
                    &handle.counters.features_out_of_range,
                    module,
                    name,
                    value,
                    declared.lo,
                    declared.hi,
                );
            }
            feature_values[i] = Some(value);
        }

        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        let seed = splitmix64(self.inner.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        let view = handle.view.load();
        // The loss budget: with no room for one more exploring trade beside
        // the open ones, the decision serves the incumbents (and, with roles
        // declared, still teaches everything the incumbents' trade reveals).
        let mode = match explore {
            false => Exploring::No,
            true if view.budget.allows(handle.counters.open_exploring.load(Ordering::Relaxed)) => Exploring::Yes,
            true => Exploring::HeldByBudget,
        };
        let mut choice = view.cells[context.index()].choose(
            space,
            view.policy.as_deref(),
            context,
            &feature_values,
            mode == Exploring::Yes,
            &mut rng,
        );
        let mut propensity = choice.propensities.iter().product();
        let mut cf_serving = None;
        if let Some(cf) = view.cf.as_deref() {
            let (serving, p) = serve::serve(
                space,
                cf,
                &view.cells[context.index()],
                context.session,
                &feature_values,
                strategy_index,
                mode,
                &mut rng,
                &mut choice,
            );
            (cf_serving, propensity) = (serving, p);
        }
        // A spent budget serves the defaults to every decision: a challenger
        // is a departure from them like exploration, and the runtime ends the
        // test at its next review.
        let ab = view.ab.as_ref().filter(|_| !view.budget.spent).map(|test| {
            let serving = &test.serving;
            let arm = serving.assign(n);
            if arm == AbArm::Challenger {
                serving.serve_challenger(context.index(), &mut choice);
                // The challenger's values are not the serving policy the
                // observation probabilities describe.
                cf_serving = None;
            }
            propensity =
                serving.mixture_propensity(context.index(), &view.cells[context.index()], explore, &choice.arms);
            AbAssignment { test: serving.test, arm }
        });
        let now = self.inner.clock.now();
        let decision = Arc::new(Decision {
            id: DecisionId::generate(module_index, now),
            module: space.name.clone(),
            context,
            features: feature_values,
            explore,
            propensity,
            values: choice.values,
            arms: choice.arms,
            propensities: choice.propensities,
            offsets: choice.offsets,
            offset_log_density: choice.offset_log_density,
            seed,
            generation: view.generation,
            created_at: now,
            ab,
            strategy: strategy.map(str::to_string),
            counterfactual: cf_serving,
            ignored_features,
        });
        let ev = match handle.pending.insert(decision.clone(), now) {
            Ok(ev) => ev,
            Err(full) => {
                self.count_expired(handle, full.expired);
                let refused = handle.counters.refused_full.fetch_add(1, Ordering::Relaxed) + 1;
                // One line per doubling: a flood must not flood the log too.
                if refused.is_power_of_two() {
                    tracing::warn!(module, refused, capacity = full.capacity, "open decisions full: refusing new ones");
                }
                return Err(AgentError::TooManyOpenDecisions { module: module.to_string(), capacity: full.capacity });
            }
        };
        self.count_expired(handle, ev);
        let seq = match &self.inner.journal {
            Some(journal) => match journal.append_decision(&decision) {
                Ok(seq) => Some(seq),
                Err(e) => {
                    handle.pending.discard(decision.id.0);
                    tracing::error!(module, decision = %decision.id, error = %e, "journal append failed");
                    return Err(AgentError::Journal(e.to_string()));
                }
            },
            None => None,
        };
        if decision.explored() {
            handle.counters.open_exploring.fetch_add(1, Ordering::Relaxed);
        }
        if mode == Exploring::HeldByBudget {
            handle.counters.held_by_budget.fetch_add(1, Ordering::Relaxed);
        }
        handle.counters.decisions.fetch_add(1, Ordering::Relaxed);
        Ok(Decided { decision, seq })
    }

    fn count_expired(&self, handle: &ModuleHandle, ev: Evictions) {
        if ev.explored > 0 {
            release_exploring(&handle.counters, ev.explored);
        }
        if ev.expired > 0 {
            handle.counters.expired.fetch_add(ev.expired, Ordering::Relaxed);
        }
    }

    /// Waits (without blocking a thread) until the journal holds entry `seq`,
    /// a decision's or an outcome's: the service answers a decision only then,
    /// so that a restart still knows every decision it handed out.
    pub async fn durable(&self, seq: Option<u64>) -> Result<(), AgentError> {
        match (&self.inner.journal, seq) {
            (Some(journal), Some(seq)) => journal.durable(seq).await.map_err(|e| AgentError::Journal(e.to_string())),
            _ => Ok(()),
        }
    }

    /// Puts back the decisions still open when the service last stopped, and
    /// remembers the ids settled since their journal began, so their outcomes
    /// are accepted (or refused as duplicates) as if nothing had happened.
    /// Decisions of modules no longer served are skipped and counted.
    pub fn restore_pending(&self, open: Vec<Decision>, settled: &[(String, DecisionId)]) -> usize {
        let mut skipped = 0;
        for d in open {
            let Ok((_, handle)) = self.handle(&d.module) else {
                skipped += 1;
                continue;
            };
            if let Err(why) = d.fits(&handle.space) {
                // Its module's space changed since: learning from it would index the wrong arms.
                tracing::warn!(decision = %d.id, module = %d.module, why, "an open decision no longer fits its module; not reopened");
                skipped += 1;
                continue;
            }
            if d.explored() {
                handle.counters.open_exploring.fetch_add(1, Ordering::Relaxed);
            }
            handle.pending.restore(Arc::new(d));
        }
        for (module, id) in settled {
            if let Ok((_, handle)) = self.handle(module) {
                handle.pending.restore_settled(id.0);
            }
        }
        skipped
    }

    /// Accepts the outcome of a pending decision and returns once it is
    /// durable. On an error nothing changes: the decision stays pending and
    /// can still be reported.
    pub fn report(&self, decision_id: &str, outcome: Outcome) -> Result<Settled, AgentError> {
        self.accept(decision_id, outcome)?.wait()
    }

    /// Settles a pending decision and queues its outcome for the journal and
    /// the writer, without waiting for the disk: the caller acknowledges the
    /// outcome only after [`Accepted::wait`] or [`Accepted::durable`] says it
    /// is durable. The writer learns it only once it is durable, too.
    pub fn accept(&self, decision_id: &str, outcome: Outcome) -> Result<Accepted, AgentError> {
        self.accept_with(decision_id, outcome, None)
    }

    /// [`Agent::accept`], journaling `attachment` with the outcome.
    pub fn accept_with(
        &self,
        decision_id: &str,
        outcome: Outcome,
        attachment: Option<Attachment>,
    ) -> Result<Accepted, AgentError> {
        let id: DecisionId = decision_id.parse()?;
        let module = self.home_of(id);
        let handle =
            self.inner.handles.get(module).ok_or_else(|| AgentError::UnknownDecision(decision_id.to_string()))?;
        let now = self.inner.clock.now();
        let tx = self.inner.tx.lock().clone().ok_or(AgentError::ShuttingDown)?;
        let settled = handle.pending.settle(id.0, now, |lookup| match lookup {
            Lookup::Open(decision) => {
                let raw = resolve_reward(&handle.space, &decision, &outcome)?;
                let clip = handle.space.reward.clip;
                if raw.abs() > clip {
                    let what = if outcome.reward.is_some() { "reward" } else { "reward from trade.return_pct" };
                    note_out_of_range(&handle.counters.clipped_rewards, &handle.space.name, what, raw, -clip, clip);
                }
                let reward = raw.clamp(-clip, clip);
                check_evidence(&handle.space, &decision, &outcome.evidence)?;
                Ok(Settled { decision, outcome, reward, settled_at: now, attachment })
            }
            Lookup::Gone(Tombstone::Settled) => Err(AgentError::DuplicateOutcome(decision_id.to_string())),
            Lookup::Gone(Tombstone::Expired) => Err(AgentError::ExpiredDecision(decision_id.to_string())),
            Lookup::Unknown => Err(AgentError::UnknownDecision(decision_id.to_string())),
        });
        let settled = match settled {
            Ok(s) => s,
            Err(e) => {
                handle.counters.rejected_outcomes.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let mut sent = true;
        let seq = match &self.inner.journal {
            Some(journal) => {
                // Sent to the writer inside the append, so the writer sees
                // outcomes in journal order: a checkpoint that holds sequence
                // number n then holds every outcome of its module before n.
                let mut forward = |seq| {
                    let msg = WriterMsg::Outcome { module, settled: settled.clone(), seq: Some(seq) };
                    sent = tx.send(msg).is_ok();
                };
                match journal.append(&settled, &mut forward) {
                    Ok(seq) => Some(seq),
                    Err(e) => {
                        handle.pending.reopen(settled.decision.clone());
                        tracing::error!(module = %handle.space.name, decision = %id, error = %e, "journal append failed");
                        return Err(AgentError::Journal(e.to_string()));
                    }
                }
            }
            None => {
                sent = tx.send(WriterMsg::Outcome { module, settled: settled.clone(), seq: None }).is_ok();
                None
            }
        };
        if !sent {
            // A journaled outcome is learned on the next start, if it is durable.
            if seq.is_none() {
                handle.pending.reopen(settled.decision.clone());
            }
            return Err(AgentError::ShuttingDown);
        }
        handle.counters.outcomes.fetch_add(1, Ordering::Relaxed);
        Ok(Accepted { agent: self.clone(), module, settled, seq })
    }

    /// The module whose table holds `id`: the one its id names, unless the
    /// decision was restored from before a restart that reordered the modules.
    fn home_of(&self, id: DecisionId) -> usize {
        let named = id.module_index();
        let handles = &self.inner.handles;
        if handles.get(named).is_some_and(|h| h.pending.knows(id.0)) {
            return named;
        }
        handles.iter().position(|h| h.pending.knows(id.0)).unwrap_or(named)
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

/// Under load the writer publishes at most this often, so rebuilding views
/// (propensities are numerical integrals) costs a bounded share of a core.
/// Views lag outcomes by at most this much; trades close hours apart.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(5);

fn writer_loop(
    mut learners: Vec<ModuleLearner>,
    rx: Receiver<WriterMsg>,
    inner: std::sync::Weak<Inner>,
    journal: Option<Arc<dyn Journal>>,
) -> Vec<ModuleLearner> {
    let mut touched: Vec<Vec<bool>> = learners.iter().map(|_| vec![false; Context::COUNT]).collect();
    let mut refresh_all = vec![false; learners.len()];
    let mut released = vec![0u64; learners.len()];
    let mut flushes = Vec::new();
    let mut last_publish = Instant::now() - PUBLISH_INTERVAL;
    let mut open = true;
    while open {
        let Ok(first) = rx.recv() else { break };
        let mut next = Some(first);
        let deadline = last_publish + PUBLISH_INTERVAL;
        while let Some(msg) = next.take() {
            match msg {
                WriterMsg::Outcome { module, settled, seq } => {
                    let d = &settled.decision;
                    // The budget stops reserving for this trade only once a
                    // view whose ledger holds its outcome is published.
                    released[module] += u64::from(d.explored());
                    // An outcome that never reached the disk was refused to its
                    // reporter; learning it would let a retry count twice.
                    let durable = match (seq, &journal) {
                        (Some(seq), Some(journal)) => journal.wait_durable(seq).is_ok(),
                        _ => true,
                    };
                    if durable {
                        if let Some(seq) = seq {
                            learners[module].mark_journaled(seq);
                        }
                        match learners[module].apply_settled(&settled) {
                            Ok(applied) => {
                                refresh_all[module] |= applied.refresh_all || applied.policy_changed;
                                touched[module][d.context.index()] = true;
                            }
                            // The bandit has learned; only the network's step failed.
                            Err(e) => {
                                tracing::error!(module = %d.module, decision = %d.id, error = %e, "policy training step failed")
                            }
                        }
                    }
                }
                WriterMsg::Flush(done) => flushes.push(done),
                WriterMsg::Run(task) => {
                    task(&mut learners);
                    refresh_all.iter_mut().for_each(|r| *r = true);
                    // Whoever waits on the task should see its effect at once.
                    last_publish -= PUBLISH_INTERVAL;
                }
            }
            next = match rx.try_recv() {
                Ok(m) => Some(m),
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    None
                }
                Err(TryRecvError::Empty) if flushes.is_empty() => {
                    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                        Ok(m) => Some(m),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => {
                            open = false;
                            None
                        }
                    }
                }
                Err(TryRecvError::Empty) => None,
            };
        }
        if let Some(inner) = inner.upgrade() {
            for (m, learner) in learners.iter().enumerate() {
                if !refresh_all[m] && !touched[m].iter().any(|&t| t) {
                    continue;
                }
                let handle = &inner.handles[m];
                let previous = handle.view.load();
                handle.view.store(Arc::new(learner.next_view(&previous, &touched[m], refresh_all[m])));
                touched[m].iter_mut().for_each(|t| *t = false);
                refresh_all[m] = false;
            }
            for (m, n) in released.iter_mut().enumerate() {
                if *n > 0 {
                    release_exploring(&inner.handles[m].counters, *n);
                    *n = 0;
                }
            }
        }
        last_publish = Instant::now();
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
    learners
}

/// Open exploring decisions that closed (settled or evicted); never below 0.
fn release_exploring(counters: &ModuleCounters, closed: u64) {
    let _ =
        counters.open_exploring.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(closed)));
}

/// A module's safety state: its loss budget, as `/metrics`, `/healthz` and
/// the dashboard show it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, schemars::JsonSchema)]
pub struct BudgetStatus {
    /// `safety.loss_budget` (reward units). Infinite for a module without
    /// declared roles (no budget binds it), which JSON writes as null.
    #[schemars(with = "Option<f64>")]
    pub budget: f64,
    /// Lower confidence bound on the realised reward minus the defaults' over closed decisions.
    pub shortfall_lower: f64,
    /// `budget + shortfall_lower`: infinite (null in JSON) with the budget.
    #[schemars(with = "Option<f64>")]
    pub remaining: f64,
    pub reserve_per_open_trade: f64,
    pub open_exploring: u64,
    /// Whether the next exploring decision may explore; false: incumbents only.
    pub exploring: bool,
    /// Exploring decisions held at the incumbents since start.
    pub held_by_budget: u64,
    /// The breaker tripped: the defaults are served, an A/B test ends, and
    /// nothing moves until a rollback.
    pub spent: bool,
}

/// How a decision may explore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exploring {
    /// A greedy decision (`explore = false`).
    No,
    Yes,
    /// It asked to explore, but the loss budget had no room: incumbents.
    HeldByBudget,
}

/// The reward to learn from: given, or 0 for a skipped trade, or derived from
/// the trade's return; then clipped by the module's reward setting.
fn resolve_reward(space: &ModuleSpace, decision: &Decision, outcome: &Outcome) -> Result<f64, AgentError> {
    if let Some(r) = outcome.reward.filter(|r| !r.is_finite()) {
        return Err(AgentError::NonFiniteReward { field: "reward", value: r });
    }
    if let Some(r) = outcome.return_pct.filter(|r| !r.is_finite()) {
        return Err(AgentError::NonFiniteReward { field: "trade.return_pct", value: r });
    }
    let raw = match (outcome.reward, outcome.traded, outcome.return_pct) {
        (Some(r), _, _) => r,
        (None, false, _) => 0.0,
        (None, true, Some(rp)) => rp * space.reward.scale,
        (None, true, None) => return Err(AgentError::MissingReward(decision.id.to_string())),
    };
    Ok(raw)
}

/// Counts (and, at every doubling, logs) what a module sends outside what
/// its space declares: the learner clips it, and the operator should know
/// the client may be sending, say, percent where a fraction is expected.
fn note_out_of_range(counter: &AtomicU64, module: &str, what: &str, value: f64, lo: f64, hi: f64) {
    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
    if n.is_power_of_two() {
        tracing::warn!(module, what, value, lo, hi, times = n, "outside its declared range: clipped");
    }
}

/// Refuses evidence that is not finite or names a strategy the module does
/// not have or the decision did not.
fn check_evidence(space: &ModuleSpace, decision: &Decision, evidence: &Evidence) -> Result<(), AgentError> {
    if let Some((field, value)) = evidence.non_finite() {
        return Err(AgentError::NonFiniteEvidence { field, value });
    }
    if let Some(reported) = &evidence.strategy {
        if declared_strategy(space, reported)?.is_some() {
            if let Some(decided) = decision.strategy.as_ref().filter(|d| *d != reported) {
                return Err(AgentError::StrategyMismatch { decided: decided.clone(), reported: reported.clone() });
            }
        }
    }
    Ok(())
}

/// `strategy` as an index of the module's declared strategies; `None` for a
/// module whose file lists none (its own name is a label, kept with the
/// trade); an error naming it when the file lists others.
fn declared_strategy(space: &ModuleSpace, strategy: &str) -> Result<Option<usize>, AgentError> {
    match &space.counterfactual {
        Some(cf) if cf.declares_strategies() => match cf.strategy_index(strategy) {
            Some(i) => Ok(Some(i)),
            None => Err(AgentError::UnknownStrategy { module: space.name.clone(), strategy: strategy.to_string() }),
        },
        _ => Ok(None),
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
