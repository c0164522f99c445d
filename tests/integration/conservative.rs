//! Issue 15 on streams whose truth is known: the loss budget bounds the
//! shortfall against the defaults, the grouped promotion test keeps false
//! promotions below `alpha`, and both show in the agent's safety state.

use std::collections::VecDeque;

use paramopt::agent::{Evidence, Outcome};
use paramopt::space::{Context, ModuleSpace, Regime, Session, Spaces};
use paramopt::store::LearningEventKind;
use paramopt::Agent;
use rand::Rng;
use rand_distr::StandardNormal;

use super::support::{agent_for, rng};

/// One gate on the module's reported confidence (arms 0.4 to 0.8, default
/// 0.6; prior_noise_sd 0.002): the module trades iff its confidence
/// reaches the threshold.
fn gate_module() -> ModuleSpace {
    ModuleSpace::from_toml_str(include_str!("../fixtures/models-gated.toml"), "models/gated.toml").unwrap()
}

#[derive(Debug, Default)]
struct Run {
    /// The largest shortfall of the agent's realised reward against the
    /// defaults' on the same opportunities, at any point of the stream.
    worst_shortfall: f64,
    explored: u64,
    held: u64,
    moved: bool,
}

/// `n` opportunities of the gated module, outcomes reported 8 decisions
/// late; a taken trade with confidence `c` earns `u(c, rng)`.
fn run_gate(space: &ModuleSpace, seed: u64, n: usize, u: impl Fn(f64, &mut rand_pcg::Pcg64Mcg) -> f64) -> Run {
    let agent = agent_for(space.clone(), seed);
    let mut rng = rng(seed ^ 0xfeed);
    let ctx = Context::new(Session::UsPrime, Regime::Bullish);
    let default = space.params[0].default;
    let (mut agent_sum, mut default_sum) = (0.0, 0.0);
    let mut run = Run::default();
    let mut open = VecDeque::new();
    for _ in 0..n {
        let c: f64 = rng.random();
        let d = agent.decide(&space.name, ctx, &[], true).unwrap();
        run.explored += u64::from(d.explored());
        let ret = u(c, &mut rng);
        let traded = c >= d.values[0];
        let reward = if traded { ret } else { 0.0 };
        agent_sum += reward;
        default_sum += if c >= default { ret } else { 0.0 };
        run.worst_shortfall = run.worst_shortfall.max(default_sum - agent_sum);
        let evidence = Evidence { confidence: Some(c), ..Evidence::default() };
        open.push_back((d.id.to_string(), Outcome { reward: Some(reward), traded, return_pct: None, evidence }));
        if open.len() > 8 {
            let (id, out) = open.pop_front().unwrap();
            agent.report(&id, out).unwrap();
            // Trades close hours apart: the writer has learned each one
            // before the next decision.
            agent.flush();
        }
        if agent.greedy(&space.name, ctx).unwrap().0[0] != default {
            run.moved = true;
        }
    }
    agent.flush();
    run.held = agent.budget(&space.name).unwrap().held_by_budget;
    run
}

/// Every threshold but the default is worse (trades below 0.6 lose, those
/// above earn) and one trade loses at most 0.004, within the worst case the
/// module's prior declares (2 x prior_noise_sd). In 20 seeds the agent
/// explores, the budget then holds it at its incumbents, and its realised
/// shortfall against the defaults never exceeds the shipped budget (0.02).
#[test]
fn the_loss_budget_bounds_the_shortfall_where_every_other_value_is_worse() {
    let space = gate_module();
    assert_eq!(space.safety.loss_budget, 0.02, "the shipped default");
    let mut worst: f64 = 0.0;
    let (mut explored, mut held) = (0, 0);
    for seed in 0..20 {
        let run = run_gate(&space, seed, 6_000, |c, rng| 0.01 * (c - 0.6) + rng.random_range(-0.002..0.002));
        assert!(run.worst_shortfall <= 0.02 + 1e-12, "seed {seed}: {run:?}");
        worst = worst.max(run.worst_shortfall);
        explored += run.explored;
        held += run.held;
    }
    eprintln!("worst shortfall over 20 seeds {worst:.4} (budget 0.02); {explored} exploring decisions, {held} held");
    assert!(explored >= 20 && held > 0, "the budget was exercised: {explored} explored, {held} held");
    assert!(worst > 0.005, "exploring cost something, so the bound was tested: {worst}");
}

