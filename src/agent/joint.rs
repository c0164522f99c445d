//! Joint evaluation of the determined parameters: from every trade, what
//! each (weights, exit, threshold, scale) table of a cell would have earned,
//! estimated without bias, and the table a cell serves.
//!
//! Within a cell the weights and the exit are shared by every slot (strategy),
//! while each slot has its own threshold and scale. For an opportunity with
//! observation probability `p_obs` (see `counterfactual.rs`), candidate
//! `(s, theta, m)` is worth `v = [score_s >= theta] * (traded ? u_s * m / p_obs : 0)`,
//! unbiased for its expected reward. The value is linear in `m`, so a cell
//! keeps, per shared candidate `s`, slot and threshold arm, the running sums
//! of `x = [fires] u_s / p_obs` and of `x^2` (and the unseen trades): every
//! table's total under the module's objective, exactly and in O(1) memory
//! per table.
//!
//! A refit every `refit_every` outcomes picks, per shared candidate, each
//! slot's best (theta, m) and keeps the best total: the cell's *leader*. The
//! leader is served only once an anytime-valid test (`bandit::confseq`)
//! favours it over the served table, and the test sees only outcomes that
//! arrived after the leader that judged them was chosen: the sum of
//! `leader(t-1) - served(t-1)` over opportunities `t` is a supermartingale
//! when no table beats the served one, whichever leaders the data pick
//! (a predictable plug-in; Waudby-Smith and Ramdas 2023). So the search over
//! thousands of tables costs no share of `alpha`: issue 15's grouped test is
//! one such test per cell (at `alpha / 2` over the cells) plus one over the
//! whole module (at `alpha / 2`), which moves every cell's leader at once
//! when the table as a whole is better, though no cell alone is shown to be.

use serde::{Deserialize, Serialize};

use crate::bandit::{MixtureTest, PairedSums, Verdict};
use crate::space::{Context, Counterfactual, ModuleSpace, Parameter};

use super::counterfactual::{blend, Observation};
use super::evidence::exit_on_path;

/// Weight vectors closer than this (largest member difference) count as one.
pub const WEIGHT_RESOLUTION: f64 = 0.03;

/// The shared candidates of a module: weight vectors and exits. Index 0 of
/// each is the seed defaults. Rebuilt from the space, never stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidates {
    /// Member values (summing to 1, inside their boxes); one empty vector without weights.
    pub weights: Vec<Vec<f64>>,
    /// `(stop, target)`; one `(None, None)` without exits.
    pub exits: Vec<(Option<f64>, Option<f64>)>,
    /// Per slot and session: the in-scope gate and scale parameters.
    pub slots: usize,
}

impl Candidates {
    pub fn new(space: &ModuleSpace, cf: &Counterfactual) -> Candidates {
        let weights = match &cf.weights {
            None => vec![vec![]],
            Some(w) => weight_candidates(&w.members.iter().map(|&p| &space.params[p]).collect::<Vec<_>>()),
        };
        let exits = match &cf.exit {
            None => vec![(None, None)],
            Some(e) => {
                let arms = |p: Option<usize>| -> Vec<Option<f64>> {
                    match p {
                        None => vec![None],
                        Some(p) => {
                            let param = &space.params[p];
                            // The default first, then the other arms.
                            let mut a = vec![Some(param.default)];
                            a.extend(param.arms.iter().filter(|&&x| x != param.default).map(|&x| Some(x)));
                            a
                        }
                    }
                };
                let (stops, targets) = (arms(e.stop_loss), arms(e.profit_target));
                stops.iter().flat_map(|&s| targets.iter().map(move |&t| (s, t))).collect()
            }
        };
        let slots = if cf.strategy_scoped() { cf.strategies.len().max(1) } else { 1 };
        Candidates { weights, exits, slots }
    }

    pub fn shared(&self) -> usize {
        self.weights.len() * self.exits.len()
    }
}

/// Every combination of the members' arms, normalised to sum 1, that stays
/// inside the members' boxes, with near-duplicates dropped; the defaults first.
pub fn weight_candidates(members: &[&Parameter]) -> Vec<Vec<f64>> {
    let mut out: Vec<Vec<f64>> = vec![members.iter().map(|p| p.default).collect()];
    let mut idx = vec![0usize; members.len()];
    loop {
        let raw: Vec<f64> = members.iter().zip(&idx).map(|(p, &k)| p.arms[k]).collect();
        let sum: f64 = raw.iter().sum();
        let w: Vec<f64> = raw.iter().map(|x| x / sum).collect();
        let inside = members.iter().zip(&w).all(|(p, &x)| x >= p.lo - 1e-12 && x <= p.hi + 1e-12);
        let near = |o: &Vec<f64>| o.iter().zip(&w).all(|(a, b)| (a - b).abs() < WEIGHT_RESOLUTION);
        if inside && !out.iter().any(near) {
            out.push(w);
        }
        // Odometer over the arm indices.
        let mut i = 0;
        loop {
            if i == members.len() {
                return out;
            }
            idx[i] += 1;
            if idx[i] < members[i].arms.len() {
                break;
            }
            idx[i] = 0;
            i += 1;
        }
    }
}

/// The running sums of one (shared candidate, slot, threshold arm).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Sums {
    pub x: f64,
    pub xx: f64,
    /// Opportunities where this candidate's gate fires on a trade that no
    /// branch of the serving policy could have taken (observation
    /// probability 0): their return is unknown, not 0, and the refit
    /// charges each at a worst case rather than trusting the 0 (SPIBB's
    /// rule: no move where the data have no support).
    #[serde(default)]
    pub unseen: f64,
}

/// What the refit charges a candidate per unseen trade, per unit of its
/// scale relative to the default's: the worst case the loss budget uses
/// (`budget::PRIOR_WORST_SDS` x `prior_noise_sd`).
fn unseen_charge(space: &ModuleSpace) -> f64 {
    super::budget::PRIOR_WORST_SDS * space.learning.prior_noise_sd
}

