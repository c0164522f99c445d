//! The writer's side of one module: its evidence, its incumbents, and how an
//! outcome changes them. Only the writer thread holds a `ModuleLearner`; it
//! publishes immutable [`ModuleView`]s for decisions to read.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::bandit::{thompson_propensities, BanditSettings, ModuleStats, Nig};
use crate::policy::{PolicyError, PolicySnapshot, PolicyTrainer, Sample};
use crate::space::{Context, ModuleSpace, Parameter};
use crate::util::project_simplex;

use super::budget::{BudgetView, LossLedger};
use super::counterfactual::{observe, raw_reward, strategy_of, Unusable};
use super::joint::{without_weights, Joint, JointState};
use super::rollout::{AbArm, AbTest, RewardWindow};
use super::safety::{trust_box, trust_width};
use super::view::{CellView, ModuleView, ParamView};
use super::{Decision, Settled};
use crate::space::Counterfactual;

#[derive(Debug)]
pub struct ModuleLearner {
    pub space: Arc<ModuleSpace>,
    pub settings: BanditSettings,
    pub stats: ModuleStats,
    /// `[context][param]`: the greedy value served with `explore = false`.
    pub incumbents: Vec<Vec<f64>>,
    pub generation: u64,
    pub outcomes: u64,
    pub reward_sum: f64,
    /// The policy network, when the module refines continuous values.
    pub policy: Option<PolicyTrainer>,
    /// Every journaled outcome up to this sequence number has been learned.
    pub journal_seq: u64,
    /// Set when this agent is one of several replicas sharing their learning.
    pub replica: Option<ReplicaState>,
    /// The A/B test running on this module, if any.
    pub ab: Option<AbTest>,
    /// The live policy's rewards, for the rollback watch: decisions of this
    /// generation or later, the challenger's excluded.
    pub rolling: RewardWindow,
    /// The generation the live policy took over at (a rollback or promotion);
    /// rewards of older decisions are not the live policy's.
    pub rolling_since: u64,
    /// The joint counterfactual estimator, when the module declares roles.
    pub joint: Option<Joint>,
    /// The declarations in force: the space's, or with the weights made
    /// opaque once the module's confidence disagreed with them.
    pub cf: Option<Arc<Counterfactual>>,
    /// The loss budget's ledger: realised against the defaults.
    pub ledger: LossLedger,
    policy_snapshot: Option<Arc<PolicySnapshot>>,
    outcomes_since_refresh: u64,
}

/// What a replica has shared and not yet shared. Both are undiscounted sums,
/// so increments merge exactly in any order (with discount off, the learned
/// statistics equal those of one agent that saw every outcome; with it on,
/// other replicas' outcomes arrive undiscounted at each sync).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicaState {
    /// The shared totals as of the last sync; this learner's statistics hold them.
    pub shared: Option<ModuleStats>,
    /// This replica's own outcomes since the last sync.
    pub unsynced: Option<ModuleStats>,
}

/// What the bandit learned from one reward.
#[derive(Debug, Clone, Copy)]
pub struct Learned {
    /// Every cell's view must be rebuilt (the pooled prior was refreshed).
    pub refresh_all: bool,
    /// The reward beyond the cell's running mean.
    pub advantage: f64,
}

/// What the writer learned from one outcome.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    /// Every cell's view must be rebuilt (the pooled prior was refreshed).
    pub refresh_all: bool,
    /// The policy network's weights changed.
    pub policy_changed: bool,
}

impl ModuleLearner {
    /// Projects a simplex group's new incumbents onto {sum = 1} within each
    /// member's trust box around its old value: a Euclidean projection, so
    /// no member leaves its box by renormalising.
    fn project_in_trust(&self, members: &[usize], old: &[f64], new: &mut [f64], evidence: f64) {
        let (mut y, mut lo, mut hi) = (vec![], vec![], vec![]);
        for &p in members {
            let param = &self.space.params[p];
            let (l, h) = trust_box(param, old[p], trust_width(param, &self.space.safety, evidence));
            y.push(new[p]);
            lo.push(l);
            hi.push(h);
        }
        project_simplex(&mut y, &lo, &hi);
        for (&p, v) in members.iter().zip(y) {
            new[p] = v;
        }
    }

    /// A cold learner. `seed` initialises the policy network.
    pub fn new(space: Arc<ModuleSpace>, seed: u64) -> Result<ModuleLearner, PolicyError> {
        let policy = if space.policy.enabled { Some(PolicyTrainer::new(&space, seed)?) } else { None };
        ModuleLearner::with_policy(space, policy)
    }