/// With no edge anywhere (every table earns 0 in expectation), the share of
/// runs in which any incumbent moves stays below the module's `alpha`, though
/// every refit tests the best of hundreds of tables in 12 contexts.
fn false_promotion_share(spaces: &Spaces, runs: u64, n: usize) -> f64 {
    let space = spaces.get("crypto").unwrap().clone();
    let mut moved = 0;
    for seed in 0..runs {
        let agent = Agent::new(spaces, paramopt::agent::AgentOptions { seed: Some(seed), ..Default::default() });
        let mut rng = rng(seed ^ 0xa1fa);
        let mut open = VecDeque::new();
        for _ in 0..n {
            let ctx = Context::from_index(rng.random_range(0..Context::COUNT)).unwrap();
            let f: [f64; 3] = [rng.random(), rng.random(), rng.random()];
            let features = [("momentum_score", f[0]), ("volatility_score", f[1]), ("volume_score", f[2])];
            let d = agent.decide("crypto", ctx, &features, true).unwrap();
            let w = |n: &str| d.values[space.param_index(n).unwrap()];
            let (a, b, c) =
                (w("analysis_weights.momentum"), w("analysis_weights.volatility"), w("analysis_weights.volume"));
            let score = (a * f[0] + b * f[1] + c * f[2]) / (a + b + c);
            let session = ctx.session.as_str();
            let theta = w(&format!("session_confidence.{session}"));
            let m = w(&format!("position_multipliers.{}_session", session.trim_end_matches("_prime")));
            let traded = score >= theta;
            let u = 0.03 * rng.sample::<f64, _>(StandardNormal);
            let evidence = Evidence { confidence: Some(score), ..Evidence::default() };
            let reward = if traded { m * u } else { 0.0 };
            open.push_back((d.id.to_string(), Outcome { reward: Some(reward), traded, return_pct: None, evidence }));
            if open.len() > 8 {
                let (id, out) = open.pop_front().unwrap();
                agent.report(&id, out).unwrap();
            }
        }
        agent.flush();
        let i = agent.module_index("crypto").unwrap();
        let promotions = agent.with_writer(move |l| l[i].joint.as_ref().unwrap().state.counts.promotions).unwrap();
        moved += u64::from(promotions > 0);
    }
    moved as f64 / runs as f64
}

#[test]
fn without_an_edge_false_promotions_stay_below_alpha() {
    let alpha = Spaces::builtin().get("crypto").unwrap().counterfactual.as_ref().unwrap().alpha;
    let share = false_promotion_share(&Spaces::builtin(), 30, 3_000);
    eprintln!("false promotions: {share:.3} of 30 runs (alpha {alpha})");
    assert!(share <= alpha, "{share}");
}

/// The figures BENCHMARKS.md records: 200 runs of 5,000 decisions, with the
/// shipped budget (which holds a cold crypto module at its incumbents) and
/// with room to explore from the start (epsilon-permissive serving, so every
/// table's estimate carries exploration's 1/p weights).
/// `cargo test --release --test integration conservative -- --ignored --nocapture`
#[test]
#[ignore = "2 x 200 runs, about half a minute in release: the recorded false-promotion figures"]
fn false_promotions_over_200_runs() {
    let alpha = Spaces::builtin().get("crypto").unwrap().counterfactual.as_ref().unwrap().alpha;
    let shipped = false_promotion_share(&Spaces::builtin(), 200, 5_000);
    let roomy = Spaces::builtin_with(|s| s.safety.loss_budget = 10.0);
    let exploring = false_promotion_share(&roomy, 200, 5_000);
    eprintln!("false promotions: {shipped:.3} of 200 runs shipped, {exploring:.3} exploring (alpha {alpha})");
    assert!(shipped <= alpha && exploring <= alpha, "{shipped} {exploring}");
}

