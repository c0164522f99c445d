//! The settings of one A/B test: the split, the planned looks and the level,
//! checked on the way in, from a request or read back from a checkpoint.

use serde::{Deserialize, Serialize};

pub use crate::space::MIN_OUTCOMES;

/// The settings of one A/B test, validated: also when read back from a
/// checkpoint, which goes through [`AbSettings::new`] like a request does
/// (a stored `min_outcomes: 0` would otherwise plan looks for ever).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(try_from = "RawAbSettings")]
pub struct AbSettings {
    /// Share of decisions the challenger serves, in (0, 1).
    pub split: f64,
    /// Outcomes per arm before the first look.
    pub min_outcomes: u64,
    /// Outcomes per arm at the last look; the test ends then at the latest.
    pub max_outcomes: u64,
    /// Chance of promoting a challenger that is not better, over all looks.
    pub alpha: f64,
    /// How much better than the champion the challenger must be, in reward units.
    pub margin: f64,
}

/// [`AbSettings`] as stored, before validation.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawAbSettings {
    split: f64,
    min_outcomes: u64,
    max_outcomes: u64,
    alpha: f64,
    margin: f64,
}

impl TryFrom<RawAbSettings> for AbSettings {
    type Error = AbSettingsError;
    fn try_from(r: RawAbSettings) -> Result<Self, Self::Error> {
        AbSettings::new(r.split, r.min_outcomes, r.max_outcomes, r.alpha, r.margin)
    }
}

/// The most outcomes per arm a test may plan for: beyond this a test would
/// never end in practice, and its looks' arithmetic would near overflow.
pub const MAX_OUTCOMES: u64 = 100_000_000;
/// The smallest share either arm may serve: a split of 1e-300 would never
/// reach its first look.
pub const MIN_SPLIT: f64 = 0.01;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AbSettingsError {
    #[error("split must be within [0.01, 0.99], got {0:?}")]
    Split(f64),
    #[error("alpha must be in (0, 0.5], got {0}")]
    Alpha(f64),
    #[error("margin must be a finite number >= 0, got {0}")]
    Margin(f64),
    #[error("min_outcomes must be at least {MIN_OUTCOMES}, got {0}")]
    MinOutcomes(u64),
    #[error("max_outcomes ({max}) must be at least min_outcomes ({min}) and at most {MAX_OUTCOMES}")]
    MaxOutcomes { min: u64, max: u64 },
}

impl AbSettings {
    pub fn new(
        split: f64,
        min_outcomes: u64,
        max_outcomes: u64,
        alpha: f64,
        margin: f64,
    ) -> Result<Self, AbSettingsError> {
        if !(MIN_SPLIT..=1.0 - MIN_SPLIT).contains(&split) {
            return Err(AbSettingsError::Split(split));
        }
        if !(alpha > 0.0 && alpha <= 0.5) {
            return Err(AbSettingsError::Alpha(alpha));
        }
        if !(margin.is_finite() && margin >= 0.0) {
            return Err(AbSettingsError::Margin(margin));
        }
        if min_outcomes < MIN_OUTCOMES {
            return Err(AbSettingsError::MinOutcomes(min_outcomes));
        }
        if max_outcomes < min_outcomes || max_outcomes > MAX_OUTCOMES {
            return Err(AbSettingsError::MaxOutcomes { min: min_outcomes, max: max_outcomes });
        }
        Ok(AbSettings { split, min_outcomes, max_outcomes, alpha, margin })
    }

    /// Outcomes per arm at each planned look: `min`, `2 min`, ... and `max`
    /// (at most 24 looks, since `max / min <= MAX_OUTCOMES / MIN_OUTCOMES`).
    pub fn looks(&self) -> Vec<u64> {
        let mut out = Vec::new();
        let mut at = self.min_outcomes;
        while at < self.max_outcomes {
            out.push(at);
            at = at.saturating_mul(2);
        }
        out.push(self.max_outcomes);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_double_up_to_the_maximum() {
        assert_eq!(AbSettings::new(0.2, 100, 1600, 0.05, 0.0).unwrap().looks(), vec![100, 200, 400, 800, 1600]);
        assert_eq!(AbSettings::new(0.5, 100, 300, 0.05, 0.0).unwrap().looks(), vec![100, 200, 300]);
    }

    #[test]
    fn bad_settings_name_the_value() {
        assert_eq!(
            AbSettings::new(1.0, 100, 200, 0.05, 0.0).unwrap_err().to_string(),
            "split must be within [0.01, 0.99], got 1.0"
        );
        assert!(AbSettings::new(0.2, 10, 200, 0.05, 0.0).unwrap_err().to_string().contains("got 10"));
        assert!(AbSettings::new(0.2, 100, 50, 0.05, 0.0).unwrap_err().to_string().contains("(50)"));
        assert!(AbSettings::new(0.2, 100, 200, 0.9, 0.0).unwrap_err().to_string().contains("0.9"));
        assert!(AbSettings::new(0.2, 100, 200, 0.05, f64::NAN).unwrap_err().to_string().contains("NaN"));
    }

    #[test]
    fn stored_settings_are_validated_like_a_request() {
        let good = r#"{"split":0.2,"min_outcomes":200,"max_outcomes":6400,"alpha":0.05,"margin":0.0}"#;
        let s: AbSettings = serde_json::from_str(good).unwrap();
        assert_eq!(s.looks(), [200, 400, 800, 1600, 3200, 6400]);
        for (bad, names) in [
            (r#"{"split":0.2,"min_outcomes":0,"max_outcomes":6400,"alpha":0.05,"margin":0.0}"#, "min_outcomes"),
            (r#"{"split":1e-300,"min_outcomes":200,"max_outcomes":6400,"alpha":0.05,"margin":0.0}"#, "split"),
            (
                r#"{"split":0.2,"min_outcomes":18446744073709551615,"max_outcomes":18446744073709551615,"alpha":0.05,"margin":0.0}"#,
                "max_outcomes",
            ),
            (r#"{"split":0.2,"min_outcomes":200,"max_outcomes":6400,"alpha":0.05,"margin":0.0,"x":1}"#, "x"),
        ] {
            let e = serde_json::from_str::<AbSettings>(bad).unwrap_err().to_string();
            assert!(e.contains(names), "{bad}: {e}");
        }
    }
}
