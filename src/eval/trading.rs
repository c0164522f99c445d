//! The modules' trading rules: simple, but each really trades with the
//! parameters it is served.
//!
//! Thresholds decide whether to trade, multipliers and allocations set the
//! size, weights combine the scores, and the options module's stop-loss and
//! profit target close its positions, priced with Black-Scholes along the
//! market's path. A rule reads only the trailing indicators at the decision's
//! bar; the trade's result comes from the bars after it, and is known (and
//! reported) only when the trade closes.
//!
//! For speed, everything about a bar that does not depend on the parameters
//! (the scores, the forward returns, the option values along the path) is
//! computed once into an [`Opportunity`]; [`Rule::trade`] then only applies
//! the parameters. The oracle search re-runs `trade` many times per bar.

use std::fmt;

use crate::bandit::normal_cdf;
use crate::space::{Context, ModuleSpace, Session};

use super::market::Market;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    #[error("module {module:?}: no trading rule for it (rules exist for crypto, stocks and options)")]
    UnknownModule { module: String },
    #[error("module {module:?}: its rule needs parameter {parameter:?}, which the space does not declare")]
    MissingParameter { module: String, parameter: String },
    #[error("module {module:?}: its rule sends feature {feature:?}, which the space does not declare")]
    MissingFeature { module: String, feature: String },
}

/// One bar's chance to trade, with what the rule precomputed about it.
#[derive(Debug, Clone)]
pub struct Opportunity {
    pub bar: usize,
    pub context: Context,
    /// In the order of [`Rule::feature_names`].
    pub features: Vec<f64>,
    data: Vec<f64>,
}

/// What one decision did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trade {
    pub traded: bool,
    /// Profit or loss as a fraction of equity, after costs; 0 when not traded.
    pub return_pct: f64,
    /// The bar at which the trade closed and its outcome is known.
    pub close_bar: usize,
}

impl Trade {
    fn skip(bar: usize) -> Trade {
        Trade { traded: false, return_pct: 0.0, close_bar: bar }
    }
}

pub trait Rule: Send + Sync + fmt::Debug {
    fn module(&self) -> &str;
    fn feature_names(&self) -> &'static [&'static str];
    /// The most bars a trade stays open.
    fn horizon(&self) -> usize;
    /// Precomputes bar `t`'s opportunity; needs `t + horizon() < market.len()`.
    fn opportunity(&self, market: &Market, t: usize) -> Opportunity;
    /// The trade `values` (the module's parameters, in the space's order) make.
    fn trade(&self, opp: &Opportunity, values: &[f64]) -> Trade;
}

/// The rule for a module, with its parameters looked up by name.
pub fn rule_for(space: &ModuleSpace) -> Result<Box<dyn Rule>, RuleError> {
    let rule: Box<dyn Rule> = match space.name.as_str() {
        "crypto" => Box::new(CryptoRule::new(space)?),
        "stocks" => Box::new(StocksRule::new(space)?),
        "options" => Box::new(OptionsRule::new(space)?),
        other => return Err(RuleError::UnknownModule { module: other.to_string() }),
    };
    for f in rule.feature_names() {
        if space.feature_index(f).is_none() {
            return Err(RuleError::MissingFeature { module: space.name.clone(), feature: f.to_string() });
        }
    }
    Ok(rule)
}

fn param(space: &ModuleSpace, name: &str) -> Result<usize, RuleError> {
    space
        .param_index(name)
        .ok_or_else(|| RuleError::MissingParameter { module: space.name.clone(), parameter: name.to_string() })
}

fn session_slot(s: Session) -> usize {
    s as usize
}

/// Return from bar `t`'s close to bar `t + h`'s close.
fn forward(market: &Market, t: usize, h: usize) -> f64 {
    market.bars[t + h].close / market.bars[t].close - 1.0
}

/// Round-trip fee per unit of notional.
const FEE: f64 = 0.0004;

/// Market impact per unit of notional, per unit of notional traded: thin in
/// Asia, deep in the US. Total cost grows with the square of size, which is
/// what gives every multiplier an interior optimum when the edge is modest.
fn impact(s: Session) -> f64 {
    match s {
        Session::AsiaPrime => 0.006,
        Session::EuropePrime => 0.004,
        Session::UsPrime => 0.003,
    }
}

/// Crypto: one trend-following trade per bar, held 8 bars.
///
/// Direction from momentum. Confidence is the analysis weights' blend of the
/// momentum's strength, the market's calm and whether volume agrees; it trades
/// when confidence exceeds the session's threshold, with the session's
/// position multiplier as notional (1.0 = all equity).
#[derive(Debug)]
pub struct CryptoRule {
    threshold: [usize; 3],
    multiplier: [usize; 3],
    weights: [usize; 3],
}

impl CryptoRule {
    const HOLD: usize = 8;

