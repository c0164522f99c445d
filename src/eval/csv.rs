//! The OHLCV CSV loader: a user's market for `paramopt backtest --csv`, and
//! the real data the project ships (`super::real`), through one parser.
//!
//! The header must name `timestamp,open,high,low,close,volume` (any order,
//! extra columns ignored); [`Columns`] names other headers, a column that
//! splits rows into several series (a ticker) and adjustment factors.
//! Timestamps are Unix seconds, RFC 3339, or a date alone (`2004-01-02`),
//! which is taken as that day's New York close, 21:00 UTC. Every row is
//! checked, and the first bad one is reported with its line number and value,
//! because a backtest on silently repaired data is worse than none.

use std::path::Path;

use super::market::{Bar, Market};

/// Fewest bars a backtest can use: indicators warm up over the first 200.
pub const MIN_BARS: usize = 300;

/// Seconds after midnight UTC a date-only timestamp stands for: 16:00 in New
/// York in winter (20:00 UTC in summer), so a daily bar falls in `us_prime`.
pub const DAILY_CLOSE_UTC: i64 = 21 * 3_600;

#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: the header has no {column:?} column (header: {header:?})")]
    MissingColumn { file: String, column: &'static str, header: String },
    #[error("{file}:{line}: {field} = {value:?}: {reason}")]
    BadRow { file: String, line: usize, field: String, value: String, reason: &'static str },
    #[error("{file}: {rows} bars; a backtest needs at least {need}")]
    TooShort { file: String, rows: usize, need: usize },
}

/// The columns a file's rows are read from.
#[derive(Debug, Clone, Copy)]
pub struct Columns {
    /// Timestamp, open, high, low, close, volume, in that order.
    pub ohlcv: [&'static str; 6],
    /// Rows with different values here are separate series (each strictly
    /// increasing in time on its own), in the order they first appear.
    pub symbol: Option<&'static str>,
    /// Multiplies open, high, low and close (a split and dividend adjustment).
    pub price_factor: Option<&'static str>,
    /// Divides the volume (a split factor: volume in today's shares).
    pub volume_divisor: Option<&'static str>,
    /// Rows with zero volume are dropped (a holiday row of a data vendor).
    pub drop_zero_volume: bool,
}

/// The format a user's CSV is in.
pub const USER_COLUMNS: Columns = Columns {
    ohlcv: ["timestamp", "open", "high", "low", "close", "volume"],
    symbol: None,
    price_factor: None,
    volume_divisor: None,
    drop_zero_volume: false,
};

/// One series of a file: its symbol (empty without a symbol column) and bars.
#[derive(Debug, Clone)]
pub struct Series {
    pub symbol: String,
    pub bars: Vec<Bar>,
    /// Rows dropped for zero volume.
    pub dropped: usize,
}

pub fn load(path: &Path) -> Result<Market, CsvError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| CsvError::Io { file: file.clone(), source })?;
    parse(&text, &file)
}

/// Parses CSV text in the user format; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Market, CsvError> {
    let series = parse_series(text, file, &USER_COLUMNS)?;
    let bars = series.into_iter().next().map(|s| s.bars).unwrap_or_default();
    if bars.len() < MIN_BARS {
        return Err(CsvError::TooShort { file: file.to_string(), rows: bars.len(), need: MIN_BARS });
    }
    Ok(Market::from_bars(file.to_string(), bars))
}