    /// A cold bandit with the given policy network (or none).
    pub fn with_policy(space: Arc<ModuleSpace>, policy: Option<PolicyTrainer>) -> Result<ModuleLearner, PolicyError> {
        let l = &space.learning;
        let settings = BanditSettings {
            prior: Nig::prior(l.prior_mean, l.prior_strength, l.prior_shape, l.prior_noise_sd),
            pooling_strength: l.pooling_strength,
            discount: l.discount,
            baseline_decay: 1.0 - 1.0 / l.baseline_window,
        };
        let arms: Vec<usize> = space.params.iter().map(|p| p.arms.len()).collect();
        let window = space.rollback.window;
        let cf = space.counterfactual.clone().map(Arc::new);
        let joint = cf.as_ref().map(|cf| Joint::new(&space, cf));
        Ok(ModuleLearner {
            joint,
            cf,
            ledger: LossLedger::default(),
            stats: ModuleStats::new(Context::COUNT, &arms),
            incumbents: vec![space.defaults(); Context::COUNT],
            settings,
            space,
            generation: 0,
            outcomes: 0,
            reward_sum: 0.0,
            policy_snapshot: policy.as_ref().map(PolicyTrainer::snapshot).transpose()?,
            journal_seq: 0,
            replica: None,
            ab: None,
            rolling: RewardWindow::new(window),
            rolling_since: 0,
            policy,
            outcomes_since_refresh: 0,
        })
    }

    /// Learns from one accepted outcome. Without declared roles this is
    /// [`ModuleLearner::apply`]. With them: opaque parameters in scope learn
    /// the reward by bandit feedback when the trade was taken; every
    /// determined parameter learns, through the joint estimator, what each of
    /// its values would have earned on this trade; parameters out of scope
    /// learn nothing.
    pub fn apply_settled(&mut self, settled: &Settled) -> Result<Applied, PolicyError> {
        let Some(cf) = self.cf.clone() else { return self.apply(&settled.decision, settled.reward) };
        let (d, outcome) = (&settled.decision, &settled.outcome);
        let context = d.context.index();
        let strategy = strategy_of(&cf, d, &outcome.evidence);
        let credit: Vec<bool> = (0..self.space.params.len())
            .map(|p| !cf.roles[p].determined() && cf.in_scope(p, d.context.session, strategy) && outcome.traded)
            .collect();
        let learned = self.learn_masked(context, &d.arms, settled.reward, Some(&credit));
        let space = self.space.clone();
        let mut refit = false;
        let observed = observe(&space, &cf, d, outcome);
        let defaults = space.defaults();
        // The defaults' value on this decision, when the outcome says it:
        // every in-scope opaque parameter was served at its default.
        let opaque_at_defaults = (0..space.params.len()).all(|p| {
            cf.roles[p].determined() || !cf.in_scope(p, d.context.session, strategy) || d.values[p] == defaults[p]
        });
        let realised = raw_reward(&space, outcome);
        // A decision served at the defaults earned exactly what they earn,
        // whatever the module then did (it may decline a trade the gate
        // allows); elsewhere the trade's counterfactual says, where it can.
        let defaults_value = match &observed {
            _ if self.served_defaults(d) => Some(realised),
            Ok(obs) if opaque_at_defaults => obs.value(&cf, &defaults),
            _ => None,
        };
        self.ledger.record(realised, defaults_value, d.explored());
        let broke = self.check_budget();
        let mut opaque_moved = false;
        if !self.ledger.spent {
            let joint = self.joint.as_mut().expect("declared roles have an estimator");
            let evidence = &self.stats.cell_outcomes;
            opaque_moved = joint.observe_opaque(&space, &cf, d, strategy, realised, &mut self.incumbents, evidence);
        }
        match observed {
            Ok(obs) => {
                let joint = self.joint.as_mut().expect("declared roles have an estimator");
                if obs.cap.is_some() {
                    joint.state.counts.capped += 1;
                } else {
                    refit = joint.observe(&space, &cf, d.context, &obs);
                }
            }
            Err(Unusable::NotServed) => {}
            Err(Unusable::ConfidenceMismatch { reported, computed }) => {
                let joint = self.joint.as_mut().expect("declared roles have an estimator");
                joint.state.counts.confidence_mismatch += 1;
                if !joint.state.weights_opaque {
                    tracing::warn!(module = %space.name, decision = %d.id, reported, computed,
                        "trade.confidence disagrees with the declared weights' score: the weights are opaque from now on");
                    self.make_weights_opaque();
                }
            }
            Err(reason) => {
                let joint = self.joint.as_mut().expect("declared roles have an estimator");
                joint.state.counts.unusable += 1;
                tracing::debug!(module = %space.name, decision = %d.id, reason = %reason, "outcome teaches no counterfactual");
            }
        }
        if refit {
            self.move_determined(context);
        }
        let mut applied = self.after_learning(d, settled.reward, learned)?;
        // A module-wide opaque move changes every cell's incumbents.
        applied.refresh_all |= broke || opaque_moved;
        Ok(applied)
    }

