//! What the benches share: the features a crypto decision carries and an
//! agent warmed up on the same outcomes, so their figures compare.

use paramopt::agent::{Agent, AgentOptions, Outcome};
use paramopt::space::{Context, Spaces};

pub const FEATURES: [(&str, f64); 3] = [("momentum_score", 0.72), ("volatility_score", 0.85), ("volume_score", 0.63)];

/// An agent that has learned from 6,000 crypto outcomes spread over every context.
pub fn warm_agent() -> Agent {
    warm_agent_over(&Spaces::builtin())
}

/// [`warm_agent`] over other spaces (for instance with the policy network on).
pub fn warm_agent_over(spaces: &Spaces) -> Agent {
    let agent = Agent::new(spaces, AgentOptions { seed: Some(1), ..Default::default() });
    for i in 0..6_000u64 {
        let ctx = Context::from_index((i % 12) as usize).unwrap();
        let d = agent.decide("crypto", ctx, &FEATURES, true).unwrap();
        let reward = 0.01 * ((i * 7919) % 13) as f64 / 13.0 - 0.004;
        agent
            .report(
                &d.id.to_string(),
                Outcome { reward: Some(reward), traded: true, return_pct: None, evidence: Default::default() },
            )
            .unwrap();
    }
    agent.flush();
    agent
}
