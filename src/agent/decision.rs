//! A decision and its outcome: the id, what was served and why, what the
//! module reports, and an accepted outcome on its way to the journal.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::space::{Context, ModuleSpace};

use super::{AbAssignment, Agent, AgentError, CfServing, Evidence};

/// A decision id, written as 32 hex digits: the time it was made in
/// milliseconds since the Unix epoch (48 bits, so ids sort by time), the
/// module's index (8 bits) and 72 bits from the operating system's random
/// source. An id proves its holder was given the decision: knowing others
/// does not help guess one (the seed, even when set, plays no part). The
/// module index lets an outcome find its pending table without a search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DecisionId(pub u128);

impl DecisionId {
    const RANDOM_BITS: u32 = 72;

    /// A fresh id for a decision of module `module` made at `unix_secs`.
    pub fn generate(module: usize, unix_secs: f64) -> DecisionId {
        let millis = (unix_secs.max(0.0) * 1000.0) as u128 & ((1 << 48) - 1);
        let random = rand::random::<u128>() & ((1 << Self::RANDOM_BITS) - 1);
        DecisionId((millis << 80) | ((module as u128 & 0xff) << Self::RANDOM_BITS) | random)
    }

    pub fn module_index(self) -> usize {
        ((self.0 >> Self::RANDOM_BITS) & 0xff) as usize
    }

    /// When the decision was made, to the millisecond.
    pub fn unix_secs(self) -> f64 {
        (self.0 >> 80) as f64 / 1000.0
    }
}

impl fmt::Display for DecisionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl FromStr for DecisionId {
    type Err = AgentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 {
            return Err(AgentError::UnknownDecision(s.to_string()));
        }
        u128::from_str_radix(s, 16).map(DecisionId).map_err(|_| AgentError::UnknownDecision(s.to_string()))
    }
}

impl Serialize for DecisionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DecisionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One decision, as served and as logged: enough to learn from its outcome and
/// to evaluate other policies on it later (propensities, seed, generation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub id: DecisionId,
    pub module: String,
    pub context: Context,
    /// Per declared feature, in the module's order; `None` when not sent.
    pub features: Vec<Option<f64>>,
    pub explore: bool,
    /// Per parameter, in the module's order.
    pub values: Vec<f64>,
    pub arms: Vec<usize>,
    /// Per parameter: the probability that the sampling policy chose that arm.
    pub propensities: Vec<f64>,
    /// The probability of the whole choice: the product of `propensities`.
    pub propensity: f64,
    /// Per parameter: the policy network's offset inside the arm's cell, in
    /// units of the cell's half-width, where it refined the value.
    pub offsets: Vec<Option<f64>>,
    /// Log density of the drawn offsets under the network's Gaussian policy;
    /// 0 when nothing was drawn.
    pub offset_log_density: f64,
    pub seed: u64,
    pub generation: u64,
    /// Seconds since the Unix epoch, by the agent's clock.
    pub created_at: f64,
    /// The A/B test arm that served the decision, when a test was running.
    /// `propensity` is then the probability under the test's mixture of arms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ab: Option<AbAssignment>,
    /// The trade's strategy, when the decision named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// How an exploring decision of a module with declared roles was served:
    /// both branches' values, so the trade's observation probability is
    /// known exactly, and what was explored and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counterfactual: Option<CfServing>,
    /// Features the module sent that its space does not declare: kept with
    /// the decision (the decision log shows them), never learned from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored_features: Vec<(String, f64)>,
}

impl Decision {
    /// Whether it served anything to learn rather than to earn: what the
    /// loss budget reserves room for while it is open.
    pub fn explored(&self) -> bool {
        match &self.counterfactual {
            Some(serving) => !serving.explored.is_empty(),
            None => self.explore && self.propensity < 1.0,
        }
    }
}

/// What a module reports when its trade closes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub reward: Option<f64>,
    pub traded: bool,
    pub return_pct: Option<f64>,
    /// What the counterfactuals need; absent from older journals.
    #[serde(default, skip_serializing_if = "Evidence::is_empty")]
    pub evidence: Evidence,
}

