//! A module's decisions on a market: the rule and its opportunities, in
//! the order they are decided.
//!
//! One market gives one opportunity per bar after the warm-up. Several
//! markets (the nine daily stocks) are interleaved by date: every ticker-day
//! is an opportunity, all the tickers of one date are decided before any of
//! the next (in the order the markets are given), and a trade's close is a
//! tick of the joint calendar, so outcomes arrive in time order whichever
//! ticker they come from.

use std::sync::Arc;

use crate::space::{Context, ModuleSpace};

use super::backtest::{BacktestError, WARMUP};
use super::market::Market;
use super::trading::{rule_for, Opportunity, Rule};

#[derive(Debug)]
pub struct Stream {
    pub space: Arc<ModuleSpace>,
    pub rule: Box<dyn Rule>,
    pub opportunities: Vec<Opportunity>,
    /// Decisions per year, to annualise Sharpe ratios.
    pub periods_per_year: f64,
    /// The market(s), for reports.
    pub source: String,
}

impl Stream {
    pub fn new(space: Arc<ModuleSpace>, market: &Market) -> Result<Stream, BacktestError> {
        let rule = rule_for(&space)?;
        let end = market.len().saturating_sub(rule.horizon() + 1);
        if end <= WARMUP {
            return Err(BacktestError::TooShort { bars: market.len(), need: WARMUP + rule.horizon() + 1 });
        }
        let opportunities = (WARMUP..end).map(|t| rule.opportunity(market, t)).collect();
        Ok(Stream {
            space,
            rule,
            opportunities,
            periods_per_year: market.periods_per_year,
            source: market.source.clone(),
        })
    }

    /// Several markets' opportunities interleaved by time (see the module
    /// docs). Each market's bars must be a run of consecutive times of the
    /// markets' joint calendar (no market may skip a time the others have
    /// inside its own span), so that a trade held `h` bars of its market
    /// closes `h` ticks later on the joint clock.
    ///
    /// Contexts are the markets' own: for the shipped daily stocks, bars are
    /// stamped at the New York close, so the session is always `us_prime`
    /// (a US stock's whole trading day is in that session; splitting days
    /// into sessions by weekday or ticker would invent a distinction the
    /// data does not have and spread each regime's evidence over three
    /// cells), and the regime is the trailing classifier's
    /// ([`super::market::classify_regime`]) on that ticker's own bars.
    pub fn interleaved(space: Arc<ModuleSpace>, markets: &[Market]) -> Result<Stream, BacktestError> {
        let rule = rule_for(&space)?;
        let mut calendar: Vec<i64> = markets.iter().flat_map(|m| m.bars.iter().map(|b| b.time)).collect();
        calendar.sort_unstable();
        calendar.dedup();
        let mut tagged: Vec<(usize, usize, Opportunity)> = Vec::new();
        for (k, market) in markets.iter().enumerate() {
            let Some(first) = market.bars.first() else { continue };
            let offset = calendar.binary_search(&first.time).expect("the calendar holds every time");
            if let Some((i, b)) = market.bars.iter().enumerate().find(|(i, b)| calendar[offset + i] != b.time) {
                return Err(BacktestError::Calendar { market: market.source.clone(), time: b.time, bar: i });
            }
            let end = market.len().saturating_sub(rule.horizon() + 1);
            for t in WARMUP..end {
                let mut o = rule.opportunity(market, t);
                o.bar = offset + t;
                tagged.push((o.bar, k, o));
            }
        }
        if tagged.is_empty() {
            let bars = markets.iter().map(Market::len).max().unwrap_or(0);
            return Err(BacktestError::TooShort { bars, need: WARMUP + rule.horizon() + 1 });
        }
        tagged.sort_by_key(|(bar, k, _)| (*bar, *k));
        let (first, last) = (calendar[tagged[0].0], calendar[tagged[tagged.len() - 1].0]);
        let years = (last - first).max(1) as f64 / (365.0 * 86_400.0);
        let periods_per_year = (tagged.len() - 1).max(1) as f64 / years;
        let names: Vec<&str> = markets.iter().map(|m| m.source.split(' ').next().unwrap_or("")).collect();
        let source = format!("{} markets interleaved by time ({})", markets.len(), names.join(", "));
        let opportunities = tagged.into_iter().map(|(_, _, o)| o).collect();
        Ok(Stream { space, rule, opportunities, periods_per_year, source })
    }

