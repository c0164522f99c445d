//! Markets to backtest against: OHLCV bars labelled with a session and a regime.
//!
//! A market is either the built-in synthetic one or a user's CSV (see
//! [`super::csv`]). Both go through the same trailing indicators
//! ([`SignalState`]), which is all the trading rules see, so a rule cannot
//! peek at the synthetic market's hidden state.
//!
//! The synthetic market has a hidden, persistent order-flow factor. In a
//! trend it moves the next returns (more in the sessions where information
//! is), and it shows, noisily, in momentum and in unusual volume; in a range
//! returns revert against momentum instead; a volatile market is mostly
//! noise. The factor's strength drifts slowly over the stream. Those are the
//! only reasons one parameter setting earns more than another, which is why
//! the best settings differ by session and regime and drift over time.

use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rand_pcg::Pcg64Mcg;

use crate::space::{Context, Regime, Session};

/// One OHLCV bar; `time` is seconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bar {
    pub time: i64,
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    pub volume: f64,
}

/// Bars with their context, the indicators rules read, and an implied
/// volatility for pricing options.
#[derive(Debug, Clone)]
pub struct Market {
    /// `synthetic(seed=..)` or the CSV's path, for reports.
    pub source: String,
    pub bars: Vec<Bar>,
    pub contexts: Vec<Context>,
    /// Indicators known at each bar's close.
    pub signals: Vec<Signals>,
    /// Annualised implied volatility quoted at each bar's close.
    pub implied_vol: Vec<f64>,
    /// Bars per year, from the span of the timestamps.
    pub periods_per_year: f64,
}

/// Trailing indicators after a bar's close: no value uses a later bar.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Signals {
    /// The bar's log return over its long-run volatility (clipped to +-6).
    pub z: f64,
    /// Fast momentum: an EMA of `z` rescaled to unit variance.
    pub momentum: f64,
    /// Slow trend: the same over a longer window.
    pub trend: f64,
    /// Signed volume: the return's sign times how unusual the volume was,
    /// smoothed and rescaled to unit variance.
    pub flow: f64,
    /// Per-bar volatility, short and long windows.
    pub vol_short: f64,
    pub vol_long: f64,
}

impl Signals {
    /// log(short / long volatility): above 0 when the market is waking up.
    pub fn vol_ratio(&self) -> f64 {
        (self.vol_short / self.vol_long).ln()
    }
}

/// Incremental indicators, so the synthetic market and the CSV loader compute
/// them identically.
#[derive(Debug, Clone)]
pub struct SignalState {
    prev_close: Option<f64>,
    var_short: f64,
    var_long: f64,
    mom: f64,
    trend: f64,
    flow: f64,
    lv_mean: f64,
    lv_var: f64,
    seen: usize,
}

const A_SHORT: f64 = 1.0 / 8.0;
const A_LONG: f64 = 1.0 / 96.0;
const A_MOM: f64 = 1.0 / 8.0;
const A_TREND: f64 = 1.0 / 48.0;
const A_FLOW: f64 = 1.0 / 4.0;
const A_VOLUME: f64 = 1.0 / 48.0;

/// The standard deviation of an EMA with weight `a` of unit white noise is
/// sqrt(a / (2 - a)); dividing by it puts every smoothed indicator on one scale.
fn unit(a: f64) -> f64 {
    ((2.0 - a) / a).sqrt()
}

impl SignalState {
    /// `vol_guess`: a per-bar volatility to start from before data has set it.
    pub fn new(vol_guess: f64) -> SignalState {
        let v = vol_guess * vol_guess;
        SignalState {
            prev_close: None,
            var_short: v,
            var_long: v,
            mom: 0.0,
            trend: 0.0,
            flow: 0.0,
            lv_mean: 0.0,
            lv_var: 1.0,
            seen: 0,
        }
    }