/// Parses CSV text into its series, checking every row.
pub fn parse_series(text: &str, file: &str, columns: &Columns) -> Result<Vec<Series>, CsvError> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let header = lines.next().map(|(_, l)| l).unwrap_or("");
    let names: Vec<String> = header.split(',').map(|h| h.trim().to_ascii_lowercase()).collect();
    let find = |column: &'static str| {
        names.iter().position(|n| n == column).ok_or_else(|| CsvError::MissingColumn {
            file: file.to_string(),
            column,
            header: header.to_string(),
        })
    };
    let optional = |c: Option<&'static str>| c.map(find).transpose();
    let mut col = [0usize; 6];
    for (i, c) in columns.ohlcv.iter().enumerate() {
        col[i] = find(c)?;
    }
    let (symbol_col, factor_col, divisor_col) =
        (optional(columns.symbol)?, optional(columns.price_factor)?, optional(columns.volume_divisor)?);
    let mut series: Vec<Series> = Vec::new();
    for (i, line) in lines {
        let line_no = i + 1;
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let bad = |field: &'static str, value: &str, reason: &'static str| CsvError::BadRow {
            file: file.to_string(),
            line: line_no,
            field: field.to_string(),
            value: value.to_string(),
            reason,
        };
        let cell_at = |k: usize, name: &'static str| -> Result<&str, CsvError> {
            cells.get(k).copied().ok_or_else(|| bad(name, line, "the row has too few columns"))
        };
        let number_at = |k: usize, name: &'static str| -> Result<f64, CsvError> {
            let s = cell_at(k, name)?;
            let v: f64 = s.parse().map_err(|_| bad(name, s, "not a number"))?;
            if !v.is_finite() {
                return Err(bad(name, s, "not a finite number"));
            }
            Ok(v)
        };
        let cell = |k: usize| cell_at(col[k], columns.ohlcv[k]);
        let number = |k: usize| number_at(col[k], columns.ohlcv[k]);
        let ts = cell(0)?;
        let time =
            parse_time(ts).ok_or_else(|| bad(columns.ohlcv[0], ts, "not Unix seconds, an RFC 3339 time or a date"))?;
        let [mut open, mut high, mut low, mut close, mut volume] =
            [number(1)?, number(2)?, number(3)?, number(4)?, number(5)?];
        for (k, v) in [(1, open), (2, high), (3, low), (4, close)] {
            if v <= 0.0 {
                return Err(bad(columns.ohlcv[k], cell(k)?, "prices must be positive"));
            }
        }
        if volume < 0.0 {
            return Err(bad(columns.ohlcv[5], cell(5)?, "volume must not be negative"));
        }
        if high < open.max(close).max(low) {
            return Err(bad(columns.ohlcv[2], cell(2)?, "high is below the open, close or low"));
        }
        if low > open.min(close) {
            return Err(bad(columns.ohlcv[3], cell(3)?, "low is above the open or close"));
        }
        for (c, name, what) in [(factor_col, columns.price_factor, 0), (divisor_col, columns.volume_divisor, 1)] {
            let (Some(c), Some(name)) = (c, name) else { continue };
            let f = number_at(c, name)?;
            if f <= 0.0 {
                return Err(bad(name, cell_at(c, name)?, "an adjustment factor must be positive"));
            }
            if what == 0 {
                [open, high, low, close] = [open, high, low, close].map(|p| p * f);
            } else {
                volume /= f;
            }
        }
        let symbol = match symbol_col {
            Some(c) => cell_at(c, columns.symbol.unwrap_or("symbol"))?,
            None => "",
        };
        let s = match series.iter().position(|s| s.symbol == symbol) {
            Some(k) => &mut series[k],
            None => {
                series.push(Series { symbol: symbol.to_string(), bars: Vec::new(), dropped: 0 });
                series.last_mut().expect("just pushed")
            }
        };
        if columns.drop_zero_volume && volume == 0.0 {
            s.dropped += 1;
            continue;
        }
        if s.bars.last().is_some_and(|b| b.time >= time) {
            return Err(bad(columns.ohlcv[0], ts, "timestamps must strictly increase"));
        }
        s.bars.push(Bar { time, open, high, low, close, volume });
    }
    Ok(series)
}