impl Outcome {
    /// An outcome with a reward and nothing else.
    pub fn reward(reward: f64) -> Outcome {
        Outcome { reward: Some(reward), traded: true, ..Outcome::default() }
    }
}

impl Decision {
    /// Whether this decision (read back from a journal, say) has the shape
    /// of `space`: a value, arm and propensity per parameter, each arm one
    /// of its parameter's, finite values, a feature slot per feature.
    pub fn fits(&self, space: &ModuleSpace) -> Result<(), String> {
        let n = space.params.len();
        let lens = [self.values.len(), self.arms.len(), self.propensities.len(), self.offsets.len()];
        if lens.iter().any(|&l| l != n) {
            return Err(format!(
                "values, arms, propensities and offsets have {lens:?} entries, the space {n} parameters"
            ));
        }
        if self.features.len() != space.features.len() {
            return Err(format!("{} feature slots, the space declares {}", self.features.len(), space.features.len()));
        }
        for (p, (&arm, &value)) in space.params.iter().zip(self.arms.iter().zip(&self.values)) {
            if arm >= p.arms.len() || !value.is_finite() {
                return Err(format!("{}: arm {arm} of {}, value {value}", p.full_name, p.arms.len()));
            }
        }
        Ok(())
    }
}

/// A decision just made, and its entry in the journal (when there is one).
#[derive(Debug, Clone)]
pub struct Decided {
    pub decision: Arc<Decision>,
    pub seq: Option<u64>,
}

/// An accepted outcome, as handed to the writer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settled {
    pub decision: Arc<Decision>,
    pub outcome: Outcome,
    /// The reward learned from, after derivation and clipping.
    pub reward: f64,
    /// Seconds since the Unix epoch, by the agent's clock, when accepted.
    #[serde(default)]
    pub settled_at: f64,
    /// What the caller keeps beside the outcome (the service: the trade
    /// record as the module sent it), journaled with it so that it is as
    /// durable as the outcome. The agent never reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
}

/// JSON the agent carries for its caller without reading it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Attachment(pub Box<serde_json::value::RawValue>);

impl PartialEq for Attachment {
    fn eq(&self, other: &Attachment) -> bool {
        self.0.get() == other.0.get()
    }
}

/// An outcome the agent has taken, not yet acknowledged: see [`Agent::accept`].
#[must_use = "an accepted outcome is acknowledged only once it is durable"]
pub struct Accepted {
    pub(super) agent: Agent,
    pub(super) module: usize,
    pub(super) settled: Settled,
    pub(super) seq: Option<u64>,
}

impl Accepted {
    pub fn settled(&self) -> &Settled {
        &self.settled
    }

    /// Blocks until the outcome is durable.
    pub fn wait(self) -> Result<Settled, AgentError> {
        let result = match (&self.agent.inner.journal, self.seq) {
            (Some(journal), Some(seq)) => journal.wait_durable(seq),
            _ => Ok(()),
        };
        self.finish(result)
    }

    /// Awaits the flush that makes the outcome durable.
    pub async fn durable(self) -> Result<Settled, AgentError> {
        let result = match (&self.agent.inner.journal, self.seq) {
            (Some(journal), Some(seq)) => journal.durable(seq).await,
            _ => Ok(()),
        };
        self.finish(result)
    }

    fn finish(self, written: std::io::Result<()>) -> Result<Settled, AgentError> {
        match written {
            Ok(()) => Ok(self.settled),
            Err(e) => {
                // Never acknowledged and never learned: it may be reported again.
                let handle = &self.agent.inner.handles[self.module];
                handle.pending.reopen(self.settled.decision.clone());
                handle.counters.outcomes.fetch_sub(1, Ordering::Relaxed);
                tracing::error!(module = %handle.space.name, decision = %self.settled.decision.id, error = %e, "journal flush failed");
                Err(AgentError::Journal(e.to_string()))
            }
        }
    }
}
