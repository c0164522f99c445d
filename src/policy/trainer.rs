//! Online training of the policy network from reported outcomes.
//!
//! The method is a normalised advantage function (Gu et al., 2016) over the
//! served values: the network gives, per refined parameter, a peak `mu_p(x)`
//! and a curvature `c_p(x)`, and a value `V(x)`, and models the reward's
//! advantage over the cell's running mean as
//! `V(x) - sum_p 1/2 c_p(x) (v_p - mu_p(x))^2`, with `v_p` the served value
//! normalised by the parameter's range. The policy's mean is the peak, moved
//! into the chosen arm's cell. Training regresses the model on the observed
//! advantage of every explored decision, refined or not. Every arm the bandit
//! explores is a point on the same parabola, so the large reward differences
//! between neighbouring arms locate the peak inside a cell far sooner than
//! the small ones offsets make could. Regression uses each reward's size,
//! not just its sign as REINFORCE does, and needs no importance weights when
//! replaying mini-batches from a buffer of decisions made under older weights.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use ndarray::{Array1, Array2};
use ndarray_rand::rand_distr::Uniform;
use ndarray_rand::RandomExt;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

use crate::space::{ModuleSpace, PolicyConfig};

use super::{MlpConfig, PolicyError, PolicyLayout, PolicyMlp, PolicySnapshot};

const EDGE_PENALTY: f64 = 1.0;
/// The curvature is `softplus(output) * CURVATURE_SCALE`: rewards in units of
/// the prior noise sd bend by tens over a parameter's range, and a small
/// output should reach that without a long climb.
const CURVATURE_SCALE: f64 = 10.0;
const OUTCOMES_KEY: &str = "paramopt.outcomes";
const STEPS_KEY: &str = "paramopt.train_steps";

/// One decision's refinement and what it earned.
#[derive(Debug, Clone)]
pub struct Sample {
    pub input: Vec<f32>,
    /// Per refined parameter: the served value, normalised by its range.
    pub values: Vec<f32>,
    /// The reward beyond the cell's running mean, in units of the module's
    /// prior noise sd.
    pub advantage: f32,
}

pub struct PolicyTrainer {
    module: String,
    pub layout: Arc<PolicyLayout>,
    cfg: PolicyConfig,
    varmap: VarMap,
    net: PolicyMlp,
    optimizer: AdamW,
    replay: VecDeque<Sample>,
    rng: Pcg64Mcg,
    /// Outcomes learned from: drives the spread's annealing.
    pub outcomes: u64,
    pub train_steps: u64,
    since_step: usize,
}

impl std::fmt::Debug for PolicyTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyTrainer")
            .field("module", &self.module)
            .field("outcomes", &self.outcomes)
            .field("train_steps", &self.train_steps)
            .field("replay", &self.replay.len())
            .finish()
    }
}

impl PolicyTrainer {
    /// A fresh network, initialised from `seed`. Its output layer starts at
    /// zero, so an untrained network offsets nothing and a cold agent still
    /// serves exactly the defaults.
    pub fn new(space: &ModuleSpace, seed: u64) -> Result<PolicyTrainer, PolicyError> {
        let layout = Arc::new(PolicyLayout::new(space));
        let mut trainer = PolicyTrainer::empty(space, layout.clone(), seed)?;
        let (hidden, input, output) = (space.policy.hidden, layout.input_dim, 2 * layout.heads + 1);
        let mut init_rng = Pcg64Mcg::seed_from_u64(seed);
        let bound = 1.0 / (input as f32).sqrt();
        let w1 = Array2::random_using((hidden, input), Uniform::new(-bound, bound).expect("bound > 0"), &mut init_rng);
        let init: [(&str, Vec<f32>, Vec<usize>); 4] = [
            ("hidden.weight", w1.into_raw_vec_and_offset().0, vec![hidden, input]),
            ("hidden.bias", vec![0.0; hidden], vec![hidden]),
            ("output.weight", vec![0.0; output * hidden], vec![output, hidden]),
            ("output.bias", vec![0.0; output], vec![output]),
        ];
        for (name, data, shape) in init {
            let t = Tensor::from_vec(data, shape, &Device::Cpu).map_err(|e| trainer.candle(e))?;
            trainer.varmap.set_one(name, t).map_err(|e| trainer.candle(e))?;
        }
        Ok(trainer)
    }