    /// The loss budget's circuit breaker (see `agent::budget`): once the
    /// test finds the module behind the defaults by more than the budget,
    /// every incumbent goes back to its default at once (the defaults are
    /// always within the limits) and nothing moves again until a rollback.
    /// Returns whether it broke now.
    fn check_budget(&mut self) -> bool {
        let budget = self.space.safety.loss_budget;
        let Some(cf) = &self.cf else { return false };
        let sd = self.space.learning.prior_noise_sd;
        let test = crate::bandit::MixtureTest::new(cf.alpha, 100.0 * sd * sd);
        if self.ledger.spent || !self.ledger.breaks(&test, budget) {
            return false;
        }
        let lower = self.ledger.lower();
        self.ledger.spent = true;
        let defaults = self.space.defaults();
        self.incumbents.iter_mut().for_each(|i| i.clone_from(&defaults));
        let n = self.ledger.defaults.n + self.ledger.estimated_n;
        if let Some(joint) = &mut self.joint {
            joint.spend_budget(&self.space, cf, lower, n);
        }
        tracing::warn!(module = %self.space.name, shortfall_lower = lower, budget,
            "the loss budget is spent: serving the defaults, nothing moves until a rollback");
        true
    }

    /// Takes back the estimator's state from a checkpoint. A state of
    /// another shape (the space's arms or strategies changed) is dropped
    /// with a warning: the estimator starts afresh, the bandit keeps its state.
    pub fn restore_joint(&mut self, state: JointState) {
        if state.weights_opaque {
            self.make_weights_opaque();
        }
        let Some(cf) = self.cf.clone() else { return };
        match Joint::restore(&self.space, &cf, state) {
            Some(joint) => self.joint = Some(joint),
            None => {
                tracing::warn!(module = %self.space.name, "the checkpoint's counterfactual state does not fit the space; it starts afresh")
            }
        }
    }

    /// Gates score with the reported confidence from now on and the weights
    /// learn by bandit feedback; the estimator starts afresh on the new shape.
    pub fn make_weights_opaque(&mut self) {
        let Some(cf) = &self.cf else { return };
        let reduced = without_weights(cf);
        let mut joint = Joint::new(&self.space, &reduced);
        if let Some(old) = &self.joint {
            joint.state.counts = old.state.counts.clone();
        }
        joint.state.weights_opaque = true;
        self.joint = Some(joint);
        self.cf = Some(Arc::new(reduced));
    }

    /// Moves a cell's determined parameters towards its estimator's target,
    /// by at most the trust region's width, the weights projected back onto
    /// their simplex inside the same boxes.
    fn move_determined(&mut self, context: usize) {
        if self.ledger.spent {
            return;
        }
        let (Some(cf), Some(joint)) = (&self.cf, &self.joint) else { return };
        let target = joint.target(&self.space, Context::from_index(context).expect("a context index"));
        let evidence = self.stats.cell_outcomes[context];
        let old = self.incumbents[context].clone();
        let mut new = old.clone();
        for (p, param) in self.space.params.iter().enumerate() {
            if cf.roles[p].determined() {
                let w = trust_width(param, &self.space.safety, evidence);
                new[p] = (old[p] + (target[p] - old[p]).clamp(-w, w)).clamp(param.lo, param.hi);
            }
        }
        if let Some(group) = &cf.weights {
            if group.members.iter().any(|&p| new[p] != old[p]) {
                self.project_in_trust(&group.members, &old, &mut new, evidence);
            }
        }
        self.incumbents[context] = new;
    }