/// Parses a wide file of close prices, one column per symbol after the
/// date column (`Date,AAPL,AMD,...`; the date column's name is matched
/// without regard to case, a symbol is named as its header cell says), into
/// one series per symbol, in the header's order. A close-only file has no
/// range and no volume: each bar's open, high and low are its close, and its
/// volume is `volume`, the same for every bar (so a volume-based indicator is
/// constant, not undefined). Every row must give every symbol a positive
/// price (an empty cell is refused, not skipped), so the series share one
/// calendar; dates must strictly increase.
pub fn parse_wide_closes(
    text: &str,
    file: &str,
    date_column: &'static str,
    volume: f64,
) -> Result<Vec<Series>, CsvError> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let header = lines.next().map(|(_, l)| l).unwrap_or("");
    let names: Vec<&str> = header.split(',').map(str::trim).collect();
    let date_col = names.iter().position(|n| n.eq_ignore_ascii_case(date_column)).ok_or_else(|| {
        CsvError::MissingColumn { file: file.to_string(), column: date_column, header: header.to_string() }
    })?;
    let symbols: Vec<(usize, &str)> =
        names.iter().copied().enumerate().filter(|&(k, n)| k != date_col && !n.is_empty()).collect();
    let mut series: Vec<Series> =
        symbols.iter().map(|(_, s)| Series { symbol: s.to_string(), bars: Vec::new(), dropped: 0 }).collect();
    let mut last: Option<i64> = None;
    for (i, line) in lines {
        let bad = |field: &str, value: &str, reason: &'static str| CsvError::BadRow {
            file: file.to_string(),
            line: i + 1,
            field: field.to_string(),
            value: value.to_string(),
            reason,
        };
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() != names.len() {
            return Err(bad("row", line, "the row does not have the header's number of columns"));
        }
        let ts = cells[date_col];
        let time =
            parse_time(ts).ok_or_else(|| bad(date_column, ts, "not Unix seconds, an RFC 3339 time or a date"))?;
        if last.is_some_and(|t| t >= time) {
            return Err(bad(date_column, ts, "timestamps must strictly increase"));
        }
        last = Some(time);
        for ((k, symbol), s) in symbols.iter().zip(&mut series) {
            let cell = cells[*k];
            if cell.is_empty() {
                return Err(bad(symbol, cell, "empty: every symbol needs a price on every date"));
            }
            let close: f64 = cell.parse().map_err(|_| bad(symbol, cell, "not a number"))?;
            if !close.is_finite() {
                return Err(bad(symbol, cell, "not a finite number"));
            }
            if close <= 0.0 {
                return Err(bad(symbol, cell, "prices must be positive"));
            }
            s.bars.push(Bar { time, open: close, high: close, low: close, close, volume });
        }
    }
    Ok(series)
}

fn parse_time(s: &str) -> Option<i64> {
    if let Ok(secs) = s.parse::<i64>() {
        return Some(secs);
    }
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Some(t.as_second());
    }
    let date = s.parse::<jiff::civil::Date>().ok()?;
    let midnight = date.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp().as_second();
    Some(midnight + DAILY_CLOSE_UTC)
}

