//! The agent's errors: each names the value that was wrong.

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