/// A cell's evidence and the table it serves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CellJoint {
    /// `[(s * slots + slot) * thresholds + k]`.
    pub sums: Vec<Sums>,
    /// Per slot: the opportunities.
    pub opportunities: Vec<f64>,
    pub since_refit: u64,
    /// The last refit's best table, when it is not the served one: the
    /// challenger the next outcomes test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<Vec<f64>>,
    /// The cell's test: each opportunity's paired utility of the leader
    /// chosen before it against the table served, since the last move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<PairedSums>,
    /// Per parameter: what the cell serves (its target), when it has moved off the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Vec<f64>>,
    /// The change detector: the target's paired utility against the
    /// defaults on the opportunities since it was served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<PairedSums>,
}

/// Why outcomes did not reach the estimator, counted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JointCounts {
    pub used: u64,
    pub unusable: u64,
    pub confidence_mismatch: u64,
    pub capped: u64,
    pub refits: u64,
    pub promotions: u64,
    /// Targets dropped because the change detector found the defaults better since.
    #[serde(default)]
    pub detections: u64,
}

/// A move of a cell's served table, with its evidence: the learner hands
/// these to the runtime, which records them as `ml_learning_events`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MoveEvent {
    pub context: Context,
    pub kind: MoveKind,
    /// The test's look that decided it (for a detection: the defaults
    /// against the target since it was served).
    pub verdict: Verdict,
    /// Which test: the cell's, the module's joint one, or the detector.
    pub scope: TestScope,
    /// The level that test ran at.
    pub alpha: f64,
    /// The table served before, and from now on.
    pub before: Vec<f64>,
    pub values: Vec<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveKind {
    /// The anytime-valid test favoured a table over the defaults.
    Promoted,
    /// The best table changed and the test favours the new one.
    Replaced,
    /// The change detector: since it was served, the defaults did better.
    ChangeDetected,
    /// The loss budget was spent: every cell serves the defaults.
    BudgetSpent,
}

/// What the test behind a move compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TestScope {
    /// The cell's leaders against its served table.
    Cell,
    /// Every cell's leader against its served table, summed over the module.
    Module,
    /// The change detector: the defaults against the served table since it was served.
    Detector,
    /// The loss budget's ledger.
    Budget,
}

impl TestScope {
    /// The paired difference it tested, as `ml_learning_events` evidence names it.
    pub fn paired(self) -> &'static str {
        match self {
            TestScope::Cell => "leader - served, per opportunity of the cell",
            TestScope::Module => "leaders - served, per opportunity of the module",
            TestScope::Detector => "defaults - served, per opportunity since it was served",
            TestScope::Budget => "realised - defaults, summed over decisions (the ledger's lower bound)",
        }
    }
}

impl MoveKind {
    /// The `learning_event` name of its `ml_learning_events` row.
    pub fn event_name(self) -> &'static str {
        match self {
            MoveKind::Promoted => "counterfactual_promotion",
            MoveKind::Replaced => "counterfactual_replacement",
            MoveKind::ChangeDetected => "change_detected",
            MoveKind::BudgetSpent => "loss_budget_spent",
        }
    }
}

/// Undrained move events kept at most; older ones are dropped (and counted
/// in the log), so a runtime that never drains cannot grow memory.
pub const MAX_PENDING_EVENTS: usize = 1024;

/// The estimator's state for one module: what checkpoints keep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JointState {
    pub cells: Vec<CellJoint>,
    pub counts: JointCounts,
    /// The module's joint test: every cell's leader against its served table
    /// on the opportunities since the last move.
    #[serde(default)]
    pub challenge: PairedSums,
    /// Shape of the candidates the sums belong to: `(weights, exits, slots, thresholds)`.
    pub shape: (usize, usize, usize, usize),
    /// Set once a reported confidence disagreed with the declared weights'
    /// score: the weights are opaque from then on, gates score with the
    /// reported confidence.
    #[serde(default)]
    pub weights_opaque: bool,
}

/// A module's estimator: its state and the candidates, rebuilt from the space.
#[derive(Debug, Clone)]
pub struct Joint {
    pub state: JointState,
    pub candidates: Candidates,
    /// Moves since the runtime last drained them (not checkpointed: the
    /// events already recorded are in the store).
    pub events: Vec<MoveEvent>,
    /// Moves made since this process started (drained or not).
    pub moves_made: u64,
    thresholds: usize,
    cell_test: MixtureTest,
    module_test: MixtureTest,
    detector: MixtureTest,
}

impl Joint {
    pub fn new(space: &ModuleSpace, cf: &Counterfactual) -> Joint {
        let candidates = Candidates::new(space, cf);
        let thresholds = cf.gates.iter().map(|&g| space.params[g].arms.len()).max().unwrap_or(1);
        let cells = (0..Context::COUNT).map(|_| Joint::new_cell(&candidates, thresholds)).collect();
        let shape = (candidates.weights.len(), candidates.exits.len(), candidates.slots, thresholds);
        let (cell_test, module_test) = tests_for(space, cf);
        Joint {
            state: JointState {
                cells,
                counts: JointCounts::default(),
                challenge: PairedSums::default(),
                shape,
                weights_opaque: false,
            },
            candidates,
            events: Vec::new(),
            moves_made: 0,
            thresholds,
            cell_test,
            module_test,
            detector: detector_for(space, cf),
        }
    }

    /// The estimator over `space` holding `state`; `None` when the state's
    /// shape is another space's (renamed arms or strategies): it starts afresh.
    pub fn restore(space: &ModuleSpace, cf: &Counterfactual, state: JointState) -> Option<Joint> {
        let mut joint = Joint::new(space, cf);
        let fresh = &joint.state.cells[0];
        let params = space.params.len();
        let ok = state.shape == joint.state.shape
            && state.cells.len() == Context::COUNT
            && state.cells.iter().all(|c| {
                c.sums.len() == fresh.sums.len()
                    && c.opportunities.len() == fresh.opportunities.len()
                    && [&c.target, &c.leader]
                        .iter()
                        .all(|t| t.as_ref().is_none_or(|t| t.len() == params && t.iter().all(|v| v.is_finite())))
            });
        ok.then(|| {
            joint.state = state;
            joint
        })
    }