    fn empty(space: &ModuleSpace, layout: Arc<PolicyLayout>, seed: u64) -> Result<PolicyTrainer, PolicyError> {
        let candle = |source| PolicyError::Candle { module: space.name.clone(), source };
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let cfg = MlpConfig { input: layout.input_dim, hidden: space.policy.hidden, output: 2 * layout.heads + 1 };
        let net = PolicyMlp::new(&cfg, vb).map_err(candle)?;
        let params = ParamsAdamW { lr: space.policy.learning_rate, weight_decay: 0.0, ..Default::default() };
        let optimizer = AdamW::new(varmap.all_vars(), params).map_err(candle)?;
        Ok(PolicyTrainer {
            module: space.name.clone(),
            layout,
            cfg: space.policy.clone(),
            varmap,
            net,
            optimizer,
            replay: VecDeque::with_capacity(space.policy.replay_capacity),
            rng: Pcg64Mcg::seed_from_u64(seed ^ 0x7261_6e64),
            outcomes: 0,
            train_steps: 0,
            since_step: 0,
        })
    }

    fn candle(&self, source: candle_core::Error) -> PolicyError {
        PolicyError::Candle { module: self.module.clone(), source }
    }

    /// The offset's standard deviation now: annealed from `initial_spread`
    /// towards `min_spread`, halving the distance every `spread_half_life` outcomes.
    pub fn spread(&self) -> f64 {
        let c = &self.cfg;
        c.min_spread + (c.initial_spread - c.min_spread) * 0.5f64.powf(self.outcomes as f64 / c.spread_half_life)
    }

    /// Learns from one outcome; trains a mini-batch every `train_every`
    /// outcomes. Returns a new snapshot when the weights changed.
    pub fn observe(&mut self, sample: Sample) -> Result<Option<Arc<PolicySnapshot>>, PolicyError> {
        if self.replay.len() == self.cfg.replay_capacity {
            self.replay.pop_front();
        }
        self.replay.push_back(sample);
        self.outcomes += 1;
        self.since_step += 1;
        if self.since_step < self.cfg.train_every || self.replay.len() < self.cfg.batch_size {
            return Ok(None);
        }
        self.since_step = 0;
        self.train_step()?;
        Ok(Some(self.snapshot()?))
    }

    fn train_step(&mut self) -> Result<(), PolicyError> {
        let (b, d, p) = (self.cfg.batch_size, self.layout.input_dim, self.layout.heads);
        let (mut x, mut v) = (Vec::with_capacity(b * d), Vec::with_capacity(b * p));
        let mut y = Vec::with_capacity(b);
        for _ in 0..b {
            let s = &self.replay[self.rng.random_range(0..self.replay.len())];
            x.extend_from_slice(&s.input);
            v.extend_from_slice(&s.values);
            y.push(s.advantage);
        }
        let anchors = self.layout.anchors.clone();
        let loss = (|| -> candle_core::Result<Tensor> {
            let dev = &Device::Cpu;
            let x = Tensor::from_vec(x, (b, d), dev)?;
            let v = Tensor::from_vec(v, (b, p), dev)?;
            let y = Tensor::from_vec(y, b, dev)?;
            let anchors = Tensor::from_vec(anchors, (1, p), dev)?;
            let head = self.net.forward(&x)?;
            let peak = head.narrow(1, 0, p)?.broadcast_add(&anchors)?;
            // softplus keeps the curvature positive: the model has a maximum.
            let curvature = ((head.narrow(1, p, p)?.exp()? + 1.0)?.log()? * CURVATURE_SCALE)?;
            let value = head.narrow(1, 2 * p, 1)?.squeeze(1)?;
            let penalty = (curvature * (v - &peak)?.sqr()?)?.sum(D::Minus1)?;
            let predicted = (value - (penalty * 0.5)?)?;
            // A peak beyond the range serves its edge, so the reward cannot
            // place it; a soft wall keeps it identifiable.
            let beyond = ((&peak - 0.5)?.abs()? - 0.5)?.relu()?.sqr()?.mean_all()?;
            (y - predicted)?.sqr()?.mean_all()? + (beyond * EDGE_PENALTY)?
        })()
        .map_err(|e| self.candle(e))?;
        self.optimizer.backward_step(&loss).map_err(|e| self.candle(e))?;
        self.train_steps += 1;
        Ok(())
    }

