//! `GET /v1/dashboard/overview`: operations at a glance.

use axum::extract::State;
use axum::response::Response;

use crate::service::error::ApiError;
use crate::service::extract::QueryPairs;
use crate::store::now_secs;

use super::wire::{DashboardOverview, DashboardStore, ModuleOps};
use super::{json, Dashboard};

/// `GET /v1/dashboard/overview`.
pub(super) async fn overview(State(d): State<Dashboard>, query: QueryPairs) -> Result<Response, ApiError> {
    query.take([])?;
    let agent = d.app.agent();
    let store = d.app.hooks().checkpoints.as_deref();
    let mut modules = Vec::new();
    for space in agent.modules() {
        let view = agent.view(&space.name)?;
        let counters = agent.counters(&space.name)?;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        modules.push(ModuleOps {
            module: space.name.clone(),
            generation: view.generation,
            outcomes: view.outcomes,
            decisions: load(&counters.decisions),
            pending: agent.pending_count(&space.name)?,
            expired: load(&counters.expired),
            refused_full: load(&counters.refused_full),
            rejected_outcomes: load(&counters.rejected_outcomes),
            checkpoint_age_secs: store.and_then(|s| s.checkpoint_age_secs(&space.name)),
            safety: agent.budget(&space.name)?,
        });
    }
    json(&DashboardOverview {
        server_time: now_secs(),
        store: DashboardStore {
            kind: store.map_or("none", |s| s.kind()),
            healthy: store.is_some_and(|s| s.healthy()),
            errors: d.app.metrics().store_errors(),
        },
        modules,
    })
}
