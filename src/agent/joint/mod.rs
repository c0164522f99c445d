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

use crate::bandit::{MixtureTest, PairedSums};
use crate::space::{Context, Counterfactual, ModuleSpace};

use super::counterfactual::{blend, Observation};
use super::evidence::exit_on_path;

mod candidates;
mod moves;
mod opaque;
mod promotion;
#[cfg(test)]
mod tests;

pub use candidates::{weight_candidates, without_weights, Candidates, WEIGHT_RESOLUTION};
pub use moves::{MoveEvent, MoveKind, TestScope, MAX_PENDING_EVENTS};
use opaque::opaque_tests;
pub use opaque::{opaque_share, OpaqueState};
use promotion::{detector_for, tests_for};
pub use promotion::{CELL_HORIZON, MODULE_HORIZON};

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
    /// The opaque parameters' paired tests (`opaque.rs`); absent from
    /// checkpoints before them, which start these tests afresh.
    #[serde(default)]
    pub opaque: OpaqueState,
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
    /// The parameters the opaque tests cover, and their tests.
    opaque_params: Vec<usize>,
    opaque_cell_test: MixtureTest,
    opaque_module_test: MixtureTest,
}

impl Joint {
    pub fn new(space: &ModuleSpace, cf: &Counterfactual) -> Joint {
        let candidates = Candidates::new(space, cf);
        let thresholds = cf.gates.iter().map(|&g| space.params[g].arms.len()).max().unwrap_or(1);
        let cells = (0..Context::COUNT).map(|_| Joint::new_cell(&candidates, thresholds)).collect();
        let shape = (candidates.weights.len(), candidates.exits.len(), candidates.slots, thresholds);
        let (cell_test, module_test) = tests_for(space, cf);
        let (opaque_cell_test, opaque_module_test) = opaque_tests(space, cf);
        Joint {
            state: JointState {
                cells,
                counts: JointCounts::default(),
                challenge: PairedSums::default(),
                shape,
                weights_opaque: false,
                opaque: OpaqueState::new(space.params.len()),
            },
            candidates,
            events: Vec::new(),
            moves_made: 0,
            thresholds,
            cell_test,
            module_test,
            detector: detector_for(space, cf),
            opaque_params: opaque::tested(space, cf),
            opaque_cell_test,
            opaque_module_test,
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
            let fresh = std::mem::take(&mut joint.state.opaque);
            joint.state = state;
            if !joint.state.opaque.fits(params) {
                joint.state.opaque = fresh;
            }
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
