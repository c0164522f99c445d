//! `GET /v1/dashboard/modules/{module}/grid`: every incumbent in every
//! context, and how far each has moved from its default.

use axum::extract::State;
use axum::response::Response;

use crate::service::error::ApiError;
use crate::service::extract::{PathParams, QueryPairs};
use crate::space::{Context, Regime, Session};

use super::wire::{DashboardGrid, GridCell, GridParameter};
use super::{json, Dashboard};

/// `GET /v1/dashboard/modules/{module}/grid`.
pub(super) async fn grid(
    State(d): State<Dashboard>,
    PathParams(module): PathParams<String>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    query.take([])?;
    let agent = d.app.agent();
    let space = agent.space(&module)?.clone();
    let view = agent.view(&module)?;
    let parameters = space
        .params
        .iter()
        .enumerate()
        .map(|(p, param)| GridParameter {
            name: param.full_name.clone(),
            group: param.group.clone(),
            default: param.default,
            lo: param.lo,
            hi: param.hi,
            cells: Context::all()
                .map(|ctx| {
                    let incumbent = view.cells[ctx.index()].params[p].incumbent;
                    GridCell {
                        session: ctx.session.as_str(),
                        regime: ctx.regime.as_str(),
                        incumbent,
                        moved: moved(incumbent, param.default, param.lo, param.hi),
                    }
                })
                .collect(),
        })
        .collect();
    json(&DashboardGrid {
        module: space.name.clone(),
        generation: view.generation,
        outcomes: view.outcomes,
        sessions: Session::ALL.iter().map(|s| s.as_str()).collect(),
        regimes: Regime::ALL.iter().map(|r| r.as_str()).collect(),
        parameters,
    })
}

fn moved(value: f64, default: f64, lo: f64, hi: f64) -> f64 {
    if hi > lo {
        (value - default) / (hi - lo)
    } else {
        0.0
    }
}
