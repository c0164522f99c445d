//! The context vocabulary every module shares: trading session x market regime.
//!
//! The vocabulary is fixed by the HTTP contract, so it is a closed enum rather
//! than configuration; a context is a dense index in `0..Context::COUNT`, which
//! lets the bandit keep its cells in a plain `Vec`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::SpaceError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Session {
    AsiaPrime,
    EuropePrime,
    UsPrime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Regime {
    Bullish,
    Bearish,
    Sideways,
    Volatile,
}

impl Session {
    pub const ALL: [Session; 3] = [Session::AsiaPrime, Session::EuropePrime, Session::UsPrime];

    pub fn as_str(self) -> &'static str {
        match self {
            Session::AsiaPrime => "asia_prime",
            Session::EuropePrime => "europe_prime",
            Session::UsPrime => "us_prime",
        }
    }
}

impl Regime {
    pub const ALL: [Regime; 4] = [Regime::Bullish, Regime::Bearish, Regime::Sideways, Regime::Volatile];

    pub fn as_str(self) -> &'static str {
        match self {
            Regime::Bullish => "bullish",
            Regime::Bearish => "bearish",
            Regime::Sideways => "sideways",
            Regime::Volatile => "volatile",
        }
    }
}

impl FromStr for Session {
    type Err = SpaceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Session::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| SpaceError::UnknownContextValue { field: "session", value: s.to_string() })
    }
}

impl FromStr for Regime {
    type Err = SpaceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Regime::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| SpaceError::UnknownContextValue { field: "regime", value: s.to_string() })
    }
}

/// One cell of the session x regime grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Context {
    pub session: Session,
    pub regime: Regime,
}

impl Context {
    pub const COUNT: usize = Session::ALL.len() * Regime::ALL.len();

    pub fn new(session: Session, regime: Regime) -> Self {
        Context { session, regime }
    }

    /// Dense index, session-major.
    pub fn index(self) -> usize {
        self.session as usize * Regime::ALL.len() + self.regime as usize
    }

    pub fn from_index(index: usize) -> Option<Context> {
        (index < Self::COUNT).then(|| Context {
            session: Session::ALL[index / Regime::ALL.len()],
            regime: Regime::ALL[index % Regime::ALL.len()],
        })
    }

    pub fn all() -> impl Iterator<Item = Context> {
        (0..Self::COUNT).filter_map(Context::from_index)
    }

    pub fn parse(session: &str, regime: &str) -> Result<Context, SpaceError> {
        Ok(Context { session: session.parse()?, regime: regime.parse()? })
    }
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.session.as_str(), self.regime.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trips_over_all_twelve_contexts() {
        let all: Vec<Context> = Context::all().collect();
        assert_eq!(all.len(), 12);
        for (i, c) in all.iter().enumerate() {
            assert_eq!(c.index(), i);
            assert_eq!(Context::from_index(i), Some(*c));
        }
        assert_eq!(Context::from_index(12), None);
    }

    #[test]
    fn parse_names_the_bad_value() {
        let err = Context::parse("asia", "bullish").unwrap_err().to_string();
        assert!(err.contains("\"asia\""), "{err}");
        assert!(Context::parse("us_prime", "volatile").is_ok());
    }
}
