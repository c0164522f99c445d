//! The demo's closing report: per module, the second half of its stream for
//! the agent, the seed defaults and the out-of-sample oracle (return,
//! Sharpe, maximum drawdown, the difference from the defaults), its loss
//! budget's state, and one plain sentence on whether the agent beat the
//! defaults there.

use std::fmt::Write as _;

use paramopt::agent::BudgetStatus;
use paramopt::eval::backtest::{BacktestReport, ModuleBacktest, PolicyResult};
use paramopt::report::align;

/// The policies of the table, in its order.
pub const POLICIES: [&str; 3] = ["agent", "defaults", "oracle-oos"];

/// Below this, two mean returns are one (they come from identical returns
/// summed in different orders).
const SAME: f64 = 1e-12;

/// The closing table: a section per module, `budgets` in the report's module order.
pub fn table(report: &BacktestReport, budgets: &[BudgetStatus]) -> String {
    let mut out = format!(
        "Market: {}; seed {}.\nSecond half of each stream. Returns are per decision, as a fraction of equity \
         (0 when the rule did not trade); \"return\" is their sum, \"max dd\" that sum's largest fall from its \
         running peak, \"t\" the block t-statistic of the difference from the defaults; oracle-oos is the best \
         fixed parameters per context found on the first half, scored on the second.\n",
        report.market, report.seed
    );
    for (m, budget) in report.modules.iter().zip(budgets) {
        let _ = writeln!(
            out,
            "\n{}: {} decisions on {}; second half from decision {}",
            m.module, m.decisions, m.market, m.second_half_from
        );
        let mut rows = vec![["policy", "return 2nd", "mean 2nd", "sharpe 2nd", "max dd 2nd", "vs defaults", "t"]
            .map(String::from)
            .to_vec()];
        for p in POLICIES.iter().filter_map(|name| m.policy(name)) {
            let s = &p.second_half;
            rows.push(vec![
                p.policy.clone(),
                format!("{:+.3}", s.total_return),
                format!("{:+.6}", s.mean_return),
                format!("{:.2}", s.sharpe),
                format!("{:.3}", s.max_drawdown),
                format!("{:+.6}", p.improvement_over_defaults),
                format!("{:+.2}", p.vs_defaults.block_t),
            ]);
        }
        out.push_str(&align(&rows));
        let _ = writeln!(out, "loss budget: {}", budget_line(budget));
    }
    out
}

/// A loss budget's state in words and figures.
fn budget_line(b: &BudgetStatus) -> String {
    format!(
        "{:.3} of capital, {:.3} remaining (realised reward minus the defaults', lower bound {:+.3}); \
         {}; exploring decisions held at the incumbents: {}; exploring trades open: {}",
        b.budget,
        b.remaining,
        b.shortfall_lower,
        if b.exploring { "may explore" } else { "explores nothing now (no room)" },
        b.held_by_budget,
        b.open_exploring
    )
}

/// One sentence: did the agent beat the defaults on the second half, by how
/// much, and if not, what it did instead.
pub fn verdict(m: &ModuleBacktest, budget: &BudgetStatus) -> String {
    let (Some(agent), Some(defaults)) = (m.policy("agent"), m.policy("defaults")) else {
        return format!("{}: no agent or defaults to compare", m.module);
    };
    let (a, d) = (agent.second_half.mean_return, defaults.second_half.mean_return);
    let figures = format!("{a:+.6} vs {d:+.6} per decision");
    let oracle = m
        .policy("oracle-oos")
        .map(|o: &PolicyResult| format!("; the out-of-sample oracle made {:+.6}", o.second_half.mean_return))
        .unwrap_or_default();
    if a > d + SAME {
        return format!(
            "{}: the agent beat the defaults on the second half ({figures}, block t {:+.2}){oracle}.",
            m.module, agent.vs_defaults.block_t
        );
    }
    let instead = if agent.vs_defaults.total_diff.abs() <= SAME * m.decisions as f64 {
        let why = if budget.exploring { "" } else { ": its loss budget left no room to explore" };
        format!("it held its defaults{why}")
    } else {
        format!("it lost {:.6} per decision against them (block t {:+.2})", d - a, agent.vs_defaults.block_t)
    };
    format!("{}: the agent did not beat the defaults on the second half ({figures}); {instead}{oracle}.", m.module)
}