    pub fn update(&mut self, bar: &Bar) -> Signals {
        let r = self.prev_close.map(|p| (bar.close / p).ln()).unwrap_or(0.0);
        self.prev_close = Some(bar.close);
        let lv = (bar.volume + 1.0).ln();
        if self.seen == 0 {
            self.lv_mean = lv;
        }
        self.seen += 1;
        let z = (r / self.var_long.sqrt()).clamp(-6.0, 6.0);
        let vz = ((lv - self.lv_mean) / self.lv_var.sqrt().max(1e-9)).clamp(-3.0, 3.0);
        self.mom += A_MOM * (z - self.mom);
        self.trend += A_TREND * (z - self.trend);
        self.flow += A_FLOW * (z.signum() * vz - self.flow);
        self.var_short += A_SHORT * (r * r - self.var_short);
        self.var_long += A_LONG * (r * r - self.var_long);
        let d = lv - self.lv_mean;
        self.lv_mean += A_VOLUME * d;
        self.lv_var += A_VOLUME * (d * d - self.lv_var);
        Signals {
            z,
            momentum: self.mom * unit(A_MOM),
            trend: self.trend * unit(A_TREND),
            flow: self.flow * unit(A_FLOW),
            vol_short: self.var_short.sqrt().max(1e-12),
            vol_long: self.var_long.sqrt().max(1e-12),
        }
    }
}

/// The session a UTC timestamp falls in: Asia 00-08, Europe 08-14, US 14-24.
pub fn session_at(time: i64) -> Session {
    match time.rem_euclid(86_400) / 3_600 {
        0..=7 => Session::AsiaPrime,
        8..=13 => Session::EuropePrime,
        _ => Session::UsPrime,
    }
}

/// Regime labels for data that has none: a trailing classifier. Volatile when
/// short-run volatility is well above long-run, otherwise by the slow trend.
pub fn classify_regime(s: &Signals) -> Regime {
    if s.vol_ratio() > 0.35 {
        Regime::Volatile
    } else if s.trend > 1.0 {
        Regime::Bullish
    } else if s.trend < -1.0 {
        Regime::Bearish
    } else {
        Regime::Sideways
    }
}

impl Market {
    /// A market from bars without labels (a CSV): sessions from the clock,
    /// regimes from [`classify_regime`], implied volatility from trailing
    /// realised volatility with a 10% premium.
    pub fn from_bars(source: String, bars: Vec<Bar>) -> Market {
        let periods_per_year = periods_per_year(&bars);
        let mut state = SignalState::new(first_vol(&bars));
        let signals: Vec<Signals> = bars.iter().map(|b| state.update(b)).collect();
        let contexts =
            bars.iter().zip(&signals).map(|(b, s)| Context::new(session_at(b.time), classify_regime(s))).collect();
        let implied_vol = signals.iter().map(|s| 1.1 * s.vol_long * periods_per_year.sqrt()).collect();
        Market { source, bars, contexts, signals, implied_vol, periods_per_year }
    }

    pub fn len(&self) -> usize {
        self.bars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bars.is_empty()
    }
}

fn first_vol(bars: &[Bar]) -> f64 {
    let rs: Vec<f64> = bars.windows(2).take(50).map(|w| (w[1].close / w[0].close).ln()).collect();
    if rs.is_empty() {
        return 0.01;
    }
    (rs.iter().map(|r| r * r).sum::<f64>() / rs.len() as f64).sqrt().max(1e-6)
}

/// Bars per year over the whole span: 8,760 for hourly bars round the clock,
/// about 252 for a stock's trading days (weekends and holidays have no bar).
fn periods_per_year(bars: &[Bar]) -> f64 {
    match (bars.first(), bars.last()) {
        (Some(a), Some(b)) if b.time > a.time => (bars.len() - 1) as f64 * 365.0 * 86_400.0 / (b.time - a.time) as f64,
        _ => 8_760.0,
    }
}

/// Per-bar autocorrelation of the hidden order-flow factor (unit variance).
const FACTOR_PERSISTENCE: f64 = 0.95;