    pub fn new(space: &ModuleSpace) -> Result<CryptoRule, RuleError> {
        let p = |n: &str| param(space, n);
        Ok(CryptoRule {
            threshold: [
                p("session_confidence.asia_prime")?,
                p("session_confidence.europe_prime")?,
                p("session_confidence.us_prime")?,
            ],
            multiplier: [
                p("position_multipliers.asia_session")?,
                p("position_multipliers.europe_session")?,
                p("position_multipliers.us_session")?,
            ],
            weights: [
                p("analysis_weights.momentum")?,
                p("analysis_weights.volatility")?,
                p("analysis_weights.volume")?,
            ],
        })
    }
}

impl Rule for CryptoRule {
    fn module(&self) -> &str {
        "crypto"
    }
    fn feature_names(&self) -> &'static [&'static str] {
        &["momentum_score", "volatility_score", "volume_score"]
    }
    fn horizon(&self) -> usize {
        Self::HOLD
    }
    fn opportunity(&self, market: &Market, t: usize) -> Opportunity {
        let s = &market.signals[t];
        let momentum = normal_cdf(s.momentum);
        let calm = normal_cdf(-2.0 * s.vol_ratio());
        let volume = normal_cdf(s.flow);
        Opportunity {
            bar: t,
            context: market.contexts[t],
            features: vec![momentum, calm, volume],
            data: vec![forward(market, t, Self::HOLD)],
        }
    }
    fn trade(&self, o: &Opportunity, v: &[f64]) -> Trade {
        let [momentum, calm, volume] = [o.features[0], o.features[1], o.features[2]];
        let dir = if momentum >= 0.5 { 1.0 } else { -1.0 };
        let agree = if dir > 0.0 { volume } else { 1.0 - volume };
        let [wm, wc, wv] = self.weights.map(|i| v[i]);
        let confidence = wm * (2.0 * momentum - 1.0).abs() + wc * calm + wv * agree;
        let slot = session_slot(o.context.session);
        if confidence <= v[self.threshold[slot]] {
            return Trade::skip(o.bar);
        }
        let n = v[self.multiplier[slot]];
        let r = n * (dir * o.data[0] - FEE) - impact(o.context.session) * n * n;
        Trade { traded: true, return_pct: r, close_bar: o.bar + Self::HOLD }
    }
}

/// Stocks: five strategies on one blended signal, each its own instrument.
///
/// The intelligence weights blend the technical (momentum), regime (trend) and
/// pattern (short-term reversal) scores into a signed signal `c`; confidence
/// is `0.5 + |c| / 2`. Each strategy trades when confidence exceeds its
/// threshold, with notional `multiplier x 0.2 x leverage`:
/// leveraged ETFs (3x, 4 bars), momentum amplification (1.5x, 8 bars), sector
/// rotation (follows the slow trend, 16 bars, only when the signal agrees),
/// volatility trading (2 bars, only when volatility is rising) and core equity
/// (long only, 8 bars).
#[derive(Debug)]
pub struct StocksRule {
    threshold: [usize; 5],
    multiplier: [usize; 5],
    weights: [usize; 3],
}

/// Per strategy: leverage and holding period.
const STOCK_LEGS: [(f64, usize); 5] = [(3.0, 4), (1.5, 8), (1.0, 16), (1.0, 2), (1.0, 8)];

impl StocksRule {
    pub fn new(space: &ModuleSpace) -> Result<StocksRule, RuleError> {
        let names = ["leveraged_etfs", "momentum_amp", "sector_rotation", "volatility_trading", "core_equity"];
        let mut threshold = [0; 5];
        let mut multiplier = [0; 5];
        for (i, n) in names.iter().enumerate() {
            threshold[i] = param(space, &format!("strategy_thresholds.{n}"))?;
            multiplier[i] = param(space, &format!("position_multipliers.{n}"))?;
        }
        let p = |n: &str| param(space, n);
        Ok(StocksRule {
            threshold,
            multiplier,
            weights: [
                p("intelligence_weights.technical")?,
                p("intelligence_weights.regime")?,
                p("intelligence_weights.pattern")?,
            ],
        })
    }
}