    /// Copies the weights out of candle for decisions to read.
    pub fn snapshot(&self) -> Result<Arc<PolicySnapshot>, PolicyError> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let get2 = |name: &str| -> Result<Array2<f32>, PolicyError> {
            let t = data.get(name).ok_or_else(|| self.missing(name))?.as_tensor();
            let (r, c) = t.dims2().map_err(|e| self.candle(e))?;
            let v = t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(|e| self.candle(e))?;
            Array2::from_shape_vec((r, c), v).map_err(|e| self.weights(e.to_string()))
        };
        let get1 = |name: &str| -> Result<Array1<f32>, PolicyError> {
            let t = data.get(name).ok_or_else(|| self.missing(name))?.as_tensor();
            Ok(Array1::from(t.to_vec1::<f32>().map_err(|e| self.candle(e))?))
        };
        Ok(Arc::new(PolicySnapshot {
            layout: self.layout.clone(),
            w1: get2("hidden.weight")?,
            b1: get1("hidden.bias")?,
            // Decisions need only the peaks: the head's first rows.
            w2: get2("output.weight")?.slice_move(ndarray::s![..self.layout.heads, ..]),
            b2: get1("output.bias")?.slice_move(ndarray::s![..self.layout.heads]),
            spread: self.spread(),
            train_steps: self.train_steps,
        }))
    }

    fn missing(&self, name: &str) -> PolicyError {
        self.weights(format!("tensor {name:?} is missing"))
    }

    fn weights(&self, reason: String) -> PolicyError {
        PolicyError::Weights { module: self.module.clone(), reason }
    }

    /// The weights and training counters as safetensors bytes, for checkpoints.
    /// The optimiser's moments are not kept: a restored network resumes with
    /// fresh Adam statistics.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, PolicyError> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let tensors: BTreeMap<String, Tensor> = data.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
        let meta = HashMap::from([
            (OUTCOMES_KEY.to_string(), self.outcomes.to_string()),
            (STEPS_KEY.to_string(), self.train_steps.to_string()),
        ]);
        safetensors::serialize(&tensors, Some(meta)).map_err(|e| self.weights(e.to_string()))
    }

    /// A network restored from [`PolicyTrainer::to_safetensors`] bytes. Refused,
    /// naming the tensor, when the module's space no longer matches its shapes.
    pub fn from_safetensors(space: &ModuleSpace, bytes: &[u8], seed: u64) -> Result<PolicyTrainer, PolicyError> {
        let layout = Arc::new(PolicyLayout::new(space));
        let mut trainer = PolicyTrainer::empty(space, layout, seed)?;
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| trainer.weights(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let counter = |key: &str| meta.get(key).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        trainer.outcomes = counter(OUTCOMES_KEY);
        trainer.train_steps = counter(STEPS_KEY);
        let loaded = candle_core::safetensors::load_buffer(bytes, &Device::Cpu).map_err(|e| trainer.candle(e))?;
        let expected: Vec<(String, Vec<usize>)> = trainer
            .varmap
            .data()
            .lock()
            .expect("varmap lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().dims().to_vec()))
            .collect();
        for (name, shape) in expected {
            let t = loaded.get(&name).ok_or_else(|| trainer.missing(&name))?;
            if t.dims() != shape.as_slice() {
                return Err(
                    trainer.weights(format!("tensor {name:?} has shape {:?}, the space needs {shape:?}", t.dims()))
                );
            }
            trainer
                .varmap
                .set_one(&name, t.to_dtype(DType::F32).map_err(|e| trainer.candle(e))?)
                .map_err(|e| trainer.candle(e))?;
        }
        Ok(trainer)
    }
}
