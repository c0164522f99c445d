//! The real market data the project ships, compiled into the library so that
//! `paramopt backtest` (and `paramopt demo`) run from any directory and from
//! an installed binary. `benches/data/README.md` says where each file comes
//! from.
//!
//! - BTC/USD hourly bars (Coinbase, 2017-07-01 to 2019-10-17, 20,111 bars):
//!   the crypto module's market. Sessions come from the UTC clock.
//! - Nine US stocks' daily bars (2004-2014): the stocks and options
//!   modules' markets, one [`Market`] per ticker. Prices are adjusted
//!   (`adj_factor`, splits and dividends) so that a split does not look like
//!   a crash, volume is in today's shares (divided by `split_factor`), and
//!   DELL's 20 zero-volume holiday rows are dropped. A daily bar is stamped
//!   at the New York close (see [`super::csv::DAILY_CLOSE_UTC`]), which puts
//!   every stock decision in the `us_prime` session: see
//!   [`super::stream::Stream::interleaved`] for why.
//!
//! - Twenty S&P 500 stocks' daily adjusted closes (2005-01-03 to
//!   2022-12-28, 4,529 dates, every ticker on every date): the held-out
//!   market of the stocks and options modules (`paramopt backtest --market
//!   sp500`), one [`Market`] per ticker. The file has closes only, so each
//!   bar's open, high and low are its close and its volume is the constant
//!   [`SP500_VOLUME`]: the indicators read closes (returns, volatilities,
//!   momentum, trend) and volume only for `flow`, which is 0 throughout.
//!
//! The first two go through the one validating parser
//! ([`super::csv::parse_series`]), the third through its wide-format twin
//! ([`super::csv::parse_wide_closes`]), so a damaged copy fails with its line
//! and value.

use super::csv::{self, Columns, CsvError};
use super::market::Market;

pub const BTC_FILE: &str = "benches/data/btcusd_1h_coinbase_2017-07-01_2019-10-17.csv";
pub const STOCKS_FILE: &str = "benches/data/us_stocks_9tickers_daily_ohlcv_2004-2014_zipline.csv";

const BTC: &str = include_str!("../../benches/data/btcusd_1h_coinbase_2017-07-01_2019-10-17.csv");
const STOCKS: &str = include_str!("../../benches/data/us_stocks_9tickers_daily_ohlcv_2004-2014_zipline.csv");
pub const SP500_FILE: &str = "benches/data/us_stocks_20tickers_daily_adjclose_2005-2022_skfolio.csv";
const SP500: &str = include_str!("../../benches/data/us_stocks_20tickers_daily_adjclose_2005-2022_skfolio.csv");

/// The volume of every bar of the S&P 500 file, which has none: a constant,
/// so the signed-volume indicator (`flow`) is 0 rather than undefined.
pub const SP500_VOLUME: f64 = 1.0;

const BTC_COLUMNS: Columns = Columns {
    ohlcv: ["timestamp_utc", "open", "high", "low", "close", "volume_btc"],
    symbol: None,
    price_factor: None,
    volume_divisor: None,
    drop_zero_volume: false,
};

const STOCK_COLUMNS: Columns = Columns {
    ohlcv: ["date", "open", "high", "low", "close", "volume"],
    symbol: Some("symbol"),
    price_factor: Some("adj_factor"),
    volume_divisor: Some("split_factor"),
    drop_zero_volume: true,
};

/// BTC/USD hourly: the crypto module's market.
pub fn btc_hourly() -> Result<Market, CsvError> {
    let series = csv::parse_series(BTC, BTC_FILE, &BTC_COLUMNS)?;
    let bars = series.into_iter().next().map(|s| s.bars).unwrap_or_default();
    if bars.len() < csv::MIN_BARS {
        return Err(CsvError::TooShort { file: BTC_FILE.into(), rows: bars.len(), need: csv::MIN_BARS });
    }
    Ok(Market::from_bars(format!("BTC/USD 1h ({BTC_FILE})"), bars))
}

/// The nine stocks, one market per ticker in the file's order, each named
/// `TICKER daily (file)`.
pub fn us_stocks_daily() -> Result<Vec<Market>, CsvError> {
    parse_stocks(STOCKS, STOCKS_FILE)
}

/// The twenty S&P 500 stocks (the held-out market), one market per ticker in
/// the file's order, each named `TICKER daily (file)`.
pub fn sp500_daily() -> Result<Vec<Market>, CsvError> {
    markets(csv::parse_wide_closes(SP500, SP500_FILE, "date", SP500_VOLUME)?, SP500_FILE)
}

fn parse_stocks(text: &str, file: &str) -> Result<Vec<Market>, CsvError> {
    markets(csv::parse_series(text, file, &STOCK_COLUMNS)?, file)
}

