//! The policy network: a small candle MLP per module that refines continuous
//! values inside the arm Thompson sampling chose.
//!
//! Five arms per parameter are a coarse grid, and session x regime cannot see
//! numeric features such as `volatility_score`. The network reads the context,
//! the features and the chosen arms, and outputs for every continuous
//! parameter the mean of a Gaussian offset inside the arm's cell; the spread is
//! annealed. Training (a normalised advantage function with a baseline, on
//! mini-batches from a bounded replay buffer; see `trainer.rs`) runs on the writer thread;
//! decisions read an inference copy of the weights in `ndarray`, because a
//! candle call costs tens of microseconds for a network this small.

mod trainer;

use std::sync::Arc;

use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use ndarray::{Array1, Array2};

use crate::space::{Context, ModuleSpace, ParamKind, Parameter, Regime, Session};

pub use trainer::{PolicyTrainer, Sample};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy network for module {module:?}: {source}")]
    Candle {
        module: String,
        #[source]
        source: candle_core::Error,
    },
    #[error("policy weights for module {module:?}: {reason}")]
    Weights { module: String, reason: String },
}

/// Which inputs and outputs the network has for a module.
///
/// Inputs are the context and the features. Outputs are, per refined
/// parameter, where its reward peaks for those inputs (a value normalised by
/// the parameter's range) and how sharply, plus one value: a quadratic model
/// of the reward in the served values (see `trainer.rs`). The peak is the
/// same whichever arm was chosen, so every decision teaches it, explored
/// neighbour arms most of all: the reward's difference between two arms is
/// far larger than any offset inside one cell makes.
#[derive(Debug, Clone)]
pub struct PolicyLayout {
    /// Indices of the parameters the network refines: every continuous one.
    pub refined: Vec<usize>,
    /// Per refined parameter: its default, normalised by its range. The peak
    /// is learned as a shift from it, so an untrained network's peak is the default.
    pub anchors: Vec<f32>,
    /// Number of refined parameters, one peak head each.
    pub heads: usize,
    pub features: usize,
    pub input_dim: usize,
}

impl PolicyLayout {
    pub fn new(space: &ModuleSpace) -> PolicyLayout {
        let refined: Vec<usize> =
            space.params.iter().enumerate().filter(|(_, p)| p.kind == ParamKind::Continuous).map(|(i, _)| i).collect();
        let anchors = refined.iter().map(|&p| space.params[p].unit(space.params[p].default) as f32).collect();
        let features = space.features.len();
        PolicyLayout {
            input_dim: Session::ALL.len() + Regime::ALL.len() + Context::COUNT + 2 * features,
            heads: refined.len(),
            refined,
            anchors,
            features,
        }
    }

    /// Session and regime one-hot, then the (session, regime) cell one-hot;
    /// each feature normalised to [0, 1] by its declared range (0.5 and a
    /// missing flag when not sent). The cell one-hot is there because each
    /// cell's best offsets are its own: from the two marginal one-hots alone
    /// the hidden layer would first have to learn every interaction.
    pub fn encode(&self, space: &ModuleSpace, context: Context, features: &[Option<f64>], out: &mut Vec<f32>) {
        out.clear();
        out.extend(Session::ALL.iter().map(|&s| f32::from(u8::from(s == context.session))));
        out.extend(Regime::ALL.iter().map(|&r| f32::from(u8::from(r == context.regime))));
        out.extend((0..Context::COUNT).map(|c| f32::from(u8::from(c == context.index()))));
        for (f, value) in space.features.iter().zip(features) {
            match value {
                Some(v) => out.extend([f.normalise(*v) as f32, 0.0]),
                None => out.extend([0.5, 1.0]),
            }
        }
        debug_assert_eq!(out.len(), self.input_dim);
    }
}

/// Network shape, from the module's `[policy]` settings.
#[derive(Debug, Clone, Copy)]
pub struct MlpConfig {
    pub input: usize,
    pub hidden: usize,
    pub output: usize,
}

