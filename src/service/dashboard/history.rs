//! `GET /v1/dashboard/modules/{module}/history`: one parameter's incumbent
//! over the stored generations, and the cached listings (generations,
//! learning events, each generation's incumbents) it and `progress` read.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;

use crate::service::error::ApiError;
use crate::service::extract::{PathParams, QueryPairs};
use crate::service::store::{CheckpointStore, CheckpointSummary, StoreError};
use crate::service::wire::{context_json, ContextBody};
use crate::space::{Context, ModuleSpace};
use crate::store::HistoryPoint;
use crate::store::{LearningEvent, LearningEventKind};

use super::wire::{DashboardHistory, EventMark, LivePoint};
use super::{
    json, moves, on_store, pick, points_query, Cache, Dashboard, Incumbents, FIRST_EVENTS, MAX_CACHED_GENERATIONS,
};

/// `GET /v1/dashboard/modules/{module}/history?parameter=…&session=…&regime=…[&points=…]`.
pub(super) async fn history(
    State(d): State<Dashboard>,
    PathParams(module): PathParams<String>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let agent = d.app.agent();
    let space = agent.space(&module)?.clone();
    let [parameter, session, regime, points] = query.take(["parameter", "session", "regime", "points"])?;
    let parameter = parameter.ok_or_else(|| ApiError::Invalid("query parameter parameter is missing".into()))?;
    let p = space.param_index(&parameter).ok_or_else(|| {
        ApiError::Invalid(format!("unknown parameter {parameter:?} of module {module:?}; GET /v1/modules lists them"))
    })?;
    let context = ContextBody { session, regime }.resolve("")?;
    let max_points = points_query(points)?;
    let view = agent.view(&module)?;
    let live = LivePoint {
        generation: view.generation,
        outcomes: view.outcomes,
        incumbent: view.cells[context.index()].params[p].incumbent,
    };
    let param = &space.params[p];
    let (default, lo, hi) = (param.default, param.lo, param.hi);

    let (cache, live_generation, space2) = (d.cache.clone(), view.generation, space.clone());
    let read = on_store(&d, move |store| {
        let metas = generations(&cache, store, &space2.name, live_generation)?;
        let events = events(&cache, store, &space2, live_generation)?;
        let kinds = kinds_by_generation(&events);
        let (stride, picked) = pick(metas.len(), max_points, |i| is_marked(&kinds, metas[i].generation));
        let wanted: Vec<u64> = picked.iter().map(|&i| metas[i].generation).collect();
        let incumbents = incumbents(&cache, store, &space2, &wanted)?;
        let points = picked
            .iter()
            .filter_map(|&i| {
                let m = &metas[i];
                let values = incumbents.get(&m.generation)?;
                Some(HistoryPoint {
                    generation: m.generation,
                    kind: kinds.get(&m.generation).cloned().unwrap_or_else(|| "checkpoint".into()),
                    created_at: m.created_at,
                    outcomes: m.outcomes,
                    incumbent: values[context.index()][p],
                })
            })
            .collect::<Vec<_>>();
        let shown: std::collections::HashSet<u64> = wanted.iter().copied().collect();
        let marks = events
            .iter()
            .filter(|e| e.kind != "checkpoint" || e.generation.is_some_and(|g| shown.contains(&g)))
            .cloned()
            .collect();
        Ok((metas.len(), stride, points, marks))
    })
    .await?;
    let (generations, stride, points, events) = read.unwrap_or((0, 1, Vec::new(), Vec::new()));
    tracing::debug!(module, parameter, %context, generations, shown = points.len(), "dashboard history");
    json(&DashboardHistory {
        module: space.name.clone(),
        parameter: param.full_name.clone(),
        context: context_json(context),
        default,
        lo,
        hi,
        generations,
        stride,
        points,
        events,
        live,
    })
}

pub(super) fn kinds_by_generation(events: &[EventMark]) -> HashMap<u64, String> {
    // A generation's own event says how it was made; later ones do not name it.
    events.iter().filter_map(|e| Some((e.generation?, e.kind.clone()))).collect()
}

pub(super) fn is_marked(kinds: &HashMap<u64, String>, generation: u64) -> bool {
    kinds.get(&generation).is_some_and(|k| k != "checkpoint")
}

/// The module's generations, oldest first; listed again only when the live generation moved.
pub(super) fn generations(
    cache: &Cache,
    store: &dyn CheckpointStore,
    module: &str,
    live: u64,
) -> Result<Arc<Vec<CheckpointSummary>>, StoreError> {
    if let Some((key, list)) = cache.lock().get(module).and_then(|c| c.generations.clone()) {
        if key == live {
            return Ok(list);
        }
    }
    // Every generation (retention bounds how many there are); the chart
    // downsamples them.
    let mut list = store.list(module, None, usize::MAX)?;
    list.reverse();
    let list = Arc::new(list);
    cache.lock().entry(module.to_string()).or_default().generations = Some((live, list.clone()));
    Ok(list)
}

