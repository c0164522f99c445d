//! Figures of a policy's per-decision returns: [`Metrics`] over a stretch of
//! decisions, and [`Paired`], the difference from another policy on the same
//! decisions with a block t-statistic.
//!
//! Returns of consecutive decisions are not independent (overlapping trades
//! on one market, volatility clusters), so a plain t-statistic of the
//! per-decision differences overstates significance. The block statistic
//! averages the differences over blocks of consecutive decisions (100 by
//! default: about four days of BTC hours, or eleven trading days of the
//! nine stocks) and takes the t-statistic of the block means.

use serde::Serialize;

/// Performance over a stretch of decisions. Returns are per decision, as a
/// fraction of equity, 0 when the rule did not trade.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Metrics {
    pub decisions: usize,
    pub total_return: f64,
    pub mean_return: f64,
    /// Log growth: the sum of ln(1 + r) over the per-decision returns r, as
    /// if each decision's return compounded the equity in turn; minus
    /// infinity (a ruin) when some r <= -1, shown as `ruin` in the tables
    /// and `null` in JSON, which has no infinities.
    pub log_growth: f64,
    /// Decisions whose return was -1 or worse (each a ruin of the log growth).
    pub ruins: usize,
    /// Mean over standard deviation of per-decision returns, annualised by
    /// the market's bars per year.
    pub sharpe: f64,
    /// Share of trades with a positive return.
    pub win_rate: f64,
    /// Largest fall of cumulative return from its running peak.
    pub max_drawdown: f64,
    /// Share of opportunities traded.
    pub traded_share: f64,
}

impl Metrics {
    pub fn of(returns: &[f64], traded: &[bool], periods_per_year: f64) -> Metrics {
        let n = returns.len();
        if n == 0 {
            return Metrics::default();
        }
        let total: f64 = returns.iter().sum();
        let mean = total / n as f64;
        let var = returns.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n.max(2) - 1) as f64;
        let trades = traded.iter().filter(|&&t| t).count();
        let wins = returns.iter().zip(traded).filter(|(r, &t)| t && **r > 0.0).count();
        let log_growth = returns.iter().map(|&r| if r <= -1.0 { f64::NEG_INFINITY } else { r.ln_1p() }).sum();
        let (mut cum, mut peak, mut dd) = (0.0f64, 0.0f64, 0.0f64);
        for r in returns {
            cum += r;
            peak = peak.max(cum);
            dd = dd.max(peak - cum);
        }
        Metrics {
            decisions: n,
            total_return: total,
            mean_return: mean,
            log_growth,
            ruins: returns.iter().filter(|&&r| r <= -1.0).count(),
            sharpe: if var > 0.0 { mean / var.sqrt() * periods_per_year.sqrt() } else { 0.0 },
            win_rate: if trades > 0 { wins as f64 / trades as f64 } else { 0.0 },
            max_drawdown: dd,
            traded_share: trades as f64 / n as f64,
        }
    }
}

/// A log growth for a table: signed, three decimals, or `ruin` for minus
/// infinity (some decision lost all the equity).
pub fn growth_cell(log_growth: f64) -> String {
    if log_growth == f64::NEG_INFINITY {
        "ruin".to_string()
    } else {
        format!("{log_growth:+.3}")
    }
}

/// Decisions per block of the block t-statistic, unless told otherwise.
pub const BLOCK: usize = 100;

/// A policy's per-decision return minus another's, on the same decisions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Paired {
    /// Mean difference per decision.
    pub mean_diff: f64,
    /// Total difference.
    pub total_diff: f64,
    /// Mean over standard error of the block means (0 when they do not vary).
    pub block_t: f64,
    pub blocks: usize,
    pub block_size: usize,
}

impl Paired {
    /// `a - b`, decision by decision, in blocks of `block` consecutive
    /// decisions (a last, shorter block is dropped from the t-statistic
    /// but not from the mean).
    pub fn of(a: &[f64], b: &[f64], block: usize) -> Paired {
        let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
        let total: f64 = d.iter().sum();
        let block = block.max(1);
        let means: Vec<f64> = d.chunks_exact(block).map(|c| c.iter().sum::<f64>() / block as f64).collect();
        let k = means.len();
        let block_t = if k >= 2 {
            let m = means.iter().sum::<f64>() / k as f64;
            let var = means.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (k - 1) as f64;
            if var > 0.0 {
                m / (var / k as f64).sqrt()
            } else {
                0.0
            }
        } else {
            0.0
        };
        Paired {
            mean_diff: if d.is_empty() { 0.0 } else { total / d.len() as f64 },
            total_diff: total,
            block_t,
            blocks: k,
            block_size: block,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_block_t_of_a_known_series() {
        // Differences 1, 3 | 2, 2 | 0, 4 | 9: block means 2, 2, 2 (no spread), then 1, 2, 3.
        let p = Paired::of(&[1.0, 3.0, 2.0, 2.0, 0.0, 4.0, 9.0], &[0.0; 7], 2);
        assert_eq!((p.blocks, p.block_t, p.total_diff), (3, 0.0, 21.0));
        let p = Paired::of(&[2.0, 3.0, 4.0], &[1.0, 1.0, 1.0], 1);
        // Means 1, 2, 3: mean 2, sd 1, se 1/sqrt(3).
        assert!((p.block_t - 2.0 * 3f64.sqrt()).abs() < 1e-12);
        assert!((p.mean_diff - 2.0).abs() < 1e-12);
    }

    #[test]
    fn metrics_of_a_known_series() {
        let m = Metrics::of(&[0.1, -0.2, 0.0, 0.3], &[true, true, false, true], 1.0);
        assert!((m.total_return - 0.2).abs() < 1e-12);
        assert!((m.mean_return - 0.05).abs() < 1e-12);
        assert!((m.win_rate - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.traded_share - 0.75).abs() < 1e-12);
        assert!((m.max_drawdown - 0.2).abs() < 1e-12);
        let sd = ((0.0025 + 0.0625 + 0.0025 + 0.0625) / 3.0f64).sqrt();
        assert!((m.sharpe - 0.05 / sd).abs() < 1e-12);
        // ln(1.1 * 0.8 * 1.0 * 1.3) = ln(1.144).
        assert!((m.log_growth - 1.144f64.ln()).abs() < 1e-12, "{}", m.log_growth);
        assert_eq!(growth_cell(m.log_growth), "+0.135");
    }

    #[test]
    fn log_growth_is_minus_infinity_after_a_ruin_and_the_table_says_so() {
        // Doubling then halving is no growth, though the mean return is +0.25.
        let m = Metrics::of(&[1.0, -0.5], &[true, true], 1.0);
        assert!(m.log_growth.abs() < 1e-12 && (m.mean_return - 0.25).abs() < 1e-12);
        assert_eq!(growth_cell(m.log_growth), "+0.000");
        for ruin in [-1.0, -1.5] {
            let m = Metrics::of(&[0.5, ruin, 0.2], &[true; 3], 1.0);
            assert_eq!((m.log_growth, m.ruins), (f64::NEG_INFINITY, 1));
            assert_eq!(growth_cell(m.log_growth), "ruin");
            assert_eq!(serde_json::to_value(m).unwrap()["log_growth"], serde_json::Value::Null);
        }
        assert_eq!(Metrics::of(&[], &[], 1.0).log_growth, 0.0);
    }
}