    fn index(&self, s: usize, slot: usize, k: usize) -> usize {
        (s * self.candidates.slots + slot) * self.thresholds + k
    }

    /// Adds one opportunity of `context`. Returns whether the cell's table
    /// may have changed (a refit, or a detected change).
    pub fn observe(&mut self, space: &ModuleSpace, cf: &Counterfactual, context: Context, obs: &Observation) -> bool {
        let c = context.index();
        let defaults = space.defaults();
        let slot = obs.slot;
        // Per shared candidate: the score and, when traded, x = u / p_obs.
        let (nw, ne) = (self.candidates.weights.len(), self.candidates.exits.len());
        let scores: Vec<f64> = self
            .candidates
            .weights
            .iter()
            .map(|w| match (&cf.weights, obs.confidence) {
                (Some(_), _) if !w.is_empty() => blend(w.iter().copied(), obs.features.iter().copied()),
                (_, Some(conf)) => conf,
                _ => 0.0,
            })
            .collect();
        let units: Vec<f64> = self
            .candidates
            .exits
            .iter()
            .map(|&(stop, target)| match &obs.exit {
                Some(e) => {
                    let (_, pnl) = exit_on_path(&e.path, stop, target).expect("non-empty path");
                    obs.u + e.capital_per_scale * (pnl - e.pnl_served)
                }
                None => obs.u,
            })
            .collect();
        let inv_p = if obs.traded { 1.0 / obs.p_obs } else { 0.0 };
        let gate_arms: &[f64] = obs.gate.map_or(&[][..], |g| &space.params[g].arms);
        let curvature = space.reward.objective.curvature();
        let mut changed = self.challenge(space, cf, context, obs, &defaults);
        if let Some(target) = self.state.cells[c].target.clone() {
            let (v, y) = (
                whole_value(space, cf, obs, &defaults, &target, 0.0),
                whole_value(space, cf, obs, &defaults, &defaults, 0.0),
            );
            let watch = self.state.cells[c].watch.get_or_insert_with(PairedSums::default);
            watch.push((v - y) - curvature * (v * v - y * y));
            // Page's CUSUM restart: while the target is not behind the
            // defaults since the watch began, the watch begins again, so a
            // turn is judged on the outcomes since it, not diluted by the
            // advantage before it.
            let behind = PairedSums { n: watch.n, sum: -watch.sum, sum_sq: watch.sum_sq };
            if watch.sum >= 0.0 {
                *watch = PairedSums::default();
            } else {
                let verdict = self.detector.judge(&behind, cf.margin);
                if verdict.favours {
                    self.detect_change(space, context, verdict);
                    changed = true;
                }
            }
        }
        let cell = &mut self.state.cells[c];
        cell.opportunities[slot] += 1.0;
        debug_assert_eq!((scores.len(), units.len()), (nw, ne));
        for (wi, &score) in scores.iter().enumerate() {
            for (ei, &unit) in units.iter().enumerate() {
                let s = wi * ne + ei;
                let x_all = unit * inv_p;
                let k_max = gate_arms.len().max(1);
                for k in 0..k_max {
                    let fires = gate_arms.get(k).is_none_or(|&t| score >= t);
                    if !fires {
                        continue;
                    }
                    let i = (s * self.candidates.slots + slot) * self.thresholds + k;
                    let e = &mut cell.sums[i];
                    e.x += x_all;
                    e.xx += x_all * x_all;
                    if !obs.traded && obs.p_obs <= 0.0 {
                        e.unseen += 1.0;
                    }
                }
            }
        }
        self.state.counts.used += 1;
        cell.since_refit += 1;
        if cell.since_refit >= cf.refit_every {
            cell.since_refit = 0;
            self.refit(space, cf, context);
            return true;
        }
        changed
    }

    /// Adds the opportunity to the cell's and the module's tests of the
    /// leaders against the served tables, before any refit sees it, and
    /// moves what they favour. Returns whether a served table changed.
    fn challenge(
        &mut self,
        space: &ModuleSpace,
        cf: &Counterfactual,
        context: Context,
        obs: &Observation,
        defaults: &[f64],
    ) -> bool {
        let c = context.index();
        let Some(leader) = self.state.cells[c].leader.as_deref() else { return false };
        let served = self.state.cells[c].target.as_deref().unwrap_or(defaults);
        // An unseen trade the leader would take is charged at the worst
        // case; one the served table would take, credited at the best: the
        // test never favours the leader on what nobody saw.
        let (v, y) =
            (whole_value(space, cf, obs, defaults, leader, -1.0), whole_value(space, cf, obs, defaults, served, 1.0));
        let d = (v - y) - space.reward.objective.curvature() * (v * v - y * y);
        self.state.cells[c].challenge.get_or_insert_with(PairedSums::default).push(d);
        self.state.challenge.push(d);
        let own = self.cell_test.judge(&self.state.cells[c].challenge.unwrap_or_default(), cf.margin);
        if own.favours {
            return self.promote(space, &[c], own, TestScope::Cell);
        }
        let joint = self.module_test.judge(&self.state.challenge, cf.margin);
        if joint.favours {
            let cells: Vec<usize> = (0..Context::COUNT).filter(|&c| self.state.cells[c].leader.is_some()).collect();
            return self.promote(space, &cells, joint, TestScope::Module);
        }
        false
    }

