//! The text table of `paramopt backtest`: per module, every policy's
//! figures over the second half and in full.

use std::fmt::Write as _;

use crate::eval::backtest::{BacktestReport, Metrics, BLOCK};
use crate::eval::metrics::growth_cell;

use super::align;

/// Per module: every policy's metrics over the second half and in full.
pub fn table(report: &BacktestReport) -> String {
    let mut out = format!("Market {}, {} bars, seed {}.\n", report.market, report.bars, report.seed);
    for note in &report.notes {
        let _ = writeln!(out, "Note: {note}");
    }
    for m in &report.modules {
        let block = m.policies.first().map_or(BLOCK, |p| p.vs_defaults.block_size);
        let _ = writeln!(
            out,
            "\n{}: {} decisions on {}; second half from decision {} (returns per decision, fraction of equity; \
             t: block t-statistic of the difference from the defaults, blocks of {block} decisions)",
            m.module, m.decisions, m.market, m.second_half_from
        );
        let mut rows = vec![[
            "policy",
            "mean 2nd",
            "total 2nd",
            "growth 2nd",
            "sharpe 2nd",
            "max dd 2nd",
            "win 2nd",
            "traded 2nd",
            "vs defaults",
            "t",
            "gap closed",
            "total (all)",
        ]
        .map(String::from)
        .to_vec()];
        for p in &m.policies {
            let (s, f) = (&p.second_half, &p.full);
            rows.push(vec![
                p.policy.clone(),
                format!("{:+.6}", s.mean_return),
                format!("{:+.3}", s.total_return),
                growth_cell(s.log_growth),
                format!("{:.2}", s.sharpe),
                format!("{:.3}", s.max_drawdown),
                format!("{:.1}%", 100.0 * s.win_rate),
                format!("{:.1}%", 100.0 * s.traded_share),
                format!("{:+.6}", p.improvement_over_defaults),
                format!("{:+.2}", p.vs_defaults.block_t),
                format!("{:.0}%", 100.0 * p.gap_closed),
                format!("{:+.3}", f.total_return),
            ]);
        }
        out.push_str(&align(&rows));
        let fixed = |what: &str, f: &Metrics| {
            format!(
                "{what} {:+.6} mean, {:.2} Sharpe, {:.0}% of the gap",
                f.mean_return,
                f.sharpe,
                100.0 * m.gap_closed_by(f)
            )
        };
        let _ = writeln!(
            out,
            "Fixed on the second half: {}; {}; {}.",
            fixed("the oracle's search on the first half (every arm's return known)", &m.first_half_fit),
            fixed(
                "explore-then-commit on the first half (only the drawn arms' rewards known)",
                &m.first_half_bandit_fit
            ),
            fixed("the agent's final greedy values", &m.final_greedy),
        );
    }
    out
}
