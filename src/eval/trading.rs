//! The modules' trading rules: simple, but each trades as the plan's modules
//! do, with the parameters it is served.
//!
//! One decision is one trade of one strategy, and every rule has the same
//! structure, which the agent's counterfactual credit relies on:
//!
//! - **Strategy first.** The module picks the strategy from the bar's
//!   signals before it asks for parameters ([`Opportunity::strategy`]):
//!   stocks one of `leveraged_etfs`, `momentum_amp`, `sector_rotation`,
//!   `volatility_trading`, `core_equity`; options one of `long_calls`,
//!   `bull_spreads`, `protective_puts`, `covered_calls`, `straddles`; for
//!   crypto the "strategy" is the session (its thresholds and multipliers
//!   are per session, and the strategy is `None`). The decision then uses
//!   only that strategy's (or session's) threshold and multiplier.
//! - **Score.** The confidence is the normalised weighted sum of features
//!   the decision sends, `confidence = sum w_i f_i / sum w_i` over the
//!   module's weights group (crypto `analysis_weights.*`, stocks
//!   `intelligence_weights.*`), each `f_i` in [0, 1] exactly the value of a
//!   feature sent with the decision (crypto: `momentum_score`,
//!   `volatility_score`, `volume_score`; stocks: `technical_confidence`,
//!   `regime_confidence`, `pattern_confidence`). The trade's direction is
//!   decided separately and is no parameter. Options has no weights: its
//!   confidence is the feature `signal_confidence`.
//! - **Gate.** It trades iff `confidence >= threshold`; a skipped trade
//!   earns exactly 0.
//! - **Scale.** A trade's return is exactly proportional to its position
//!   multiplier, `return(m) = m * u` with `u` fixed by the bar: costs are
//!   linear in notional (a fee and a per-session or per-strategy spread),
//!   with no market impact.
//! - **Exit** (options). The position's return per unit of premium at each
//!   check (every bar) is its path; it closes at the first check where that
//!   is `<= -stop_loss_pct` or `>= +profit_target_pct`, else at the last
//!   check; the trade returns `capital * (pnl - spread)` with
//!   `capital = min(contracts_multiplier * 0.12, max_allocation)`.
//!
//! A rule reads only the trailing indicators at the decision's bar; the
//! trade's result comes from the bars after it, and is known (and reported)
//! only when the trade closes. For speed, everything about a bar that does
//! not depend on the parameters (the strategy, the features, the per-unit
//! return, the option's path) is computed once into an [`Opportunity`];
//! [`Rule::trade`] then only applies the parameters. The oracle search
//! re-runs `trade` many times per bar.

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
    /// The clock tick of the decision: a bar of the market, or (several
    /// markets interleaved) the index of its time in their joint calendar.
    pub bar: usize,
    pub context: Context,
    /// In the order of [`Rule::feature_names`].
    pub features: Vec<f64>,
    /// The strategy the module chose from the bar's signals, before asking
    /// for parameters; `None` for crypto, whose parameters are per session.
    pub strategy: Option<&'static str>,
    /// The strategy's (crypto: the session's) slot in the rule's tables.
    slot: usize,
    data: Vec<f64>,
}

/// What one decision did: what a module reports with its outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Trade {
    pub traded: bool,
    /// Profit or loss as a fraction of equity, after costs; 0 when not traded.
    pub return_pct: f64,
    /// The clock tick at which the trade closed and its outcome is known.
    pub close_bar: usize,
    /// The strategy traded (or that would have been), as in [`Opportunity::strategy`].
    pub strategy: Option<&'static str>,
    /// The score the gate compared with the threshold.
    pub confidence: f64,
    /// Options: the position's return per unit of premium at every check up
    /// to its horizon; empty when skipped and for the other modules. The
    /// module keeps pricing the contract after its exit and reports at the
    /// horizon (`close_bar`), so the whole path is known without looking
    /// ahead, and with it where every other stop and target would have
    /// closed the position.
    pub path: Vec<f64>,
    /// Options: the capital the position used (what `max_allocation` capped),
    /// which the module reports as applied.
    pub capital: Option<f64>,
}