    /// Serves each of `cells`' leader, recording each move with the test
    /// that decided it; every test starts afresh against the new tables.
    fn promote(&mut self, space: &ModuleSpace, cells: &[usize], verdict: Verdict, scope: TestScope) -> bool {
        let defaults = space.defaults();
        let alpha = match scope {
            TestScope::Module => self.module_test.alpha,
            _ => self.cell_test.alpha,
        };
        let mut moved = false;
        for &c in cells {
            let context = Context::from_index(c).expect("a context index");
            let cell = &mut self.state.cells[c];
            let Some(leader) = cell.leader.take() else { continue };
            let before = cell.target.take().unwrap_or_else(|| defaults.clone());
            let kind = if before == defaults { MoveKind::Promoted } else { MoveKind::Replaced };
            // A leader that is the defaults serves them, unwatched.
            cell.target = (leader != defaults).then(|| leader.clone());
            cell.watch = None;
            if kind == MoveKind::Promoted {
                self.state.counts.promotions += 1;
            }
            tracing::debug!(module = %space.name, context = %context, ?scope, estimate = verdict.estimate,
                lower = verdict.lower, n = verdict.n, "counterfactual move");
            self.push_event(MoveEvent { context, kind, verdict, scope, alpha, before, values: leader });
            moved = true;
        }
        self.restart_tests();
        moved
    }

    /// Every served table may have changed: the cells' and the module's tests begin again.
    fn restart_tests(&mut self) {
        self.state.challenge = PairedSums::default();
        self.state.cells.iter_mut().for_each(|cell| cell.challenge = None);
    }

    /// Chooses the cell's best table: its leader, which the outcomes after
    /// this refit test against the served table ([`Joint::challenge`]).
    pub fn refit(&mut self, space: &ModuleSpace, cf: &Counterfactual, context: Context) {
        let c = context.index();
        let defaults = space.defaults();
        let session = context.session;
        let slots = self.candidates.slots;
        let slot_params: Vec<(Option<usize>, Option<usize>)> = (0..slots)
            .map(|g| {
                let strategy = cf.strategy_scoped().then_some(g);
                (cf.in_scope_of(&cf.gates, session, strategy), cf.in_scope_of(&cf.scales, session, strategy))
            })
            .collect();
        let cell = &self.state.cells[c];
        let objective = space.reward.objective;
        let charge = unseen_charge(space);
        // Per slot: the default (theta, m) arm indices and m0.
        let default_k = |g: usize| slot_params[g].0.map_or(0, |p| space.params[p].default_arm);
        let m_arms = |g: usize| -> Vec<f64> { slot_params[g].1.map_or(vec![1.0], |p| space.params[p].arms.clone()) };
        let m0 = |g: usize| slot_params[g].1.map_or(1.0, |p| defaults[p]);
        // (total value, shared candidate, per slot its threshold arm and scale)
        type Best = (f64, usize, Vec<(usize, f64)>);
        let mut best: Option<Best> = None;
        for s in 0..self.candidates.shared() {
            let mut total = 0.0;
            let mut choice = Vec::with_capacity(slots);
            for (g, &(gate, _)) in slot_params.iter().enumerate() {
                let k_n = gate.map_or(1, |p| space.params[p].arms.len());
                let (mut bv, mut bk, mut bm) = (f64::NEG_INFINITY, default_k(g), m0(g));
                // The defaults' own (theta, m) first, so ties keep them.
                let order = std::iter::once(default_k(g)).chain((0..k_n).filter(|&k| k != default_k(g)));
                for k in order {
                    let e = cell.sums[self.index(s, g, k)];
                    for m in std::iter::once(m0(g)).chain(m_arms(g)) {
                        let v = objective.total(m * e.x, m * m * e.xx)
                            - m / m0(g).max(f64::MIN_POSITIVE) * e.unseen * charge;
                        if v > bv + 1e-12 * v.abs().max(1e-12) {
                            (bv, bk, bm) = (v, k, m);
                        }
                    }
                }
                total += bv;
                choice.push((bk, bm));
            }
            let better = best.as_ref().is_none_or(|b| total > b.0 + 1e-12 * total.abs().max(1e-12));
            if better {
                best = Some((total, s, choice));
            }
        }
        let Some((_, s, choice)) = best else { return };
        let mut table = defaults.clone();
        let (wi, ei) = (s / self.candidates.exits.len(), s % self.candidates.exits.len());
        if let Some(w) = &cf.weights {
            for (&p, &v) in w.members.iter().zip(&self.candidates.weights[wi]) {
                table[p] = v;
            }
        }
        if let Some(e) = &cf.exit {
            let (stop, target) = self.candidates.exits[ei];
            if let (Some(p), Some(v)) = (e.stop_loss, stop) {
                table[p] = v;
            }
            if let (Some(p), Some(v)) = (e.profit_target, target) {
                table[p] = v;
            }
        }
        for (g, &(k, m)) in choice.iter().enumerate() {
            if let Some(p) = slot_params[g].0 {
                table[p] = space.params[p].arms[k];
            }
            if let Some(p) = slot_params[g].1 {
                table[p] = m;
            }
        }
        self.state.counts.refits += 1;
        let cell = &mut self.state.cells[c];
        // The search's pick is only a challenger: it is served once the
        // outcomes after it favour it (`Joint::challenge`), never on the
        // sums it was picked from.
        let served = cell.target.as_ref().unwrap_or(&defaults);
        let leader = (table != *served).then_some(table);
        tracing::debug!(module = %space.name, context = %context, challenger = leader.is_some(), "counterfactual refit");
        cell.leader = leader;
    }

