//! `Agent::report`: an outcome checked, settled and journaled, then handed
//! to the writer.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::space::ModuleSpace;

use super::writer::WriterMsg;
use super::{
    Accepted, Agent, AgentError, Attachment, Decision, DecisionId, Evidence, Lookup, Outcome, Settled, Tombstone,
};

impl Agent {
    /// Accepts the outcome of a pending decision and returns once it is
    /// durable. On an error nothing changes: the decision stays pending and
    /// can still be reported.
    pub fn report(&self, decision_id: &str, outcome: Outcome) -> Result<Settled, AgentError> {
        self.accept(decision_id, outcome)?.wait()
    }

    /// Settles a pending decision and queues its outcome for the journal and
    /// the writer, without waiting for the disk: the caller acknowledges the
    /// outcome only after [`Accepted::wait`] or [`Accepted::durable`] says it
    /// is durable. The writer learns it only once it is durable, too.
    pub fn accept(&self, decision_id: &str, outcome: Outcome) -> Result<Accepted, AgentError> {
        self.accept_with(decision_id, outcome, None)
    }

    /// [`Agent::accept`], journaling `attachment` with the outcome.
    pub fn accept_with(
        &self,
        decision_id: &str,
        outcome: Outcome,
        attachment: Option<Attachment>,
    ) -> Result<Accepted, AgentError> {
        let id: DecisionId = decision_id.parse()?;
        let module = self.home_of(id);
        let handle =
            self.inner.handles.get(module).ok_or_else(|| AgentError::UnknownDecision(decision_id.to_string()))?;
        let now = self.inner.clock.now();
        let tx = self.inner.tx.lock().clone().ok_or(AgentError::ShuttingDown)?;
        let settled = handle.pending.settle(id.0, now, |lookup| match lookup {
            Lookup::Open(decision) => {
                let raw = resolve_reward(&handle.space, &decision, &outcome)?;
                let clip = handle.space.reward.clip;
                if raw.abs() > clip {
                    let what = if outcome.reward.is_some() { "reward" } else { "reward from trade.return_pct" };
                    note_out_of_range(&handle.counters.clipped_rewards, &handle.space.name, what, raw, -clip, clip);
                }
                let reward = handle.space.reward.clipped(raw);
                check_evidence(&handle.space, &decision, &outcome.evidence)?;
                Ok(Settled { decision, outcome, reward, settled_at: now, attachment })
            }
            Lookup::Gone(Tombstone::Settled) => Err(AgentError::DuplicateOutcome(decision_id.to_string())),
            Lookup::Gone(Tombstone::Expired) => Err(AgentError::ExpiredDecision(decision_id.to_string())),
            Lookup::Unknown => Err(AgentError::UnknownDecision(decision_id.to_string())),
        });
        let settled = match settled {
            Ok(s) => s,
            Err(e) => {
                handle.counters.rejected_outcomes.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let mut sent = true;
        let seq = match &self.inner.journal {
            Some(journal) => {
                // Sent to the writer inside the append, so the writer sees
                // outcomes in journal order: a checkpoint that holds sequence
                // number n then holds every outcome of its module before n.
                let mut forward = |seq| {
                    let msg = WriterMsg::Outcome { module, settled: settled.clone(), seq: Some(seq) };
                    sent = tx.send(msg).is_ok();
                };
                match journal.append(&settled, &mut forward) {
                    Ok(seq) => Some(seq),
                    Err(e) => {
                        handle.pending.reopen(settled.decision.clone());
                        tracing::error!(module = %handle.space.name, decision = %id, error = %e, "journal append failed");
                        return Err(AgentError::Journal(e.to_string()));
                    }
                }
            }
            None => {
                sent = tx.send(WriterMsg::Outcome { module, settled: settled.clone(), seq: None }).is_ok();
                None
            }
        };
        if !sent {
            // A journaled outcome is learned on the next start, if it is durable.
            if seq.is_none() {
                handle.pending.reopen(settled.decision.clone());
            }
            return Err(AgentError::ShuttingDown);
        }
        handle.counters.outcomes.fetch_add(1, Ordering::Relaxed);
        Ok(Accepted { agent: self.clone(), module, settled, seq })
    }

    /// The module whose table holds `id`: the one its id names, unless the
    /// decision was restored from before a restart that reordered the modules.
    fn home_of(&self, id: DecisionId) -> usize {
        let named = id.module_index();
        let handles = &self.inner.handles;
        if handles.get(named).is_some_and(|h| h.pending.knows(id.0)) {
            return named;
        }
        handles.iter().position(|h| h.pending.knows(id.0)).unwrap_or(named)
    }
}

/// The reward to learn from, before clipping ([`crate::space::RewardConfig::raw`]),
/// refusing non-finite figures and a taken trade that carries neither a
/// reward nor a return.
pub(super) fn resolve_reward(space: &ModuleSpace, decision: &Decision, outcome: &Outcome) -> Result<f64, AgentError> {
    if let Some(r) = outcome.reward.filter(|r| !r.is_finite()) {
        return Err(AgentError::NonFiniteReward { field: "reward", value: r });
    }
    if let Some(r) = outcome.return_pct.filter(|r| !r.is_finite()) {
        return Err(AgentError::NonFiniteReward { field: "trade.return_pct", value: r });
    }
    space
        .reward
        .raw(outcome.reward, outcome.traded, outcome.return_pct)
        .ok_or_else(|| AgentError::MissingReward(decision.id.to_string()))
}

/// Counts (and, at every doubling, logs) what a module sends outside what
/// its space declares: the learner clips it, and the operator should know
/// the client may be sending, say, percent where a fraction is expected.
pub(super) fn note_out_of_range(counter: &AtomicU64, module: &str, what: &str, value: f64, lo: f64, hi: f64) {
    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
    if n.is_power_of_two() {
        tracing::warn!(module, what, value, lo, hi, times = n, "outside its declared range: clipped");
    }
}

/// Refuses evidence that is not finite or names a strategy the module does
/// not have or the decision did not.
pub(super) fn check_evidence(space: &ModuleSpace, decision: &Decision, evidence: &Evidence) -> Result<(), AgentError> {
    if let Some((field, value)) = evidence.non_finite() {
        return Err(AgentError::NonFiniteEvidence { field, value });
    }
    if let Some(reported) = &evidence.strategy {
        if declared_strategy(space, reported)?.is_some() {
            if let Some(decided) = decision.strategy.as_ref().filter(|d| *d != reported) {
                return Err(AgentError::StrategyMismatch { decided: decided.clone(), reported: reported.clone() });
            }
        }
    }
    Ok(())
}

/// `strategy` as an index of the module's declared strategies; `None` for a
/// module whose file lists none (its own name is a label, kept with the
/// trade); an error naming it when the file lists others.
pub(super) fn declared_strategy(space: &ModuleSpace, strategy: &str) -> Result<Option<usize>, AgentError> {
    match &space.counterfactual {
        Some(cf) if cf.declares_strategies() => match cf.strategy_index(strategy) {
            Some(i) => Ok(Some(i)),
            None => Err(AgentError::UnknownStrategy { module: space.name.clone(), strategy: strategy.to_string() }),
        },
        _ => Ok(None),
    }
}
