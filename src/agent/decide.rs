//! `Agent::decide`: a decision from the current view, recorded as pending
//! (and journaled) before it is answered.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;

use crate::space::Context;
use crate::util::splitmix64;

use super::report::{declared_strategy, note_out_of_range};
use super::writer::release_exploring;
use super::{
    serve, AbArm, AbAssignment, Agent, AgentError, Decided, Decision, DecisionId, Evictions, Exploring, ModuleHandle,
};

impl Agent {
    /// Chooses every parameter of `module` for one decision in `context`.
    pub fn decide(
        &self,
        module: &str,
        context: Context,
        features: &[(&str, f64)],
        explore: bool,
    ) -> Result<Arc<Decision>, AgentError> {
        self.decide_for(module, context, features, None, explore)
    }

    /// [`Agent::decide`] for one trade of `strategy`: parameters scoped to
    /// other strategies are served at their incumbents and learn nothing
    /// from its outcome.
    pub fn decide_for(
        &self,
        module: &str,
        context: Context,
        features: &[(&str, f64)],
        strategy: Option<&str>,
        explore: bool,
    ) -> Result<Arc<Decision>, AgentError> {
        Ok(self.decide_recorded(module, context, features, strategy, explore, Vec::new())?.decision)
    }

    /// [`Agent::decide_for`], also giving the decision's journal entry, which
    /// [`Agent::durable`] awaits. The decision is open (reportable) at once;
    /// with a journal it survives a crash once that entry is durable.
    /// `ignored_features` are kept with the decision, never learned from.
    pub fn decide_recorded(
        &self,
        module: &str,
        context: Context,
        features: &[(&str, f64)],
        strategy: Option<&str>,
        explore: bool,
        ignored_features: Vec<(String, f64)>,
    ) -> Result<Decided, AgentError> {
        let (module_index, handle) = self.handle(module)?;
        let space = &handle.space;
        let strategy_index = match strategy {
            Some(s) => declared_strategy(space, s)?,
            None => None,
        };
        let mut feature_values = vec![None; space.features.len()];
        for &(name, value) in features {
            let i = space
                .feature_index(name)
                .ok_or_else(|| AgentError::UnknownFeature { module: module.to_string(), feature: name.to_string() })?;
            if !value.is_finite() {
                return Err(AgentError::NonFiniteFeature { feature: name.to_string(), value });
            }
            let declared = &space.features[i];
            if !(declared.lo..=declared.hi).contains(&value) {
                note_out_of_range(
                    &handle.counters.features_out_of_range,
                    module,
                    name,
                    value,
                    declared.lo,
                    declared.hi,
                );
            }
            feature_values[i] = Some(value);
        }

        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        let seed = splitmix64(self.inner.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        let view = handle.view.load();
        // The loss budget: with no room for one more exploring trade beside
        // the open ones, the decision serves the incumbents (and, with roles
        // declared, still teaches everything the incumbents' trade reveals).
        let mode = match explore {
            false => Exploring::No,
            true if view.budget.allows(handle.counters.open_exploring.load(Ordering::Relaxed)) => Exploring::Yes,
            true => Exploring::HeldByBudget,
        };
        let mut choice = view.cells[context.index()].choose(
            space,
            view.policy.as_deref(),
            context,
            &feature_values,
            mode == Exploring::Yes,
            &mut rng,
        );
        let mut propensity = choice.propensities.iter().product();
        let mut cf_serving = None;
        if let Some(cf) = view.cf.as_deref() {
            let (serving, p) = serve::serve(
                space,
                cf,
                &view.cells[context.index()],
                context.session,
                &feature_values,
                strategy_index,
                mode,
                &mut rng,
                &mut choice,
            );
            (cf_serving, propensity) = (serving, p);
        }
        // A spent budget serves the defaults to every decision: a challenger
        // is a departure from them like exploration, and the runtime ends the
        // test at its next review.
        let ab = view.ab.as_ref().filter(|_| !view.budget.spent).map(|test| {
            let serving = &test.serving;
            let arm = serving.assign(n);
            if arm == AbArm::Challenger {
                serving.serve_challenger(context.index(), &mut choice);
                // The challenger's values are not the serving policy the
                // observation probabilities describe.
                cf_serving = None;
            }
            propensity =
                serving.mixture_propensity(context.index(), &view.cells[context.index()], explore, &choice.arms);
            AbAssignment { test: serving.test, arm }
        });
        let now = self.inner.clock.now();
        let decision = Arc::new(Decision {
            id: DecisionId::generate(module_index, now),
            module: space.name.clone(),
            context,
            features: feature_values,
            explore,
            propensity,
            values: choice.values,
            arms: choice.arms,
            propensities: choice.propensities,
            offsets: choice.offsets,
            offset_log_density: choice.offset_log_density,
            seed,
            generation: view.generation,
            created_at: now,
            ab,
            strategy: strategy.map(str::to_string),
            counterfactual: cf_serving,
            ignored_features,
        });
        let ev = match handle.pending.insert(decision.clone(), now) {
            Ok(ev) => ev,
            Err(full) => {
                self.count_expired(handle, full.expired);
                let refused = handle.counters.refused_full.fetch_add(1, Ordering::Relaxed) + 1;
                // One line per doubling: a flood must not flood the log too.
                if refused.is_power_of_two() {
                    tracing::warn!(module, refused, capacity = full.capacity, "open decisions full: refusing new ones");
                }
                return Err(AgentError::TooManyOpenDecisions { module: module.to_string(), capacity: full.capacity });
            }
        };
        self.count_expired(handle, ev);
        let seq = match &self.inner.journal {
            Some(journal) => match journal.append_decision(&decision) {
                Ok(seq) => Some(seq),
                Err(e) => {
                    handle.pending.discard(decision.id.0);
                    tracing::error!(module, decision = %decision.id, error = %e, "journal append failed");
                    return Err(AgentError::Journal(e.to_string()));
                }
            },
            None => None,
        };
        if decision.explored() {
            handle.counters.open_exploring.fetch_add(1, Ordering::Relaxed);
        }
        if mode == Exploring::HeldByBudget {
            handle.counters.held_by_budget.fetch_add(1, Ordering::Relaxed);
        }
        handle.counters.decisions.fetch_add(1, Ordering::Relaxed);
        Ok(Decided { decision, seq })
    }

    fn count_expired(&self, handle: &ModuleHandle, ev: Evictions) {
        if ev.explored > 0 {
            release_exploring(&handle.counters, ev.explored);
        }
        if ev.expired > 0 {
            handle.counters.expired.fetch_add(ev.expired, Ordering::Relaxed);
        }
    }

    /// Waits (without blocking a thread) until the journal holds entry `seq`,
    /// a decision's or an outcome's: the service answers a decision only then,
    /// so that a restart still knows every decision it handed out.
    pub async fn durable(&self, seq: Option<u64>) -> Result<(), AgentError> {
        match (&self.inner.journal, seq) {
            (Some(journal), Some(seq)) => journal.durable(seq).await.map_err(|e| AgentError::Journal(e.to_string())),
            _ => Ok(()),
        }
    }

    /// Puts back the decisions still open when the service last stopped, and
    /// remembers the ids settled since their journal began, so their outcomes
    /// are accepted (or refused as duplicates) as if nothing had happened.
    /// Decisions of modules no longer served are skipped and counted.
    pub fn restore_pending(&self, open: Vec<Decision>, settled: &[(String, DecisionId)]) -> usize {
        let mut skipped = 0;
        for d in open {
            let Ok((_, handle)) = self.handle(&d.module) else {
                skipped += 1;
                continue;
            };
            if let Err(why) = d.fits(&handle.space) {
                // Its module's space changed since: learning from it would index the wrong arms.
                tracing::warn!(decision = %d.id, module = %d.module, why, "an open decision no longer fits its module; not reopened");
                skipped += 1;
                continue;
            }
            if d.explored() {
                handle.counters.open_exploring.fetch_add(1, Ordering::Relaxed);
            }
            handle.pending.restore(Arc::new(d));
        }
        for (module, id) in settled {
            if let Ok((_, handle)) = self.handle(module) {
                handle.pending.restore_settled(id.0);
            }
        }
        skipped
    }
}
