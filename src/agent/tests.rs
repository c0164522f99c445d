use super::*;
use crate::space::{Regime, Session};

fn agent_with_clock(seed: u64) -> (Agent, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(1_700_000_000.0));
    let agent = Agent::new(&Spaces::builtin(), AgentOptions { seed: Some(seed), clock: clock.clone(), journal: None });
    (agent, clock)
}

fn ctx() -> Context {
    Context::new(Session::AsiaPrime, Regime::Volatile)
}

fn reward(r: f64) -> Outcome {
    Outcome { reward: Some(r), traded: true, return_pct: None, evidence: Default::default() }
}

#[test]
fn a_cold_agent_serves_exactly_the_seed_defaults() {
    let (agent, _) = agent_with_clock(1);
    for space in Spaces::builtin().iter() {
        for c in Context::all() {
            let (greedy, generation) = agent.greedy(&space.name, c).unwrap();
            assert_eq!(greedy, space.defaults(), "{} {c}", space.name);
            assert_eq!(generation, 0);
            let d = agent.decide(&space.name, c, &[], false).unwrap();
            assert_eq!(d.values, space.defaults());
            assert_eq!(d.propensity, 1.0);
            assert_eq!(d.arms, space.params.iter().map(|p| p.default_arm).collect::<Vec<_>>());
        }
    }
}

#[test]
fn explored_decisions_carry_propensities_seed_and_generation() {
    let (agent, _) = agent_with_clock(2);
    let d = agent.decide("crypto", ctx(), &[("volatility_score", 0.85)], true).unwrap();
    assert_eq!(d.values.len(), 9);
    assert!(d.propensities.iter().all(|&p| p > 0.0 && p <= 1.0), "{:?}", d.propensities);
    assert!((d.propensity - d.propensities.iter().product::<f64>()).abs() < 1e-15);
    assert_eq!(d.features, vec![None, Some(0.85), None]);
    assert_eq!(d.generation, 0);
    assert_eq!(d.id.to_string().parse::<DecisionId>().unwrap(), d.id);
}

#[test]
fn same_seed_same_calls_same_decisions() {
    let run = || {
        let (agent, _) = agent_with_clock(42);
        let mut out = Vec::new();
        for i in 0..300 {
            let c = Context::from_index(i % Context::COUNT).unwrap();
            let d = agent.decide("stocks", c, &[], true).unwrap();
            agent.report(&d.id.to_string(), reward(0.001 * (i % 7) as f64 - 0.003)).unwrap();
            agent.flush();
            out.push((d.seed, d.values.clone(), d.arms.clone(), d.propensities.clone()));
        }
        out
    };
    // Everything but the id, whose random bits come from the OS on purpose.
    assert_eq!(run(), run());
}

/// The shipped spaces with room in their loss budget from the start: with
/// the shipped 0.02, a crypto trade's worst case (2 x prior_noise_sd = 0.04)
/// does not fit, so a cold crypto module explores nothing until it has
/// earned that much over the defaults.
fn spaces_with_room() -> Spaces {
    Spaces::builtin_with(|space| space.safety.loss_budget = 10.0)
}

#[test]
fn a_cold_module_whose_budget_cannot_hold_one_trade_does_not_explore() {
    let (agent, _) = agent_with_clock(1);
    let d = agent.decide("crypto", ctx(), &[], true).unwrap();
    assert_eq!(d.values, Spaces::builtin().get("crypto").unwrap().defaults());
    assert!(!d.explored() && d.counterfactual.as_ref().unwrap().held_by_budget);
    assert!(!agent.budget("crypto").unwrap().exploring);
}

#[test]
fn different_seeds_explore_differently() {
    let spaces = spaces_with_room();
    let a = Agent::new(&spaces, AgentOptions { seed: Some(1), ..Default::default() });
    let b = Agent::new(&spaces, AgentOptions { seed: Some(2), ..Default::default() });
    let da: Vec<Vec<f64>> = (0..20).map(|_| a.decide("crypto", ctx(), &[], true).unwrap().values.clone()).collect();
    let db: Vec<Vec<f64>> = (0..20).map(|_| b.decide("crypto", ctx(), &[], true).unwrap().values.clone()).collect();
    assert_ne!(da, db);
}

