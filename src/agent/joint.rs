//! Joint evaluation of the determined parameters: from every trade, what
//! each (weights, exit, threshold, scale) table of a cell would have earned,
//! estimated without bias, and the table a cell serves.
//!
//! Within a cell the weights and the exit are shared by every slot (strategy),
//! while each slot has its own threshold and scale. For an opportunity with
//! observation probability `p_obs` (see `counterfactual.rs`), candidate
//! `(s, theta, m)` is worth `v = [score_s >= theta] * (traded ? u_s * m / p_obs : 0)`,
//! unbiased for its expected reward. The value is linear in `m`, so a cell
//! keeps, per shared candidate `s`, slot and threshold arm, three running sums
//! (of `x = [fires] u_s / p_obs`, of `x^2`, and of `x` times the defaults'
//! `y`); with the defaults' own sums that gives every table's paired
//! difference from the defaults, its sum and its sum of squares, exactly and
//! in O(1) memory per table. A refit every `refit_every` outcomes picks, per
//! shared candidate, each slot's best (theta, m) and keeps the best total; it
//! is served only once the anytime-valid test (`bandit::confseq`) favours it
//! over the defaults on the same opportunities.

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

/// The three running sums of one (shared candidate, slot, threshold arm).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Sums {
    pub x: f64,
    pub xx: f64,
    pub xy: f64,
}

/// A cell's evidence and the table it serves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CellJoint {
    /// `[(s * slots + slot) * thresholds + k]`.
    pub sums: Vec<Sums>,
    /// Per slot: the defaults' sums of `y` and `y^2`, and the opportunities.
    pub default_y: Vec<f64>,
    pub default_yy: Vec<f64>,
    pub opportunities: Vec<f64>,
    pub since_refit: u64,
    /// The last refit's best table against the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Per parameter: what the cell serves (its target), when it has moved off the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Vec<f64>>,
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
}

/// The estimator's state for one module: what checkpoints keep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JointState {
    pub cells: Vec<CellJoint>,
    pub counts: JointCounts,
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
    thresholds: usize,
    test: MixtureTest,
}

impl Joint {
    pub fn new(space: &ModuleSpace, cf: &Counterfactual) -> Joint {
        let candidates = Candidates::new(space, cf);
        let thresholds = cf.gates.iter().map(|&g| space.params[g].arms.len()).max().unwrap_or(1);
        let cells = (0..Context::COUNT)
            .map(|_| CellJoint {
                sums: vec![Sums::default(); candidates.shared() * candidates.slots * thresholds],
                default_y: vec![0.0; candidates.slots],
                default_yy: vec![0.0; candidates.slots],
                opportunities: vec![0.0; candidates.slots],
                ..CellJoint::default()
            })
            .collect();
        let shape = (candidates.weights.len(), candidates.exits.len(), candidates.slots, thresholds);
        Joint {
            state: JointState { cells, counts: JointCounts::default(), shape, weights_opaque: false },
            candidates,
            thresholds,
            test: test_for(space, cf),
        }
    }

    /// The estimator over `space` holding `state`; `None` when the state's
    /// shape is another space's (renamed arms or strategies): it starts afresh.
    pub fn restore(space: &ModuleSpace, cf: &Counterfactual, state: JointState) -> Option<Joint> {
        let mut joint = Joint::new(space, cf);
        let ok = state.shape == joint.state.shape
            && state.cells.len() == Context::COUNT
            && state.cells.iter().all(|c| c.sums.len() == joint.state.cells[0].sums.len());
        ok.then(|| {
            joint.state = state;
            joint
        })
    }

    fn index(&self, s: usize, slot: usize, k: usize) -> usize {
        (s * self.candidates.slots + slot) * self.thresholds + k
    }

    /// Adds one opportunity of `context`. Returns whether the cell's table was refitted.
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
        // The defaults' value per unit of their scale.
        let theta0 = obs.gate.map(|g| defaults[g]);
        let fires0 = theta0.is_none_or(|t| scores[0] >= t);
        let y = if fires0 { units[0] * inv_p } else { 0.0 };
        let cell = &mut self.state.cells[c];
        cell.default_y[slot] += y;
        cell.default_yy[slot] += y * y;
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
                    e.xy += x_all * y;
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
        false
    }

    /// Chooses the cell's best table and tests it against the defaults.
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
                    let x = cell.sums[self.index(s, g, k)].x;
                    for m in std::iter::once(m0(g)).chain(m_arms(g)) {
                        let v = m * x;
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
        let mut paired = PairedSums::default();
        for (g, &(k, m)) in choice.iter().enumerate() {
            let e = cell.sums[self.index(s, g, k)];
            let mm0 = m0(g);
            paired.n += cell.opportunities[g];
            paired.sum += m * e.x - mm0 * cell.default_y[g];
            paired.sum_sq += m * m * e.xx - 2.0 * m * mm0 * e.xy + mm0 * mm0 * cell.default_yy[g];
        }
        let verdict = self.test.judge(&paired, cf.margin);
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
        let was = self.state.cells[c].target.is_some();
        let cell = &mut self.state.cells[c];
        cell.verdict = Some(verdict);
        cell.target = verdict.favours.then_some(table);
        if verdict.favours && !was {
            self.state.counts.promotions += 1;
        }
        tracing::debug!(module = %space.name, context = %context, favours = verdict.favours,
            estimate = verdict.estimate, lower = verdict.lower, n = verdict.n, "counterfactual refit");
    }

    /// What the cell's determined parameters should serve: its target, else the defaults.
    pub fn target(&self, space: &ModuleSpace, context: Context) -> Vec<f64> {
        self.state.cells[context.index()].target.clone().unwrap_or_else(|| space.defaults())
    }
}

/// The test's mixture scale: tightest around a hundred outcomes of the
/// module's prior noise, fixed before any data.
fn test_for(space: &ModuleSpace, cf: &Counterfactual) -> MixtureTest {
    let sd = space.learning.prior_noise_sd;
    MixtureTest::new(cf.alpha, 100.0 * sd * sd)
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
    /// its observation probability) gives: the value, its paired difference
    /// from the defaults, and that difference's sum of squares.
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
                let (m, m0) = match scale {
                    Some(p) => (space.params[p].arms[rng.random_range(0..5)], defaults[p]),
                    None => (1.0, 1.0),
                };
                if let Some(p) = scale {
                    values[p] = m;
                }
                let (mut v, mut d, mut dd) = (0.0, 0.0, 0.0);
                for o in seen.iter().filter(|o| o.slot == slot) {
                    let (vc, vd) = (ipv(o, &values), ipv(o, &defaults));
                    v += vc;
                    d += vc - vd;
                    dd += (vc - vd) * (vc - vd);
                }
                let e = cell.sums[joint.index(s, slot, k)];
                let tol = |a: f64| 1e-9 * (1.0 + a.abs());
                assert!((m * e.x - v).abs() < tol(v), "{module}: value {} vs {v}", m * e.x);
                assert!((m * e.x - m0 * cell.default_y[slot] - d).abs() < tol(d), "{module}: difference");
                let sq = m * m * e.xx - 2.0 * m * m0 * e.xy + m0 * m0 * cell.default_yy[slot];
                assert!((sq - dd).abs() < tol(dd), "{module}: squares {sq} vs {dd}");
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
}
