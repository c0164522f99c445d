//! Property tests of the safety limits, over random seeds and reward streams,
//! checked on every served decision.

use paramopt::agent::safety::widest_trust;
use paramopt::space::{Context, ParamKind, Spaces};
use proptest::prelude::*;

use crate::support::{agent, reward};

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Ranges, integers, simplex sums and boxes, and the trust region, on every
    /// explored decision; the incumbent's step per outcome stays within the
    /// maximum change rate.
    #[test]
    fn every_served_value_respects_the_limits(
        seed in any::<u64>(),
        module in prop::sample::select(vec!["crypto", "options", "stocks"]),
        rewards in prop::collection::vec((0usize..12, -0.6f64..0.6, any::<bool>()), 30..120),
    ) {
        let agent = agent(seed);
        let space = Spaces::builtin().get(module).unwrap().clone();
        for (ctx_index, r, explore) in rewards {
            let ctx = Context::from_index(ctx_index).unwrap();
            let view = agent.view(module).unwrap();
            let cell = &view.cells[ctx.index()];
            let d = agent.decide(module, ctx, &[], explore).unwrap();
            for (p, (param, &v)) in space.params.iter().zip(&d.values).enumerate() {
                prop_assert!(v >= param.lo && v <= param.hi, "{} = {v} outside [{}, {}]", param.full_name, param.lo, param.hi);
                if param.kind == ParamKind::Integer {
                    prop_assert_eq!(v.fract(), 0.0, "{} = {} is not whole", param.full_name, v);
                }
                let pv = &cell.params[p];
                prop_assert!(v >= pv.trust.0 - 1e-12 && v <= pv.trust.1 + 1e-12,
                    "{} = {v} outside its trust region {:?} around {}", param.full_name, pv.trust, pv.incumbent);
                let widest = widest_trust(param);
                prop_assert!(pv.trust.1 - pv.trust.0 <= 2.0 * widest + 1e-12);
                prop_assert!(d.propensities[p] > 0.0 && d.propensities[p] <= 1.0);
            }
            for g in &space.simplex_groups {
                let sum: f64 = g.members.iter().map(|&p| d.values[p]).sum();
                prop_assert!((sum - 1.0).abs() < 1e-9, "{} sums to {sum}", g.name);
            }
            let (before, _) = agent.greedy(module, ctx).unwrap();
            agent.report(&d.id.to_string(), reward(r)).unwrap();
            agent.flush();
            let (after, _) = agent.greedy(module, ctx).unwrap();
            for (param, (a, b)) in space.params.iter().zip(before.iter().zip(&after)) {
                let limit = widest_trust(param);
                prop_assert!((a - b).abs() <= limit + 1e-12, "{} moved {a} -> {b}, limit {limit}", param.full_name);
                prop_assert!(*b >= param.lo && *b <= param.hi);
                if param.kind == ParamKind::Integer { prop_assert_eq!(b.fract(), 0.0); }
            }
            for g in &space.simplex_groups {
                let sum: f64 = g.members.iter().map(|&p| after[p]).sum();
                prop_assert!((sum - 1.0).abs() < 1e-9, "incumbent {} sums to {sum}", g.name);
            }
        }
    }
}