#[test]
fn bad_decide_inputs_are_typed_errors() {
    let (agent, _) = agent_with_clock(3);
    assert_eq!(agent.decide("forex", ctx(), &[], true).unwrap_err(), AgentError::UnknownModule("forex".into()));
    assert_eq!(
        agent.decide("crypto", ctx(), &[("rsi", 0.3)], true).unwrap_err(),
        AgentError::UnknownFeature { module: "crypto".into(), feature: "rsi".into() }
    );
    let err = agent.decide("crypto", ctx(), &[("momentum_score", f64::NAN)], true).unwrap_err();
    assert!(matches!(err, AgentError::NonFiniteFeature { ref feature, .. } if feature == "momentum_score"), "{err}");
    assert_eq!(agent.pending_count("crypto").unwrap(), 0, "a refused decision leaves nothing pending");
    assert_eq!(agent.counters("crypto").unwrap().decisions.load(Ordering::Relaxed), 0);
}

#[test]
fn bad_reports_are_typed_errors_and_change_nothing() {
    let (agent, clock) = agent_with_clock(4);
    let d = agent.decide("options", ctx(), &[], true).unwrap();
    let id = d.id.to_string();
    let before = agent.view("options").unwrap();

    let unknown = DecisionId::generate(1, 99.0).to_string();
    assert_eq!(agent.report(&unknown, reward(0.1)).unwrap_err(), AgentError::UnknownDecision(unknown.clone()));
    assert_eq!(agent.report("not-an-id", reward(0.1)).unwrap_err(), AgentError::UnknownDecision("not-an-id".into()));
    assert_eq!(
        agent.report(&id, reward(f64::INFINITY)).unwrap_err(),
        AgentError::NonFiniteReward { field: "reward", value: f64::INFINITY }
    );
    let nan = agent
        .report(&id, Outcome { reward: None, traded: true, return_pct: Some(f64::NAN), evidence: Default::default() })
        .unwrap_err();
    assert!(matches!(nan, AgentError::NonFiniteReward { field: "trade.return_pct", .. }), "{nan}");
    assert_eq!(
        agent
            .report(&id, Outcome { reward: None, traded: true, return_pct: None, evidence: Default::default() })
            .unwrap_err(),
        AgentError::MissingReward(id.clone())
    );

    agent.flush();
    assert_eq!(agent.pending_count("options").unwrap(), 1, "still pending after every refusal");
    assert_eq!(agent.view("options").unwrap().outcomes, before.outcomes);

    // The decision is still good for a proper report, exactly once.
    let settled = agent.report(&id, reward(0.02)).unwrap();
    assert_eq!(settled.reward, 0.02);
    assert_eq!(agent.report(&id, reward(0.02)).unwrap_err(), AgentError::DuplicateOutcome(id.clone()));
    agent.flush();
    assert_eq!(agent.view("options").unwrap().outcomes, 1, "the duplicate was not learned twice");

    // Expiry.
    let late = agent.decide("options", ctx(), &[], true).unwrap().id.to_string();
    clock.advance(Spaces::builtin().get("options").unwrap().pending.ttl_secs + 1.0);
    assert_eq!(agent.report(&late, reward(0.01)).unwrap_err(), AgentError::ExpiredDecision(late.clone()));
    agent.flush();
    assert_eq!(agent.view("options").unwrap().outcomes, 1);
}

