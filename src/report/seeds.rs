//! The text table of several seeds' backtests (`paramopt backtest --seeds`).

use std::fmt::Write as _;

use crate::eval::metrics::growth_cell;
use crate::eval::seeds::Summary;

use super::align;

/// Per module: the means, then each seed's mean return per decision.
pub fn table(summary: &Summary) -> String {
    let seeds: Vec<String> = summary.seeds.iter().map(u64::to_string).collect();
    let mut out = format!("Means over seeds {} (second half of each stream):\n", seeds.join(", "));
    for m in &summary.modules {
        let _ = writeln!(out, "\n{}: {} decisions in the second half", m.module, m.second_half_decisions);
        let mut rows =
            vec![["policy", "mean", "total", "growth", "sharpe", "max dd", "vs defaults", "block t", ">= defaults"]
                .map(String::from)
                .to_vec()];
        for p in &m.policies {
            rows.push(vec![
                p.policy.clone(),
                format!("{:+.6}", p.mean_return),
                format!("{:+.3}", p.total_return),
                growth_cell(p.log_growth),
                format!("{:.2}", p.sharpe),
                format!("{:.3}", p.max_drawdown),
                format!("{:+.6}", p.vs_defaults),
                format!("{:+.2}", p.block_t),
                format!("{}/{}", p.at_least_defaults, p.runs),
            ]);
        }
        out.push_str(&align(&rows));
        let mut header = vec!["mean return by seed".to_string()];
        header.extend(summary.seeds.iter().map(|s| format!("seed {s}")));
        let mut rows = vec![header];
        for p in &m.policies {
            let mut row = vec![p.policy.clone()];
            row.extend(p.per_seed_mean.iter().map(|v| format!("{v:+.6}")));
            rows.push(row);
        }
        out.push('\n');
        out.push_str(&align(&rows));
    }
    out
}
