//! What the agent is compared with: fixed parameters (the seed defaults, the
//! oracle), uniform random, epsilon-greedy, UCB1 and a plain factorised
//! Thompson sampler.
//!
//! The learning baselines are contextual and factorised like the agent: per
//! context, per parameter, a choice among the same arms, learning from the
//! same (clipped) rewards with the same delays. Simplex groups are projected
//! onto their constraints, as the agent does. The oracle is searched, not
//! written down: the best fixed arms per context in hindsight on the very
//! opportunities being scored.

use rand::Rng;
use rand_distr::StandardNormal;
use rand_pcg::Pcg64Mcg;

use crate::space::{Context, ModuleSpace};
use crate::util::project_simplex;

use super::trading::{Opportunity, Rule};

/// A policy the backtest can drive: choose, then learn when the trade closes.
pub trait Baseline: Send {
    fn name(&self) -> &str;
    /// Arm per parameter.
    fn choose(&mut self, context: Context, rng: &mut Pcg64Mcg) -> Vec<usize>;
    fn learn(&mut self, context: Context, arms: &[usize], reward: f64);
}

/// The values arms serve: each arm's value, then every simplex group
/// projected onto `sum = 1` inside its parameters' ranges.
pub fn arm_values(space: &ModuleSpace, arms: &[usize]) -> Vec<f64> {
    let mut values: Vec<f64> = space.params.iter().zip(arms).map(|(p, &k)| p.arms[k]).collect();
    project_groups(space, &mut values);
    values
}

pub fn project_groups(space: &ModuleSpace, values: &mut [f64]) {
    for group in &space.simplex_groups {
        let mut y: Vec<f64> = group.members.iter().map(|&p| values[p]).collect();
        if (y.iter().sum::<f64>() - 1.0).abs() < 1e-12 {
            continue;
        }
        let lo: Vec<f64> = group.members.iter().map(|&p| space.params[p].lo).collect();
        let hi: Vec<f64> = group.members.iter().map(|&p| space.params[p].hi).collect();
        project_simplex(&mut y, &lo, &hi);
        for (&p, v) in group.members.iter().zip(y) {
            values[p] = v;
        }
    }
}

/// The same arms in every decision of a context.
#[derive(Debug, Clone)]
pub struct Fixed {
    pub name: String,
    /// `[context][param]`
    pub arms: Vec<Vec<usize>>,
}

impl Fixed {
    pub fn defaults(space: &ModuleSpace) -> Fixed {
        let arms: Vec<usize> = space.params.iter().map(|p| p.default_arm).collect();
        Fixed { name: "defaults".into(), arms: vec![arms; Context::COUNT] }
    }
}

impl Baseline for Fixed {
    fn name(&self) -> &str {
        &self.name
    }
    fn choose(&mut self, context: Context, _: &mut Pcg64Mcg) -> Vec<usize> {
        self.arms[context.index()].clone()
    }
    fn learn(&mut self, _: Context, _: &[usize], _: f64) {}
}

#[derive(Debug, Clone)]
pub struct UniformRandom {
    arms: Vec<usize>,
}

impl UniformRandom {
    pub fn new(space: &ModuleSpace) -> UniformRandom {
        UniformRandom { arms: space.params.iter().map(|p| p.arms.len()).collect() }
    }
}

impl Baseline for UniformRandom {
    fn name(&self) -> &str {
        "random"
    }
    fn choose(&mut self, _: Context, rng: &mut Pcg64Mcg) -> Vec<usize> {
        self.arms.iter().map(|&k| rng.random_range(0..k)).collect()
    }
    fn learn(&mut self, _: Context, _: &[usize], _: f64) {}
}

/// Running reward statistics per `[context][param][arm]`, and per context.
#[derive(Debug, Clone)]
struct ArmTable {
    n: Vec<Vec<Vec<f64>>>,
    mean: Vec<Vec<Vec<f64>>>,
    ctx_n: Vec<f64>,
    ctx_mean: Vec<f64>,
    ctx_m2: Vec<f64>,
}

