//! What the decision log says: parameter effectiveness, the defaults'
//! off-policy estimate, and the counterfactual moves as learning events.

use crate::ope::{doubly_robust, Estimate, LoggedDecision, OpeError, TargetPolicy};
use crate::space::ModuleSpace;
use crate::store::{now_secs, rfc3339, LearningEvent, LearningEventKind, MoveEvidence, ParameterEffectiveness, Store};

use super::effectiveness::effectiveness;

use super::{Runtime, RuntimeError};

/// Decisions read per module when parameter effectiveness is recomputed.
pub const EFFECTIVENESS_WINDOW: usize = 50_000;

/// Parameter effectiveness is recomputed at most this often per module (it
/// reads the decision log), after a checkpoint and at shutdown.
pub(super) const EFFECTIVENESS_EVERY_SECS: f64 = 60.0;

/// What the newest window of a module's decision log says: its parameter
/// effectiveness rows and the seed defaults' off-policy estimate.
pub struct LogAnalysis {
    pub decisions: usize,
    pub rows: Vec<ParameterEffectiveness>,
    pub defaults: Result<Estimate, OpeError>,
}

/// Reads the newest [`EFFECTIVENESS_WINDOW`] decisions of the last 7 days
/// (streamed by the store, so memory follows the window, not the log) and
/// analyses them; `None` when there are none.
pub async fn analyse_decision_log(
    store: &dyn Store,
    space: &ModuleSpace,
    now: f64,
) -> Result<Option<LogAnalysis>, RuntimeError> {
    let records = store.list_decisions(&space.name, now - 7.0 * 86_400.0, EFFECTIVENESS_WINDOW).await?;
    let logs: Vec<LoggedDecision> = records.iter().filter_map(LoggedDecision::from_record).collect();
    drop(records);
    if logs.is_empty() {
        return Ok(None);
    }
    // Doubly robust: the agent seldom serves every default at once, so
    // importance weights alone have almost no support; the reward model
    // (additive arm effects per context) carries the estimate then.
    let defaults = doubly_robust(&logs, &TargetPolicy::defaults(space));
    let rows = effectiveness(space, &logs, &rfc3339(now));
    Ok(Some(LogAnalysis { decisions: logs.len(), rows, defaults }))
}

impl Runtime {
    /// Recomputes `module`'s rows of `parameter_effectiveness` from the
    /// decision log (the settled decisions of the last week, at most
    /// [`EFFECTIVENESS_WINDOW`]) and stores them, and the seed defaults'
    /// off-policy estimate from the same decisions. Returns the rows written.
    pub async fn refresh_effectiveness(&self, module: &str) -> Result<usize, RuntimeError> {
        let space = self.spaces.get(module).ok_or_else(|| RuntimeError::UnknownModule(module.to_string()))?.clone();
        let Some(analysis) = analyse_decision_log(&*self.store, &space, now_secs()).await? else { return Ok(0) };
        match analysis.defaults {
            Ok(e) if e.value.is_finite() && e.ci_low.is_finite() && e.ci_high.is_finite() => {
                self.status.defaults_estimates.lock().insert(module.to_string(), e);
            }
            Ok(e) => tracing::debug!(module, estimate = ?e, "no usable off-policy estimate of the defaults"),
            Err(e) => tracing::debug!(module, error = %e, "no off-policy estimate of the defaults"),
        }
        self.store.put_parameter_effectiveness(&analysis.rows).await?;
        tracing::debug!(
            module,
            decisions = analysis.decisions,
            rows = analysis.rows.len(),
            "parameter effectiveness refreshed"
        );
        Ok(analysis.rows.len())
    }

    /// Records the counterfactual estimator's moves since the last call
    /// (promotions, replacements, detected changes, a spent budget) as `ml_learning_events`,
    /// each with its evidence. Cheap when nothing moved: it reads the view.
    pub async fn record_moves(&self, module: &str) -> Result<usize, RuntimeError> {
        let made = self.agent.view(module)?.moves_made;
        if self.status.moves_recorded.lock().get(module).copied().unwrap_or(0) == made {
            return Ok(0);
        }
        let index = self.agent.module_index(module)?;
        let events = self
            .on_writer(move |learners| {
                learners[index].joint.as_mut().map(|j| std::mem::take(&mut j.events)).unwrap_or_default()
            })
            .await?;
        self.status.moves_recorded.lock().insert(module.to_string(), made);
        let space = self.spaces.get(module).ok_or_else(|| RuntimeError::UnknownModule(module.to_string()))?.clone();
        for e in &events {
            let named = |values: &[f64]| -> serde_json::Value {
                let map: serde_json::Map<String, serde_json::Value> =
                    space.params.iter().zip(values).map(|(p, v)| (p.full_name.clone(), serde_json::json!(v))).collect();
                serde_json::json!({ "context": e.context.to_string(), "values": map })
            };
            let cf = space.counterfactual.as_ref();
            let paired = e.scope.paired();
            let reason = format!(
                "{}: context {}, paired {}, estimate {:.6}, confidence-sequence lower bound {:.6}, n {}; \
                 normal-mixture confidence sequence at alpha {}, margin {}",
                e.kind.event_name(),
                e.context,
                paired,
                e.verdict.estimate,
                e.verdict.lower,
                e.verdict.n,
                e.alpha,
                cf.map_or(0.0, |c| c.margin),
            );
            tracing::info!(module, context = %e.context, kind = e.kind.event_name(), estimate = e.verdict.estimate,
                lower = e.verdict.lower, n = e.verdict.n, "counterfactual move");
            let now = now_secs();
            let event = LearningEvent {
                model_name: LearningEvent::counterfactual_model(module),
                module_name: module.to_string(),
                learning_event: LearningEventKind::Other(e.kind.event_name().to_string()),
                parameters_before: named(&e.before),
                parameters_after: named(&e.values),
                performance_impact: e.verdict.estimate,
                confidence_change: e.verdict.lower,
                timestamp: rfc3339(now),
                created_at: now,
                generation: None,
                reason: Some(reason),
                evidence: Some(MoveEvidence {
                    context: e.context.to_string(),
                    paired: paired.to_string(),
                    estimate: e.verdict.estimate,
                    lower_bound: e.verdict.lower,
                    n: e.verdict.n,
                    alpha: e.alpha,
                    margin: cf.map_or(0.0, |c| c.margin),
                }),
            };
            if let Err(err) = self.store.put_learning_event(&event).await {
                tracing::warn!(module, error = %err, "could not record the counterfactual move");
            }
        }
        Ok(events.len())
    }
}