    /// The change detector fired: the cell serves the defaults again and its
    /// evidence starts afresh, so the next promotion rests only on outcomes
    /// after the change; nothing else (exploration, the bandit) restarts.
    fn detect_change(&mut self, space: &ModuleSpace, context: Context, verdict: Verdict) {
        let c = context.index();
        let fresh = Joint::new_cell(&self.candidates, self.thresholds);
        let before = self.state.cells[c].target.clone().unwrap_or_else(|| space.defaults());
        let cell = &mut self.state.cells[c];
        *cell = CellJoint { since_refit: cell.since_refit, ..fresh };
        self.state.counts.detections += 1;
        tracing::info!(module = %space.name, context = %context, estimate = verdict.estimate, lower = verdict.lower,
            n = verdict.n, "change detected: the defaults beat the served table since it was served; back to the defaults");
        let alpha = self.detector.alpha;
        self.push_event(MoveEvent {
            context,
            kind: MoveKind::ChangeDetected,
            verdict,
            scope: TestScope::Detector,
            alpha,
            before,
            values: space.defaults(),
        });
    }

    /// The loss budget's breaker: every cell's table goes (recorded per cell
    /// that had one, with the ledger's lower bound as the estimate).
    pub fn spend_budget(&mut self, space: &ModuleSpace, cf: &Counterfactual, shortfall_lower: f64, n: f64) {
        let defaults = space.defaults();
        self.restart_tests();
        for c in 0..Context::COUNT {
            let cell = &mut self.state.cells[c];
            cell.watch = None;
            if let Some(before) = cell.target.take() {
                let context = Context::from_index(c).expect("a context index");
                let verdict = Verdict { favours: false, estimate: shortfall_lower, lower: shortfall_lower, n };
                self.push_event(MoveEvent {
                    context,
                    kind: MoveKind::BudgetSpent,
                    verdict,
                    scope: TestScope::Budget,
                    alpha: cf.alpha,
                    before,
                    values: defaults.clone(),
                });
            }
        }
    }

    fn push_event(&mut self, event: MoveEvent) {
        self.moves_made += 1;
        if self.events.len() >= MAX_PENDING_EVENTS {
            self.events.remove(0);
            tracing::warn!(kind = ?event.kind, "counterfactual move events not drained: dropped the oldest");
        }
        self.events.push(event);
    }

    fn new_cell(candidates: &Candidates, thresholds: usize) -> CellJoint {
        CellJoint {
            sums: vec![Sums::default(); candidates.shared() * candidates.slots * thresholds],
            opportunities: vec![0.0; candidates.slots],
            ..CellJoint::default()
        }
    }

    /// What the cell's determined parameters should serve: its target, else the defaults.
    pub fn target(&self, space: &ModuleSpace, context: Context) -> Vec<f64> {
        self.state.cells[context.index()].target.clone().unwrap_or_else(|| space.defaults())
    }
}

/// The promotion tests: each cell's at `alpha / 2` shared by the cells, the
/// module's joint one at `alpha / 2`. With predictable leaders each is one
/// test however many tables the refits search, so the chance that any
/// incumbent of the module moves when no table beats the served ones stays
/// at most `alpha` (issue 15's grouped test; `tests/integration/conservative.rs`
/// measures it). The mixtures' scales are fixed before any data, in
/// opportunities of the module's prior noise: [`CELL_HORIZON`] and
/// [`MODULE_HORIZON`].
fn tests_for(space: &ModuleSpace, cf: &Counterfactual) -> (MixtureTest, MixtureTest) {
    let sd = space.learning.prior_noise_sd;
    let cells = Context::COUNT as f64;
    (
        MixtureTest::new(cf.alpha / (2.0 * cells), CELL_HORIZON * sd * sd),
        MixtureTest::new(cf.alpha / 2.0, MODULE_HORIZON * sd * sd),
    )
}

/// Where a cell's test is tightest, in opportunities of the prior noise.
/// When a trade's noise is ten times the differences between values (what
/// real returns show), an edge meets a boundary of about 3.5 standard errors
/// after some `(3.5 / 0.1)^2 = 1,225` opportunities. Tight around a hundred,
/// the test met a streak of a few lucky leveraged trades in one cell of the
/// nine daily stocks (187 opportunities), whose table then lost 1.2 of
/// capital before the detector dropped it (BENCHMARKS.md, "Issue 15").
pub const CELL_HORIZON: f64 = 1_000.0;

/// Where the module's joint test is tightest: a hundred opportunities per
/// cell, summed over the cells. An edge spread over every cell reaches it
/// sooner than any cell reaches its own, and one cell's streak is diluted
/// by the others.
pub const MODULE_HORIZON: f64 = 100.0 * Context::COUNT as f64;

/// A table's whole value (its scale included) on one opportunity, divided
/// by the observation probability when taken. A trade the table would take
/// that no branch of the serving policy could (observation probability 0)
/// is unknown: it counts `sign` times the worst case the loss budget uses,
/// per unit of the table's scale relative to the default's.
fn whole_value(
    space: &ModuleSpace,
    cf: &Counterfactual,
    obs: &Observation,
    defaults: &[f64],
    values: &[f64],
    sign: f64,
) -> f64 {
    match obs.value(cf, values) {
        Some(v) if obs.traded => v / obs.p_obs,
        Some(_) => 0.0,
        None if obs.p_obs <= 0.0 => {
            let relative = obs.scale.map_or(1.0, |p| values[p] / defaults[p].max(f64::MIN_POSITIVE));
            sign * unseen_charge(space) * relative
        }
        None => 0.0,
    }
}

/// The change detector: one fixed hypothesis per cell (the served table
/// against the defaults since the watch began), so only the cells share
/// `alpha`. The watch restarts whenever the table is not behind (Page's
/// CUSUM), so a false alarm is bounded per stretch of outcomes rather than
/// over all time; one costs a fresh test at the defaults, not a loss.
fn detector_for(space: &ModuleSpace, cf: &Counterfactual) -> MixtureTest {
    let sd = space.learning.prior_noise_sd;
    MixtureTest::new(cf.alpha / Context::COUNT as f64, 100.0 * sd * sd)
}