    /// Learns from one decision's outcome: the bandit from its arms, the policy
    /// network from its offsets. Every parameter is credited as opaque: this
    /// is learning without the outcome's evidence (see [`ModuleLearner::apply_settled`]).
    pub fn apply(&mut self, decision: &Decision, reward: f64) -> Result<Applied, PolicyError> {
        // Without the outcome's evidence the defaults' value is known only
        // when the decision served them.
        let exact = self.served_defaults(decision).then_some(reward);
        self.ledger.record(reward, exact, decision.explored());
        let learned = self.learn(decision.context.index(), &decision.arms, reward);
        self.after_learning(decision, reward, learned)
    }

    /// What every outcome does after the bandit learned: the A/B test's
    /// tally, the rollback watch's window, the policy network's sample.
    fn after_learning(&mut self, decision: &Decision, reward: f64, learned: Learned) -> Result<Applied, PolicyError> {
        if let Some(test) = &mut self.ab {
            test.record(decision.ab, reward);
        }
        let challenger = decision.ab.is_some_and(|a| a.arm == AbArm::Challenger);
        if !challenger && decision.generation >= self.rolling_since {
            self.rolling.push(decision.context.index(), reward);
        }
        let mut policy_changed = false;
        if let Some(trainer) = self.policy.as_mut() {
            let scaled = learned.advantage / self.space.learning.prior_noise_sd;
            if let Some(sample) = policy_sample(&self.space, trainer, decision, scaled) {
                if let Some(snapshot) = trainer.observe(sample)? {
                    self.policy_snapshot = Some(snapshot);
                    policy_changed = true;
                }
            }
        }
        Ok(Applied { refresh_all: learned.refresh_all, policy_changed })
    }

    /// Records that journaled outcome `seq` is being learned, keeping
    /// `journal_seq` at the end of the gapless prefix: what a checkpoint may
    /// claim so that replay after a crash skips nothing.
    /// The writer receives journaled outcomes in sequence order (the agent
    /// hands them over inside the journal's append), so every outcome of this
    /// module up to `seq` has been learned. Numbers are shared by all modules:
    /// a module's own have gaps.
    pub fn mark_journaled(&mut self, seq: u64) {
        self.journal_seq = self.journal_seq.max(seq);
    }

    /// Joins a group of replicas: from now on this learner's outcomes are
    /// gathered for [`ModuleLearner::take_increment`].
    pub fn enable_replica(&mut self) {
        self.replica.get_or_insert_with(ReplicaState::default);
    }

    /// This replica's outcomes since the last sync, to be merged into the
    /// shared totals; `None` when this learner is not a replica.
    pub fn take_increment(&mut self) -> Option<ModuleStats> {
        let replica = self.replica.as_mut()?;
        Some(replica.unsynced.take().unwrap_or_else(|| self.stats.empty_like()))
    }

    /// The merge of `own` failed: it is sent again with the next sync.
    pub fn return_increment(&mut self, own: ModuleStats) {
        if let Some(replica) = &mut self.replica {
            match &mut replica.unsynced {
                Some(unsynced) => unsynced.merge(&own),
                none => *none = Some(own),
            }
        }
    }

    /// Takes in the shared totals after merging `own` into them: what other
    /// replicas added since the last sync joins this learner's statistics.
    pub fn absorb_shared(&mut self, own: &ModuleStats, merged: ModuleStats) {
        let Some(replica) = &mut self.replica else { return };
        let mut known = replica.shared.clone().unwrap_or_else(|| self.stats.empty_like());
        known.merge(own);
        let others = merged.since(&known);
        self.stats.merge(&others);
        replica.shared = Some(merged);
        for context in 0..Context::COUNT {
            self.move_incumbents(context);
        }
    }

    /// The bandit's part of learning from a reward for `arms` in `context`.
    pub fn learn(&mut self, context: usize, arms: &[usize], reward: f64) -> Learned {
        self.learn_masked(context, arms, reward, None)
    }

    /// [`ModuleLearner::learn`] crediting only the parameters `credit` marks.
    pub fn learn_masked(&mut self, context: usize, arms: &[usize], reward: f64, credit: Option<&[bool]>) -> Learned {
        let advantage = self.stats.record_masked(&self.settings, context, arms, reward, credit);
        if let Some(replica) = &mut self.replica {
            let stats = &self.stats;
            let unsynced = replica.unsynced.get_or_insert_with(|| stats.empty_like());
            unsynced.push_outcome_masked(context, arms, reward, advantage, credit);
        }
        self.outcomes += 1;
        self.reward_sum += reward;
        self.move_incumbents(context);
        self.outcomes_since_refresh += 1;
        let refresh_all = self.outcomes_since_refresh >= self.space.learning.pool_refresh_outcomes;
        if refresh_all {
            self.outcomes_since_refresh = 0;
        }
        Learned { refresh_all, advantage }
    }

