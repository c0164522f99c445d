//! Several seeds' backtests summarised: per module and policy, the means
//! over seeds of the second half's figures, and in how many seeds the
//! policy's mean return reached the defaults'.

use serde::Serialize;

use super::backtest::BacktestReport;

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub seeds: Vec<u64>,
    pub modules: Vec<ModuleSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModuleSummary {
    pub module: String,
    /// Decisions in the second half (the same in every seed).
    pub second_half_decisions: usize,
    pub policies: Vec<PolicySummary>,
}

/// Means over the seeds the policy ran in, second half.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PolicySummary {
    pub policy: String,
    pub runs: usize,
    pub mean_return: f64,
    pub total_return: f64,
    /// Log growth (`super::metrics::Metrics::log_growth`); minus infinity
    /// (`ruin`, `null` in JSON) when any seed was ruined.
    pub log_growth: f64,
    pub sharpe: f64,
    pub max_drawdown: f64,
    /// Mean return per decision minus the defaults'.
    pub vs_defaults: f64,
    /// The block t-statistic of that difference, averaged over seeds.
    pub block_t: f64,
    /// Seeds in which the policy's mean return was at least the defaults'.
    pub at_least_defaults: usize,
    /// The second half's mean return in each seed, in the order of `seeds`.
    pub per_seed_mean: Vec<f64>,
}

pub fn summarise(reports: &[BacktestReport]) -> Summary {
    let mut modules: Vec<ModuleSummary> = Vec::new();
    for r in reports {
        for m in &r.modules {
            let k = match modules.iter().position(|s| s.module == m.module) {
                Some(k) => k,
                None => {
                    modules.push(ModuleSummary {
                        module: m.module.clone(),
                        second_half_decisions: m.decisions - m.second_half_from,
                        policies: vec![],
                    });
                    modules.len() - 1
                }
            };
            let defaults = m.policy("defaults").map_or(0.0, |p| p.second_half.mean_return);
            for p in &m.policies {
                let ps = &mut modules[k].policies;
                let j = match ps.iter().position(|s| s.policy == p.policy) {
                    Some(j) => j,
                    None => {
                        ps.push(PolicySummary { policy: p.policy.clone(), ..Default::default() });
                        ps.len() - 1
                    }
                };
                let s = &mut ps[j];
                let h = &p.second_half;
                s.runs += 1;
                s.mean_return += h.mean_return;
                s.total_return += h.total_return;
                s.log_growth += h.log_growth;
                s.sharpe += h.sharpe;
                s.max_drawdown += h.max_drawdown;
                s.vs_defaults += p.vs_defaults.mean_diff;
                s.block_t += p.vs_defaults.block_t;
                s.at_least_defaults += usize::from(h.mean_return >= defaults);
                s.per_seed_mean.push(h.mean_return);
            }
        }
    }
    for m in &mut modules {
        for s in &mut m.policies {
            let n = s.runs.max(1) as f64;
            for v in [
                &mut s.mean_return,
                &mut s.total_return,
                &mut s.log_growth,
                &mut s.sharpe,
                &mut s.max_drawdown,
                &mut s.vs_defaults,
                &mut s.block_t,
            ] {
                *v /= n;
            }
        }
    }
    Summary { seeds: reports.iter().map(|r| r.seed).collect(), modules }
}
