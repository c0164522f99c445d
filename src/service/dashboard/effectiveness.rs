//! `GET /v1/dashboard/modules/{module}/effectiveness`: the rows of
//! `parameter_effectiveness`, each rate with its Wilson interval.

use axum::extract::State;
use axum::response::Response;

use crate::service::error::ApiError;
use crate::service::extract::{PathParams, QueryPairs};
use crate::space::{Regime, Session};

use super::wire::{DashboardEffectiveness, EffectivenessRow};
use super::{json, on_store, Dashboard};

/// `GET /v1/dashboard/modules/{module}/effectiveness`.
pub(super) async fn effectiveness(
    State(d): State<Dashboard>,
    PathParams(module): PathParams<String>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    query.take([])?;
    let space = d.app.agent().space(&module)?.clone();
    let name = space.name.clone();
    let rows = on_store(&d, move |store| store.effectiveness(&name)).await?.unwrap_or_default();
    let rows = rows
        .into_iter()
        .map(|r| {
            let (success_lo95, success_hi95) = wilson(r.success_rate, r.sample_size);
            EffectivenessRow {
                parameter: r.parameter_type,
                value: r.parameter_value,
                session: r.session.map(Session::as_str),
                regime: r.regime.map(Regime::as_str),
                success_rate: r.success_rate,
                success_lo95,
                success_hi95,
                avg_return: r.avg_return,
                sample_size: r.sample_size,
                last_updated: r.last_updated,
            }
        })
        .collect();
    json(&DashboardEffectiveness { module: space.name.clone(), rows })
}

/// The Wilson score 95% interval of a rate observed over `n` trials: unlike
/// the normal approximation it stays inside [0, 1] and is sane for small `n`.
fn wilson(rate: f64, n: u64) -> (f64, f64) {
    if n == 0 || !rate.is_finite() {
        return (0.0, 1.0);
    }
    let (p, n, z) = (rate.clamp(0.0, 1.0), n as f64, 1.96f64);
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval_holds_the_rate_and_stays_in_the_unit_interval() {
        let (lo, hi) = wilson(0.6, 50);
        assert!(lo < 0.6 && 0.6 < hi && lo > 0.4 && hi < 0.8, "{lo} {hi}");
        assert_eq!(wilson(0.0, 0), (0.0, 1.0));
        let (lo, hi) = wilson(1.0, 3);
        assert!(lo > 0.3 && hi == 1.0, "{lo} {hi}");
    }
}
