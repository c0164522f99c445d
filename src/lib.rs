//! paramopt: an online parameter-learning agent for trading modules.
//!
//! A module asks for its parameters in a context (session x regime, plus
//! numeric features); paramopt answers at once from contextual
//! Thompson-sampling bandits over each parameter's arms, within safety limits;
//! the module reports the trade's outcome later and paramopt learns from it.
//! See ARCHITECTURE.md for the map.

pub mod agent;
pub mod bandit;
pub mod space;
pub mod store;

pub use agent::{Agent, AgentError, AgentOptions, Decision, DecisionId, Outcome};
pub use space::{Context, ModuleSpace, Regime, Session, Spaces};
pub mod decision_log;
pub mod eval;
pub mod inspect;
pub mod ope;
pub mod plot;
pub mod policy;
pub mod report;
pub mod rollout;
pub mod runtime;
pub mod service;
pub mod supervisor;
pub mod util;