    /// Each incumbent steps towards the arm with the best posterior mean among
    /// those its trust region reaches, by at most the region's width; a simplex
    /// group is then projected back onto its constraints inside the same region.
    fn move_incumbents(&mut self, context: usize) {
        if self.ledger.spent {
            return;
        }
        let evidence = self.stats.cell_outcomes[context];
        let old = self.incumbents[context].clone();
        let mut new = old.clone();
        for (p, param) in self.space.params.iter().enumerate() {
            // With roles declared, incumbents move only on a test's evidence:
            // determined ones through the joint estimator, opaque ones
            // through their paired inverse-propensity tests (`joint::opaque`;
            // a posterior mean is no test, and an arm never tried would win
            // on its prior wherever the served one loses).
            if self.cf.is_some() {
                continue;
            }
            let w = trust_width(param, &self.space.safety, evidence);
            let eligible = eligible_arms(param, old[p], w);
            let mut target = param.nearest_arm(old[p]);
            let mut best = self.stats.posterior(&self.settings, context, p, target).m;
            for &k in &eligible {
                let m = self.stats.posterior(&self.settings, context, p, k).m;
                let closer = (param.arms[k] - old[p]).abs() < (param.arms[target] - old[p]).abs();
                if m > best || (m == best && closer) {
                    best = m;
                    target = k;
                }
            }
            let step = (param.arms[target] - old[p]).clamp(-w, w);
            new[p] = (old[p] + step).clamp(param.lo, param.hi);
        }
        for group in &self.space.simplex_groups {
            if self.cf.is_some() {
                continue;
            }
            // An unmoved group is already feasible; projecting it would only add rounding.
            if group.members.iter().all(|&p| new[p] == old[p]) {
                continue;
            }
            self.project_in_trust(&group.members, &old, &mut new, evidence);
        }
        self.incumbents[context] = new;
    }

    /// What decisions in `context` read: per parameter, the arms the trust
    /// region reaches, the values they serve, their posteriors and propensities.
    pub fn cell_view(&self, context: usize) -> CellView {
        let evidence = self.stats.cell_outcomes[context];
        let params = self
            .space
            .params
            .iter()
            .enumerate()
            .map(|(p, param)| {
                let incumbent = self.incumbents[context][p];
                let width = trust_width(param, &self.space.safety, evidence);
                let trust = trust_box(param, incumbent, width);
                let arms = eligible_arms(param, incumbent, width);
                let posts: Vec<Nig> =
                    arms.iter().map(|&k| self.stats.posterior(&self.settings, context, p, k)).collect();
                let means: Vec<f64> = posts.iter().map(|n| n.m).collect();
                let sds: Vec<f64> = posts.iter().map(|n| n.mean_sd()).collect();
                let mut propensities = vec![0.0; arms.len()];
                thompson_propensities(&means, &sds, &mut propensities);
                ParamView {
                    incumbent,
                    trust,
                    greedy_arm: param.nearest_arm(incumbent),
                    served: arms.iter().map(|&k| param.arms[k].clamp(trust.0, trust.1)).collect(),
                    arms,
                    means,
                    sds,
                    propensities,
                }
            })
            .collect();
        CellView { params }
    }

    pub fn view(&self) -> ModuleView {
        ModuleView {
            generation: self.generation,
            outcomes: self.outcomes,
            cells: (0..Context::COUNT).map(|c| Arc::new(self.cell_view(c))).collect(),
            policy: self.policy_snapshot.clone(),
            cf: self.cf.clone(),
            ab: self.ab.clone().map(Arc::new),
            rolling: self.rolling.stats(),
            rolling_by_context: self.rolling.by_context(),
            rolling_since: self.rolling_since,
            budget: self.budget_view(),
            moves_made: self.joint.as_ref().map_or(0, |j| j.moves_made),
        }
    }

    /// Whether every parameter was served at its seed default.
    fn served_defaults(&self, d: &Decision) -> bool {
        self.space.params.iter().zip(&d.values).all(|(p, &v)| v == p.default)
    }

