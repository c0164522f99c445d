//! The grouped promotion tests: each cell's leader against its served
//! table, the module's joint test, the change detector and the budget's
//! breaker, and the moves they make.

use crate::bandit::{MixtureTest, PairedSums, Verdict};
use crate::space::{Context, Counterfactual, ModuleSpace};

use super::{whole_value, CellJoint, Joint, MoveEvent, MoveKind, Observation, TestScope, MAX_PENDING_EVENTS};

impl Joint {
    /// Adds the opportunity to the cell's and the module's tests of the
    /// leaders against the served tables, before any refit sees it, and
    /// moves what they favour. Returns whether a served table changed.
    pub(super) fn challenge(
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

    /// The change detector fired: the cell serves the defaults again and its
    /// evidence starts afresh, so the next promotion rests only on outcomes
    /// after the change; nothing else (exploration, the bandit) restarts.
    pub(super) fn detect_change(&mut self, space: &ModuleSpace, context: Context, verdict: Verdict) {
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
        let moves = self.state.opaque.moves;
        self.state.opaque = super::OpaqueState { moves, ..super::OpaqueState::new(space.params.len()) };
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

    pub(super) fn push_event(&mut self, event: MoveEvent) {
        self.moves_made += 1;
        if self.events.len() >= MAX_PENDING_EVENTS {
            self.events.remove(0);
            tracing::warn!(kind = ?event.kind, "counterfactual move events not drained: dropped the oldest");
        }
        self.events.push(event);
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
pub(super) fn tests_for(space: &ModuleSpace, cf: &Counterfactual) -> (MixtureTest, MixtureTest) {
    let sd = space.learning.prior_noise_sd;
    let cells = Context::COUNT as f64;
    // What the opaque parameters' tests do not spend (`opaque.rs`); a
    // module without determined parameters never runs these.
    let share = 1.0 - super::opaque_share(space, cf);
    let alpha = cf.alpha * if share > 0.0 { share } else { 1.0 };
    (
        MixtureTest::new(alpha / (2.0 * cells), CELL_HORIZON * sd * sd),
        MixtureTest::new(alpha / 2.0, MODULE_HORIZON * sd * sd),
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

/// The change detector: one fixed hypothesis per cell (the served table
/// against the defaults since the watch began), so only the cells share
/// `alpha`. The watch restarts whenever the table is not behind (Page's
/// CUSUM), so a false alarm is bounded per stretch of outcomes rather than
/// over all time; one costs a fresh test at the defaults, not a loss.
pub(super) fn detector_for(space: &ModuleSpace, cf: &Counterfactual) -> MixtureTest {
    let sd = space.learning.prior_noise_sd;
    MixtureTest::new(cf.alpha / Context::COUNT as f64, 100.0 * sd * sd)
}