#[test]
fn skipped_trades_count_with_reward_zero_unless_given() {
    let (agent, _) = agent_with_clock(5);
    let a = agent.decide("crypto", ctx(), &[], true).unwrap().id.to_string();
    let b = agent.decide("crypto", ctx(), &[], true).unwrap().id.to_string();
    let c = agent.decide("crypto", ctx(), &[], true).unwrap().id.to_string();
    let skipped = agent
        .report(&a, Outcome { reward: None, traded: false, return_pct: None, evidence: Default::default() })
        .unwrap();
    assert_eq!(skipped.reward, 0.0);
    let given = agent
        .report(&b, Outcome { reward: Some(-0.004), traded: false, return_pct: None, evidence: Default::default() })
        .unwrap();
    assert_eq!(given.reward, -0.004);
    let derived = agent
        .report(&c, Outcome { reward: None, traded: true, return_pct: Some(0.0123), evidence: Default::default() })
        .unwrap();
    assert_eq!(derived.reward, 0.0123);
    agent.flush();
    assert_eq!(agent.view("crypto").unwrap().outcomes, 3);
}

#[test]
fn rewards_are_clipped_by_the_module_setting() {
    let (agent, _) = agent_with_clock(6);
    let id = agent.decide("crypto", ctx(), &[], true).unwrap().id.to_string();
    assert_eq!(agent.report(&id, reward(40.0)).unwrap().reward, 0.5);
    let id = agent.decide("crypto", ctx(), &[], true).unwrap().id.to_string();
    assert_eq!(agent.report(&id, reward(0.2)).unwrap().reward, 0.2);
    let counters = agent.counters("crypto").unwrap();
    assert_eq!(counters.clipped_rewards.load(Ordering::Relaxed), 1, "only the clipped one is counted");
}

#[test]
fn features_outside_their_declared_range_are_counted() {
    let (agent, _) = agent_with_clock(6);
    let feature = agent.space("crypto").unwrap().features[0].clone();
    for value in [feature.lo, feature.hi, feature.hi + 1.0, feature.lo - 1.0] {
        agent.decide("crypto", ctx(), &[(&feature.name, value)], true).unwrap();
    }
    assert_eq!(agent.counters("crypto").unwrap().features_out_of_range.load(Ordering::Relaxed), 2);
}

#[test]
fn a_full_table_refuses_new_decisions_and_keeps_every_open_one() {
    let spaces = Spaces::builtin_with(|s| {
        if s.name == "crypto" {
            s.pending.capacity = 32;
        }
    });
    let agent = Agent::new(&spaces, AgentOptions { seed: Some(1), ..Default::default() });
    let stocks = agent.decide("stocks", ctx(), &[], true).unwrap().id.to_string();
    let results: Vec<_> = (0..1000).map(|_| agent.decide("crypto", ctx(), &[], true)).collect();
    let ids: Vec<String> = results.iter().filter_map(|r| r.as_ref().ok()).map(|d| d.id.to_string()).collect();
    assert_eq!(ids.len(), 32, "exactly the capacity is open");
    let refused = results.iter().filter(|r| matches!(r, Err(AgentError::TooManyOpenDecisions { capacity: 32, .. })));
    assert_eq!(refused.count(), 1000 - 32);
    let counters = agent.counters("crypto").unwrap();
    assert_eq!(counters.refused_full.load(Ordering::Relaxed), 1000 - 32);
    assert_eq!(counters.expired.load(Ordering::Relaxed), 0, "refusals are not counted as expiries");
    // Every open decision, the oldest too, still takes its outcome; so does another module's.
    for id in &ids {
        agent.report(id, reward(0.0)).unwrap();
    }
    agent.report(&stocks, reward(0.0)).unwrap();
    assert!(agent.decide("crypto", ctx(), &[], true).is_ok(), "room again once outcomes came");
}

#[test]
fn decision_ids_are_not_predictable_from_earlier_ones() {
    let (agent, _) = agent_with_clock(2);
    let ids: Vec<u128> = (0..2000).map(|_| agent.decide("crypto", ctx(), &[], true).unwrap().id.0).collect();
    // The low 72 bits are random: no two collide, consecutive ones differ
    // in about half of them (a counter would differ in one or two), and
    // each bit is set about half the time.
    let low = |id: u128| id & ((1u128 << 72) - 1);
    let mut seen: Vec<u128> = ids.iter().map(|&id| low(id)).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), ids.len());
    let flips: f64 =
        ids.windows(2).map(|w| (low(w[0]) ^ low(w[1])).count_ones() as f64).sum::<f64>() / (ids.len() - 1) as f64;
    assert!((33.0..39.0).contains(&flips), "consecutive ids differ in {flips} of 72 random bits");
    for bit in 0..72 {
        let set = ids.iter().filter(|&&id| id >> bit & 1 == 1).count() as f64 / ids.len() as f64;
        assert!((0.42..0.58).contains(&set), "bit {bit} set in {set} of ids");
    }
    // Another agent with the same seed does not hand out the same ids.
    let (other, _) = agent_with_clock(2);
    let again = other.decide("crypto", ctx(), &[], true).unwrap().id.0;
    assert!(!ids.contains(&again));
    // And ids sort by time.
    assert!(ids.windows(2).all(|w| w[0] >> 80 <= w[1] >> 80));
}

