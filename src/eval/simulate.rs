//! `paramopt simulate`: the agent against a seeded synthetic environment,
//! with delayed outcomes, compared with the seed defaults and the oracle.

use std::collections::VecDeque;

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::Serialize;

use crate::agent::{Agent, AgentOptions, Outcome};
use crate::space::{Context, Spaces};

use super::synthetic::SyntheticEnv;

#[derive(Debug, Clone)]
pub struct SimulateOptions {
    pub outcomes: usize,
    pub seed: u64,
    pub module: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModuleResult {
    pub module: String,
    pub outcomes: usize,
    /// Mean expected reward per decision over the second half of the stream.
    pub agent_second_half: f64,
    pub defaults: f64,
    pub oracle: f64,
    /// Share of the defaults-to-oracle gap the agent closed in the second half.
    pub gap_closed: f64,
    /// The agent's greedy values against the optima, mean |error| / range.
    pub greedy_error: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SimulateReport {
    pub seed: u64,
    pub modules: Vec<ModuleResult>,
}

/// Outcomes arrive this many decisions late, in shuffled order.
const OPEN_DECISIONS: usize = 64;

/// What stopped a simulation.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("unknown module {module:?}; known: {known:?}")]
    UnknownModule { module: Option<String>, known: Vec<String> },
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
}

pub fn run(spaces: &Spaces, opts: &SimulateOptions) -> Result<SimulateReport, SimulateError> {
    let mut modules = Vec::new();
    for space in spaces.iter() {
        if opts.module.as_ref().is_some_and(|m| m != &space.name) {
            continue;
        }
        let env = SyntheticEnv::on_arms(space, opts.seed);
        let agent = Agent::new(spaces, AgentOptions { seed: Some(opts.seed), ..Default::default() });
        let mut rng = Pcg64Mcg::seed_from_u64(opts.seed ^ 0xabcdef);
        let mut open = VecDeque::new();
        let (mut agent_sum, mut default_sum, mut oracle_sum) = (0.0, 0.0, 0.0);
        let half = opts.outcomes / 2;
        let defaults = space.defaults();
        for t in 0..opts.outcomes {
            let ctx = Context::from_index(rng.random_range(0..Context::COUNT)).expect("in range");
            let d = agent.decide(&space.name, ctx, &[], true)?;
            if t >= half {
                let no_features = vec![None; space.features.len()];
                agent_sum += env.expected(space, ctx, &d.values, &d.features);
                default_sum += env.expected(space, ctx, &defaults, &no_features);
                oracle_sum += env.expected(space, ctx, &env.optima(space, ctx, &no_features), &no_features);
            }
            let reward = env.sample(space, ctx, &d.values, &d.features, &mut rng);
            open.push_back((d.id.to_string(), reward));
            if open.len() >= OPEN_DECISIONS || t + 1 == opts.outcomes {
                while !open.is_empty() {
                    let i = rng.random_range(0..open.len());
                    let (id, reward) = open.swap_remove_back(i).expect("index in range");
                    agent.report(
                        &id,
                        Outcome { reward: Some(reward), traded: true, return_pct: None, evidence: Default::default() },
                    )?;
                    if open.len() < OPEN_DECISIONS / 2 {
                        break;
                    }
                }
                agent.flush();
            }
        }
        agent.flush();
        let n = (opts.outcomes - half).max(1) as f64;
        let (a, d, o) = (agent_sum / n, default_sum / n, oracle_sum / n);
        let mut err = 0.0;
        for ctx in Context::all() {
            let (greedy, _) = agent.greedy(&space.name, ctx)?;
            let optima = env.optima(space, ctx, &vec![None; space.features.len()]);
            for (p, param) in space.params.iter().enumerate() {
                err += (greedy[p] - optima[p]).abs() / param.range();
            }
        }
        modules.push(ModuleResult {
            module: space.name.clone(),
            outcomes: opts.outcomes,
            agent_second_half: a,
            defaults: d,
            oracle: o,
            gap_closed: if o > d { (a - d) / (o - d) } else { 1.0 },
            greedy_error: err / (Context::COUNT * space.params.len()) as f64,
        });
    }
    if modules.is_empty() {
        return Err(SimulateError::UnknownModule {
            module: opts.module.clone(),
            known: spaces.names().map(String::from).collect(),
        });
    }
    Ok(SimulateReport { seed: opts.seed, modules })
}
