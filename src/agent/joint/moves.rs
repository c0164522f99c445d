//! What the estimator records when a cell's served table changes, and
//! which test decided it.

use serde::Serialize;

use crate::bandit::Verdict;
use crate::space::Context;

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
    /// An opaque parameter's neighbouring arm against its incumbent's, by
    /// inverse propensity, in one cell.
    OpaqueCell,
    /// The same pooled over the module's cells, each around its own incumbent.
    OpaqueModule,
}

impl TestScope {
    /// The paired difference it tested, as `ml_learning_events` evidence names it.
    pub fn paired(self) -> &'static str {
        match self {
            TestScope::Cell => "leader - served, per opportunity of the cell",
            TestScope::Module => "leaders - served, per opportunity of the module",
            TestScope::Detector => "defaults - served, per opportunity since it was served",
            TestScope::Budget => "realised - defaults, summed over decisions (the ledger's lower bound)",
            TestScope::OpaqueCell => {
                "u(r) (1[a = k] / pi_a - 1[a = incumbent] / pi_a), per exploring decision of the cell"
            }
            TestScope::OpaqueModule => {
                "u(r) (1[a = k] / pi_a - 1[a = incumbent] / pi_a), per exploring decision of the module"
            }
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
