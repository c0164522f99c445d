//! `decide` and `report` on the crypto module with all 12 contexts warm
//! (crypto declares roles, so every report is a counterfactual update: the
//! warm agent's decisions carry their features and their trades pass the
//! gate), `decide` with the policy network refining continuous values,
//! `decide` while an A/B test splits the traffic, and the writer's
//! throughput with every role in use (crypto, stocks with strategies,
//! options with exits on paths).
//!
//! Run: `cargo bench --bench agent`. Besides criterion's estimates it prints
//! per-call percentiles from 200,000 individually timed calls.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, BatchSize, Criterion};
mod common;

use common::{warm_agent, warm_agent_over, FEATURES};
use paramopt::agent::counterfactual::blend;
use paramopt::agent::{AbServing, AbTest, Agent, AgentOptions, Decision, Evidence, Outcome, Settled};
use paramopt::rollout::AbSettings;
use paramopt::space::ModuleSpace;
use paramopt::space::{Context, Spaces};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

/// The built-in spaces with every module's policy network switched on.
fn policy_spaces() -> Spaces {
    Spaces::builtin_with(|space| space.policy.enabled = true)
}

/// Like `warm_agent`, with the network on: it has trained on the same 6,000
/// outcomes, so decisions read a trained weight snapshot.
fn warm_policy_agent() -> Agent {
    warm_agent_over(&policy_spaces())
}

/// `warm_agent` with an A/B test running: a fifth of decisions serve the
/// defaults, and every decision's propensity is the mixture's.
fn warm_ab_agent() -> Agent {
    let agent = warm_agent();
    let i = agent.module_index("crypto").unwrap();
    agent
        .with_writer(move |learners| {
            let space = learners[i].space.clone();
            let values = vec![space.defaults(); Context::COUNT];
            let arms =
                values.iter().map(|v| space.params.iter().zip(v).map(|(p, &x)| p.nearest_arm(x)).collect()).collect();
            let serving = AbServing { test: 1, split: 0.2, values, arms };
            let settings = AbSettings::new(0.2, 200, 6400, 0.05, 0.0).unwrap();
            learners[i].ab = Some(AbTest::new(serving, "defaults".into(), None, settings, 0.0));
        })
        .unwrap();
    agent
}

fn bench(c: &mut Criterion) {
    let agent = warm_agent();
    let mut i = 0usize;
    c.bench_function("decide/crypto/explore", |b| {
        b.iter(|| {
            i += 1;
            let ctx = Context::from_index(i % 12).unwrap();
            black_box(agent.decide("crypto", ctx, &FEATURES, true).unwrap())
        })
    });
    c.bench_function("decide/crypto/greedy", |b| {
        b.iter(|| {
            i += 1;
            black_box(agent.decide("crypto", Context::from_index(i % 12).unwrap(), &FEATURES, false).unwrap())
        })
    });
    let refined = warm_policy_agent();
    c.bench_function("decide/crypto/explore+policy", |b| {
        b.iter(|| {
            i += 1;
            let ctx = Context::from_index(i % 12).unwrap();
            black_box(refined.decide("crypto", ctx, &FEATURES, true).unwrap())
        })
    });
    c.bench_function("decide/crypto/greedy+policy", |b| {
        b.iter(|| {
            i += 1;
            black_box(refined.decide("crypto", Context::from_index(i % 12).unwrap(), &FEATURES, false).unwrap())
        })
    });
    drop(refined);
    let split = warm_ab_agent();
    c.bench_function("decide/crypto/explore+ab", |b| {
        b.iter(|| {
            i += 1;
            let ctx = Context::from_index(i % 12).unwrap();
            black_box(split.decide("crypto", ctx, &FEATURES, true).unwrap())
        })
    });
    drop(split);
    c.bench_function("report/crypto", |b| {
        b.iter_batched(
            || {
                i += 1;
                agent.decide("crypto", Context::from_index(i % 12).unwrap(), &FEATURES, true).unwrap().id.to_string()
            },
            |id| {
                black_box(
                    agent
                        .report(
                            &id,
                            Outcome {
                                reward: Some(0.001),
                                traded: true,
                                return_pct: None,
                                evidence: Default::default(),
                            },
                        )
                        .unwrap(),
                )
            },
            BatchSize::SmallInput,
        )
    });
    agent.flush();

    // The writer's work per outcome: learn (the counterfactual update
    // included), move incumbents, rebuild the cell's view.
    let decisions: Vec<_> = (0..1024)
        .map(|k| agent.decide("crypto", Context::from_index(k % 12).unwrap(), &FEATURES, true).unwrap())
        .collect();
    let mut learner = agent.shutdown().into_iter().find(|l| l.space.name == "crypto").unwrap();
    let mut view = learner.view();
    let mut touched = vec![false; 12];
    c.bench_function("learn/crypto (writer, per outcome)", |b| {
        b.iter(|| {
            i += 1;
            let d = &decisions[i % decisions.len()];
            let r = 0.001 * (i % 7) as f64;
            let settled = Settled {
                decision: d.clone(),
                outcome: Outcome::reward(r),
                reward: r,
                settled_at: 0.0,
                attachment: None,
            };
            let applied = learner.apply_settled(&settled).unwrap();
            touched[d.context.index()] = true;
            view = learner.next_view(&view, &touched, applied.refresh_all || applied.policy_changed);
            touched[d.context.index()] = false;
        })
    });
}