impl Rule for StocksRule {
    fn module(&self) -> &str {
        "stocks"
    }
    fn feature_names(&self) -> &'static [&'static str] {
        &["technical_confidence", "regime_confidence", "pattern_confidence", "sector_momentum"]
    }
    fn horizon(&self) -> usize {
        STOCK_LEGS.iter().map(|l| l.1).max().unwrap_or(1)
    }
    fn opportunity(&self, market: &Market, t: usize) -> Opportunity {
        let s = &market.signals[t];
        let mut data: Vec<f64> = STOCK_LEGS.iter().map(|&(_, h)| forward(market, t, h)).collect();
        data.push(s.vol_ratio());
        Opportunity {
            bar: t,
            context: market.contexts[t],
            features: vec![normal_cdf(s.momentum), normal_cdf(s.trend), normal_cdf(-s.z), s.trend.tanh()],
            data,
        }
    }
    fn trade(&self, o: &Opportunity, v: &[f64]) -> Trade {
        let [tech, regime, pattern, sector] = [o.features[0], o.features[1], o.features[2], o.features[3]];
        let [wt, wr, wp] = self.weights.map(|i| v[i]);
        let c = wt * (2.0 * tech - 1.0) + wr * (2.0 * regime - 1.0) + wp * (2.0 * pattern - 1.0);
        let confidence = 0.5 + 0.5 * c.abs();
        let dir = c.signum();
        let rising_vol = o.data[5] > 0.0;
        let (mut r, mut traded, mut close) = (0.0, false, o.bar);
        for (i, &(leverage, hold)) in STOCK_LEGS.iter().enumerate() {
            let leg_dir = match i {
                2 if sector.signum() == dir => dir,
                3 if rising_vol => dir,
                4 if dir > 0.0 => 1.0,
                0 | 1 => dir,
                _ => continue,
            };
            if confidence <= v[self.threshold[i]] {
                continue;
            }
            let n = v[self.multiplier[i]] * 0.2 * leverage;
            r += n * (leg_dir * o.data[i] - FEE) - impact(o.context.session) * n * n;
            traded = true;
            close = close.max(o.bar + hold);
        }
        Trade { traded, return_pct: r, close_bar: close }
    }
}

/// Options: at most one position per bar, chosen among five strategies.
///
/// Each strategy has a confidence: long calls and bull spreads the bullish
/// signal, protective puts the bearish one, covered calls how neutral it is
/// times how rich implied volatility is against realised (premium worth
/// selling), straddles how cheap it is. The strategies are tried from the
/// most aggressive down (long calls, bull spreads, straddles, covered calls,
/// protective puts) and the first whose confidence
/// exceeds its threshold opens; so the long-call threshold decides between a
/// call and a spread on a strong signal, and when none qualifies nothing is
/// traded. Its capital is
/// `min(contracts x 12%, max_allocation)`. Every bar it is repriced with
/// Black-Scholes at the market's implied volatility; it closes when its P&L,
/// as a fraction of the premium, reaches `-stop_loss_pct` or
/// `+profit_target_pct`, or after a day.
#[derive(Debug)]
pub struct OptionsRule {
    threshold: [usize; 5],
    stop: usize,
    target: usize,
    contracts: usize,
    allocation: usize,
}

/// Long calls, bull spreads, straddles, covered calls, protective puts.
const OPTION_PRIORITY: [usize; 5] = [0, 1, 4, 3, 2];
/// Bars a position is held at most.
const OPTION_HOLD: usize = 24;
/// Bid-ask paid per round trip, as a fraction of the premium.
const OPTION_SPREAD: f64 = 0.03;
/// Capital per contract-multiplier unit.
const CAPITAL_PER_CONTRACT: f64 = 0.12;

impl OptionsRule {
    pub fn new(space: &ModuleSpace) -> Result<OptionsRule, RuleError> {
        let mut threshold = [0; 5];
        for (i, n) in ["long_calls", "bull_spreads", "protective_puts", "covered_calls", "straddles"].iter().enumerate()
        {
            threshold[i] = param(space, &format!("confidence_thresholds.{n}"))?;
        }
        Ok(OptionsRule {
            threshold,
            stop: param(space, "position_sizing.stop_loss_pct")?,
            target: param(space, "position_sizing.profit_target_pct")?,
            contracts: param(space, "position_sizing.contracts_multiplier")?,
            allocation: param(space, "position_sizing.max_allocation")?,
        })
    }

    /// The strategy's position value at spot `s`, volatility `iv`, `tau` years to expiry.
    fn value(strategy: usize, s: f64, k_atm: f64, k_otm: f64, iv: f64, tau: f64) -> f64 {
        match strategy {
            0 => bs_call(s, k_atm, iv, tau),
            1 => bs_call(s, k_atm, iv, tau) - bs_call(s, k_otm, iv, tau),
            2 => bs_put(s, k_atm, iv, tau),
            3 => bs_call(s, k_otm, iv, tau),
            _ => bs_call(s, k_atm, iv, tau) + bs_put(s, k_atm, iv, tau),
        }
    }
}

/// Black-Scholes call, no rates or dividends.
pub fn bs_call(s: f64, k: f64, sigma: f64, tau: f64) -> f64 {
    if tau <= 0.0 || sigma <= 0.0 {
        return (s - k).max(0.0);
    }
    let sd = sigma * tau.sqrt();
    let d1 = ((s / k).ln() + 0.5 * sd * sd) / sd;
    s * normal_cdf(d1) - k * normal_cdf(d1 - sd)
}

