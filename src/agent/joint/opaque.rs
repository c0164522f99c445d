//! Moving an opaque parameter's incumbent only on evidence: a paired
//! inverse-propensity test of each neighbouring arm against the incumbent's.
//!
//! An opaque parameter's outcome tells nothing about its other values, so
//! the only unbiased evidence is bandit feedback weighted by the decision's
//! recorded propensities. On an exploring decision whose parameter was
//! Thompson-drawn around incumbent arm `I`, the neighbour `k` (one arm down
//! or up) scores
//!
//! `x = u(r) (1[a = k] / pi_a - 1[a = I] / pi_a)`
//!
//! where `a` is the arm served, `pi_a` its recorded propensity and `u` the
//! module's objective. Every arm next to the incumbent is in the trust
//! region's reach (`learner::eligible_arms` keeps the nearest arm beyond
//! each edge), so `pi_k > 0` and `E[x] = U(k) - U(I)` whatever the other
//! parameters do and however the posteriors move: unlike the bandit's
//! advantages over a running mean, the estimand stays put while the policy
//! learns, so the evidence needs no forgetting. (While a cold cell's trust
//! region is narrower than the arm spacing, the neighbour is served at the
//! region's edge; those decisions credit it with what a smaller step earned.)
//!
//! The sums feed the same normal-mixture confidence sequence as every other
//! move (`bandit::confseq`), which self-normalises: one lucky draw at a small
//! propensity moves its variance as much as its sum, so it cannot promote
//! alone. Tests are grouped:
//! - per cell, parameter and direction, at `alpha_opaque / 2` shared by all of them;
//! - per parameter and direction over the whole module (each cell relative to
//!   its own incumbent), at `alpha_opaque / 2` shared, which moves every
//!   cell one arm at once when no cell alone has shown it;
//!
//! and `alpha_opaque` is the module's share of `alpha` for opaque moves
//! ([`opaque_share`]), so the chance that any incumbent moves without an
//! edge stays at most `alpha` in all (tests/integration/conservative.rs).
//! Parameters of a simplex group are not tested (one weight cannot move
//! alone), nor are parameters out of scope for the decision.

use serde::{Deserialize, Serialize};

use crate::bandit::{MixtureTest, PairedSums, Verdict};
use crate::space::{Context, Counterfactual, ModuleSpace, Role, Session};

use super::super::decision::Decision;
use super::super::rollout::AbArm;
use super::super::safety::trust_width;
use super::promotion::{CELL_HORIZON, MODULE_HORIZON};
use super::{Joint, MoveEvent, MoveKind, TestScope};

/// Down (one arm lower) and up (one arm higher).
const DIRECTIONS: [isize; 2] = [-1, 1];

/// How much wider an inverse-propensity difference is than one trade's
/// utility, for the mixtures' scales, fixed before any data: two arms each
/// drawn about a quarter of the time give `1/pi_k + 1/pi_I = 8`.
const IPW_INFLATION: f64 = 8.0;

/// The paired sums of every opaque test: what checkpoints keep.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpaqueState {
    /// `[context][param][direction]`, since the cell's incumbent last moved.
    pub cells: Vec<Vec<[PairedSums; 2]>>,
    /// `[param][direction]`, pooled over the cells, since the last module move.
    pub module: Vec<[PairedSums; 2]>,
    /// Incumbent moves these tests made.
    pub moves: u64,
}

impl OpaqueState {
    pub fn new(params: usize) -> OpaqueState {
        OpaqueState {
            cells: vec![vec![[PairedSums::default(); 2]; params]; Context::COUNT],
            module: vec![[PairedSums::default(); 2]; params],
            moves: 0,
        }
    }

    /// Whether the state fits a space of `params` parameters.
    pub fn fits(&self, params: usize) -> bool {
        self.cells.len() == Context::COUNT
            && self.cells.iter().all(|c| c.len() == params)
            && self.module.len() == params
            && self
                .cells
                .iter()
                .flatten()
                .chain(&self.module)
                .flatten()
                .all(|s| s.sum.is_finite() && s.sum_sq.is_finite())
    }
}

/// The parameters the opaque tests cover: opaque, and not a simplex member.
pub fn tested(space: &ModuleSpace, cf: &Counterfactual) -> Vec<usize> {
    (0..space.params.len())
        .filter(|&p| cf.roles[p] == Role::Opaque)
        .filter(|&p| !space.simplex_groups.iter().any(|g| g.members.contains(&p)))
        .collect()
}

/// The share of the module's `alpha` its opaque tests spend: half when it
/// has opaque parameters to test beside determined ones, all of it when
/// every tested parameter is opaque, none without any.
pub fn opaque_share(space: &ModuleSpace, cf: &Counterfactual) -> f64 {
    let opaque = tested(space, cf).len();
    let determined = (0..space.params.len()).filter(|&p| cf.roles[p].determined()).count();
    match (opaque, determined) {
        (0, _) => 0.0,
        (_, 0) => 1.0,
        _ => 0.5,
    }
}

/// The cells' tests and the module's, at their shares of `alpha_opaque`.
pub(super) fn opaque_tests(space: &ModuleSpace, cf: &Counterfactual) -> (MixtureTest, MixtureTest) {
    let params = tested(space, cf).len().max(1) as f64;
    let alpha = cf.alpha * opaque_share(space, cf).max(f64::MIN_POSITIVE);
    let scale = IPW_INFLATION * space.learning.prior_noise_sd.powi(2);
    let cells = Context::COUNT as f64;
    (
        MixtureTest::new(alpha / (2.0 * cells * params * 2.0), CELL_HORIZON * scale),
        MixtureTest::new(alpha / (2.0 * params * 2.0), MODULE_HORIZON * scale),
    )
}