#[test]
fn outcomes_move_only_their_own_cell_and_widen_its_trust_region() {
    let (agent, _) = agent_with_clock(8);
    let space = agent.space("crypto").unwrap().clone();
    let first = agent.view("crypto").unwrap();
    for _ in 0..200 {
        let d = agent.decide("crypto", ctx(), &[], true).unwrap();
        agent.report(&d.id.to_string(), reward(0.01)).unwrap();
    }
    agent.flush();
    let after = agent.view("crypto").unwrap();
    let c = ctx().index();
    for (p, param) in space.params.iter().enumerate() {
        let w0 = first.cells[c].params[p].trust.1 - first.cells[c].params[p].trust.0;
        let w1 = after.cells[c].params[p].trust.1 - after.cells[c].params[p].trust.0;
        assert!(w1 >= w0 - 1e-12, "{}: {w0} -> {w1}", param.full_name);
        assert!(w1 <= 2.0 * param.max_step() + 1e-12);
    }
    let other = Context::new(Session::UsPrime, Regime::Bullish).index();
    let untouched: Vec<f64> = after.cells[other].params.iter().map(|p| p.incumbent).collect();
    assert_eq!(untouched, space.defaults());
}

#[test]
fn a_restored_decision_that_no_longer_fits_its_space_is_not_reopened() {
    let (agent, _) = agent_with_clock(3);
    let good = (*agent.decide("crypto", ctx(), &[], true).unwrap()).clone();
    let mut bad_arm = good.clone();
    bad_arm.id = DecisionId::generate(0, 1.0);
    bad_arm.arms[0] = 999;
    let mut short = good.clone();
    short.id = DecisionId::generate(0, 2.0);
    short.values.pop();
    let (other, _) = agent_with_clock(4);
    assert_eq!(other.restore_pending(vec![good.clone(), bad_arm, short], &[]), 2);
    assert_eq!(other.pending_count("crypto").unwrap(), 1);
    other.report(&good.id.to_string(), reward(0.01)).unwrap();
}

/// A decision served at the defaults earned exactly what the defaults earn,
/// whatever the module then did, traded or declined: the ledger stays at 0
/// and is never charged the defaults' estimated value for them.
#[test]
fn a_declined_trade_served_at_the_defaults_costs_the_ledger_nothing() {
    let (agent, _) = agent_with_clock(8);
    let defaults = Spaces::builtin().get("crypto").unwrap().defaults();
    // Every score is 1: the defaults' gate fires on every decision.
    let features = [("momentum_score", 1.0), ("volatility_score", 1.0), ("volume_score", 1.0)];
    for i in 0..60 {
        let d = agent.decide("crypto", ctx(), &features, true).unwrap();
        assert_eq!(d.values, defaults, "a cold module holds its defaults");
        // Traded at first (the defaults' value is then known to vary), then declined.
        let outcome = if i < 30 {
            Outcome { reward: Some(if i % 2 == 0 { 0.01 } else { -0.01 }), traded: true, ..Default::default() }
        } else {
            Outcome { reward: None, traded: false, ..Default::default() }
        };
        agent.report(&d.id.to_string(), outcome).unwrap();
    }
    agent.flush();
    let budget = agent.budget("crypto").unwrap();
    assert_eq!(budget.shortfall_lower, 0.0, "{budget:?}");
    assert!(!budget.spent);
}