    /// The loss budget as decisions see it. A module without declared roles
    /// has no measure of what the defaults would have earned on decisions
    /// that explored (only an off-policy estimate, not kept here): its
    /// budget is not enforced, and its status says so (`budget: null`).
    pub fn budget_view(&self) -> BudgetView {
        let space = &self.space;
        if self.cf.is_none() {
            return BudgetView::unlimited();
        }
        self.ledger.view(space.safety.loss_budget, self.declared_worst_trade(), space.learning.prior_noise_sd)
    }

    /// What one exploring trade loses when its stop-loss is hit, when the
    /// declarations say: the largest stop times the largest capital at risk
    /// (a parameter named by the exit's `capital`) and scale. A price that
    /// gaps through the stop loses more; the ledger then counts the real loss.
    fn declared_worst_trade(&self) -> Option<f64> {
        let cf = self.cf.as_ref()?;
        let exit = cf.exit.as_ref()?;
        let stop = exit.stop_loss?;
        let capital = self.space.params.iter().position(|p| p.full_name == exit.capital)?;
        let largest = |p: usize| self.space.params[p].arms.iter().copied().fold(f64::MIN, f64::max);
        let scale = cf.scales.iter().map(|&p| largest(p)).fold(1.0, f64::max);
        Some(largest(stop) * largest(capital) * scale)
    }

    /// The next view after an outcome: only the touched cell is rebuilt unless
    /// the pooled prior was refreshed.
    pub fn next_view(&self, previous: &ModuleView, touched: &[bool], all: bool) -> ModuleView {
        if all {
            return self.view();
        }
        ModuleView {
            generation: self.generation,
            outcomes: self.outcomes,
            cells: (0..Context::COUNT)
                .map(|c| if touched[c] { Arc::new(self.cell_view(c)) } else { previous.cells[c].clone() })
                .collect(),
            policy: self.policy_snapshot.clone(),
            cf: self.cf.clone(),
            ab: self.ab.clone().map(Arc::new),
            rolling: self.rolling.stats(),
            rolling_by_context: self.rolling.by_context(),
            rolling_since: self.rolling_since,
            budget: self.budget_view(),
            moves_made: self.joint.as_ref().map_or(0, |j| j.moves_made),
        }
    }

    /// Serves `values` (`[context][param]`, already checked against the
    /// safety limits) as the incumbents from now on: a promoted challenger.
    /// The evidence stays; the live policy's rolling reward starts afresh.
    pub fn adopt_incumbents(&mut self, values: Vec<Vec<f64>>) {
        self.incumbents = values;
        self.rolling = RewardWindow::new(self.space.rollback.window);
    }

    /// The arm with the best posterior mean in `context`, over all arms:
    /// what the agent believes, regardless of how far the incumbent has moved.
    pub fn best_arm(&self, context: usize, param: usize) -> usize {
        let k_arms = self.space.params[param].arms.len();
        (0..k_arms)
            .max_by(|&a, &b| {
                let ma = self.stats.posterior(&self.settings, context, param, a).m;
                let mb = self.stats.posterior(&self.settings, context, param, b).m;
                ma.total_cmp(&mb)
            })
            .expect("at least two arms")
    }
}

/// The training sample of an explored decision, refined or not; `None` for a
/// greedy one (its values are not drawn, so they teach nothing about the peak).
fn policy_sample(space: &ModuleSpace, trainer: &PolicyTrainer, d: &Decision, advantage: f64) -> Option<Sample> {
    if !d.explore {
        return None;
    }
    let layout = &trainer.layout;
    let mut input = Vec::with_capacity(layout.input_dim);
    layout.encode(space, d.context, &d.features, &mut input);
    let values = layout.refined.iter().map(|&p| space.params[p].unit(d.values[p]) as f32).collect();
    Some(Sample { input, values, advantage: advantage as f32 })
}

/// Arms inside the trust region, plus the nearest arm beyond each edge so the
/// region can always be pushed outward. Those beyond serve the edge's value.
pub fn eligible_arms(param: &Parameter, incumbent: f64, width: f64) -> Vec<usize> {
    let tol = 1e-12 * param.range();
    let mut out = Vec::with_capacity(param.arms.len());
    let below = param.arms.iter().rposition(|&a| a < incumbent - width - tol);
    let above = param.arms.iter().position(|&a| a > incumbent + width + tol);
    out.extend(below);
    out.extend((0..param.arms.len()).filter(|&k| (param.arms[k] - incumbent).abs() <= width + tol));
    out.extend(above);
    out
}
