//! Statistical tests of learning, each with a fixed seed and a stated bound.

use std::sync::Arc;

use paramopt::eval::synthetic::SyntheticEnv;
use paramopt::space::{Context, Regime, Session};
use rand::Rng;

use crate::support::{agent_for, bandit_agent, drive, reward, rng, spaces};

/// Arm index of each incumbent, per context.
fn greedy_arms(agent: &paramopt::Agent, module: &str) -> Vec<Vec<usize>> {
    let space = agent.space(module).unwrap().clone();
    Context::all()
        .map(|c| {
            let (values, _) = agent.greedy(module, c).unwrap();
            values.iter().zip(&space.params).map(|(v, p)| p.nearest_arm(*v)).collect()
        })
        .collect()
}

fn optimal_arms(env: &SyntheticEnv, space: &paramopt::ModuleSpace) -> Vec<Vec<usize>> {
    Context::all()
        .map(|c| env.optimum[c.index()].iter().zip(&space.params).map(|(v, p)| p.nearest_arm(*v)).collect())
        .collect()
}

/// The best arm differs by context; after 36,000 outcomes (3,000 per context)
/// the greedy choice is the best arm for every parameter in every context.
#[test]
fn greedy_choice_converges_to_the_best_arm_in_every_context() {
    let spaces = spaces(false);
    let space = spaces.get("crypto").unwrap().clone();
    let mut env = SyntheticEnv::on_arms(&space, 11);
    env.penalty = 0.2;
    let optimal = optimal_arms(&env, &space);
    assert!(optimal.iter().any(|o| o != &optimal[0]), "the best arms differ by context");
    let agent = bandit_agent(11);
    let mut r = rng(11);
    drive(&agent, &space, &env, 36_000, 64, &mut r, |r| {
        Context::from_index(r.random_range(0..Context::COUNT)).unwrap()
    });
    let greedy = greedy_arms(&agent, "crypto");
    for c in Context::all() {
        assert_eq!(greedy[c.index()], optimal[c.index()], "context {c}");
    }
}

/// The best arms change mid-stream. With the module's discount (0.9993), the
/// greedy choice is the new best arm in every parameter within 4,000 outcomes
/// of the switch, and stays there.
#[test]
fn follows_a_switch_of_the_best_arm() {
    let spaces = spaces(false);
    let space = spaces.get("crypto").unwrap().clone();
    let ctx = Context::new(Session::EuropePrime, Regime::Sideways);
    let mut env = SyntheticEnv::on_arms(&space, 5);
    env.penalty = 0.2;
    let agent = bandit_agent(5);
    let mut r = rng(5);
    drive(&agent, &space, &env, 3_000, 16, &mut r, |_| ctx);
    let before = greedy_arms(&agent, "crypto")[ctx.index()].clone();
    assert_eq!(before, optimal_arms(&env, &space)[ctx.index()], "learned the first regime");

    let mut switched = env.clone();
    // Every parameter's optimum moves to a different arm.
    switched.optimum[ctx.index()] = space
        .params
        .iter()
        .zip(&env.optimum[ctx.index()])
        .map(|(p, &v)| if p.simplex { v } else { p.arms[(p.nearest_arm(v) + 2) % p.arms.len()] })
        .collect();
    let group = &space.simplex_groups[0].members;
    let (a, b) = (group[0], group[1]);
    let w = &mut switched.optimum[ctx.index()];
    (w[a], w[b]) = if (w[a] - 0.4).abs() < 1e-9 && (w[b] - 0.3).abs() < 1e-9 { (0.4, 0.45) } else { (0.4, 0.3) };
    w[group[2]] = 1.0 - w[a] - w[b];
    let target = optimal_arms(&switched, &space)[ctx.index()].clone();
    assert_ne!(target, before);

    let mut reached_at = None;
    for step in 1..=40 {
        drive(&agent, &space, &switched, 100, 16, &mut r, |_| ctx);
        let now = greedy_arms(&agent, "crypto")[ctx.index()].clone();
        match (now == target, reached_at) {
            (true, None) => reached_at = Some(step * 100),
            (false, Some(at)) => panic!("reached the new best arms after {at} outcomes, then left them"),
            _ => {}
        }
    }
    let at = reached_at.expect("never reached the new best arms in 4,000 outcomes");
    assert!(at <= 4_000, "took {at} outcomes");
    eprintln!("followed the switch within {at} outcomes");
}

