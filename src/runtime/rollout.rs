//! A/B tests over their whole life: start, the looks that decide them,
//! stop, and the record each leaves.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::agent::{module_seed, AbServing, AbTest};
use crate::bandit::Stats;
use crate::ope::{doubly_robust, Estimate, LoggedDecision, TargetPolicy};
use crate::rollout::{ab_verdict, AbSettings, AbVerdict, Comparison};
use crate::space::{Context, ModuleSpace, ParamKind};
use crate::store::{now_secs, rfc3339, CheckpointKind, CheckpointMeta, LearningEvent, LearningEventKind};
use crate::util::splitmix64;

use super::persist::RollbackTarget;
use super::{Runtime, RuntimeError};

/// What an A/B test's challenger serves.
#[derive(Debug, Clone, PartialEq)]
pub enum Challenger {
    /// The incumbents of a stored generation; a promotion restores its whole state.
    Generation(u64),
    /// The seed defaults.
    Defaults,
    /// Values by `group.name`, the same in every context; parameters not
    /// named keep their seed default.
    Parameters(BTreeMap<String, f64>),
}

/// How an A/B test ended.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct AbResult {
    pub test: u64,
    pub challenger: String,
    /// `promoted`, `rejected`, `inconclusive`, `stopped`, `ended by rollback`,
    /// `promotion failed` (the store refused the new generation) or
    /// `budget_spent` (the loss budget's breaker tripped while it ran).
    pub outcome: String,
    pub reason: String,
    pub champion_rewards: Stats,
    pub challenger_rewards: Stats,
    pub comparison: Option<Comparison>,
    pub ope: Option<Estimate>,
    /// The generation a promotion made.
    pub generation: Option<u64>,
    pub ended_at: f64,
}

/// What one review of a module did.
#[derive(Debug, Clone, PartialEq)]
pub enum Review {
    Nothing,
    /// An A/B test's planned look.
    AbLook(AbVerdict),
    /// The loss budget's breaker ended the A/B test: the defaults are served.
    AbEndedByBudget,
    /// The live policy fell below a reference and was rolled back.
    RolledBack {
        meta: CheckpointMeta,
        reason: String,
    },
}

/// A challenger's values from `group.name -> value`, checked against the
/// safety limits: known names, inside the range, whole numbers for integer
/// parameters, and groups of weights that still sum to 1. Parameters not
/// named keep their seed default.
pub(super) fn challenger_values(space: &ModuleSpace, given: &BTreeMap<String, f64>) -> Result<Vec<f64>, String> {
    let mut values = space.defaults();
    for (name, &v) in given {
        let p = space.param_index(name).ok_or_else(|| format!("unknown parameter {name:?}"))?;
        let param = &space.params[p];
        if !(v.is_finite() && v >= param.lo && v <= param.hi) {
            return Err(format!("{name} = {v} is outside its range [{}, {}]", param.lo, param.hi));
        }
        if param.kind == ParamKind::Integer && v.fract() != 0.0 {
            return Err(format!("{name} = {v} must be a whole number"));
        }
        values[p] = v;
    }
    for group in &space.simplex_groups {
        let sum: f64 = group.members.iter().map(|&p| values[p]).sum();
        if (sum - 1.0).abs() > 1e-6 {
            return Err(format!("the weights of group {:?} sum to {sum}, not 1", group.name));
        }
    }
    Ok(values)
}

impl Runtime {
    /// Starts an A/B test on `module`: from now on a share `settings.split`
    /// of its decisions serve `challenger`, the rest the live policy.
    pub async fn start_ab(
        &self,
        module: &str,
        challenger: Challenger,
        settings: AbSettings,
    ) -> Result<AbTest, RuntimeError> {
        let _guard = self.lock(module)?.lock().await;
        let space = self.spaces.get(module).ok_or_else(|| RuntimeError::UnknownModule(module.to_string()))?.clone();
        let view = self.agent.view(module)?;
        if let Some(test) = &view.ab {
            return Err(RuntimeError::AbTestRunning { module: module.to_string(), test: test.serving.test });
        }
        if view.budget.spent {
            let (shortfall_lower, budget) = (view.budget.shortfall_lower, view.budget.budget);
            return Err(RuntimeError::BudgetSpent { module: module.to_string(), shortfall_lower, budget });
        }
        let bad = |detail: String| RuntimeError::BadChallenger { module: module.to_string(), detail };
        let (label, generation, values) = match &challenger {
            Challenger::Generation(g) => {
                let cp = self
                    .store
                    .get_checkpoint(module, *g)
                    .await?
                    .ok_or(RuntimeError::UnknownGeneration { module: module.to_string(), generation: *g })?;
                // Refuses a generation of another parameter space, naming the difference.
                cp.to_learner(space.clone(), 0)?;
                (format!("generation {g}"), Some(*g), cp.incumbents)
            }
            Challenger::Defaults => ("defaults".to_string(), None, vec![space.defaults(); Context::COUNT]),
            Challenger::Parameters(given) => {
                let values = challenger_values(&space, given).map_err(bad)?;
                ("parameters".to_string(), None, vec![values; Context::COUNT])
            }
        };
        let arms =
            values.iter().map(|ctx| space.params.iter().zip(ctx).map(|(p, &v)| p.nearest_arm(v)).collect()).collect();
        let started_at = now_secs();
        let serving = AbServing {
            // 53 bits: exact as a Firestore integer and as a JavaScript number.
            test: splitmix64(self.seed ^ started_at.to_bits() ^ module_seed(0, module)) & ((1 << 53) - 1),
            split: settings.split,
            values,
            arms,
        };
        let test = AbTest::new(serving, label, generation, settings, started_at);
        let snapshot = test.clone();
        let index = self.agent.module_index(module)?;
        self.on_writer(move |learners| learners[index].ab = Some(test)).await?;
        tracing::info!(module, test = snapshot.serving.test, challenger = %snapshot.challenger, split = settings.split, "A/B test started");
        Ok(snapshot)
    }