impl Trade {
    fn skip(o: &Opportunity, confidence: f64) -> Trade {
        Trade {
            traded: false,
            return_pct: 0.0,
            close_bar: o.bar,
            strategy: o.strategy,
            confidence,
            path: vec![],
            capital: None,
        }
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

/// Return from bar `t`'s close to bar `t + h`'s close.
fn forward(market: &Market, t: usize, h: usize) -> f64 {
    market.bars[t + h].close / market.bars[t].close - 1.0
}

/// The normalised weighted sum of a score's components.
fn score(weights: &[f64], components: &[f64]) -> f64 {
    let total: f64 = weights.iter().sum();
    let sum: f64 = weights.iter().zip(components).map(|(w, f)| w * f).sum();
    if total > 0.0 {
        sum / total
    } else {
        0.0
    }
}

/// Round-trip fee per unit of notional.
const FEE: f64 = 0.0004;

/// Crypto's round-trip spread per unit of notional: wide in Asia, tight in the US.
fn session_spread(s: Session) -> f64 {
    match s {
        Session::AsiaPrime => 0.0006,
        Session::EuropePrime => 0.0004,
        Session::UsPrime => 0.0003,
    }
}

/// Crypto: one trend-following trade per bar, held 8 bars, in the direction
/// of momentum.
///
/// Sends `momentum_score` = |2 Phi(momentum) - 1| (how strong the momentum
/// is, either way), `volatility_score` = Phi(-2 log(short/long volatility))
/// (how calm the market is) and `volume_score` = whether signed volume
/// agrees with the direction (Phi(flow) for a long, 1 - Phi(flow) for a
/// short); the confidence is their `analysis_weights` blend. It trades when
/// the confidence reaches the session's threshold, with the session's
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
        let dir = if s.momentum >= 0.0 { 1.0 } else { -1.0 };
        let strength = (2.0 * normal_cdf(s.momentum) - 1.0).abs();
        let calm = normal_cdf(-2.0 * s.vol_ratio());
        let flow = normal_cdf(s.flow);
        let agree = if dir > 0.0 { flow } else { 1.0 - flow };
        let session = market.contexts[t].session;
        let unit = dir * forward(market, t, Self::HOLD) - FEE - session_spread(session);
        Opportunity {
            bar: t,
            context: market.contexts[t],
            features: vec![strength, calm, agree],
            strategy: None,
            slot: session as usize,
            data: vec![unit],
        }
    }
    fn trade(&self, o: &Opportunity, v: &[f64]) -> Trade {
        let confidence = score(&self.weights.map(|i| v[i]), &o.features);
        if confidence < v[self.threshold[o.slot]] {
            return Trade::skip(o, confidence);
        }
        let r = v[self.multiplier[o.slot]] * o.data[0];
        Trade {
            traded: true,
            return_pct: r,
            close_bar: o.bar + Self::HOLD,
            strategy: None,
            confidence,
            path: vec![],
            capital: None,
        }
    }
}

/// The stocks module's strategies, in its parameters' order.
pub const STOCK_STRATEGIES: [&str; 5] =
    ["leveraged_etfs", "momentum_amp", "sector_rotation", "volatility_trading", "core_equity"];
/// Per strategy: leverage, holding period in bars, round-trip spread per unit of notional.
const STOCK_LEGS: [(f64, usize, f64); 5] =
    [(3.0, 4, 0.0010), (1.5, 8, 0.0006), (1.0, 16, 0.0005), (1.0, 2, 0.0008), (1.0, 8, 0.0003)];

/// Stocks: one trade per bar, of the strategy the bar's signals call for.
///
/// The strategy and its direction come first, from the trailing signals:
/// volatility waking up (log short/long volatility > 0.35) calls for
/// `volatility_trading` with the momentum; a strong momentum (|m| >= 1.5)
/// that the slow trend confirms for `leveraged_etfs` (3x); a clear momentum
/// (|m| >= 0.75) for `momentum_amp` (1.5x); a slow trend alone (|trend| of
/// at least 1) for `sector_rotation` with the trend; anything else for `core_equity`,
/// long only. Holding periods are 2 to 16 bars (`STOCK_LEGS`). It sends, for
/// that direction d, `technical_confidence` = Phi(d momentum),
/// `regime_confidence` = Phi(d trend) and `pattern_confidence` = Phi(-d z)
/// (a pull-back against the direction), whose `intelligence_weights` blend is
/// the confidence, and `sector_momentum` = tanh(trend), which is not scored.
/// It trades when the confidence reaches the strategy's threshold, with
/// notional `multiplier x 0.2 x leverage`.
#[derive(Debug)]
pub struct StocksRule {
    threshold: [usize; 5],
    multiplier: [usize; 5],
    weights: [usize; 3],
}

