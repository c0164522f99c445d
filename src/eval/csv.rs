//! The OHLCV CSV loader: a user's market for `paramopt backtest --csv`.
//!
//! The header must name `timestamp,open,high,low,close,volume` (any order,
//! extra columns ignored). Timestamps are Unix seconds or RFC 3339. Every row
//! is checked, and the first bad one is reported with its line number and
//! value, because a backtest on silently repaired data is worse than none.

use std::path::Path;

use super::market::{Bar, Market};

/// Fewest bars a backtest can use: indicators warm up over the first 200.
pub const MIN_BARS: usize = 300;

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
    BadRow { file: String, line: usize, field: &'static str, value: String, reason: &'static str },
    #[error("{file}: {rows} bars; a backtest needs at least {need}")]
    TooShort { file: String, rows: usize, need: usize },
}

const COLUMNS: [&str; 6] = ["timestamp", "open", "high", "low", "close", "volume"];

pub fn load(path: &Path) -> Result<Market, CsvError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| CsvError::Io { file: file.clone(), source })?;
    parse(&text, &file)
}

/// Parses CSV text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Market, CsvError> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let header = lines.next().map(|(_, l)| l).unwrap_or("");
    let names: Vec<String> = header.split(',').map(|h| h.trim().to_ascii_lowercase()).collect();
    let mut col = [0usize; 6];
    for (i, c) in COLUMNS.iter().enumerate() {
        col[i] = names.iter().position(|n| n == c).ok_or_else(|| CsvError::MissingColumn {
            file: file.to_string(),
            column: c,
            header: header.to_string(),
        })?;
    }
    let mut bars: Vec<Bar> = Vec::new();
    for (i, line) in lines {
        let line_no = i + 1;
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let bad = |field: &'static str, value: &str, reason: &'static str| CsvError::BadRow {
            file: file.to_string(),
            line: line_no,
            field,
            value: value.to_string(),
            reason,
        };
        let cell = |k: usize| -> Result<&str, CsvError> {
            cells.get(col[k]).copied().ok_or_else(|| bad(COLUMNS[k], line, "the row has too few columns"))
        };
        let number = |k: usize| -> Result<f64, CsvError> {
            let s = cell(k)?;
            let v: f64 = s.parse().map_err(|_| bad(COLUMNS[k], s, "not a number"))?;
            if !v.is_finite() {
                return Err(bad(COLUMNS[k], s, "not a finite number"));
            }
            Ok(v)
        };
        let ts = cell(0)?;
        let time = parse_time(ts).ok_or_else(|| bad("timestamp", ts, "not Unix seconds or an RFC 3339 time"))?;
        let [open, high, low, close, volume] = [number(1)?, number(2)?, number(3)?, number(4)?, number(5)?];
        for (k, v) in [(1, open), (2, high), (3, low), (4, close)] {
            if v <= 0.0 {
                return Err(bad(COLUMNS[k], cell(k)?, "prices must be positive"));
            }
        }
        if volume < 0.0 {
            return Err(bad("volume", cell(5)?, "volume must not be negative"));
        }
        if high < open.max(close).max(low) {
            return Err(bad("high", cell(2)?, "high is below the open, close or low"));
        }
        if low > open.min(close) {
            return Err(bad("low", cell(3)?, "low is above the open or close"));
        }
        if bars.last().is_some_and(|b| b.time >= time) {
            return Err(bad("timestamp", ts, "timestamps must strictly increase"));
        }
        bars.push(Bar { time, open, high, low, close, volume });
    }
    if bars.len() < MIN_BARS {
        return Err(CsvError::TooShort { file: file.to_string(), rows: bars.len(), need: MIN_BARS });
    }
    Ok(Market::from_bars(file.to_string(), bars))
}

fn parse_time(s: &str) -> Option<i64> {
    if let Ok(secs) = s.parse::<i64>() {
        return Some(secs);
    }
    s.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
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
}
