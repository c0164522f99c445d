//! `GET /v1/dashboard/modules/{module}/progress`: is it learning? The mean
//! reward per generation and per window, the defaults' estimate, the A/B test.

use std::collections::HashMap;

use axum::extract::State;
use axum::response::Response;

use crate::agent::ModuleView;
use crate::service::error::ApiError;
use crate::service::extract::{PathParams, QueryPairs};
use crate::service::store::{CheckpointStore, CheckpointSummary};
use crate::service::wire::ab_test_json;

use super::history::{events, generations, is_marked, kinds_by_generation};
use super::wire::{DashboardProgress, DefaultsEstimate, PosteriorWidth, RewardPoint};
use super::{json, on_store, pick, points_query, Dashboard};

/// `GET /v1/dashboard/modules/{module}/progress[?points=…]`.
pub(super) async fn progress(
    State(d): State<Dashboard>,
    PathParams(module): PathParams<String>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let agent = d.app.agent();
    let space = agent.space(&module)?.clone();
    let [points] = query.take(["points"])?;
    let max_points = points_query(points)?;
    let view = agent.view(&module)?;
    let posterior = space
        .params
        .iter()
        .enumerate()
        .map(|(p, param)| {
            // A 95% interval of a posterior mean is 2 × 1.96 standard deviations wide.
            let widths: Vec<f64> =
                view.cells.iter().flat_map(|c| c.params[p].sds.iter().map(|sd| 2.0 * 1.96 * sd)).collect();
            let mean_width = if widths.is_empty() { 0.0 } else { widths.iter().sum::<f64>() / widths.len() as f64 };
            PosteriorWidth {
                parameter: param.full_name.clone(),
                mean_width,
                max_width: widths.iter().copied().fold(0.0, f64::max),
            }
        })
        .collect();

    let (cache, live_generation, space2) = (d.cache.clone(), view.generation, space.clone());
    let read = on_store(&d, move |store| {
        let metas = generations(&cache, store, &space2.name, live_generation)?;
        let events = events(&cache, store, &space2, live_generation)?;
        let kinds = kinds_by_generation(&events);
        let (stride, picked) = pick(metas.len(), max_points, |i| is_marked(&kinds, metas[i].generation));
        Ok((metas.len(), stride, reward_points(&metas, &picked, &kinds)))
    })
    .await?;
    let (generations, stride, reward) = read.unwrap_or((0, 1, Vec::new()));
    let estimate = d.app.hooks().checkpoints.as_deref().and_then(|s| s.defaults_estimate(&space.name));
    json(&DashboardProgress {
        module: space.name.clone(),
        generation: view.generation,
        outcomes: view.outcomes,
        generations,
        stride,
        reward,
        defaults_estimate: estimate.map(|e| e.value),
        defaults_estimate_detail: estimate.map(|e| DefaultsEstimate {
            estimator: "doubly_robust",
            value: e.value,
            ci_low: e.ci_low,
            ci_high: e.ci_high,
            decisions: e.n,
            effective_n: e.effective_n,
        }),
        ab_test: ab_status(&view, d.app.hooks().checkpoints.as_deref(), &space.name),
        posterior,
    })
}

/// The running A/B test, or how the last one ended, with a one-line `status`
/// for the page; `None` when the module never had one.
fn ab_status(view: &ModuleView, store: Option<&dyn CheckpointStore>, module: &str) -> Option<serde_json::Value> {
    if let Some(t) = view.ab.as_deref() {
        let (a, b) = (&t.champion_rewards, &t.challenger_rewards);
        let next = t.settings.looks().get(t.looks_done).copied();
        let status = format!(
            "running: challenger {} on {:.0}% of decisions; live policy {:.5} over {} outcomes, challenger {:.5} over {}{}",
            t.challenger,
            100.0 * t.settings.split,
            a.mean,
            a.n,
            b.mean,
            b.n,
            next.map(|n| format!("; next look at {n} outcomes per arm")).unwrap_or_default()
        );
        let mut v = ab_test_json(t);
        v["status"] = status.into();
        return Some(v);
    }
    let mut last = store?.last_ab_result(module)?;
    let outcome = last["outcome"].as_str().unwrap_or("ended").to_string();
    let challenger = last["challenger"].as_str().unwrap_or("?").to_string();
    last["status"] = format!("No A/B test running; the last one ({challenger}) ended {outcome}").into();
    Some(last)
}

/// The mean reward so far at each picked generation, and over each window
/// between consecutive picks (from the cumulative sums the checkpoints keep).
fn reward_points(metas: &[CheckpointSummary], picked: &[usize], kinds: &HashMap<u64, String>) -> Vec<RewardPoint> {
    let sum = |m: &CheckpointSummary| m.mean_reward.unwrap_or(0.0) * m.outcomes as f64;
    let mut out: Vec<RewardPoint> = Vec::with_capacity(picked.len());
    let mut previous: Option<&CheckpointSummary> = None;
    for &i in picked {
        let m = &metas[i];
        let kind = kinds.get(&m.generation).cloned().unwrap_or_else(|| "checkpoint".into());
        let window_reward = match previous {
            // A rollback or promotion replaces what was learned: no window spans it.
            Some(a) if kind == "checkpoint" && m.outcomes > a.outcomes => {
                Some((sum(m) - sum(a)) / (m.outcomes - a.outcomes) as f64)
            }
            Some(_) => None,
            None if m.outcomes > 0 && kind == "checkpoint" => m.mean_reward,
            None => None,
        };
        out.push(RewardPoint {
            generation: m.generation,
            kind,
            created_at: m.created_at,
            outcomes: m.outcomes,
            mean_reward: m.mean_reward,
            window_reward,
        });
        previous = Some(m);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_reward_comes_from_cumulative_sums_and_never_spans_a_rollback() {
        let m = |generation, outcomes, mean: f64| CheckpointSummary {
            module: "crypto".into(),
            generation,
            parent: None,
            created_at: generation as f64,
            outcomes,
            mean_reward: (outcomes > 0).then_some(mean),
        };
        let metas = vec![m(1, 100, 0.1), m(2, 300, 0.2), m(3, 0, 0.0), m(4, 100, 0.5)];
        let kinds = HashMap::from([(3, "rollback".to_string())]);
        let points = reward_points(&metas, &[0, 1, 2, 3], &kinds);
        let windows: Vec<Option<f64>> = points.iter().map(|p| p.window_reward).collect();
        assert_eq!(windows[0], Some(0.1));
        assert!((windows[1].unwrap() - 0.25).abs() < 1e-12, "{windows:?}");
        assert_eq!(windows[2], None);
        assert!((windows[3].unwrap() - 0.5).abs() < 1e-12, "{windows:?}");
        assert_eq!(points[2].kind, "rollback");
    }
}