/// Hundreds of decisions open at once, their outcomes reported from several
/// threads in shuffled order while new decisions are made: nothing is lost,
/// nothing is counted twice, and the agent still learns the best arm.
#[test]
fn delayed_feedback_with_hundreds_open_and_concurrent_reports() {
    let spaces = spaces(false);
    let space = spaces.get("options").unwrap().clone();
    let mut env = SyntheticEnv::on_arms(&space, 3);
    env.penalty = 0.2;
    let agent = bandit_agent(3);
    let ctx = Context::new(Session::UsPrime, Regime::Bullish);
    let mut r = rng(3);
    let rounds = 20;
    let per_round = 400;
    for _ in 0..rounds {
        let mut open = Vec::with_capacity(per_round);
        for _ in 0..per_round {
            let d = agent.decide("options", ctx, &[("implied_volatility", 0.3)], true).unwrap();
            let rew = env.sample(&space, ctx, &d.values, &d.features, &mut r);
            open.push((d.id.to_string(), rew));
        }
        assert!(agent.pending_count("options").unwrap() >= per_round);
        // Shuffle, then report from four threads while this one keeps deciding.
        for i in (1..open.len()).rev() {
            open.swap(i, r.random_range(0..=i));
        }
        let open = Arc::new(open);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (agent, open) = (agent.clone(), open.clone());
                s.spawn(move || {
                    for (id, rew) in open.iter().skip(t).step_by(4) {
                        agent.report(id, reward(*rew)).unwrap();
                    }
                });
            }
            for _ in 0..50 {
                let d = agent.decide("options", ctx, &[], false).unwrap();
                assert_eq!(d.propensity, 1.0);
            }
        });
        // The next 400 decisions see everything learned so far.
        agent.flush();
    }
    agent.flush();
    let view = agent.view("options").unwrap();
    assert_eq!(view.outcomes, (rounds * per_round) as u64, "every outcome learned once");
    let c = agent.counters("options").unwrap();
    assert_eq!(c.outcomes.load(std::sync::atomic::Ordering::Relaxed), (rounds * per_round) as u64);
    assert_eq!(agent.pending_count("options").unwrap(), rounds * 50, "only the greedy decisions are still open");
    let greedy = greedy_arms(&agent, "options")[ctx.index()].clone();
    assert_eq!(greedy, optimal_arms(&env, &space)[ctx.index()]);
}

/// A context that never saw an outcome explores from the pooled evidence:
/// its posterior means follow the arms that earned elsewhere, measured as
/// advantages over each cell's running mean reward.
#[test]
fn a_cold_context_borrows_from_the_module() {
    let spaces = spaces(false);
    let space = spaces.get("stocks").unwrap().clone();
    let agent = agent_for((*space).clone(), 9);
    let warm = Context::new(Session::UsPrime, Regime::Bullish);
    let cold = Context::new(Session::AsiaPrime, Regime::Volatile);
    let mut r = rng(9);
    for _ in 0..2_000 {
        let d = agent.decide("stocks", warm, &[], true).unwrap();
        // Reward the arm above the default for the first parameter only.
        let good = d.arms[0] > space.params[0].default_arm;
        agent.report(&d.id.to_string(), reward(if good { 0.02 } else { -0.01 } + 0.005 * r.random::<f64>())).unwrap();
        agent.flush();
    }
    agent.flush();
    let view = agent.view("stocks").unwrap();
    let p = &view.cells[cold.index()].params[0];
    let default_arm = space.params[0].default_arm;
    let upper = p.arms.iter().position(|&k| k == default_arm + 1).unwrap();
    let at_default = p.arms.iter().position(|&k| k == default_arm).unwrap();
    assert!(p.means[upper] > p.means[at_default] + 0.01, "cold cell means {:?}", p.means);
    assert!(
        p.propensities[upper] > 2.0 * p.propensities[at_default],
        "and explores the pooled winner more: {:?}",
        p.propensities
    );
    let (greedy, _) = agent.greedy("stocks", cold).unwrap();
    assert_eq!(greedy, space.defaults(), "but serves the defaults greedily until it has its own evidence");
}