/// A decision's outcome under the declared rule (score against the in-scope
/// gate, return = scale x u, exits on a random path), with its evidence.
fn rule_outcome(space: &ModuleSpace, d: &Decision, rng: &mut Pcg64Mcg) -> Outcome {
    let cf = space.counterfactual.as_ref().expect("the shipped modules declare roles");
    let strategy = d.strategy.as_deref().and_then(|s| cf.strategy_index(s));
    let score = match &cf.weights {
        Some(w) => blend(w.members.iter().map(|&p| d.values[p]), w.features.iter().map(|&f| d.features[f].unwrap())),
        None => rng.random(),
    };
    let traded = cf.in_scope_of(&cf.gates, d.context.session, strategy).is_none_or(|g| score >= d.values[g]);
    let m = cf.in_scope_of(&cf.scales, d.context.session, strategy).map_or(1.0, |p| d.values[p]);
    let mut evidence = Evidence { strategy: d.strategy.clone(), confidence: Some(score), ..Evidence::default() };
    if cf.exit.is_some() {
        evidence.path = (0..24).map(|_| rng.random_range(-1.0..1.5)).collect();
        evidence.applied.insert("position_sizing.max_allocation".into(), 0.24);
    }
    let reward = if traded { m * (rng.random::<f64>() - 0.45) * 0.02 } else { 0.0 };
    Outcome { reward: Some(reward), traded, return_pct: None, evidence }
}

/// Outcomes per second the writer learns with every role in use: 60,000
/// decided beforehand (a third per module, random features, contexts and
/// strategies), then reported as fast as one thread can and flushed.
fn writer_throughput() {
    let spaces = paramopt::space::Spaces::builtin();
    let agent = Agent::new(&spaces, AgentOptions { seed: Some(2), ..Default::default() });
    let mut rng = Pcg64Mcg::seed_from_u64(2);
    let mut pending = Vec::new();
    for i in 0..60_000usize {
        let space = spaces.iter().nth(i % 3).unwrap().clone();
        let cf = space.counterfactual.as_ref().unwrap();
        let ctx = Context::from_index(rng.random_range(0..12)).unwrap();
        let features: Vec<(&str, f64)> =
            space.features.iter().map(|f| (f.name.as_str(), rng.random_range(f.lo..f.hi))).collect();
        let strategy =
            (!cf.strategies.is_empty()).then(|| cf.strategies[rng.random_range(0..cf.strategies.len())].as_str());
        let d = agent.decide_for(&space.name, ctx, &features, strategy, true).unwrap();
        pending.push((d.id.to_string(), rule_outcome(&space, &d, &mut rng)));
    }
    agent.flush();
    let t = Instant::now();
    let n = pending.len();
    for (id, outcome) in pending {
        agent.report(&id, outcome).unwrap();
    }
    agent.flush();
    let secs = t.elapsed().as_secs_f64();
    println!("writer, every role in use: {n} outcomes in {:.3} s = {:.0} outcomes/s", secs, n as f64 / secs);
}

/// Times calls one by one: what a client waits for, tail included.
fn percentiles() {
    timed(warm_agent(), "");
    // The writer trains the network meanwhile (a mini-batch every
    // `train_every` outcomes), on the second core as in production.
    timed(warm_policy_agent(), "+policy");
    timed(warm_ab_agent(), "+ab");
}

fn timed(agent: Agent, label: &str) {
    let n = 200_000;
    let mut decide_ns = Vec::with_capacity(n);
    let mut report_ns = Vec::with_capacity(n);
    for i in 0..n {
        let ctx = Context::from_index(i % 12).unwrap();
        let t = Instant::now();
        let d = agent.decide("crypto", ctx, &FEATURES, true).unwrap();
        decide_ns.push(t.elapsed().as_nanos() as u64);
        let id = d.id.to_string();
        let t = Instant::now();
        agent
            .report(
                &id,
                Outcome {
                    reward: Some(0.001 * (i % 5) as f64),
                    traded: true,
                    return_pct: None,
                    evidence: Default::default(),
                },
            )
            .unwrap();
        report_ns.push(t.elapsed().as_nanos() as u64);
    }
    let t = Instant::now();
    agent.flush();
    let drain = t.elapsed();
    for (name, v) in [("decide", &mut decide_ns), ("report", &mut report_ns)] {
        v.sort_unstable();
        let q = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)] as f64 / 1000.0;
        let name = format!("{name}{label}");
        println!(
            "{name:<14} n={n} p50={:.2}us p90={:.2}us p99={:.2}us p99.9={:.2}us",
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999)
        );
    }
    println!("writer backlog{label} drained {:.1} ms after the last report", drain.as_secs_f64() * 1e3);
}

criterion_group!(benches, bench);

fn main() {
    benches();
    percentiles();
    writer_throughput();
    Criterion::default().configure_from_args().final_summary();
}
