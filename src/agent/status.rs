//! A module's safety state as the service shows it.

use serde::Serialize;

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