/// Black-Scholes put, by parity.
pub fn bs_put(s: f64, k: f64, sigma: f64, tau: f64) -> f64 {
    bs_call(s, k, sigma, tau) - s + k
}

impl Rule for OptionsRule {
    fn module(&self) -> &str {
        "options"
    }
    fn feature_names(&self) -> &'static [&'static str] {
        &["implied_volatility", "expiration_days", "signal_confidence"]
    }
    fn horizon(&self) -> usize {
        OPTION_HOLD
    }
    fn opportunity(&self, market: &Market, t: usize) -> Opportunity {
        let sig = &market.signals[t];
        let bullish = normal_cdf(0.7 * sig.momentum + 0.5 * sig.flow);
        let iv = market.implied_vol[t];
        let realised = sig.vol_short * market.periods_per_year.sqrt();
        let days: f64 = [3.0, 5.0, 7.0, 10.0, 14.0][t % 5];
        let tau = days / 365.0;
        let spot = market.bars[t].close;
        let (k_atm, k_otm) = (spot, spot * (iv * tau.sqrt()).exp());
        // data: the five confidences, then per strategy its short flag and P&L
        // (per unit of premium) at each of the next OPTION_HOLD bars.
        let mut data = vec![
            bullish,
            bullish,
            1.0 - bullish,
            (1.0 - (2.0 * bullish - 1.0).abs()) * normal_cdf(3.0 * (iv / realised).ln()),
            normal_cdf(3.0 * (realised / iv).ln()),
        ];
        let bar_years = 1.0 / market.periods_per_year;
        for strategy in 0..5 {
            let short = strategy == 3;
            let v0 = Self::value(strategy, spot, k_atm, k_otm, iv, tau).max(1e-9 * spot);
            for k in 1..=OPTION_HOLD {
                let vk = Self::value(
                    strategy,
                    market.bars[t + k].close,
                    k_atm,
                    k_otm,
                    market.implied_vol[t + k],
                    tau - k as f64 * bar_years,
                );
                let pnl = if short { (v0 - vk) / v0 } else { (vk - v0) / v0 };
                data.push(pnl);
            }
        }
        Opportunity { bar: t, context: market.contexts[t], features: vec![iv, days, bullish], data }
    }
    fn trade(&self, o: &Opportunity, v: &[f64]) -> Trade {
        let Some(strategy) = OPTION_PRIORITY.into_iter().find(|&i| o.data[i] > v[self.threshold[i]]) else {
            return Trade::skip(o.bar);
        };
        let path = &o.data[5 + strategy * OPTION_HOLD..5 + (strategy + 1) * OPTION_HOLD];
        let (stop, target) = (v[self.stop], v[self.target]);
        let (mut held, mut pnl) = (OPTION_HOLD, path[OPTION_HOLD - 1]);
        for (k, &p) in path.iter().enumerate() {
            if p <= -stop || p >= target {
                (held, pnl) = (k + 1, p);
                break;
            }
        }
        let capital = (v[self.contracts] * CAPITAL_PER_CONTRACT).min(v[self.allocation]);
        Trade { traded: true, return_pct: capital * (pnl - OPTION_SPREAD), close_bar: o.bar + held }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::market::SyntheticMarket;
    use crate::space::Spaces;

    #[test]
    fn black_scholes_matches_a_textbook_value_and_parity() {
        // S = K = 100, sigma = 20%, one year: 7.9656.
        assert!((bs_call(100.0, 100.0, 0.2, 1.0) - 7.9656).abs() < 1e-3);
        let (c, p) = (bs_call(105.0, 100.0, 0.3, 0.25), bs_put(105.0, 100.0, 0.3, 0.25));
        assert!((c - p - 5.0).abs() < 1e-9);
        assert_eq!(bs_call(90.0, 100.0, 0.2, 0.0), 0.0);
    }

    /// Every parameter changes some trade: move each one to its ends and
    /// count the opportunities whose result changes.
    #[test]
    fn every_parameter_changes_trades() {
        let spaces = Spaces::builtin();
        let market = SyntheticMarket::new(2, 3_000).generate();
        for space in spaces.iter() {
            let rule = rule_for(space).unwrap();
            let opps: Vec<Opportunity> =
                (200..market.len() - rule.horizon() - 1).map(|t| rule.opportunity(&market, t)).collect();
            let base = space.defaults();
            for (p, param) in space.params.iter().enumerate() {
                let changed = [param.lo, param.hi]
                    .iter()
                    .map(|&x| {
                        let mut v = base.clone();
                        v[p] = x;
                        opps.iter().filter(|o| rule.trade(o, &v) != rule.trade(o, &base)).count()
                    })
                    .max()
                    .unwrap();
                assert!(changed >= 10, "{}: {} changed only {changed} trades", space.name, param.full_name);
            }
        }
    }
}