/// The module's learning events, oldest first. Rows newer than the cached
/// ones are fetched when the live generation moved, or while the newest
/// generation's row is missing (the runtime writes it just after the
/// generation). Incumbents the rows carry go into the cache on the way.
pub(super) fn events(
    cache: &Cache,
    store: &dyn CheckpointStore,
    space: &ModuleSpace,
    live: u64,
) -> Result<Arc<Vec<EventMark>>, StoreError> {
    let module = space.name.as_str();
    let cached = cache.lock().get(module).and_then(|c| c.events.clone());
    let newest = cached.as_ref().and_then(|(_, e)| e.iter().filter_map(|e| e.generation).max());
    if let Some((key, events)) = &cached {
        // Generation 0 is the seed defaults: no event can name it.
        if *key == live && (live == 0 || newest.is_some_and(|g| g >= live)) {
            return Ok(events.clone());
        }
    }
    let limit = match (&cached, newest) {
        (Some(_), Some(g)) => (live.saturating_sub(g) as usize + 16).min(FIRST_EVENTS),
        _ => FIRST_EVENTS,
    };
    let mut fresh = store.learning_events(module, limit)?;
    fresh.reverse();
    let mut merged: Vec<EventMark> = cached.map(|(_, e)| e.as_ref().clone()).unwrap_or_default();
    let seen: std::collections::HashSet<(Option<u64>, u64)> =
        merged.iter().map(|e| (e.generation, e.created_at.to_bits())).collect();
    let mut carried = Vec::new();
    let mut new_moves = Vec::new();
    for e in &fresh {
        if seen.contains(&(e.generation, e.created_at.to_bits())) {
            continue;
        }
        new_moves.extend(moves::move_of(module, e));
        if let (Some(g), Some(values)) = (e.generation, incumbents_of_event(e, space)) {
            carried.push((g, Arc::new(values)));
        }
        merged.push(EventMark {
            generation: e.generation,
            kind: kind_name(&e.learning_event),
            created_at: e.created_at,
        });
    }
    merged.sort_by(|a, b| a.created_at.total_cmp(&b.created_at));
    let merged = Arc::new(merged);
    let mut guard = cache.lock();
    let entry = guard.entry(module.to_string()).or_default();
    entry.events = Some((live, merged.clone()));
    entry.moves.extend(new_moves);
    entry.moves.sort_by(|a, b| a.created_at.total_cmp(&b.created_at));
    let extra = entry.moves.len().saturating_sub(moves::MAX_MOVES);
    entry.moves.drain(..extra);
    for (g, values) in carried {
        entry.incumbents.insert(g, values);
    }
    Ok(merged)
}

fn kind_name(kind: &LearningEventKind) -> String {
    match kind {
        LearningEventKind::Checkpoint => "checkpoint".into(),
        LearningEventKind::Rollback => "rollback".into(),
        LearningEventKind::Promotion => "promotion".into(),
        LearningEventKind::TradeOutcomeProcessed => "trade_outcome_processed".into(),
        LearningEventKind::Other(name) => name.clone(),
    }
}

/// `parameters_after` of an event, `{"session/regime": {"group.name": value}}`,
/// as `[context][parameter]`; `None` unless it names every value.
fn incumbents_of_event(event: &LearningEvent, space: &ModuleSpace) -> Option<Vec<Vec<f64>>> {
    let by_context: BTreeMap<String, BTreeMap<String, f64>> =
        serde_json::from_value(event.parameters_after.clone()).ok()?;
    Context::all()
        .map(|ctx| {
            let values = by_context.get(&ctx.to_string())?;
            space.params.iter().map(|p| values.get(&p.full_name).copied()).collect()
        })
        .collect()
}

/// Incumbents of each generation in `wanted`: from the cache, else from the
/// stored checkpoint (then cached; a stored generation never changes).
fn incumbents(
    cache: &Cache,
    store: &dyn CheckpointStore,
    space: &ModuleSpace,
    wanted: &[u64],
) -> Result<HashMap<u64, Incumbents>, StoreError> {
    let module = space.name.as_str();
    let mut out = HashMap::with_capacity(wanted.len());
    let mut missing = Vec::new();
    {
        let guard = cache.lock();
        let cached = guard.get(module);
        for &g in wanted {
            match cached.and_then(|c| c.incumbents.get(&g)) {
                Some(v) => {
                    out.insert(g, v.clone());
                }
                None => missing.push(g),
            }
        }
    }
    if missing.is_empty() {
        return Ok(out);
    }
    let mut loaded = Vec::with_capacity(missing.len());
    for g in missing {
        let checkpoint = match store.get(module, g) {
            Ok(c) => c,
            // Listed but gone is a store fault elsewhere; the chart skips the point.
            Err(StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        match incumbents_of_checkpoint(&checkpoint, space) {
            Some(values) => loaded.push((g, Arc::new(values))),
            None => tracing::warn!(module, generation = g, "checkpoint does not name this module's parameters"),
        }
    }
    tracing::debug!(module, loaded = loaded.len(), "dashboard read checkpoints");
    let mut guard = cache.lock();
    if guard.values().map(|c| c.incumbents.len()).sum::<usize>() + loaded.len() > MAX_CACHED_GENERATIONS {
        guard.values_mut().for_each(|c| c.incumbents.clear());
    }
    let entry = guard.entry(module.to_string()).or_default();
    for (g, values) in loaded {
        entry.incumbents.insert(g, values.clone());
        out.insert(g, values);
    }
    Ok(out)
}

/// A checkpoint's `incumbents` in the module's parameter order, matched by
/// name (a checkpoint carries its own `parameter_names`).
fn incumbents_of_checkpoint(checkpoint: &serde_json::Value, space: &ModuleSpace) -> Option<Vec<Vec<f64>>> {
    let names: Vec<&str> =
        checkpoint.get("parameter_names")?.as_array()?.iter().map(|v| v.as_str()).collect::<Option<_>>()?;
    let columns: Vec<usize> =
        space.params.iter().map(|p| names.iter().position(|n| *n == p.full_name)).collect::<Option<_>>()?;
    let rows = checkpoint.get("incumbents")?.as_array()?;
    if rows.len() != Context::COUNT {
        return None;
    }
    rows.iter()
        .map(|row| {
            let row = row.as_array()?;
            columns.iter().map(|&c| row.get(c)?.as_f64()).collect::<Option<Vec<f64>>>()
        })
        .collect()
}