/// The neighbour of arm `i` in direction `dir`, when the parameter has one.
fn neighbour(arms: usize, i: usize, dir: isize) -> Option<usize> {
    let k = i.checked_add_signed(dir)?;
    (k < arms).then_some(k)
}

impl Joint {
    /// Adds an exploring decision's bandit feedback to the opaque tests and
    /// moves the incumbents (`incumbents[context][param]`) they favour, by
    /// one arm and never beyond the trust region (`evidence` is each cell's
    /// outcome count). A decision counts only where it was served around
    /// the incumbent the test compares against. Returns whether any moved.
    #[allow(clippy::too_many_arguments)]
    pub fn observe_opaque(
        &mut self,
        space: &ModuleSpace,
        cf: &Counterfactual,
        d: &Decision,
        strategy: Option<usize>,
        raw_reward: f64,
        incumbents: &mut [Vec<f64>],
        evidence: &[f64],
    ) -> bool {
        let Some(serving) = &d.counterfactual else { return false };
        let challenger = d.ab.is_some_and(|a| a.arm == AbArm::Challenger);
        if !d.explore || serving.held_by_budget || challenger || self.opaque_params.is_empty() {
            return false;
        }
        let c = d.context.index();
        let u = raw_reward - space.reward.objective.curvature() * raw_reward * raw_reward;
        let mut moved = false;
        // By index: `move_opaque` borrows the estimator mutably, and a clone
        // of the list would allocate on every outcome of the writer.
        for t in 0..self.opaque_params.len() {
            let p = self.opaque_params[t];
            let param = &space.params[p];
            let incumbent = incumbents[c][p];
            let (a, pi) = (d.arms[p], d.propensities[p]);
            if !cf.in_scope(p, d.context.session, strategy)
                || serving.incumbent[p] != incumbent
                || pi.is_nan()
                || pi <= 0.0
            {
                continue;
            }
            let i = param.nearest_arm(incumbent);
            for (dir, &step) in DIRECTIONS.iter().enumerate() {
                let Some(k) = neighbour(param.arms.len(), i, step) else { continue };
                let x = if a == k {
                    u / pi
                } else if a == i {
                    -u / pi
                } else {
                    0.0
                };
                self.state.opaque.cells[c][p][dir].push(x);
                self.state.opaque.module[p][dir].push(x);
            }
            for dir in 0..DIRECTIONS.len() {
                let verdict = self.opaque_cell_test.judge(&self.state.opaque.cells[c][p][dir], cf.margin);
                if verdict.favours
                    && self.move_opaque(space, c, p, dir, verdict, TestScope::OpaqueCell, incumbents, evidence[c])
                {
                    moved = true;
                    break;
                }
            }
            for dir in 0..DIRECTIONS.len() {
                let verdict = self.opaque_module_test.judge(&self.state.opaque.module[p][dir], cf.margin);
                if !verdict.favours {
                    continue;
                }
                for (cell, &cell_evidence) in evidence.iter().enumerate().take(Context::COUNT) {
                    let session = Context::from_index(cell).expect("a context index").session;
                    if in_scope_somewhere(cf, p, session) {
                        moved |= self.move_opaque(
                            space,
                            cell,
                            p,
                            dir,
                            verdict,
                            TestScope::OpaqueModule,
                            incumbents,
                            cell_evidence,
                        );
                    }
                }
                self.state.opaque.module[p] = [PairedSums::default(); 2];
                break;
            }
        }
        moved
    }

    /// Steps cell `c`'s parameter `p` one arm in direction `dir` when the
    /// trust region reaches it, recording the move; its cell's tests start
    /// afresh around the new incumbent. Returns whether it moved.
    #[allow(clippy::too_many_arguments)]
    fn move_opaque(
        &mut self,
        space: &ModuleSpace,
        c: usize,
        p: usize,
        dir: usize,
        verdict: Verdict,
        scope: TestScope,
        incumbents: &mut [Vec<f64>],
        evidence: f64,
    ) -> bool {
        let param = &space.params[p];
        let before = incumbents[c].clone();
        let i = param.nearest_arm(before[p]);
        let Some(k) = neighbour(param.arms.len(), i, DIRECTIONS[dir]) else { return false };
        if (param.arms[k] - before[p]).abs() > trust_width(param, &space.safety, evidence) + 1e-12 * param.range() {
            return false;
        }
        incumbents[c][p] = param.arms[k];
        self.state.opaque.cells[c][p] = [PairedSums::default(); 2];
        self.state.opaque.moves += 1;
        let defaults = space.defaults();
        let kind = if before[p] == defaults[p] { MoveKind::Promoted } else { MoveKind::Replaced };
        let alpha = match scope {
            TestScope::OpaqueModule => self.opaque_module_test.alpha,
            _ => self.opaque_cell_test.alpha,
        };
        let context = Context::from_index(c).expect("a context index");
        tracing::debug!(module = %space.name, context = %context, parameter = %param.full_name, from = before[p],
            to = param.arms[k], ?scope, estimate = verdict.estimate, lower = verdict.lower, n = verdict.n, "opaque move");
        self.push_event(MoveEvent { context, kind, verdict, scope, alpha, before, values: incumbents[c].clone() });
        true
    }
}

/// Whether parameter `p` can be in scope for some decision of `session`.
fn in_scope_somewhere(cf: &Counterfactual, p: usize, session: Session) -> bool {
    match cf.scopes[p] {
        crate::space::Scope::Session(s) => s == session,
        _ => true,
    }
}