fn markets(series: Vec<csv::Series>, file: &str) -> Result<Vec<Market>, CsvError> {
    series
        .into_iter()
        .map(|s| {
            if s.bars.len() < csv::MIN_BARS {
                return Err(CsvError::TooShort {
                    file: format!("{file} ({})", s.symbol),
                    rows: s.bars.len(),
                    need: csv::MIN_BARS,
                });
            }
            Ok(Market::from_bars(format!("{} daily ({file})", s.symbol), s.bars))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::Session;

    #[test]
    fn the_shipped_files_load_with_the_documented_sizes() {
        let btc = btc_hourly().unwrap();
        assert_eq!(btc.len(), 20_111);
        assert!((btc.periods_per_year - 8_760.0).abs() < 5.0, "{}", btc.periods_per_year);
        let stocks = us_stocks_daily().unwrap();
        let names: Vec<&str> = stocks.iter().map(|m| m.source.split(' ').next().unwrap()).collect();
        assert_eq!(names, ["AAPL", "AMD", "CERN", "COST", "DELL", "GPS", "INTC", "MMM", "MSFT"]);
        assert_eq!(stocks.iter().map(Market::len).sum::<usize>(), 24_646 - 20);
        for m in &stocks {
            assert!((240.0..260.0).contains(&m.periods_per_year), "{}: {}", m.source, m.periods_per_year);
            assert!(m.contexts.iter().all(|c| c.session == Session::UsPrime), "{}", m.source);
            // Adjusted prices: no day moves by half (AAPL split 7:1 in 2014 and 2:1 in 2005).
            let worst = m.bars.windows(2).map(|w| (w[1].close / w[0].close).ln().abs()).fold(0.0, f64::max);
            assert!(worst < 0.7, "{}: a daily move of {worst}", m.source);
        }
    }

    #[test]
    fn the_held_out_file_loads_with_the_documented_size_on_one_calendar() {
        let stocks = sp500_daily().unwrap();
        let names: Vec<&str> = stocks.iter().map(|m| m.source.split(' ').next().unwrap()).collect();
        assert_eq!(
            names,
            [
                "AAPL", "AMD", "BAC", "BBY", "CVX", "GE", "HD", "JNJ", "JPM", "KO", "LLY", "MRK", "MSFT", "PEP", "PFE",
                "PG", "RRC", "UNH", "WMT", "XOM"
            ]
        );
        let date = |t: i64| jiff::Timestamp::from_second(t).unwrap().to_string();
        for m in &stocks {
            assert_eq!(m.len(), 4_529, "{}", m.source);
            assert_eq!(
                m.bars.iter().map(|b| b.time).collect::<Vec<_>>(),
                stocks[0].bars.iter().map(|b| b.time).collect::<Vec<_>>()
            );
            assert!((240.0..260.0).contains(&m.periods_per_year), "{}: {}", m.source, m.periods_per_year);
            assert!(m.contexts.iter().all(|c| c.session == Session::UsPrime), "{}", m.source);
            assert!(m.bars.iter().all(|b| b.open == b.close && b.high == b.close && b.low == b.close));
            // Close-only bars: every indicator is finite and signed volume is flat.
            for s in &m.signals {
                assert!(
                    [s.z, s.momentum, s.trend, s.vol_short, s.vol_long].iter().all(|v| v.is_finite()),
                    "{}",
                    m.source
                );
                assert_eq!(s.flow, 0.0, "{}", m.source);
            }
            assert!(m.implied_vol.iter().all(|v| v.is_finite() && *v > 0.0), "{}", m.source);
            let worst = m.bars.windows(2).map(|w| (w[1].close / w[0].close).ln().abs()).fold(0.0, f64::max);
            assert!(worst < 0.7, "{}: a daily move of {worst}", m.source);
        }
        assert!(date(stocks[0].bars[0].time).starts_with("2005-01-03"));
        assert!(date(stocks[0].bars[4_528].time).starts_with("2022-12-28"));
        // The modules' features and outcomes on it are finite too.
        let spaces = crate::space::Spaces::builtin();
        for module in ["stocks", "options"] {
            let stream =
                crate::eval::stream::Stream::interleaved(spaces.get(module).unwrap().clone(), &stocks).unwrap();
            assert!(stream.opportunities.len() > 20 * 4_000, "{module}");
            let defaults = stream.space.defaults();
            for o in &stream.opportunities {
                assert!(o.features.iter().all(|v| v.is_finite()), "{module}: {o:?}");
                assert!(stream.rule.trade(o, &defaults).return_pct.is_finite(), "{module}: {o:?}");
            }
        }
    }

    #[test]
    fn a_damaged_held_out_cell_names_its_line_and_ticker() {
        let mut lines: Vec<String> = SP500.lines().take(400).map(String::from).collect();
        let mut cells: Vec<String> = lines[10].split(',').map(String::from).collect();
        cells[2].insert(0, 'x');
        lines[10] = cells.join(",");
        let err = csv::parse_wide_closes(&lines.join("\n"), "h.csv", "date", 1.0).unwrap_err().to_string();
        assert!(err.starts_with("h.csv:11: AMD = \"x"), "{err}");
    }

    #[test]
    fn a_damaged_stock_row_names_its_line() {
        let mut lines: Vec<String> = STOCKS.lines().take(400).map(String::from).collect();
        lines[10] = lines[10].replacen(",AAPL,", ",AAPL,x", 1);
        let err = parse_stocks(&lines.join("\n"), "s.csv").unwrap_err().to_string();
        assert!(err.starts_with("s.csv:11: open = "), "{err}");
    }
}