/// The market as CSV text, the format [`parse`] reads: for fixtures and for
/// users who want to see the synthetic market.
pub fn to_csv(market: &Market) -> String {
    let mut out = String::from("timestamp,open,high,low,close,volume\n");
    for b in &market.bars {
        out.push_str(&format!("{},{:.6},{:.6},{:.6},{:.6},{:.2}\n", b.time, b.open, b.high, b.low, b.close, b.volume));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::market::SyntheticMarket;

    #[test]
    fn round_trips_the_synthetic_market() {
        let m = SyntheticMarket::new(1, 400).generate();
        let back = parse(&to_csv(&m), "mem.csv").unwrap();
        assert_eq!(back.len(), 400);
        assert!((back.bars[399].close - m.bars[399].close).abs() < 1e-5);
    }

    #[test]
    fn every_kind_of_bad_row_names_its_line() {
        let m = SyntheticMarket::new(1, 400).generate();
        let good = to_csv(&m);
        let mut lines: Vec<String> = good.lines().map(String::from).collect();
        for (row, replace, want) in [
            (5, "x,1,1,1,1,1", "timestamp"),
            (6, "1704087000,1,0.5,0.9,1,1", "high"),
            (7, "1704090600,1,2,1.5,1,1", "low"),
            (8, "1704094200,1,2,0.5,-1,1", "close"),
            (9, "1704097800,1,2,0.5,1,NaN", "volume"),
            (10, "1704067200,1,2,0.5,1,1", "timestamp"),
        ] {
            let saved = std::mem::replace(&mut lines[row], replace.to_string());
            let err = parse(&lines.join("\n"), "f.csv").unwrap_err().to_string();
            assert!(err.starts_with(&format!("f.csv:{}: {want}", row + 1)), "{err}");
            lines[row] = saved;
        }
    }

    #[test]
    fn rfc3339_timestamps_and_extra_columns_are_accepted() {
        let mut text = String::from("Volume,close,low,high,open,timestamp,note\n");
        for i in 0..MIN_BARS {
            let t = jiff::Timestamp::from_second(1_704_067_200 + 3_600 * i as i64).unwrap();
            text.push_str(&format!("10,100,99,101,100,{t},x\n"));
        }
        let m = parse(&text, "t.csv").unwrap();
        assert_eq!(m.bars[1].time - m.bars[0].time, 3_600);
        assert!((m.periods_per_year - 8_760.0).abs() < 1e-9);
    }

    #[test]
    fn wide_closes_make_flat_bars_per_symbol_and_bad_cells_name_line_and_symbol() {
        let text = "Date,AAA,BBB\n2005-01-03,1.5,20\n\n2005-01-04,1.25,21\n";
        let s = parse_wide_closes(text, "w.csv", "date", 1.0).unwrap();
        assert_eq!(s.iter().map(|s| s.symbol.as_str()).collect::<Vec<_>>(), ["AAA", "BBB"]);
        let b = s[0].bars[1];
        assert_eq!((b.open, b.high, b.low, b.close, b.volume), (1.25, 1.25, 1.25, 1.25, 1.0));
        assert_eq!(s[1].bars[0].time, s[0].bars[0].time);
        assert_eq!(s[1].bars[0].time.rem_euclid(86_400), DAILY_CLOSE_UTC);
        for (bad, want) in [
            ("2005-01-04,,21", "w.csv:4: AAA = \"\": empty"),
            ("2005-01-04,1.25,x", "w.csv:4: BBB = \"x\": not a number"),
            ("2005-01-04,0,21", "w.csv:4: AAA = \"0\": prices must be positive"),
            ("2005-01-04,1.25,inf", "w.csv:4: BBB = \"inf\": not a finite"),
            ("2005-01-03,1.25,21", "w.csv:4: date = \"2005-01-03\": timestamps must strictly increase"),
            ("2005-01-04,1.25", "w.csv:4: row = "),
        ] {
            let err = parse_wide_closes(&text.replace("2005-01-04,1.25,21", bad), "w.csv", "date", 1.0)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(want), "{err}");
        }
        let err = parse_wide_closes("day,AAA\n", "w.csv", "date", 1.0).unwrap_err().to_string();
        assert!(err.starts_with("w.csv: the header has no \"date\" column"), "{err}");
    }

    #[test]
    fn series_split_by_symbol_adjust_prices_and_drop_zero_volume_rows() {
        let text = "date,sym,open,high,low,close,vol,f,split\n\
                    2004-01-02,A,10,11,9,10,100,0.5,0.25\n\
                    2004-01-02,B,20,21,19,20,100,1,1\n\
                    2004-01-03,A,10,11,9,10,0,0.5,0.25\n\
                    2004-01-05,A,10,12,9,11,100,0.5,0.25\n";
        let cols = Columns {
            ohlcv: ["date", "open", "high", "low", "close", "vol"],
            symbol: Some("sym"),
            price_factor: Some("f"),
            volume_divisor: Some("split"),
            drop_zero_volume: true,
        };
        let s = parse_series(text, "s.csv", &cols).unwrap();
        assert_eq!(s.iter().map(|s| s.symbol.as_str()).collect::<Vec<_>>(), ["A", "B"]);
        assert_eq!((s[0].bars.len(), s[0].dropped), (2, 1));
        assert_eq!(s[0].bars[1].close, 5.5);
        assert_eq!(s[0].bars[0].volume, 400.0);
        assert_eq!(s[0].bars[0].time.rem_euclid(86_400), DAILY_CLOSE_UTC);
        let bad = text.replace("2004-01-05,A,10,12", "2004-01-02,A,10,12");
        let err = parse_series(&bad, "s.csv", &cols).unwrap_err().to_string();
        assert!(err.starts_with("s.csv:5: date = \"2004-01-02\""), "{err}");
        let bad = text.replace("0.5,0.25\n2004-01-02,B", "-1,0.25\n2004-01-02,B");
        let err = parse_series(&bad, "s.csv", &cols).unwrap_err().to_string();
        assert!(err.starts_with("s.csv:2: f = \"-1\""), "{err}");
    }
}
