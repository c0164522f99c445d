//! `GET /v1/dashboard/modules/{module}/moves`: the moves made on evidence.
//!
//! A module with counterfactual credit changes what it serves only when the
//! anytime-valid test says so (a promotion or a replacement), and goes back to
//! the defaults when the change detector or the loss budget says so. Each
//! such move is an `ml_learning_events` row of model `{module}.counterfactual`
//! with no generation of its own, so the history chart, which marks
//! generations, cannot show them. This route lists them, newest first, with
//! the context, the parameters that changed, and the test's figures.

use axum::extract::State;
use axum::response::Response;
use schemars::JsonSchema;
use serde::Serialize;

use crate::store::{LearningEvent, LearningEventKind};

use super::super::error::ApiError;
use super::super::extract::{PathParams, QueryPairs};
use super::history::events;
use super::{count_query, json, on_store, Dashboard};

/// Moves kept per module in the dashboard's cache, newest.
pub(super) const MAX_MOVES: usize = 500;
const DEFAULT_LIMIT: usize = 50;

/// `GET /v1/dashboard/modules/{module}/moves`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DashboardMoves {
    pub module: String,
    /// Newest first, at most `?limit=` of them.
    pub moves: Vec<MoveRow>,
    /// Moves found in the newest learning events read (at most 500).
    pub total: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct MoveRow {
    /// `counterfactual_promotion`, `counterfactual_replacement`,
    /// `change_detected` or `loss_budget_spent`.
    pub kind: String,
    /// `session/regime`.
    pub context: Option<String>,
    /// Seconds since the Unix epoch.
    pub created_at: f64,
    /// The paired difference tested, and its mean per opportunity.
    pub paired: Option<String>,
    pub estimate: f64,
    /// The confidence sequence's lower bound on that mean.
    pub lower_bound: f64,
    /// Paired opportunities behind the test (rows written before the
    /// figures were stored as numbers have none).
    pub n: Option<f64>,
    /// Only the parameters whose served value changed.
    pub changes: Vec<MoveChange>,
    /// The row's own account of the test.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct MoveChange {
    /// `group.name`.
    pub parameter: String,
    pub before: f64,
    pub after: f64,
}

/// The move a learning event of `module` records, if it records one.
pub(super) fn move_of(module: &str, event: &LearningEvent) -> Option<MoveRow> {
    if event.model_name != LearningEvent::counterfactual_model(module) {
        return None;
    }
    let kind = match &event.learning_event {
        LearningEventKind::Other(name) => name.clone(),
        _ => return None,
    };
    let values = |side: &serde_json::Value| side.get("values").and_then(|v| v.as_object()).cloned();
    let (before, after) = (values(&event.parameters_before), values(&event.parameters_after));
    let mut changes: Vec<MoveChange> = match (before, after) {
        (Some(before), Some(after)) => after
            .iter()
            .filter_map(|(name, a)| {
                let (b, a) = (before.get(name)?.as_f64()?, a.as_f64()?);
                (a != b).then(|| MoveChange { parameter: name.clone(), before: b, after: a })
            })
            .collect(),
        _ => Vec::new(),
    };
    changes.sort_by(|x, y| x.parameter.cmp(&y.parameter));
    let evidence = event.evidence.as_ref();
    let context = evidence
        .map(|e| e.context.clone())
        .or_else(|| event.parameters_after.get("context").and_then(|c| c.as_str()).map(String::from));
    Some(MoveRow {
        kind,
        context,
        created_at: event.created_at,
        paired: evidence.map(|e| e.paired.clone()),
        estimate: evidence.map_or(event.performance_impact, |e| e.estimate),
        lower_bound: evidence.map_or(event.confidence_change, |e| e.lower_bound),
        n: evidence.map(|e| e.n),
        changes,
        reason: event.reason.clone(),
    })
}

/// `?limit=`: how many moves an answer shows.
fn limit_query(value: Option<String>) -> Result<usize, ApiError> {
    count_query("limit", value, DEFAULT_LIMIT, 1, MAX_MOVES)
}

pub(super) async fn moves(
    State(d): State<Dashboard>,
    PathParams(module): PathParams<String>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let [limit] = query.take(["limit"])?;
    let limit = limit_query(limit)?;
    let space = d.app.agent().space(&module)?.clone();
    let live = d.app.agent().view(&module)?.generation;
    let (cache, space2) = (d.cache.clone(), space.clone());
    let found = on_store(&d, move |store| {
        events(&cache, store, &space2, live)?;
        Ok(cache.lock().get(&space2.name).map(|c| c.moves.clone()).unwrap_or_default())
    })
    .await?
    .unwrap_or_default();
    let total = found.len();
    let moves = found.iter().rev().take(limit).cloned().collect();
    json(&DashboardMoves { module: space.name.clone(), moves, total })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::MoveEvidence;

    fn event(model: &str, evidence: Option<MoveEvidence>) -> LearningEvent {
        LearningEvent {
            model_name: model.into(),
            module_name: "crypto".into(),
            learning_event: LearningEventKind::Other("counterfactual_promotion".into()),
            parameters_before: json!({"context": "asia_prime/bullish", "values": {"a.x": 0.5, "a.y": 1.0}}),
            parameters_after: json!({"context": "asia_prime/bullish", "values": {"a.x": 0.6, "a.y": 1.0}}),
            performance_impact: 0.01,
            confidence_change: 0.002,
            timestamp: String::new(),
            created_at: 10.0,
            generation: None,
            reason: Some("why".into()),
            evidence,
        }
    }

    #[test]
    fn a_move_lists_only_what_changed_with_its_test() {
        let evidence = MoveEvidence {
            context: "asia_prime/bullish".into(),
            paired: "table - defaults".into(),
            estimate: 0.011,
            lower_bound: 0.003,
            n: 812.0,
            alpha: 0.2,
            margin: 0.0,
        };
        let row = move_of("crypto", &event("crypto.counterfactual", Some(evidence))).unwrap();
        assert_eq!(row.changes, vec![MoveChange { parameter: "a.x".into(), before: 0.5, after: 0.6 }]);
        assert_eq!((row.estimate, row.lower_bound, row.n), (0.011, 0.003, Some(812.0)));
        assert_eq!(row.context.as_deref(), Some("asia_prime/bullish"));

        // Rows written before the figures were numbers fall back on the row's own fields.
        let old = move_of("crypto", &event("crypto.counterfactual", None)).unwrap();
        assert_eq!((old.estimate, old.lower_bound, old.n), (0.01, 0.002, None));
        assert_eq!(old.context.as_deref(), Some("asia_prime/bullish"));

        assert!(move_of("crypto", &event("crypto.bandit", None)).is_none(), "checkpoints and A/B rows are not moves");
        assert!(move_of("stocks", &event("crypto.counterfactual", None)).is_none());
    }

    #[test]
    fn a_bad_limit_is_refused_by_value() {
        assert_eq!(limit_query(None).unwrap(), DEFAULT_LIMIT);
        assert_eq!(limit_query(Some("500".into())).unwrap(), 500);
        for bad in ["0", "501", "-1", "many"] {
            let err = limit_query(Some(bad.into())).unwrap_err();
            assert!(format!("{err}").contains(bad), "{err}");
        }
    }
}
