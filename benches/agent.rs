//! `decide` and `report` on the crypto module with all 12 contexts warm,
//! `decide` with the policy network refining continuous values, and `decide`
//! while an A/B test splits the traffic.
//!
//! Run: `cargo bench --bench agent`. Besides criterion's estimates it prints
//! per-call percentiles from 200,000 individually timed calls.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, BatchSize, Criterion};
mod common;

use common::{warm_agent, warm_agent_over, FEATURES};
use paramopt::agent::{AbServing, AbTest, Agent, Outcome};
use paramopt::eval::ab::AbSettings;
use paramopt::space::{Context, Spaces};

/// The built-in spaces with every module's policy network switched on.
fn policy_spaces() -> Spaces {
    let mut spaces = Spaces::default();
    for space in Spaces::builtin().iter() {
        let mut space = (**space).clone();
        space.policy.enabled = true;
        spaces.insert(space).unwrap();
    }
    spaces
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
            |id| black_box(agent.report(&id, Outcome { reward: Some(0.001), traded: true, return_pct: None }).unwrap()),
            BatchSize::SmallInput,
        )
    });
    agent.flush();

    // The writer's work per outcome: learn, move incumbents, rebuild the cell's view.
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
            let applied = learner.apply(d, 0.001 * (i % 7) as f64).unwrap();
            touched[d.context.index()] = true;
            view = learner.next_view(&view, &touched, applied.refresh_all || applied.policy_changed);
            touched[d.context.index()] = false;
        })
    });
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
        agent.report(&id, Outcome { reward: Some(0.001 * (i % 5) as f64), traded: true, return_pct: None }).unwrap();
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
    Criterion::default().configure_from_args().final_summary();
}