/// The safety state is visible: a module whose budget is spent says so, and
/// its decisions record that they were held rather than explored.
#[test]
fn a_spent_budget_shows_in_the_safety_state_and_the_decision_record() {
    let space = gate_module();
    let agent = agent_for(space.clone(), 3);
    let ctx = Context::new(Session::UsPrime, Regime::Bullish);
    assert!(agent.budget("gated").unwrap().exploring);
    // Exploring trades that lose 0.004 each, reported at once.
    let mut held_record = None;
    for _ in 0..2_000 {
        let d = agent.decide("gated", ctx, &[], true).unwrap();
        let c = 0.55;
        let traded = c >= d.values[0];
        let reward = if traded { -0.004 } else { 0.0 };
        let evidence = Evidence { confidence: Some(c), ..Evidence::default() };
        if d.counterfactual.as_ref().is_some_and(|s| s.held_by_budget) {
            held_record = Some(d.clone());
        }
        agent.report(&d.id.to_string(), Outcome { reward: Some(reward), traded, return_pct: None, evidence }).unwrap();
        agent.flush();
    }
    let status = agent.budget("gated").unwrap();
    assert!(!status.exploring, "{status:?}");
    assert!(status.remaining < status.reserve_per_open_trade, "{status:?}");
    assert!(status.shortfall_lower >= -0.02 - 0.004 - 1e-12, "{status:?}");
    assert!(status.held_by_budget > 0);
    let held = held_record.expect("a held decision");
    let serving = held.counterfactual.as_ref().unwrap();
    assert!(serving.explored.is_empty() && serving.epsilon == 0.0 && !serving.permissive);
    assert!(!held.explored());
}

/// Every counterfactual move reaches `ml_learning_events` with its evidence:
/// a scale that pays (mean 0.05, sd 0.2 per unit) is promoted from 0.5 to
/// 2.0, and the runtime records the move with the context, both tables, the
/// estimate, the lower bound and the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_is_recorded_as_a_learning_event_with_its_evidence() {
    let text = include_str!("../fixtures/models-sizing.toml");
    let mut spaces = Spaces::default();
    spaces.insert(ModuleSpace::from_toml_str(text, "models/sizing.toml").unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rt =
        paramopt::runtime::Runtime::start(spaces, super::support::explicit_checkpoints(dir.path(), 4)).await.unwrap();
    let ctx = Context::new(Session::EuropePrime, Regime::Sideways);
    let mut rng = rng(4);
    for _ in 0..3_000 {
        let d = rt.agent.decide("sizing", ctx, &[], true).unwrap();
        let u = 0.05 + 0.2 * rng.sample::<f64, _>(StandardNormal);
        let outcome =
            Outcome { reward: Some(d.values[0] * u), traded: true, return_pct: None, evidence: Evidence::default() };
        rt.agent.report(&d.id.to_string(), outcome).unwrap();
    }
    rt.agent.flush();
    assert_eq!(rt.agent.greedy("sizing", ctx).unwrap().0, vec![2.0], "promoted to the largest scale");
    let recorded = rt.record_moves("sizing").await.unwrap();
    assert!(recorded >= 1);
    assert_eq!(rt.record_moves("sizing").await.unwrap(), 0, "each move is recorded once");
    let events = rt.store.list_learning_events("sizing", 10).await.unwrap();
    let promotion = events
        .iter()
        .find(|e| e.learning_event == LearningEventKind::Other("counterfactual_promotion".into()))
        .unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(promotion.model_name, "sizing.counterfactual");
    assert_eq!(promotion.parameters_before["context"], "europe_prime/sideways");
    assert_eq!(promotion.parameters_before["values"]["size.m"], 0.5);
    assert_eq!(promotion.parameters_after["values"]["size.m"], 2.0);
    assert!(promotion.performance_impact > 0.0 && promotion.confidence_change > 0.0, "{promotion:?}");
    let evidence = promotion.evidence.as_ref().expect("the test's figures, as numbers");
    assert_eq!(evidence.context, "europe_prime/sideways");
    assert!(evidence.paired.starts_with("leader"), "the promotion test's paired difference: {evidence:?}");
    assert!(evidence.alpha > 0.0 && evidence.alpha <= 0.1, "a share of the module's alpha 0.2: {evidence:?}");
    assert!(
        evidence.lower_bound > 0.0 && evidence.estimate > evidence.lower_bound && evidence.n > 100.0,
        "{evidence:?}"
    );
    assert_eq!((evidence.estimate, evidence.lower_bound), (promotion.performance_impact, promotion.confidence_change));
    let reason = promotion.reason.as_deref().unwrap();
    for part in ["estimate", "lower bound", "n ", "normal-mixture confidence sequence at alpha"] {
        assert!(reason.contains(part), "{reason}");
    }
    rt.agent.shutdown();
}