    /// The return each decision in `range` makes with `values(context)`:
    /// the true value of a fixed policy on these bars.
    pub fn returns_of(&self, range: std::ops::Range<usize>, values: impl Fn(Context) -> Vec<f64>) -> Vec<f64> {
        let per_context: Vec<Vec<f64>> = Context::all().map(values).collect();
        self.opportunities[range]
            .iter()
            .map(|o| self.rule.trade(o, &per_context[o.context.index()]).return_pct)
            .collect()
    }

    /// The reward a learner sees for a trade: the module's reward setting
    /// applied to its return (scaled, clipped; 0 when not traded).
    pub fn reward(&self, traded: bool, return_pct: f64) -> f64 {
        let r = &self.space.reward;
        // A return is always given, so `raw` always answers.
        r.clipped(r.raw(None, traded, Some(return_pct)).unwrap_or(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::market::{Bar, SyntheticMarket};
    use crate::space::Spaces;

    fn shifted(m: &Market, from: usize, to: usize) -> Market {
        Market::from_bars(format!("m{from}"), m.bars[from..to].to_vec())
    }

    #[test]
    fn interleaved_markets_decide_in_time_order_and_close_on_the_joint_clock() {
        let spaces = Spaces::builtin();
        let space = spaces.get("stocks").unwrap().clone();
        let base = SyntheticMarket::new(4, 2_000).generate();
        // One market starts later and one ends earlier.
        let markets = [shifted(&base, 0, 1_500), shifted(&base, 300, 2_000), shifted(&base, 0, 900)];
        let stream = Stream::interleaved(space.clone(), &markets).unwrap();
        let per: Vec<usize> = markets.iter().map(|m| m.len() - WARMUP - stream.rule.horizon() - 1).collect();
        assert_eq!(stream.opportunities.len(), per.iter().sum::<usize>());
        assert!(stream.opportunities.windows(2).all(|w| w[0].bar <= w[1].bar));
        // The second market's first decision is at its own bar 200, tick 500 of the joint clock.
        assert_eq!(stream.opportunities.iter().filter(|o| o.bar == 500).count(), 3);
        let single = Stream::new(space.clone(), &markets[1]).unwrap();
        let same = stream
            .opportunities
            .iter()
            .filter(|o| o.bar >= 500)
            .find(|o| o.features == single.opportunities[0].features);
        assert!(same.is_some());
        let v = space.defaults();
        let (a, b) = (stream.rule.trade(same.unwrap(), &v), single.rule.trade(&single.opportunities[0], &v));
        assert_eq!(
            (a.close_bar - same.unwrap().bar, a.return_pct),
            (b.close_bar - single.opportunities[0].bar, b.return_pct)
        );
        // Decisions per year: all of them over the span from the first to the last decision's hour.
        let (first, last) = (stream.opportunities[0].bar, stream.opportunities.last().unwrap().bar);
        let want = (stream.opportunities.len() - 1) as f64 * 8_760.0 / (last - first) as f64;
        assert!((stream.periods_per_year - want).abs() < 1e-6, "{} vs {want}", stream.periods_per_year);
    }

    #[test]
    fn a_market_that_skips_a_time_of_the_others_is_refused_by_name() {
        let spaces = Spaces::builtin();
        let base = SyntheticMarket::new(4, 1_000).generate();
        let mut gappy: Vec<Bar> = base.bars.clone();
        gappy.remove(400);
        let markets = [base.clone(), Market::from_bars("gappy".into(), gappy)];
        let err = Stream::interleaved(spaces.get("stocks").unwrap().clone(), &markets).unwrap_err().to_string();
        assert!(err.contains("gappy") && err.contains("bar 400"), "{err}");
    }
}