/// input -> tanh(hidden) -> output. The output holds, per refined parameter,
/// its peak's shift from the anchor, then per parameter the curvature, then
/// one value; see `trainer.rs`.
#[derive(Debug)]
pub struct PolicyMlp {
    hidden: Linear,
    output: Linear,
}

impl PolicyMlp {
    pub fn new(cfg: &MlpConfig, vb: VarBuilder) -> candle_core::Result<PolicyMlp> {
        Ok(PolicyMlp {
            hidden: candle_nn::linear(cfg.input, cfg.hidden, vb.pp("hidden"))?,
            output: candle_nn::linear(cfg.hidden, cfg.output, vb.pp("output"))?,
        })
    }
}

impl Module for PolicyMlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.output.forward(&self.hidden.forward(x)?.tanh()?)
    }
}

/// What decisions read: an `ndarray` copy of the weights and the current spread.
#[derive(Debug, Clone)]
pub struct PolicySnapshot {
    pub layout: Arc<PolicyLayout>,
    w1: Array2<f32>,
    b1: Array1<f32>,
    w2: Array2<f32>,
    b2: Array1<f32>,
    /// Standard deviation of the offset, in units of the arm's half-cell.
    pub spread: f64,
    pub train_steps: u64,
}

impl PolicySnapshot {
    /// Where each refined parameter's reward peaks for these inputs, as a
    /// value normalised by its range.
    pub fn peaks(&self, input: &[f32]) -> Vec<f64> {
        let x = ndarray::ArrayView1::from(input);
        let h = (self.w1.dot(&x) + &self.b1).mapv(f32::tanh);
        let out = self.w2.dot(&h) + &self.b2;
        out.iter().zip(&self.layout.anchors).map(|(o, a)| f64::from(a + o)).collect()
    }

    /// The offset means for the chosen arms, one per refined parameter: the
    /// peak as an offset from the arm's value in units of its half-cell,
    /// within the cell (beyond +-1 the value would serve the cell's edge).
    pub fn means(&self, space: &ModuleSpace, input: &[f32], arms: &[usize]) -> Vec<f64> {
        self.peaks(input)
            .into_iter()
            .zip(&self.layout.refined)
            .map(|(peak, &p)| {
                let param = &space.params[p];
                offset_of(param, arms[p], param.lo + peak * param.range()).clamp(-1.0, 1.0)
            })
            .collect()
    }
}

/// The offset of `value` from `arm`'s value, in units of the arm's half-cell
/// on that side: the inverse of [`offset_value`] before clipping.
pub fn offset_of(param: &Parameter, arm: usize, value: f64) -> f64 {
    let (cell_lo, cell_hi) = param.arm_cell(arm);
    let a = param.arms[arm];
    let width = if value >= a { cell_hi - a } else { a - cell_lo };
    if width > 0.0 {
        (value - a) / width
    } else {
        0.0
    }
}

/// Maps an offset `u` (1 = the cell's upper edge, -1 = its lower edge) to a
/// value around `arm`'s, using its cell widths, then clips to `bounds`.
pub fn offset_value(param: &Parameter, arm: usize, u: f64, bounds: (f64, f64)) -> f64 {
    let (cell_lo, cell_hi) = param.arm_cell(arm);
    let a = param.arms[arm];
    let v = if u >= 0.0 { a + u * (cell_hi - a) } else { a + u * (a - cell_lo) };
    v.clamp(bounds.0, bounds.1)
}

/// The box a refined value must stay in: the arm's cell within the trust region.
/// `None` when they do not meet (an arm beyond the region, served at its edge).
pub fn refine_box(param: &Parameter, arm: usize, trust: (f64, f64)) -> Option<(f64, f64)> {
    let (lo, hi) = param.arm_cell(arm);
    let (lo, hi) = (lo.max(trust.0), hi.min(trust.1));
    (hi > lo).then_some((lo, hi))
}

pub fn gaussian_log_density(x: f64, mean: f64, sd: f64) -> f64 {
    let z = (x - mean) / sd;
    -0.5 * z * z - sd.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln()
}