impl ArmTable {
    fn new(space: &ModuleSpace) -> ArmTable {
        let cell: Vec<Vec<f64>> = space.params.iter().map(|p| vec![0.0; p.arms.len()]).collect();
        ArmTable {
            n: vec![cell.clone(); Context::COUNT],
            mean: vec![cell; Context::COUNT],
            ctx_n: vec![0.0; Context::COUNT],
            ctx_mean: vec![0.0; Context::COUNT],
            ctx_m2: vec![0.0; Context::COUNT],
        }
    }

    fn learn(&mut self, c: usize, arms: &[usize], reward: f64) {
        for (p, &k) in arms.iter().enumerate() {
            self.n[c][p][k] += 1.0;
            self.mean[c][p][k] += (reward - self.mean[c][p][k]) / self.n[c][p][k];
        }
        self.ctx_n[c] += 1.0;
        let d = reward - self.ctx_mean[c];
        self.ctx_mean[c] += d / self.ctx_n[c];
        self.ctx_m2[c] += d * (reward - self.ctx_mean[c]);
    }

    fn sd(&self, c: usize) -> f64 {
        if self.ctx_n[c] < 2.0 {
            return 1.0;
        }
        (self.ctx_m2[c] / (self.ctx_n[c] - 1.0)).sqrt()
    }

    /// The untried arm with the lowest index, else the best `score`.
    fn pick(&self, c: usize, p: usize, score: impl Fn(f64, f64) -> f64) -> usize {
        let n = &self.n[c][p];
        if let Some(k) = n.iter().position(|&x| x == 0.0) {
            return k;
        }
        (0..n.len())
            .max_by(|&a, &b| score(self.mean[c][p][a], n[a]).total_cmp(&score(self.mean[c][p][b], n[b])))
            .unwrap_or(0)
    }
}

/// Each parameter's best arm by mean reward so far; a uniformly random arm
/// with probability epsilon.
#[derive(Debug, Clone)]
pub struct EpsilonGreedy {
    epsilon: f64,
    table: ArmTable,
}

impl EpsilonGreedy {
    pub fn new(space: &ModuleSpace, epsilon: f64) -> EpsilonGreedy {
        EpsilonGreedy { epsilon, table: ArmTable::new(space) }
    }
}

impl Baseline for EpsilonGreedy {
    fn name(&self) -> &str {
        "epsilon-greedy"
    }
    fn choose(&mut self, context: Context, rng: &mut Pcg64Mcg) -> Vec<usize> {
        let c = context.index();
        (0..self.table.n[c].len())
            .map(|p| {
                if rng.random::<f64>() < self.epsilon {
                    rng.random_range(0..self.table.n[c][p].len())
                } else {
                    self.table.pick(c, p, |m, _| m)
                }
            })
            .collect()
    }
    fn learn(&mut self, context: Context, arms: &[usize], reward: f64) {
        self.table.learn(context.index(), arms, reward);
    }
}

/// UCB1 per parameter: mean + sd * sqrt(2 ln N / n), with the context's
/// reward standard deviation as the scale (rewards are not in [0, 1]).
#[derive(Debug, Clone)]
pub struct Ucb1 {
    table: ArmTable,
}

impl Ucb1 {
    pub fn new(space: &ModuleSpace) -> Ucb1 {
        Ucb1 { table: ArmTable::new(space) }
    }
}

impl Baseline for Ucb1 {
    fn name(&self) -> &str {
        "ucb1"
    }
    fn choose(&mut self, context: Context, _: &mut Pcg64Mcg) -> Vec<usize> {
        let c = context.index();
        let (total, sd) = (self.table.ctx_n[c].max(1.0), self.table.sd(c));
        (0..self.table.n[c].len())
            .map(|p| self.table.pick(c, p, |m, n| m + sd * (2.0 * total.ln() / n).sqrt()))
            .collect()
    }
    fn learn(&mut self, context: Context, arms: &[usize], reward: f64) {
        self.table.learn(context.index(), arms, reward);
    }
}