/// The A/B test answers to the same budget (issue 15, item 5): a challenger
/// that trades below the defaults' gate and loses on those extra trades
/// spends the module's loss budget; the breaker then serves the defaults to
/// every decision, the runtime ends the test with outcome `budget_spent`,
/// and no new test starts until a rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_ends_the_ab_test_and_refuses_a_new_one() {
    let mut spaces = Spaces::default();
    spaces.insert(gate_module()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rt =
        paramopt::runtime::Runtime::start(spaces, super::support::explicit_checkpoints(dir.path(), 5)).await.unwrap();
    let low_gate = paramopt::runtime::Challenger::Parameters([("gate.threshold".to_string(), 0.4)].into());
    let settings = paramopt::rollout::AbSettings::new(0.5, 1_000, 64_000, 0.05, 0.0).unwrap();
    rt.start_ab("gated", low_gate.clone(), settings).await.unwrap();
    let ctx = Context::new(Session::UsPrime, Regime::Bullish);
    let mut rng = rng(9);
    let mut ended_at = None;
    for i in 0..20_000 {
        let d = rt.agent.decide("gated", ctx, &[], false).unwrap();
        let c: f64 = rng.random();
        let traded = c >= d.values[0];
        // Trades the defaults' gate takes break even; those below it lose.
        let reward = match (traded, c >= 0.6) {
            (false, _) => 0.0,
            (true, true) => 0.002 * rng.sample::<f64, _>(StandardNormal),
            (true, false) => -0.01 + 0.002 * rng.sample::<f64, _>(StandardNormal),
        };
        let evidence = Evidence { confidence: Some(c), ..Evidence::default() };
        rt.agent
            .report(&d.id.to_string(), Outcome { reward: Some(reward), traded, return_pct: None, evidence })
            .unwrap();
        if i % 50 == 49 {
            rt.agent.flush();
            if rt.review("gated").await.unwrap() == paramopt::runtime::Review::AbEndedByBudget {
                ended_at = Some(i);
                break;
            }
        }
    }
    let ended_at = ended_at.expect("the budget ended the test");
    let status = rt.agent.budget("gated").unwrap();
    assert!(status.spent && status.shortfall_lower < -status.budget, "{status:?}");
    let result = rt.status.last_ab_result("gated").unwrap();
    assert_eq!(result.outcome, "budget_spent", "{result:?}");
    assert!(result.reason.contains("loss budget is spent"), "{}", result.reason);
    assert!(rt.agent.view("gated").unwrap().ab.is_none());
    // Every decision now serves the defaults' gate, with no A/B arm.
    for _ in 0..50 {
        let d = rt.agent.decide("gated", ctx, &[], true).unwrap();
        assert_eq!(d.values, vec![0.6]);
        assert!(d.ab.is_none());
    }
    let refused = rt.start_ab("gated", low_gate, settings).await.unwrap_err();
    assert!(refused.to_string().contains("loss budget of module \"gated\" is spent"), "{refused}");
    eprintln!("the budget ended the A/B test after {} decisions", ended_at + 1);
    rt.agent.shutdown();
}

/// The gate of models-gated.toml beside an opaque size (arms 0.5 to 1.5,
/// default 1.0) that the declarations say nothing about.
fn opaque_module() -> ModuleSpace {
    ModuleSpace::from_toml_str(include_str!("../fixtures/models-opaque.toml"), "models/opaque.toml").unwrap()
}

#[derive(Debug, Default)]
struct OpaqueRun {
    /// The greedy size at the end of the stream.
    size: f64,
    /// Incumbent moves the opaque tests made.
    moves: u64,
    /// The agent's realised reward less the defaults' on the same trades, at the end.
    edge: f64,
}