impl StocksRule {
    pub fn new(space: &ModuleSpace) -> Result<StocksRule, RuleError> {
        let mut threshold = [0; 5];
        let mut multiplier = [0; 5];
        for (i, n) in STOCK_STRATEGIES.iter().enumerate() {
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

    /// The strategy (its slot) and direction the signals call for.
    fn choose(s: &super::market::Signals) -> (usize, f64) {
        let sign = |x: f64| if x >= 0.0 { 1.0 } else { -1.0 };
        if s.vol_ratio() > 0.35 {
            (3, sign(s.momentum))
        } else if s.momentum.abs() >= 1.5 && sign(s.momentum) == sign(s.trend) {
            (0, sign(s.momentum))
        } else if s.momentum.abs() >= 0.75 {
            (1, sign(s.momentum))
        } else if s.trend.abs() >= 1.0 {
            (2, sign(s.trend))
        } else {
            (4, 1.0)
        }
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
        let (slot, dir) = Self::choose(s);
        let (_, hold, spread) = STOCK_LEGS[slot];
        Opportunity {
            bar: t,
            context: market.contexts[t],
            features: vec![
                normal_cdf(dir * s.momentum),
                normal_cdf(dir * s.trend),
                normal_cdf(-dir * s.z),
                s.trend.tanh(),
            ],
            strategy: Some(STOCK_STRATEGIES[slot]),
            slot,
            data: vec![dir * forward(market, t, hold) - FEE - spread],
        }
    }
    fn trade(&self, o: &Opportunity, v: &[f64]) -> Trade {
        let confidence = score(&self.weights.map(|i| v[i]), &o.features[..3]);
        if confidence < v[self.threshold[o.slot]] {
            return Trade::skip(o, confidence);
        }
        let (leverage, hold, _) = STOCK_LEGS[o.slot];
        Trade {
            traded: true,
            return_pct: v[self.multiplier[o.slot]] * 0.2 * leverage * o.data[0],
            close_bar: o.bar + hold,
            strategy: o.strategy,
            confidence,
            path: vec![],
            capital: None,
        }
    }
}

/// The options module's strategies, in its parameters' order.
pub const OPTION_STRATEGIES: [&str; 5] =
    ["long_calls", "bull_spreads", "protective_puts", "covered_calls", "straddles"];

/// Options: one position per bar, of the strategy the bar calls for.
///
/// With b = Phi(0.7 momentum + 0.5 flow) (bullishness), `iv` the quoted
/// implied volatility and `rv` the short-run realised volatility: options
/// cheaper than what the market just did (rv > iv) call for `straddles`
/// (confidence Phi(3 log(rv/iv))); a neutral signal (0.35 < b < 0.65) for
/// `covered_calls`, selling rich premium (confidence (1 - |2b - 1|) Phi(3
/// log(iv/rv))); a bullish one (b >= 0.65) for `long_calls` when the slow
/// trend agrees (confidence b) and for `bull_spreads` when it does not
/// (confidence 2 b Phi(trend)); a bearish one (b <= 0.35) for
/// `protective_puts` (confidence (1 - b) Phi(-trend)). That confidence is
/// sent as `signal_confidence`, with `implied_volatility` and
/// `expiration_days`; it opens when the confidence reaches the strategy's
/// threshold. Capital is `min(contracts x 12%, max_allocation)`. Every bar it
/// is repriced with Black-Scholes at the market's implied volatility (time
/// to expiry from the timestamps); it closes when its P&L, as a fraction of
/// the premium, reaches `-stop_loss_pct` or `+profit_target_pct`, at expiry,
/// or after `OPTION_HOLD` checks. Expiries cycle through 3-14 days on hourly
/// bars and 14-60 days on daily ones.
#[derive(Debug)]
pub struct OptionsRule {
    threshold: [usize; 5],
    stop: usize,
    target: usize,
    contracts: usize,
    allocation: usize,
}

/// Checks (bars) a position is held at most.
const OPTION_HOLD: usize = 24;
/// Bid-ask paid per round trip, as a fraction of the premium.
const OPTION_SPREAD: f64 = 0.03;
/// Capital per contract-multiplier unit.
const CAPITAL_PER_CONTRACT: f64 = 0.12;

impl OptionsRule {
    pub fn new(space: &ModuleSpace) -> Result<OptionsRule, RuleError> {
        let mut threshold = [0; 5];
        for (i, n) in OPTION_STRATEGIES.iter().enumerate() {
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

    /// The strategy (its slot) the bar calls for and its confidence.
    fn choose(sig: &super::market::Signals, iv: f64, rv: f64) -> (usize, f64) {
        let b = normal_cdf(0.7 * sig.momentum + 0.5 * sig.flow);
        if rv > iv {
            (4, normal_cdf(3.0 * (rv / iv).ln()))
        } else if b > 0.35 && b < 0.65 {
            (3, (1.0 - (2.0 * b - 1.0).abs()) * normal_cdf(3.0 * (iv / rv).ln()))
        } else if b >= 0.65 && sig.trend > 0.0 {
            (0, b)
        } else if b >= 0.65 {
            (1, 2.0 * b * normal_cdf(sig.trend))
        } else {
            (2, (1.0 - b) * normal_cdf(-sig.trend))
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
        let iv = market.implied_vol[t];
        let rv = sig.vol_short * market.periods_per_year.sqrt();
        let (slot, confidence) = Self::choose(sig, iv, rv);
        let cycle: [f64; 5] = if market.periods_per_year > 2_000.0 {
            [3.0, 5.0, 7.0, 10.0, 14.0]
        } else {
            [14.0, 21.0, 30.0, 45.0, 60.0]
        };
        let days = cycle[t % 5];
        let tau = days / 365.0;
        let spot = market.bars[t].close;
        let (k_atm, k_otm) = (spot, spot * (iv * tau.sqrt()).exp());
        // data: the P&L per unit of premium at each check, to expiry or OPTION_HOLD.
        let short = slot == 3;
        let v0 = Self::value(slot, spot, k_atm, k_otm, iv, tau).max(1e-9 * spot);
        let mut data = Vec::with_capacity(OPTION_HOLD);
        for k in 1..=OPTION_HOLD {
            let elapsed = (market.bars[t + k].time - market.bars[t].time) as f64 / (365.0 * 86_400.0);
            let left = (tau - elapsed).max(0.0);
            let vk = Self::value(slot, market.bars[t + k].close, k_atm, k_otm, market.implied_vol[t + k], left);
            data.push(if short { (v0 - vk) / v0 } else { (vk - v0) / v0 });
            if left <= 0.0 {
                break;
            }
        }
        Opportunity {
            bar: t,
            context: market.contexts[t],
            features: vec![iv, days, confidence],
            strategy: Some(OPTION_STRATEGIES[slot]),
            slot,
            data,
        }
    }
    fn trade(&self, o: &Opportunity, v: &[f64]) -> Trade {
        let confidence = o.features[2];
        if confidence < v[self.threshold[o.slot]] {
            return Trade::skip(o, confidence);
        }
        let path = &o.data;
        let (stop, target) = (v[self.stop], v[self.target]);
        let held = path.iter().position(|&p| p <= -stop || p >= target).map_or(path.len(), |k| k + 1);
        let capital = (v[self.contracts] * CAPITAL_PER_CONTRACT).min(v[self.allocation]);
        Trade {
            traded: true,
            return_pct: capital * (path[held - 1] - OPTION_SPREAD),
            // Reported at the horizon, with the whole path (see `Trade::path`).
            close_bar: o.bar + path.len(),
            strategy: o.strategy,
            confidence,
            path: path.to_vec(),
            capital: Some(capital),
        }
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
