//! Safe rollout below the agent: what an A/B test is (its settings, checked
//! wherever they come from), so that the agent's serving side and the
//! runtime's lifecycle share one definition without importing evaluation.

mod settings;

pub use settings::{AbSettings, AbSettingsError, MAX_OUTCOMES, MIN_OUTCOMES, MIN_SPLIT};
