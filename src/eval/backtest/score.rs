//! The oracles (in hindsight, on the first half, and explore-then-commit)
//! and every figure of a module's result, from its policies' passes.

use std::sync::Arc;

use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;

use crate::agent::ModuleView;
use crate::eval::baselines::{self, arm_values, Fixed};
use crate::eval::metrics::{Metrics, Paired};
use crate::eval::stream::Stream;
use crate::eval::trading::Opportunity;
use crate::ope::LoggedDecision;
use crate::space::Context;

use super::{BacktestOptions, ModuleBacktest, Pass, PolicyResult};

/// The share of the gap from `defaults` to `oracle` (mean returns) that
/// `mean` closes; 1 when there is no gap.
pub fn gap_share(mean: f64, defaults: f64, oracle: f64) -> f64 {
    let gap = oracle - defaults;
    if gap.abs() > 1e-15 {
        (mean - defaults) / gap
    } else {
        1.0
    }
}

/// The oracle and every figure of a module's result from its policies'
/// passes (the agent first, the defaults second) and the agent's final greedy
/// values (and its log and final view); with `out_of_sample`, the `oracle-oos` row too.
pub(super) fn assemble(
    stream: Arc<Stream>,
    passes: Vec<(String, Pass)>,
    greedy: &[Vec<f64>],
    (agent_log, agent_view): (Vec<LoggedDecision>, Option<Arc<ModuleView>>),
    opts: &BacktestOptions,
    progress: &dyn Fn(usize),
    out_of_sample: bool,
) -> ModuleBacktest {
    let (seed, curve_points) = (opts.seed, opts.curve_points);
    let space = stream.space.clone();
    let n = stream.opportunities.len();
    let half = n / 2;
    // The oracle is searched separately for the reported stretches, so it is
    // the best fixed choice for exactly the decisions it is compared on.
    let all: Vec<&Opportunity> = stream.opportunities.iter().collect();
    let oracle_full = baselines::oracle(&space, stream.rule.as_ref(), &all);
    let oracle_half = baselines::oracle(&space, stream.rule.as_ref(), &all[half..]);
    let full_returns = stream.returns_of(0..n, |c| arm_values(&space, &oracle_full.arms[c.index()]));
    let half_returns = stream.returns_of(half..n, |c| arm_values(&space, &oracle_half.arms[c.index()]));
    let traded_of = |f: &Fixed, range: std::ops::Range<usize>| -> Vec<bool> {
        stream.opportunities[range]
            .iter()
            .map(|o| stream.rule.trade(o, &arm_values(&space, &f.arms[o.context.index()])).traded)
            .collect()
    };
    let oracle_full_traded = traded_of(&oracle_full, 0..n);
    let final_greedy = Metrics::of(
        &stream.returns_of(half..n, |c| greedy[c.index()].clone()),
        &stream.opportunities[half..n]
            .iter()
            .map(|o| stream.rule.trade(o, &greedy[o.context.index()]).traded)
            .collect::<Vec<_>>(),
        stream.periods_per_year,
    );
    let oracle_first = baselines::oracle(&space, stream.rule.as_ref(), &all[..half]);
    let oos_returns = stream.returns_of(0..n, |c| arm_values(&space, &oracle_first.arms[c.index()]));
    let oos_traded = traded_of(&oracle_first, 0..n);
    let first_half_fit = Metrics::of(&oos_returns[half..], &oos_traded[half..], stream.periods_per_year);
    let mut rng = Pcg64Mcg::seed_from_u64(crate::util::splitmix64(seed ^ 0xe7c));
    let known_by = stream.opportunities.get(half).map_or(usize::MAX, |o| o.bar);
    let committed = baselines::explore_then_commit(
        &space,
        stream.rule.as_ref(),
        &all[..half],
        known_by,
        &|t| stream.reward(t.traded, t.return_pct),
        0.0,
        &mut rng,
    );
    let first_half_bandit_fit = Metrics::of(
        &stream.returns_of(half..n, |c| arm_values(&space, &committed.arms[c.index()])),
        &traded_of(&committed, half..n),
        stream.periods_per_year,
    );
    let oracle_half_traded = traded_of(&oracle_half, half..n);
    progress(n);

    let ppy = stream.periods_per_year;
    let oracle_second = Metrics::of(&half_returns, &oracle_half_traded, ppy);
    // Per policy: its name, whole-stream figures, second-half figures and
    // returns, learning curve and whole-stream returns.
    type Row = (String, Metrics, Metrics, Vec<f64>, Vec<f64>, Vec<f64>);
    let mut rows: Vec<Row> = passes
        .into_iter()
        .map(|(name, p)| {
            let full = Metrics::of(&p.returns, &p.traded, ppy);
            let second = Metrics::of(&p.returns[half..], &p.traded[half..], ppy);
            let curve = curve(&p.returns, curve_points);
            (name, full, second, p.returns[half..].to_vec(), curve, p.returns)
        })
        .collect();
    if out_of_sample {
        rows.push((
            "oracle-oos".into(),
            Metrics::of(&oos_returns, &oos_traded, ppy),
            first_half_fit,
            oos_returns[half..].to_vec(),
            curve(&oos_returns, curve_points),
            oos_returns,
        ));
    }
    rows.push((
        "oracle".into(),
        Metrics::of(&full_returns, &oracle_full_traded, ppy),
        oracle_second,
        half_returns,
        curve(&full_returns, curve_points),
        full_returns,
    ));
    let defaults_second = rows.get(1).map(|r| r.3.clone()).unwrap_or_default();
    let defaults_mean = rows.get(1).map_or(0.0, |r| r.2.mean_return);
    let mut policies: Vec<PolicyResult> = Vec::with_capacity(rows.len());
    for (name, full, second_half, second, curve, returns) in rows {
        policies.push(PolicyResult {
            policy: name,
            full,
            regret: oracle_second.total_return - second_half.total_return,
            improvement_over_defaults: second_half.mean_return - defaults_mean,
            gap_closed: gap_share(second_half.mean_return, defaults_mean, oracle_second.mean_return),
            vs_defaults: Paired::of(&second, &defaults_second, opts.block),
            second_half,
            curve,
            returns,
        });
    }
    let oracle_values = Context::all()
        .map(|c| {
            let values = arm_values(&space, &oracle_half.arms[c.index()]);
            (c.to_string(), space.params.iter().map(|p| p.full_name.clone()).zip(values).collect())
        })
        .collect();
    ModuleBacktest {
        module: space.name.clone(),
        market: stream.source.clone(),
        decisions: n,
        second_half_from: half,
        policies,
        first_half_fit,
        first_half_bandit_fit,
        final_greedy,
        oracle_values,
        agent_log,
        agent_view,
        stream,
    }
}

/// Mean return in `points` consecutive windows.
fn curve(returns: &[f64], points: usize) -> Vec<f64> {
    let w = (returns.len() / points.max(1)).max(1);
    returns.chunks(w).map(|c| c.iter().sum::<f64>() / c.len() as f64).collect()
}
