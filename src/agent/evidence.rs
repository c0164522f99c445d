//! What an outcome may carry besides its reward, so that the agent can tell
//! what other parameter values would have done with the same trade.
//!
//! Every field is optional and kept in the outcome journal with the rest of
//! the outcome, so replay after a crash learns exactly what the live run did.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The trade's facts the counterfactuals need (docs/counterfactuals.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The trade's strategy (`trade.strategy`): confirms or supplies the decision's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// The score the module's gate compared with its threshold (`trade.confidence`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// The position's P&L at each check, in the units the exit levels compare
    /// (`trade.exit_analysis.path`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path: Vec<f64>,
    /// Per parameter full name: the value the module really applied, where it
    /// capped or rounded the served one (and, for an exit, the capital).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub applied: BTreeMap<String, f64>,
}

impl Evidence {
    pub fn is_empty(&self) -> bool {
        self.strategy.is_none() && self.confidence.is_none() && self.path.is_empty() && self.applied.is_empty()
    }

    /// The first non-finite number, named as its wire field.
    pub fn non_finite(&self) -> Option<(String, f64)> {
        if let Some(c) = self.confidence.filter(|c| !c.is_finite()) {
            return Some(("trade.confidence".into(), c));
        }
        if let Some((i, &v)) = self.path.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Some((format!("trade.exit_analysis.path[{i}]"), v));
        }
        self.applied.iter().find(|(_, v)| !v.is_finite()).map(|(k, &v)| (format!("applied.{k}"), v))
    }
}

/// Where a position closes on `path` with a stop at `-stop` and a target at
/// `+target` (either absent: no such level): the first check at or beyond a
/// level, else the last. Returns the check's index and its P&L; `None` for
/// an empty path.
pub fn exit_on_path(path: &[f64], stop: Option<f64>, target: Option<f64>) -> Option<(usize, f64)> {
    let last = path.len().checked_sub(1)?;
    for (k, &p) in path.iter().enumerate() {
        if stop.is_some_and(|s| p <= -s) || target.is_some_and(|t| p >= t) {
            return Some((k, p));
        }
    }
    Some((last, path[last]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_at_the_first_level_reached_else_at_the_last_check() {
        let path = [0.1, -0.2, 0.6, -0.6, 0.3];
        assert_eq!(exit_on_path(&path, Some(0.5), Some(1.0)), Some((3, -0.6)));
        assert_eq!(exit_on_path(&path, Some(0.7), Some(0.5)), Some((2, 0.6)));
        assert_eq!(exit_on_path(&path, Some(0.2), Some(0.5)), Some((1, -0.2)), "at the level counts");
        assert_eq!(exit_on_path(&path, Some(0.9), Some(0.9)), Some((4, 0.3)));
        assert_eq!(exit_on_path(&path, None, None), Some((4, 0.3)));
        assert_eq!(exit_on_path(&[], Some(0.5), None), None);
    }

    #[test]
    fn empty_evidence_is_left_out_of_the_json() {
        let e = Evidence::default();
        assert!(e.is_empty());
        assert_eq!(serde_json::to_string(&e).unwrap(), "{}");
        let full = Evidence {
            strategy: Some("long_calls".into()),
            confidence: Some(0.8),
            path: vec![0.1, -0.2],
            applied: [("position_sizing.max_allocation".to_string(), 0.24)].into(),
        };
        let back: Evidence = serde_json::from_str(&serde_json::to_string(&full).unwrap()).unwrap();
        assert_eq!(back, full);
        assert_eq!(Evidence { path: vec![f64::NAN], ..full }.non_finite().unwrap().0, "trade.exit_analysis.path[0]");
    }
}