    /// Ends `module`'s A/B test without a verdict; the live policy stays.
    pub async fn stop_ab(&self, module: &str) -> Result<AbResult, RuntimeError> {
        let _guard = self.lock(module)?.lock().await;
        let test = self.take_ab(module, None).await?.ok_or_else(|| RuntimeError::NoAbTest(module.to_string()))?;
        Ok(self.finish_ab(module, &test, "stopped", "stopped on request".into(), None, None, None))
    }

    /// Takes the module's test off the writer (only test `id`, when given).
    pub(super) async fn take_ab(&self, module: &str, id: Option<u64>) -> Result<Option<AbTest>, RuntimeError> {
        let index = self.agent.module_index(module)?;
        self.on_writer(move |learners| {
            let l = &mut learners[index];
            let matches = l.ab.as_ref().is_some_and(|t| id.is_none_or(|id| t.serving.test == id));
            if matches {
                l.ab.take()
            } else {
                None
            }
        })
        .await
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish_ab(
        &self,
        module: &str,
        test: &AbTest,
        outcome: &str,
        reason: String,
        comparison: Option<Comparison>,
        ope: Option<Estimate>,
        generation: Option<u64>,
    ) -> AbResult {
        let result = AbResult {
            test: test.serving.test,
            challenger: test.challenger.clone(),
            outcome: outcome.to_string(),
            reason,
            champion_rewards: test.champion_rewards,
            challenger_rewards: test.challenger_rewards,
            comparison,
            ope,
            generation,
            ended_at: now_secs(),
        };
        tracing::info!(module, test = result.test, outcome, reason = %result.reason, "A/B test ended");
        self.status.ab_results.lock().insert(module.to_string(), result.clone());
        result
    }

    /// Looks at `module`'s A/B test when a planned look is due, and watches
    /// its live policy for a fall that calls for an automatic rollback. Cheap
    /// when there is nothing to do; the checkpointer runs it every tick.
    pub async fn review(&self, module: &str) -> Result<Review, RuntimeError> {
        let view = self.agent.view(module)?;
        if let (Some(test), true) = (&view.ab, view.budget.spent) {
            // The same budget binds the test: decisions already serve the
            // defaults (`Agent::decide`); the test ends here, with its record.
            let _guard = self.lock(module)?.lock().await;
            if let Some(test) = self.take_ab(module, Some(test.serving.test)).await? {
                let reason = format!(
                    "A/B test {}: the loss budget is spent (shortfall lower bound {:.6} against a budget of {}); \
                     the defaults are served until a rollback",
                    test.serving.test, view.budget.shortfall_lower, view.budget.budget
                );
                self.finish_ab(module, &test, "budget_spent", reason, None, None, None);
                return Ok(Review::AbEndedByBudget);
            }
        }
        if let Some(test) = &view.ab {
            let due = test.settings.looks().get(test.looks_done).copied();
            let n = test.champion_rewards.n.min(test.challenger_rewards.n);
            if due.is_some_and(|due| n >= due as f64) {
                return Ok(Review::AbLook(self.look_at_ab(module, test).await?));
            }
        }
        self.watch(module, &view.rolling, &view.rolling_by_context, view.rolling_since, view.outcomes).await
    }

    pub(super) async fn look_at_ab(&self, module: &str, test: &AbTest) -> Result<AbVerdict, RuntimeError> {
        let space = self.spaces.get(module).ok_or_else(|| RuntimeError::UnknownModule(module.to_string()))?.clone();
        // Everything decided and settled so far is in the log before it is read.
        self.decision_log.flush().await;
        let serving = &test.serving;
        let expected = test.settings.max_outcomes as f64 / serving.split.min(1.0 - serving.split);
        let limit = (4.0 * expected).min(400_000.0) as usize;
        let records = self.store.list_decisions(module, test.started_at - 1.0, limit).await?;
        let logs: Vec<LoggedDecision> = records
            .iter()
            .filter(|r| r.ab.is_some_and(|a| a.test == serving.test))
            .filter_map(LoggedDecision::from_record)
            .collect();
        let target = TargetPolicy::fixed("challenger", &space, &serving.arms);
        let ope = doubly_robust(&logs, &target).ok().filter(|e| e.value.is_finite());
        let verdict = ab_verdict(
            &test.settings,
            test.looks_done,
            &test.champion_rewards,
            &test.challenger_rewards,
            ope.as_ref(),
            space.learning.prior_noise_sd,
        );
        let id = serving.test;
        tracing::info!(
            module,
            test = id,
            look = test.looks_done,
            verdict = verdict.name(),
            logged = logs.len(),
            "A/B look"
        );
        let level = test.settings.alpha;
        let summary = |c: &Comparison| {
            format!(
                "A/B test {id}: challenger ({}) mean {:.6} over {} outcomes vs champion {:.6} over {}; anytime-valid one-sided p = {:.2e} better, {:.2e} worse (level {:.2e})",
                test.challenger,
                test.challenger_rewards.mean,
                test.challenger_rewards.n,
                test.champion_rewards.mean,
                test.champion_rewards.n,
                c.p_better,
                c.p_worse,
                level
            )
        };
        let ope_text = |e: &Option<Estimate>| match e {
            Some(e) => format!(
                "; doubly robust estimate of the challenger {:.6} [{:.6}, {:.6}] over {} decisions",
                e.value, e.ci_low, e.ci_high, e.n
            ),
            None => "; no off-policy estimate".to_string(),
        };
        let _guard = self.lock(module)?.lock().await;
        match &verdict {
            AbVerdict::Wait => {}
            AbVerdict::Continue { .. } => {
                let index = self.agent.module_index(module)?;
                self.on_writer(move |learners| {
                    if let Some(t) = learners[index].ab.as_mut().filter(|t| t.serving.test == id) {
                        t.looks_done += 1;
                    }
                })
                .await?;
            }
            AbVerdict::Promote { comparison, ope } => {
                let Some(test) = self.take_ab(module, Some(id)).await? else { return Ok(AbVerdict::Wait) };
                let reason = format!("promoted: {}{}", summary(comparison), ope_text(&Some(*ope)));
                let promoted = match test.challenger_generation {
                    Some(g) => {
                        self.restore(module, RollbackTarget::Generation(g), CheckpointKind::Promotion, reason.clone())
                            .await
                    }
                    None => {
                        let values = test.serving.values.clone();
                        self.save(module, CheckpointKind::Promotion, Some(reason.clone()), Some(values)).await
                    }
                };
                let meta = match promoted {
                    Ok(meta) => meta,
                    Err(e) => {
                        // The test is over either way; say why nothing changed.
                        let why = format!("promotion failed ({e}); the live policy stays. {reason}");
                        self.finish_ab(module, &test, "promotion failed", why, Some(*comparison), Some(*ope), None);
                        return Err(e);
                    }
                };
                *self.status.promotions.lock().entry(module.to_string()).or_default() += 1;
                self.finish_ab(module, &test, "promoted", reason, Some(*comparison), Some(*ope), Some(meta.generation));
            }
            AbVerdict::Reject { comparison } | AbVerdict::Inconclusive { comparison, .. } => {
                let Some(test) = self.take_ab(module, Some(id)).await? else { return Ok(AbVerdict::Wait) };
                let (outcome, ope) = match &verdict {
                    AbVerdict::Inconclusive { ope, .. } => ("inconclusive", *ope),
                    _ => ("rejected", ope),
                };
                let reason = format!("{outcome}: {}{}", summary(comparison), ope_text(&ope));
                self.record_event(
                    module,
                    LearningEventKind::Other(format!("ab_test_{outcome}")),
                    reason.clone(),
                    comparison,
                )
                .await;
                self.finish_ab(module, &test, outcome, reason, Some(*comparison), ope, None);
            }
        }
        Ok(verdict)
    }

    /// An `ml_learning_event` that made no generation: an A/B test that ended
    /// without a promotion. Best effort, like [`Runtime::record`].
    pub(super) async fn record_event(
        &self,
        module: &str,
        kind: LearningEventKind,
        reason: String,
        comparison: &Comparison,
    ) {
        let now = now_secs();
        let event = LearningEvent {
            model_name: format!("{module}.bandit"),
            module_name: module.to_string(),
            learning_event: kind,
            parameters_before: serde_json::Value::Null,
            parameters_after: serde_json::Value::Null,
            performance_impact: comparison.difference,
            confidence_change: 0.0,
            timestamp: rfc3339(now),
            created_at: now,
            generation: None,
            reason: Some(reason),
            evidence: None,
        };
        if let Err(e) = self.store.put_learning_event(&event).await {
            tracing::warn!(module, error = %e, "could not record the learning event");
        }
    }
}