/// Plain factorised Thompson sampling: per context, per parameter, per arm a
/// Gaussian posterior on the mean reward (prior mean 0 worth one outcome,
/// noise scale the context's reward standard deviation), each parameter's
/// arm drawn independently, learning every parameter's served arm from the
/// decision's one reward (bandit feedback). No pooling, no forgetting, no
/// trust region: what the agent's machinery adds is measured against it.
#[derive(Debug, Clone)]
pub struct Thompson {
    table: ArmTable,
}

impl Thompson {
    pub fn new(space: &ModuleSpace) -> Thompson {
        Thompson { table: ArmTable::new(space) }
    }
}

impl Baseline for Thompson {
    fn name(&self) -> &str {
        "thompson"
    }
    fn choose(&mut self, context: Context, rng: &mut Pcg64Mcg) -> Vec<usize> {
        let c = context.index();
        let sd = self.table.sd(c);
        let t = &self.table;
        (0..t.n[c].len())
            .map(|p| {
                let draw = |k: usize| {
                    let n = t.n[c][p][k];
                    let z: f64 = rng.sample(StandardNormal);
                    n * t.mean[c][p][k] / (n + 1.0) + sd / (n + 1.0).sqrt() * z
                };
                let draws: Vec<f64> = (0..t.n[c][p].len()).map(draw).collect();
                (0..draws.len()).max_by(|&a, &b| draws[a].total_cmp(&draws[b])).unwrap_or(0)
            })
            .collect()
    }
    fn learn(&mut self, context: Context, arms: &[usize], reward: f64) {
        self.table.learn(context.index(), arms, reward);
    }
}

/// Explore-then-commit: what `explore` can teach a learner that sees only
/// the reward of the arms it chose (bandit feedback), with the whole stretch
/// spent exploring. Every parameter's arm is drawn uniformly at random on
/// each opportunity; the trades that closed by bar `known_by` are learned
/// with `reward`; each context keeps, per parameter, the arm with the best
/// mean reward (an arm never tried counts as untried first, as in
/// epsilon-greedy). Set against the oracle's search on the same stretch
/// (full information: every arm's return on every bar), it separates what
/// the information allows from what an algorithm makes of it.
///
/// With `regime_pooling` > 0 an arm's mean in a context is shrunk towards
/// the same arm's mean over every context of that regime, as if it had
/// borrowed that many outcomes from it (the backtest's report uses 0).
pub fn explore_then_commit(
    space: &ModuleSpace,
    rule: &dyn Rule,
    explore: &[&Opportunity],
    known_by: usize,
    reward: &dyn Fn(&super::trading::Trade) -> f64,
    regime_pooling: f64,
    rng: &mut Pcg64Mcg,
) -> Fixed {
    let mut random = UniformRandom::new(space);
    let mut table = ArmTable::new(space);
    for o in explore {
        let arms = random.choose(o.context, rng);
        let trade = rule.trade(o, &arm_values(space, &arms));
        if trade.close_bar <= known_by {
            table.learn(o.context.index(), &arms, reward(&trade));
        }
    }
    let contexts: Vec<Context> = Context::all().collect();
    let arms = contexts
        .iter()
        .map(|ctx| {
            let c = ctx.index();
            let same_regime: Vec<usize> =
                contexts.iter().filter(|o| o.regime == ctx.regime).map(|o| o.index()).collect();
            (0..space.params.len())
                .map(|p| {
                    if regime_pooling <= 0.0 {
                        return table.pick(c, p, |m, _| m);
                    }
                    let pooled = |k: usize| {
                        let n: f64 = same_regime.iter().map(|&o| table.n[o][p][k]).sum();
                        let sum: f64 = same_regime.iter().map(|&o| table.n[o][p][k] * table.mean[o][p][k]).sum();
                        if n > 0.0 {
                            sum / n
                        } else {
                            0.0
                        }
                    };
                    let shrunk = |k: usize| {
                        let n = table.n[c][p][k];
                        (n * table.mean[c][p][k] + regime_pooling * pooled(k)) / (n + regime_pooling)
                    };
                    (0..table.n[c][p].len()).max_by(|&a, &b| shrunk(a).total_cmp(&shrunk(b))).unwrap_or(0)
                })
                .collect()
        })
        .collect();
    Fixed { name: "explore-then-commit".into(), arms }
}