/// `n` opportunities of the opaque module in one context, outcomes reported
/// 8 decisions late: a taken trade earns `size * (mean + 0.002 z)`, the same
/// `z` for the defaults' counterpart.
fn run_opaque(space: &ModuleSpace, seed: u64, n: usize, mean: f64) -> OpaqueRun {
    let agent = agent_for(space.clone(), seed);
    let mut rng = rng(seed ^ 0x0a9e);
    let ctx = Context::new(Session::AsiaPrime, Regime::Sideways);
    let (mut agent_sum, mut default_sum) = (0.0, 0.0);
    let mut open = VecDeque::new();
    for _ in 0..n {
        let c: f64 = rng.random();
        let z: f64 = rng.sample(StandardNormal);
        let d = agent.decide(&space.name, ctx, &[], true).unwrap();
        let traded = c >= d.values[0];
        let reward = if traded { d.values[1] * (mean + 0.002 * z) } else { 0.0 };
        agent_sum += reward;
        default_sum += if c >= 0.6 { mean + 0.002 * z } else { 0.0 };
        let evidence = Evidence { confidence: Some(c), ..Evidence::default() };
        open.push_back((d.id.to_string(), Outcome { reward: Some(reward), traded, return_pct: None, evidence }));
        if open.len() > 8 {
            let (id, out) = open.pop_front().unwrap();
            agent.report(&id, out).unwrap();
            agent.flush();
        }
    }
    agent.flush();
    let i = agent.module_index(&space.name).unwrap();
    let moves = agent.with_writer(move |l| l[i].joint.as_ref().unwrap().state.opaque.moves).unwrap();
    OpaqueRun { size: agent.greedy(&space.name, ctx).unwrap().0[1], moves, edge: agent_sum - default_sum }
}

/// An opaque size that pays (each trade earns `size` times a mean of one
/// noise sd): its paired inverse-propensity test moves the incumbent up in
/// most seeds, one arm at a time, and never down. With room to explore: under the shipped
/// budget the ledger holds this cold module at its incumbents for almost
/// the whole stream (BENCHMARKS.md, "Session 12").
#[test]
fn an_opaque_size_that_pays_moves_up_on_its_paired_test() {
    let mut space = opaque_module();
    space.safety.loss_budget = 10.0;
    let mut up = 0;
    for seed in 0..5 {
        let run = run_opaque(&space, seed, 20_000, 0.002);
        eprintln!("seed {seed}: {run:?}");
        assert!(run.size >= 1.0, "never down, the wrong way: seed {seed}: {run:?}");
        assert!(run.edge > 0.0, "seed {seed}: {run:?}");
        up += usize::from(run.size > 1.0);
    }
    // Thompson sampling favours the large sizes, so the incumbent's arm is
    // drawn rarely and its inverse-propensity term is wide: not every seed
    // has shown the edge by the end.
    assert!(up >= 3, "{up} of 5 seeds moved up");
}

/// With no edge (every size earns 0 in expectation), the share of runs in
/// which the opaque size moves at all stays below the module's `alpha`.
fn opaque_false_promotion_share(runs: u64, n: usize) -> (f64, f64) {
    let space = opaque_module();
    let alpha = space.counterfactual.as_ref().unwrap().alpha;
    let moved = (0..runs).filter(|&seed| run_opaque(&space, seed, n, 0.0).moves > 0).count();
    (moved as f64 / runs as f64, alpha)
}

#[test]
fn without_an_edge_an_opaque_incumbent_stays_put() {
    let (share, alpha) = opaque_false_promotion_share(30, 4_000);
    eprintln!("opaque false promotions: {share:.3} of 30 runs (alpha {alpha})");
    assert!(share <= alpha, "{share}");
}

/// The figure BENCHMARKS.md records: 200 runs of 6,000 decisions.
/// `cargo test --release --test integration opaque_false -- --ignored --nocapture`
#[test]
#[ignore = "200 runs, about a minute in release: the recorded opaque false-promotion figure"]
fn opaque_false_promotions_over_200_runs() {
    let (share, alpha) = opaque_false_promotion_share(200, 6_000);
    eprintln!("opaque false promotions: {share:.3} of 200 runs (alpha {alpha})");
    assert!(share <= alpha, "{share}");
}
