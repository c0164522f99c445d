//! Safe rollout below the agent: what an A/B test is (its settings, checked
//! wherever they come from) and when the evidence decides one (the verdicts
//! of A/B looks and of the rollback watch), so that the agent's serving side
//! and the runtime's lifecycle share one definition without importing
//! evaluation.

mod settings;
mod verdict;

pub use settings::{AbSettings, AbSettingsError, MAX_OUTCOMES, MIN_OUTCOMES, MIN_SPLIT};
pub use verdict::{
    ab_verdict, degraded, estimate_se, stratified, AbVerdict, Comparison, Degradation, Stratified, Watch,
};