/// How the synthetic market's next return responds to what is known now,
/// per regime and session. Loadings are in units of the bar's volatility.
#[derive(Debug, Clone)]
pub struct SyntheticMarket {
    pub seed: u64,
    pub bars: usize,
    /// Per-bar volatility in an average session of a calm regime.
    pub base_vol: f64,
    /// Mean bars between regime switches.
    pub regime_duration: f64,
    /// Bars in one cycle of the slow drift of the factor's strength.
    pub drift_period: f64,
}

impl SyntheticMarket {
    pub fn new(seed: u64, bars: usize) -> SyntheticMarket {
        SyntheticMarket { seed, bars, base_vol: 0.006, regime_duration: 240.0, drift_period: bars as f64 / 1.5 }
    }

    fn regime_vol(r: Regime) -> f64 {
        match r {
            Regime::Bullish => 0.9,
            Regime::Bearish => 1.2,
            Regime::Sideways => 0.7,
            Regime::Volatile => 2.0,
        }
    }

    fn session_vol(s: Session) -> f64 {
        match s {
            Session::AsiaPrime => 0.75,
            Session::EuropePrime => 1.0,
            Session::UsPrime => 1.25,
        }
    }

    /// Drift per bar, in volatility units.
    fn drift(r: Regime) -> f64 {
        match r {
            Regime::Bullish => 0.04,
            Regime::Bearish => -0.04,
            Regime::Sideways | Regime::Volatile => 0.0,
        }
    }

    /// How much of the hidden order-flow factor shows up in the next
    /// return: trends are where informed flow pays, more so where liquidity
    /// (and information) is, in Europe and the US.
    fn factor_loading(s: Session, r: Regime) -> f64 {
        let info = match s {
            Session::AsiaPrime => 0.6,
            Session::EuropePrime => 1.0,
            Session::UsPrime => 1.3,
        };
        let base = match r {
            Regime::Bullish | Regime::Bearish => 0.5,
            Regime::Sideways => 0.0,
            Regime::Volatile => 0.06,
        };
        base * info
    }

    /// Loading on the trailing momentum itself: a range pushes back against
    /// whatever just moved, so trend-following loses there.
    fn reversion_loading(r: Regime) -> f64 {
        match r {
            Regime::Sideways => -0.3,
            Regime::Volatile => -0.05,
            _ => 0.0,
        }
    }

    /// Implied over expected realised volatility: options are rich in a calm
    /// range and cheap when the market is volatile.
    fn iv_premium(r: Regime) -> f64 {
        match r {
            Regime::Bullish | Regime::Bearish => 1.05,
            Regime::Sideways => 1.3,
            Regime::Volatile => 0.8,
        }
    }

