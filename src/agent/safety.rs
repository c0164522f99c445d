//! The limits no served value may leave: ranges, integers and the trust
//! region around the incumbent. Simplex groups are projected onto their
//! boxes by `crate::util::project_simplex`, shared with the baselines.

use crate::space::{ParamKind, Parameter, SafetyConfig};

/// Half-width of the trust region around the incumbent, in value units.
///
/// It starts at `trust_initial` of the parameter's largest step and widens
/// towards that step as the cell accumulates `evidence` (its discounted
/// outcome count). An integer parameter cannot move by less than one, so its
/// width is a whole number and at least 1.
pub fn trust_width(param: &Parameter, safety: &SafetyConfig, evidence: f64) -> f64 {
    let growth = evidence / (evidence + safety.trust_growth_outcomes);
    whole_if_integer(param, param.max_step() * (safety.trust_initial + (1.0 - safety.trust_initial) * growth))
}

/// The widest the trust region gets, and the largest step of the incumbent.
pub fn widest_trust(param: &Parameter) -> f64 {
    whole_if_integer(param, param.max_step())
}

fn whole_if_integer(param: &Parameter, w: f64) -> f64 {
    match param.kind {
        ParamKind::Continuous => w,
        ParamKind::Integer => w.floor().max(1.0),
    }
}

/// The box a value must stay in: the parameter's range cut to the trust region.
pub fn trust_box(param: &Parameter, incumbent: f64, width: f64) -> (f64, f64) {
    ((incumbent - width).max(param.lo), (incumbent + width).min(param.hi))
}