/// The coordinates of the oracle search: each parameter on its own, except
/// that a simplex group moves as one, over its arm combinations that sum to 1.
fn coordinates(space: &ModuleSpace) -> Vec<Vec<Vec<(usize, usize)>>> {
    let mut coords = Vec::new();
    for (p, param) in space.params.iter().enumerate() {
        if !param.simplex {
            coords.push((0..param.arms.len()).map(|k| vec![(p, k)]).collect());
        }
    }
    for group in &space.simplex_groups {
        let mut combos: Vec<Vec<(usize, usize)>> = vec![vec![]];
        for &p in &group.members {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    (0..space.params[p].arms.len()).map(move |k| {
                        let mut c = c.clone();
                        c.push((p, k));
                        c
                    })
                })
                .collect();
        }
        combos.retain(|c| (c.iter().map(|&(p, k)| space.params[p].arms[k]).sum::<f64>() - 1.0).abs() < 1e-9);
        coords.push(combos);
    }
    coords
}

/// The best fixed arms per context in hindsight on `opps`: coordinate ascent
/// from the defaults over every parameter's arms (simplex groups over their
/// feasible combinations), scoring the total return the rule makes, until a
/// full pass improves nothing.
pub fn oracle(space: &ModuleSpace, rule: &dyn Rule, opps: &[&Opportunity]) -> Fixed {
    let coords = coordinates(space);
    let mut per_context = Vec::with_capacity(Context::COUNT);
    for ctx in Context::all() {
        let mine: Vec<&Opportunity> = opps.iter().copied().filter(|o| o.context == ctx).collect();
        let score = |arms: &[usize]| -> f64 {
            let values = arm_values(space, arms);
            mine.iter().map(|o| rule.trade(o, &values).return_pct).sum()
        };
        let mut arms: Vec<usize> = space.params.iter().map(|p| p.default_arm).collect();
        let mut best = score(&arms);
        for _pass in 0..6 {
            let mut improved = false;
            for coord in &coords {
                for choice in coord {
                    let mut trial = arms.clone();
                    for &(p, k) in choice {
                        trial[p] = k;
                    }
                    if trial == arms {
                        continue;
                    }
                    let s = score(&trial);
                    if s > best + 1e-12 {
                        (best, arms, improved) = (s, trial, true);
                    }
                }
            }
            if !improved {
                break;
            }
        }
        per_context.push(arms);
    }
    Fixed { name: "oracle".into(), arms: per_context }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::Spaces;

    #[test]
    fn simplex_coordinates_sum_to_one_and_include_the_defaults() {
        let spaces = Spaces::builtin();
        for space in spaces.iter() {
            let coords = coordinates(space);
            for group in &space.simplex_groups {
                let combos = coords.iter().find(|c| c[0].len() == group.members.len()).unwrap();
                assert!(combos.len() >= 2, "{}: {} combinations", space.name, combos.len());
                let defaults: Vec<(usize, usize)> =
                    group.members.iter().map(|&p| (p, space.params[p].default_arm)).collect();
                assert!(combos.contains(&defaults));
            }
        }
    }

    #[test]
    fn ucb1_epsilon_greedy_and_thompson_settle_on_the_better_arm() {
        let spaces = Spaces::builtin();
        let space = spaces.get("crypto").unwrap();
        let ctx = Context::all().next().unwrap();
        let mut rng = rand::SeedableRng::seed_from_u64(1);
        let mut learners: Vec<Box<dyn Baseline>> =
            vec![Box::new(Ucb1::new(space)), Box::new(EpsilonGreedy::new(space, 0.1)), Box::new(Thompson::new(space))];
        for l in learners.iter_mut() {
            for _ in 0..3_000 {
                let arms = l.choose(ctx, &mut rng);
                // Parameter 0's arm 3 pays 1, the rest 0, plus noise.
                let r = if arms[0] == 3 { 1.0 } else { 0.0 } + rng.random_range(-0.5..0.5);
                l.learn(ctx, &arms, r);
            }
            let picks = (0..100).filter(|_| l.choose(ctx, &mut rng)[0] == 3).count();
            assert!(picks >= 85, "{}: {picks}", l.name());
        }
    }
}
