//! Shared drivers for the integration tests.

use std::collections::VecDeque;

use paramopt::agent::{Agent, AgentOptions, Outcome};
use paramopt::eval::synthetic::SyntheticEnv;
use paramopt::space::{Context, ModuleSpace, Spaces};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

pub fn agent(seed: u64) -> Agent {
    Agent::new(&Spaces::builtin(), AgentOptions { seed: Some(seed), ..Default::default() })
}

/// The shipped spaces with the policy network on or off (it ships off).
pub fn spaces(policy: bool) -> Spaces {
    spaces_with(policy, &[])
}

/// The built-in spaces with each `(from, to)` text replaced in every model file.
pub fn spaces_with(policy: bool, edits: &[(&str, &str)]) -> Spaces {
    let mut spaces = Spaces::default();
    for (origin, text) in [
        ("models/crypto.toml", include_str!("../../models/crypto.toml")),
        ("models/options.toml", include_str!("../../models/options.toml")),
        ("models/stocks.toml", include_str!("../../models/stocks.toml")),
    ] {
        let mut text = if policy { text.replacen("enabled = false", "enabled = true", 1) } else { text.to_string() };
        for (from, to) in edits {
            assert!(text.contains(from), "{origin} has no {from:?}");
            text = text.replace(from, to);
        }
        spaces.insert(ModuleSpace::from_toml_str(&text, origin).unwrap()).unwrap();
    }
    spaces
}

pub fn bandit_agent(seed: u64) -> Agent {
    Agent::new(&spaces(false), AgentOptions { seed: Some(seed), ..Default::default() })
}

pub fn agent_for(space: ModuleSpace, seed: u64) -> Agent {
    let mut spaces = Spaces::default();
    spaces.insert(space).unwrap();
    Agent::new(&spaces, AgentOptions { seed: Some(seed), ..Default::default() })
}

pub fn reward(r: f64) -> Outcome {
    Outcome { reward: Some(r), traded: true, return_pct: None }
}

/// Runs `n` decisions against `env` in the contexts `contexts` picks, with up
/// to `open` outcomes outstanding, reported in random order. The writer is
/// flushed after each report, as it keeps up when decisions come at trading
/// speed rather than in a tight loop; that also makes the run deterministic.
pub fn drive(
    agent: &Agent,
    space: &ModuleSpace,
    env: &SyntheticEnv,
    n: usize,
    open: usize,
    rng: &mut Pcg64Mcg,
    mut contexts: impl FnMut(&mut Pcg64Mcg) -> Context,
) {
    let mut outstanding: VecDeque<(String, f64)> = VecDeque::new();
    for _ in 0..n {
        let ctx = contexts(rng);
        let d = agent.decide(&space.name, ctx, &[], true).unwrap();
        let r = env.sample(space, ctx, &d.values, &d.features, rng);
        outstanding.push_back((d.id.to_string(), r));
        while outstanding.len() > open {
            let i = rng.random_range(0..outstanding.len());
            let (id, r) = outstanding.swap_remove_back(i).unwrap();
            agent.report(&id, reward(r)).unwrap();
            agent.flush();
        }
    }
    for (id, r) in outstanding {
        agent.report(&id, reward(r)).unwrap();
    }
    agent.flush();
}

pub fn rng(seed: u64) -> Pcg64Mcg {
    Pcg64Mcg::seed_from_u64(seed)
}
