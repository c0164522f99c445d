//! The text table of `paramopt simulate`.

use crate::eval::simulate::SimulateReport;

use super::align;

/// Per module: the agent's, the defaults' and the oracle's mean expected
/// reward over the second half, and how far the greedy values are from the optimum.
pub fn table(report: &SimulateReport) -> String {
    let mut rows = vec![["module", "outcomes", "agent", "defaults", "oracle", "gap closed", "greedy error"]
        .map(String::from)
        .to_vec()];
    for m in &report.modules {
        rows.push(vec![
            m.module.clone(),
            m.outcomes.to_string(),
            format!("{:.5}", m.agent_second_half),
            format!("{:.5}", m.defaults),
            format!("{:.5}", m.oracle),
            format!("{:.0}%", 100.0 * m.gap_closed),
            format!("{:.1}% of range", 100.0 * m.greedy_error),
        ]);
    }
    format!("Mean expected reward per decision, second half of the stream (seed {}):\n{}", report.seed, align(&rows))
}