/// The declarations with the weights group made opaque: gates score with
/// the outcome's reported confidence instead.
pub fn without_weights(cf: &Counterfactual) -> Counterfactual {
    let mut out = cf.clone();
    if let Some(w) = out.weights.take() {
        for p in w.members {
            out.roles[p] = crate::space::Role::Opaque;
        }
        if out.score == Some(crate::space::ScoreSource::Weights) {
            out.score = Some(crate::space::ScoreSource::Confidence);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::{Regime, Session, Spaces};
    use rand::{Rng, SeedableRng};
    use rand_pcg::Pcg64Mcg;

    /// Random observations of one cell; then for random tables the sums give
    /// exactly what adding up each opportunity's credited value (divided by
    /// its observation probability) gives: the value and its sum of squares.
    #[test]
    fn the_sums_are_every_tables_paired_values() {
        for module in ["stocks", "options", "crypto"] {
            let spaces = Spaces::builtin();
            let space = spaces.get(module).unwrap().clone();
            let cf = space.counterfactual.clone().unwrap();
            let mut joint = Joint::new(&space, &cf);
            let ctx = Context::new(Session::EuropePrime, Regime::Volatile);
            let mut rng = Pcg64Mcg::seed_from_u64(1);
            let mut seen = Vec::new();
            for _ in 0..300 {
                let slot = rng.random_range(0..joint.candidates.slots);
                let strategy = cf.strategy_scoped().then_some(slot);
                let gate = cf.in_scope_of(&cf.gates, ctx.session, strategy);
                let scale = cf.in_scope_of(&cf.scales, ctx.session, strategy);
                let traded = rng.random_bool(0.6);
                let path: Vec<f64> = (0..6).map(|_| rng.random_range(-1.0..2.0)).collect();
                let exit = cf.exit.as_ref().map(|_| super::super::counterfactual::ExitPath {
                    pnl_served: path[3],
                    path,
                    capital_per_scale: 0.2,
                });
                let obs = Observation {
                    slot,
                    gate,
                    scale,
                    traded,
                    features: if cf.weights.is_some() { (0..3).map(|_| rng.random()).collect() } else { vec![] },
                    confidence: Some(rng.random()),
                    u: if traded { rng.random_range(-0.05..0.05) } else { 0.0 },
                    cap: None,
                    exit,
                    p_obs: if rng.random_bool(0.5) { 1.0 } else { 0.1 },
                };
                joint.observe(&space, &cf, ctx, &obs);
                seen.push(obs);
            }
            let cell = &joint.state.cells[ctx.index()];
            let defaults = space.defaults();
            let ipv = |o: &Observation, values: &[f64]| {
                if !o.fires(&cf, values) || !o.traded {
                    0.0
                } else {
                    o.value(&cf, values).unwrap() / o.p_obs
                }
            };
            for _ in 0..50 {
                let s = rng.random_range(0..joint.candidates.shared());
                let slot = rng.random_range(0..joint.candidates.slots);
                let strategy = cf.strategy_scoped().then_some(slot);
                let gate = cf.in_scope_of(&cf.gates, ctx.session, strategy);
                let scale = cf.in_scope_of(&cf.scales, ctx.session, strategy);
                let k = gate.map_or(0, |g| rng.random_range(0..space.params[g].arms.len()));
                let mut values = defaults.clone();
                let (wi, ei) = (s / joint.candidates.exits.len(), s % joint.candidates.exits.len());
                if let Some(w) = &cf.weights {
                    for (&p, &x) in w.members.iter().zip(&joint.candidates.weights[wi]) {
                        values[p] = x;
                    }
                }
                if let Some(e) = &cf.exit {
                    let (st, tg) = joint.candidates.exits[ei];
                    values[e.stop_loss.unwrap()] = st.unwrap();
                    values[e.profit_target.unwrap()] = tg.unwrap();
                }
                if let Some(g) = gate {
                    values[g] = space.params[g].arms[k];
                }
                let m = scale.map_or(1.0, |p| space.params[p].arms[rng.random_range(0..5)]);
                if let Some(p) = scale {
                    values[p] = m;
                }
                let (mut v, mut vv) = (0.0, 0.0);
                for o in seen.iter().filter(|o| o.slot == slot) {
                    let vc = ipv(o, &values);
                    v += vc;
                    vv += vc * vc;
                }
                let e = cell.sums[joint.index(s, slot, k)];
                let tol = |a: f64| 1e-9 * (1.0 + a.abs());
                assert!((m * e.x - v).abs() < tol(v), "{module}: value {} vs {v}", m * e.x);
                assert!((m * m * e.xx - vv).abs() < tol(vv), "{module}: squares {} vs {vv}", m * m * e.xx);
            }
        }
    }

    #[test]
    fn weight_candidates_hold_the_defaults_first_and_stay_in_their_boxes() {
        let spaces = Spaces::builtin();
        for module in ["crypto", "stocks"] {
            let space = spaces.get(module).unwrap();
            let w = space.counterfactual.as_ref().unwrap().weights.clone().unwrap();
            let members: Vec<&Parameter> = w.members.iter().map(|&p| &space.params[p]).collect();
            let cands = weight_candidates(&members);
            assert_eq!(cands[0], members.iter().map(|p| p.default).collect::<Vec<_>>());
            assert!(cands.len() >= 20 && cands.len() <= 60, "{module}: {}", cands.len());
            for c in &cands {
                assert!((c.iter().sum::<f64>() - 1.0).abs() < 1e-9);
                assert!(c.iter().zip(&members).all(|(x, p)| *x >= p.lo - 1e-12 && *x <= p.hi + 1e-12));
            }
        }
    }

    /// A module with one scale parameter (0.5 to 2.0, default 0.5) and
    /// nothing else: every trade is taken and earns `m * u`.
    const SIZING: &str = include_str!("../../tests/fixtures/models-sizing.toml");

    /// The sizing module with `objective` lines added to its `[reward]`.
    fn sizing_text(objective: &str) -> String {
        SIZING.replacen("clip = 0.5\n", &format!("clip = 0.5\n{objective}\n"), 1)
    }

    fn sizing_space(objective: &str) -> ModuleSpace {
        ModuleSpace::from_toml_str(&sizing_text(objective), "models/sizing.toml").unwrap()
    }

    /// A sizing trade that was taken, returning `u` per unit of scale.
    fn taken(u: f64) -> Observation {
        Observation {
            slot: 0,
            gate: None,
            scale: Some(0),
            traded: true,
            features: vec![],
            confidence: None,
            u,
            cap: None,
            exit: None,
            p_obs: 1.0,
        }
    }

    /// The scale a cell serves after `n` trades of return `u ~ N(mu, sd)` per unit.
    fn chosen_scale(space: &ModuleSpace, mu: f64, sd: f64, n: usize, seed: u64) -> f64 {
        use rand_distr::StandardNormal;
        let cf = space.counterfactual.clone().unwrap();
        let mut joint = Joint::new(space, &cf);
        let ctx = Context::new(Session::UsPrime, Regime::Bullish);
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        for _ in 0..n {
            let u = mu + sd * rng.sample::<f64, _>(StandardNormal);
            joint.observe(space, &cf, ctx, &taken(u));
        }
        joint.target(space, ctx)[0]
    }

    /// Issue 15's risk objectives on a noisy stream with a positive edge
    /// (mean 0.05, standard deviation 0.2 per unit of scale): the mean goes
    /// to the largest scale; fractional Kelly and mean-variance go strictly
    /// inside the range, to the arm nearest their analytic optimum
    /// `f mu / E[u^2]` (= `mu / (2 lambda E[u^2])`): 1.18, arm 1.25; with a
    /// half Kelly 0.59, arm 0.5 would be the floor, so a quarter-risk case
    /// checks the other side: lambda 0.35 gives 1.68, arm 1.625.
    #[test]
    fn risk_objectives_choose_the_scale_nearest_their_optimum_and_the_mean_the_largest() {
        let (mu, sd) = (0.05, 0.2);
        let second = sd * sd + mu * mu;
        let mean = sizing_space("");
        assert_eq!(chosen_scale(&mean, mu, sd, 6_000, 1), 2.0);
        let kelly = sizing_space("objective = \"kelly\"\nkelly_fraction = 1.0");
        let optimum = mu / second;
        assert!((optimum - 1.176).abs() < 1e-3);
        assert_eq!(chosen_scale(&kelly, mu, sd, 6_000, 2), 1.25);
        let mv = sizing_space("objective = \"mean_variance\"\nrisk_aversion = 0.35");
        let optimum = mu / (2.0 * 0.35 * second);
        assert!((optimum - 1.681).abs() < 1e-3);
        assert_eq!(chosen_scale(&mv, mu, sd, 6_000, 3), 1.625);
    }

    #[test]
    fn a_setting_of_another_objective_or_an_unknown_objective_is_refused_by_name() {
        let text = sizing_text;
        let err = ModuleSpace::from_toml_str(&text("risk_aversion = 1.0"), "models/sizing.toml").unwrap_err();
        assert!(err.to_string().contains("reward.risk_aversion"), "{err}");
        let err = ModuleSpace::from_toml_str(&text("objective = \"sharpe\""), "models/sizing.toml").unwrap_err();
        assert!(err.to_string().contains("reward.objective") && err.to_string().contains("sharpe"), "{err}");
        let err =
            ModuleSpace::from_toml_str(&text("objective = \"kelly\"\nkelly_fraction = 1.5"), "m.toml").unwrap_err();
        assert!(err.to_string().contains("reward.kelly_fraction") && err.to_string().contains("1.5"), "{err}");
    }

    /// Change detection: a cell promoted on a positive edge keeps its table
    /// (and its evidence) while the edge lasts; once trades lose, the
    /// detector finds the defaults better since the promotion, serves them
    /// again and starts the evidence afresh, recording each move.
    #[test]
    fn a_turned_edge_is_detected_and_demoted_while_a_stationary_one_keeps_its_evidence() {
        use rand_distr::StandardNormal;
        let space = sizing_space("");
        let cf = space.counterfactual.clone().unwrap();
        let ctx = Context::new(Session::UsPrime, Regime::Bullish);
        let run = |flip_at: Option<usize>| {
            let mut joint = Joint::new(&space, &cf);
            let mut rng = Pcg64Mcg::seed_from_u64(9);
            let mut promoted_at = None;
            for t in 0..12_000 {
                let mu = if flip_at.is_some_and(|f| t >= f) { -0.05 } else { 0.05 };
                let u = mu + 0.2 * rng.sample::<f64, _>(StandardNormal);
                joint.observe(&space, &cf, ctx, &taken(u));
                if promoted_at.is_none() && joint.state.cells[ctx.index()].target.is_some() {
                    promoted_at = Some(t);
                }
            }
            (joint, promoted_at)
        };
        let (steady, promoted) = run(None);
        let promoted = promoted.expect("a strong edge is promoted");
        assert!(promoted < 3_000, "promoted after {promoted} trades");
        assert_eq!(steady.state.counts.detections, 0);
        let cell = &steady.state.cells[ctx.index()];
        assert_eq!(cell.target.as_ref().unwrap()[0], 2.0);
        assert_eq!(cell.opportunities[0], 12_000.0, "a stationary cell keeps every outcome");
        let (flipped, _) = run(Some(6_000));
        assert!(flipped.state.counts.detections >= 1, "{:?}", flipped.state.counts);
        let kinds: Vec<MoveKind> = flipped.events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds[0], MoveKind::Promoted);
        assert_eq!(kinds[1], MoveKind::ChangeDetected, "the detector, not the refit's cumulative test, drops it first");
        let detected = flipped.events.iter().find(|e| e.kind == MoveKind::ChangeDetected).unwrap();
        assert!(detected.verdict.lower > 0.0 && detected.before[0] == 2.0 && detected.values[0] == 0.5);
        // After the change only post-change outcomes count, and the defaults are served.
        let cell = &flipped.state.cells[ctx.index()];
        assert!(cell.opportunities[0] < 6_000.0, "{}", cell.opportunities[0]);
        assert_eq!(flipped.target(&space, ctx)[0], 0.5);
    }

    /// The promotion test judges a leader only on outcomes that arrived
    /// after a refit chose it: before the first refit nothing is tested,
    /// and each later opportunity adds exactly one paired difference.
    #[test]
    fn a_leader_is_tested_only_on_outcomes_after_it_was_chosen() {
        let space = sizing_space("");
        let cf = space.counterfactual.clone().unwrap();
        let ctx = Context::new(Session::UsPrime, Regime::Bullish);
        let mut joint = Joint::new(&space, &cf);
        let refit = cf.refit_every as usize;
        for _ in 0..refit - 1 {
            joint.observe(&space, &cf, ctx, &taken(0.05));
        }
        let cell = &joint.state.cells[ctx.index()];
        assert!(cell.leader.is_none() && cell.challenge.is_none() && joint.state.challenge.n == 0.0);
        joint.observe(&space, &cf, ctx, &taken(0.05));
        let cell = &joint.state.cells[ctx.index()];
        assert_eq!(cell.leader.as_deref(), Some(&[2.0][..]), "the refit's pick, the largest scale");
        assert!(cell.challenge.is_none(), "not judged on the sums it was picked from");
        for k in 1..=5 {
            joint.observe(&space, &cf, ctx, &taken(0.05));
            assert_eq!(joint.state.cells[ctx.index()].challenge.unwrap().n, k as f64);
            assert_eq!(joint.state.challenge.n, k as f64);
        }
    }

    /// An edge spread thinly over every cell: the module's joint test serves
    /// every cell's leader at once, before any cell's own test would.
    #[test]
    fn an_edge_spread_over_every_cell_is_found_by_the_module_test_first() {
        use rand_distr::StandardNormal;
        let space = sizing_space("");
        let cf = space.counterfactual.clone().unwrap();
        let mut joint = Joint::new(&space, &cf);
        let mut rng = Pcg64Mcg::seed_from_u64(21);
        for t in 0..60_000 {
            let ctx = Context::from_index(t % Context::COUNT).unwrap();
            let u = 0.02 + 0.2 * rng.sample::<f64, _>(StandardNormal);
            joint.observe(&space, &cf, ctx, &taken(u));
            if !joint.events.is_empty() {
                break;
            }
        }
        let first = joint.events.first().expect("the edge is found");
        assert_eq!(first.scope, TestScope::Module, "{first:?}");
        assert!((first.alpha - cf.alpha / 2.0).abs() < 1e-12);
        let moved: Vec<&MoveEvent> = joint.events.iter().filter(|e| e.scope == TestScope::Module).collect();
        assert!(moved.len() >= Context::COUNT / 2, "most cells move together: {}", moved.len());
        assert!(moved.iter().all(|e| e.kind == MoveKind::Promoted && e.values == vec![2.0] && e.verdict.lower > 0.0));
        assert!(joint.state.challenge.n == 0.0, "the tests start afresh after a move");
    }

    /// Without exploration (observation probability 0 below the incumbent
    /// gate), a lower threshold's extra trades were never seen: they are
    /// counted as unseen, not as trades that earned 0, and no lower gate is
    /// promoted on them; a higher gate, whose every trade was seen, is when
    /// the data favour it.
    #[test]
    fn trades_no_branch_could_take_are_charged_not_counted_as_zero() {
        let text = sizing_text("").replace(
            "[counterfactual]\n[[counterfactual.roles]]\nparameter = \"size.m\"\nrole = \"scale\"",
            "[[groups]]\nname = \"gate\"\n[[groups.parameters]]\nname = \"threshold\"\ndefault = 0.6\nlo = 0.4\nhi = 0.8\n\
             [counterfactual]\n[[counterfactual.roles]]\nparameter = \"gate.threshold\"\nrole = \"gate\"\nscore = \"confidence\"",
        );
        let space = ModuleSpace::from_toml_str(&text, "models/gated.toml").unwrap();
        let cf = space.counterfactual.clone().unwrap();
        let ctx = Context::new(Session::UsPrime, Regime::Bullish);
        let run = |u_of: &dyn Fn(f64) -> f64| {
            let mut joint = Joint::new(&space, &cf);
            let mut rng = Pcg64Mcg::seed_from_u64(5);
            for _ in 0..20_000 {
                let c: f64 = rng.random();
                let traded = c >= 0.6;
                let obs = Observation {
                    slot: 0,
                    gate: Some(1),
                    scale: None,
                    traded,
                    features: vec![],
                    confidence: Some(c),
                    u: if traded { u_of(c) } else { 0.0 },
                    cap: None,
                    exit: None,
                    p_obs: if traded { 1.0 } else { 0.0 },
                };
                joint.observe(&space, &cf, ctx, &obs);
            }
            let unseen: Vec<f64> =
                (0..5).map(|k| joint.state.cells[ctx.index()].sums[joint.index(0, 0, k)].unseen).collect();
            (joint.target(&space, ctx)[1], unseen)
        };
        // Every seen trade earns: the lower gates' unseen trades might lose.
        let (gate, unseen) = run(&|_| 0.01);
        assert_eq!(gate, 0.6, "no lower gate on zeros it never saw");
        // Arms 0.4 and 0.5 fire on a fifth and a tenth of the opportunities that were never seen.
        assert!((unseen[0] / 20_000.0 - 0.2).abs() < 0.02 && (unseen[1] / 20_000.0 - 0.1).abs() < 0.02, "{unseen:?}");
        assert_eq!(&unseen[2..], &[0.0, 0.0, 0.0]);
        // Seen trades below 0.7 lose: the higher gate is promoted.
        let (gate, _) = run(&|c| if c < 0.7 { -0.02 } else { 0.01 });
        assert!((gate - 0.7).abs() < 1e-9, "{gate}");
    }
}