    /// The market: hourly bars from 2024-01-01 00:00 UTC, regimes switching
    /// as a Markov chain, every random draw from the seed.
    pub fn generate(&self) -> Market {
        let mut rng = Pcg64Mcg::seed_from_u64(self.seed ^ 0x6d61_726b_6574);
        let start = 1_704_067_200i64;
        let mut regime = Regime::ALL[rng.random_range(0..Regime::ALL.len())];
        let mut state = SignalState::new(self.base_vol);
        let mut close = 100.0;
        let (mut bars, mut contexts, mut signals, mut implied_vol) = (vec![], vec![], vec![], vec![]);
        let mut last = Signals { vol_short: self.base_vol, vol_long: self.base_vol, ..Default::default() };
        let periods: f64 = 8_760.0;
        let mut factor: f64 = rng.sample(StandardNormal);
        for t in 0..self.bars {
            let time = start + 3_600 * t as i64;
            if rng.random::<f64>() < 1.0 / self.regime_duration {
                let others: Vec<Regime> = Regime::ALL.into_iter().filter(|&r| r != regime).collect();
                regime = others[rng.random_range(0..others.len())];
            }
            let session = session_at(time);
            let vol = self.base_vol * Self::regime_vol(regime) * Self::session_vol(session);
            // The factor's predictive power waxes and wanes over the stream,
            // so yesterday's best threshold is not today's.
            let cycle = (2.0 * std::f64::consts::PI * t as f64 / self.drift_period).sin();
            let strength = 1.0 + 0.5 * cycle;
            let signal = Self::drift(regime)
                + strength * Self::factor_loading(session, regime) * factor
                + Self::reversion_loading(regime) * last.momentum;
            let e: f64 = rng.sample(StandardNormal);
            let jitter: f64 = rng.sample(StandardNormal);
            let r = vol * (signal + e) * (1.0 + 0.1 * jitter).max(0.5);
            let open = close;
            close *= r.exp();
            let (u1, u2): (f64, f64) = (rng.sample(StandardNormal), rng.sample(StandardNormal));
            let high = open.max(close) * (0.3 * vol * u1.abs()).exp();
            let low = open.min(close) * (-0.3 * vol * u2.abs()).exp();
            let noise: f64 = rng.sample(StandardNormal);
            // Informed flow trades in size: volume is unusual when the factor is strong.
            let volume = (10.0 + 0.4 * e.abs() + 0.5 * factor.abs() + 0.3 * noise).exp();
            let innovation: f64 = rng.sample(StandardNormal);
            factor = FACTOR_PERSISTENCE * factor + (1.0 - FACTOR_PERSISTENCE * FACTOR_PERSISTENCE).sqrt() * innovation;
            let bar = Bar { time, open, high, low, close, volume };
            last = state.update(&bar);
            let iv_noise: f64 = rng.sample(StandardNormal);
            let expected_vol = self.base_vol * Self::regime_vol(regime) * periods.sqrt();
            implied_vol.push(expected_vol * Self::iv_premium(regime) * (1.0 + 0.05 * iv_noise));
            bars.push(bar);
            contexts.push(Context::new(session, regime));
            signals.push(last);
        }
        Market {
            source: format!("synthetic(seed={})", self.seed),
            bars,
            contexts,
            signals,
            implied_vol,
            periods_per_year: periods,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_synthetic_market_is_seeded_and_visits_every_context() {
        let a = SyntheticMarket::new(3, 6_000).generate();
        let b = SyntheticMarket::new(3, 6_000).generate();
        assert_eq!(a.bars, b.bars);
        let mut seen = [0usize; Context::COUNT];
        for c in &a.contexts {
            seen[c.index()] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        assert!(a.bars.iter().all(|b| b.low <= b.open.min(b.close) && b.high >= b.open.max(b.close)));
    }

    /// Momentum predicts the next return with the sign the regime gives it.
    #[test]
    fn momentum_pays_in_trends_and_fails_in_a_range() {
        let m = SyntheticMarket::new(5, 40_000).generate();
        let (mut trend, mut range) = ((0.0, 0usize), (0.0, 0usize));
        for t in 1..m.len() - 1 {
            let next = m.signals[t + 1].z * m.signals[t].momentum;
            match m.contexts[t + 1].regime {
                Regime::Bullish | Regime::Bearish => trend = (trend.0 + next, trend.1 + 1),
                Regime::Sideways => range = (range.0 + next, range.1 + 1),
                Regime::Volatile => {}
            }
        }
        assert!(trend.0 / trend.1 as f64 > 0.05, "{trend:?}");
        assert!(range.0 / (range.1 as f64) < -0.05, "{range:?}");
    }

    #[test]
    fn sessions_follow_the_utc_clock() {
        assert_eq!(session_at(0), Session::AsiaPrime);
        assert_eq!(session_at(8 * 3_600), Session::EuropePrime);
        assert_eq!(session_at(14 * 3_600), Session::UsPrime);
        assert_eq!(session_at(86_400 + 23 * 3_600), Session::UsPrime);
    }
}
