//! `paramopt backtest`: every module trades its market with the agent's
//! parameters and with each baseline's, on the same bars, and the results are
//! compared (in full, and over the second half alone, with each policy's
//! difference from the defaults and its block t-statistic).
//!
//! Markets: the real data the project ships (`super::real`: crypto on BTC
//! hours, stocks and options on nine daily stocks interleaved by date), the
//! held-out real market (stocks and options on twenty S&P 500 stocks' daily
//! closes, 2005-2022; no crypto), the synthetic market, or a CSV. Policies: the agent, the defaults, uniform
//! random, epsilon-greedy, UCB1, plain Thompson sampling, the Python peers
//! (Vowpal Wabbit and MABWiser, `super::peers`) when their venv exists, the
//! out-of-sample oracle (searched on the first half, scored on the second)
//! and the hindsight oracle.
//!
//! Outcomes are delayed as in production: a decision's outcome is reported
//! when its trade closes, bars later, so the agent and the learning baselines
//! decide with several trades still open. The agent explores (Thompson
//! sampling) throughout, so its figures include the cost of learning.
//!
//! Its parts: `driver.rs` walks a stream with delayed outcomes for any
//! policy (the agent in-process, the baselines, the peers, or the demo's
//! served agent); `score.rs` searches the oracles and computes every figure
//! of a module's result. The text table is `crate::report::backtest`.

mod driver;
mod score;

use std::path::PathBuf;
use std::sync::Arc;

use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;
use serde::Serialize;

use crate::agent::{Agent, AgentError, AgentOptions, ModuleView};
use crate::space::{Context, ModuleSpace, Spaces};

use super::baselines::{Baseline, EpsilonGreedy, Fixed, Thompson, Ucb1, UniformRandom};
use super::csv::{self, CsvError};
use super::market::{Market, SyntheticMarket};
pub use super::metrics::{growth_cell, Metrics, Paired, BLOCK};
use super::peers::{PeerDriver, PeerError, PEERS};
use super::real;
pub use super::stream::Stream;
use super::trading::RuleError;
use crate::ope::LoggedDecision;
pub use driver::{drive, Driver, Pass};
use driver::{AgentDriver, BaselineDriver};
use score::assemble;
pub use score::gap_share;

/// Bars the indicators need before the first decision.
pub const WARMUP: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error(transparent)]
    Csv(#[from] CsvError),
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error("agent: {0}")]
    Agent(#[from] AgentError),
    #[error("unknown module {module:?}; known: {known:?}")]
    UnknownModule { module: String, known: Vec<String> },
    #[error("{module}: a pass of {decisions} decisions for a stream of {want}, or greedy values missing contexts")]
    PassLength { module: String, decisions: usize, want: usize },
    #[error("the market has {bars} bars; after warm-up and the longest holding period ({need}) none is left")]
    TooShort { bars: usize, need: usize },
    #[error("{market}: bar {bar} (time {time}) skips a time the other markets have; markets interleave only on one calendar")]
    Calendar { market: String, time: i64, bar: usize },
    #[error(transparent)]
    Peer(#[from] PeerError),
}

#[derive(Debug, Clone)]
pub enum MarketSource {
    /// The shipped real data (`super::real`): crypto on BTC/USD hours,
    /// stocks and options on the nine daily stocks.
    Real,
    /// The held-out real market (`super::real::sp500_daily`): stocks and
    /// options on twenty S&P 500 stocks' daily closes, 2005-2022. There is no
    /// second hourly crypto series, so crypto is skipped, with a note.
    Sp500,
    /// The built-in synthetic market with this many hourly bars, seeded by the run's seed.
    Synthetic {
        bars: usize,
    },
    Csv(PathBuf),
    Given(Arc<Market>),
}

/// Where a run is: sent after every 1% of a policy's pass over a module.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProgressEvent {
    pub module: String,
    pub policy: String,
    pub done: usize,
    pub total: usize,
}

pub type ProgressFn = Arc<dyn Fn(&ProgressEvent) + Send + Sync>;

#[derive(Clone)]
pub struct BacktestOptions {
    pub market: MarketSource,
    pub seed: u64,
    /// Only these modules; all when empty.
    pub modules: Vec<String>,
    /// Exploration rate of the epsilon-greedy baseline.
    pub epsilon: f64,
    /// Points on each learning curve.
    pub curve_points: usize,
    pub progress: Option<ProgressFn>,
    /// The peers' Python (`super::peers::find_python`), or why there is none
    /// (said in the report's notes); `None` runs no peers and says nothing.
    pub peers: Option<Result<PathBuf, String>>,
    /// Decisions per block of the block t-statistics.
    pub block: usize,
}

impl Default for BacktestOptions {
    fn default() -> Self {
        BacktestOptions {
            market: MarketSource::Synthetic { bars: 30_000 },
            seed: 7,
            modules: vec![],
            epsilon: 0.1,
            curve_points: 50,
            progress: None,
            peers: None,
            block: BLOCK,
        }
    }
}

/// One policy's results on one module.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyResult {
    pub policy: String,
    pub full: Metrics,
    pub second_half: Metrics,
    /// The oracle's total return minus this policy's, over the second half.
    pub regret: f64,
    /// Mean return per decision minus the defaults', over the second half.
    pub improvement_over_defaults: f64,
    /// Share of the defaults-to-oracle gap in mean return closed, second half.
    pub gap_closed: f64,
    /// Second half: this policy's per-decision return minus the defaults',
    /// with its block t-statistic.
    pub vs_defaults: Paired,
    /// Mean return per decision in consecutive windows, for the learning curve.
    pub curve: Vec<f64>,
    /// Every decision's return over the whole stream (for `oracle-oos`: the
    /// first half in sample, the second out of it), for the plots.
    #[serde(skip)]
    pub returns: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModuleBacktest {
    pub module: String,
    /// The market(s) its stream was built from.
    pub market: String,
    pub decisions: usize,
    /// Index of the first decision of the second half.
    pub second_half_from: usize,
    /// Agent, defaults, random, epsilon-greedy, UCB1, Thompson, the peers
    /// that ran (vw, mabwiser), the out-of-sample oracle (`oracle-oos`:
    /// searched on the first half, scored on the second; its `full` figures
    /// are in-sample on the first half) and the hindsight oracle (`oracle`,
    /// searched on the stretch it is scored on), in that order; the demo's
    /// has the agent, the defaults and both oracles.
    pub policies: Vec<PolicyResult>,
    /// The oracle's search run on the first half and scored on the second:
    /// how much of the hindsight edge could be known in advance.
    pub first_half_fit: Metrics,
    /// Explore-then-commit: uniformly random arms on the first half, learned
    /// from the rewards of the arms drawn, each context's best arms by mean
    /// reward scored on the second half. Against `first_half_fit` (the same
    /// bars with every arm's return known) it shows how much of the oracle's
    /// edge the first half's bandit feedback can reveal.
    pub first_half_bandit_fit: Metrics,
    /// The agent's greedy values at the end of the stream, held fixed and
    /// scored on the second half: what its final checkpoint would earn
    /// without exploring (hindsight, like the oracle).
    pub final_greedy: Metrics,
    /// Per context (`session/regime`), the oracle's values over the second half.
    pub oracle_values: Vec<(String, Vec<(String, f64)>)>,
    /// The agent's decisions with their outcomes, for off-policy evaluation
    /// and parameter effectiveness.
    #[serde(skip)]
    pub agent_log: Vec<LoggedDecision>,
    /// The agent's view at the end of the stream (its last checkpoint), for
    /// instance to evaluate its greedy policy off-policy.
    #[serde(skip)]
    pub agent_view: Option<Arc<ModuleView>>,
    /// The opportunities and the rule, to score any other policy on the same bars.
    #[serde(skip)]
    pub stream: Arc<Stream>,
}

impl ModuleBacktest {
    pub fn policy(&self, name: &str) -> Option<&PolicyResult> {
        self.policies.iter().find(|p| p.policy == name)
    }

    /// The share of the defaults-to-oracle gap in second-half mean return
    /// that `second_half` (another policy's figures there) closes.
    pub fn gap_closed_by(&self, second_half: &Metrics) -> f64 {
        let mean = |name: &str| self.policy(name).map_or(0.0, |p| p.second_half.mean_return);
        gap_share(second_half.mean_return, mean("defaults"), mean("oracle"))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BacktestReport {
    pub market: String,
    pub bars: usize,
    pub seed: u64,
    pub modules: Vec<ModuleBacktest>,
    /// What the run could not do and why (peers skipped, for instance).
    pub notes: Vec<String>,
}

/// Each decision's return and whether it traded, in decision order.
/// Runs the backtest of every selected module (in parallel, one thread each).
pub fn run(spaces: &Spaces, opts: &BacktestOptions) -> Result<BacktestReport, BacktestError> {
    let known: Vec<String> = spaces.names().map(String::from).collect();
    for m in &opts.modules {
        if !known.contains(m) {
            return Err(BacktestError::UnknownModule { module: m.clone(), known });
        }
    }
    let selected: Vec<Arc<ModuleSpace>> =
        spaces.iter().filter(|s| opts.modules.is_empty() || opts.modules.contains(&s.name)).cloned().collect();
    let (label, bars, streams, mut notes) = streams(&selected, opts)?;
    let results: Vec<Result<ModuleBacktest, BacktestError>> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            streams.into_iter().map(|stream| scope.spawn(move || run_stream(Arc::new(stream), opts))).collect();
        handles.into_iter().map(|h| h.join().expect("backtest thread panicked")).collect()
    });
    let modules = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    if let Some(Err(why)) = &opts.peers {
        notes.push(format!("Vowpal Wabbit and MABWiser did not run: {why}"));
    }
    Ok(BacktestReport { market: label, bars, seed: opts.seed, modules, notes })
}

/// Each module's stream on the chosen market, the market's name, its bars
/// and what was skipped (a note per module that has no market there): what
/// [`run`] and `paramopt demo` trade.
pub fn streams(
    selected: &[Arc<ModuleSpace>],
    opts: &BacktestOptions,
) -> Result<(String, usize, Vec<Stream>, Vec<String>), BacktestError> {
    let one = match &opts.market {
        MarketSource::Real => None,
        MarketSource::Sp500 => {
            let stocks = real::sp500_daily()?;
            let (mut streams, mut notes) = (Vec::new(), Vec::new());
            for s in selected {
                if s.name == "crypto" {
                    notes.push(format!(
                        "crypto did not run: the held-out market has no hourly crypto series (only {} daily stocks)",
                        stocks.len()
                    ));
                } else {
                    streams.push(Stream::interleaved(s.clone(), &stocks)?);
                }
            }
            let bars = stocks.iter().map(Market::len).sum::<usize>();
            let label = format!(
                "held-out real data: stocks and options on {} S&P 500 stocks' daily closes ({})",
                stocks.len(),
                real::SP500_FILE
            );
            return Ok((label, bars, streams, notes));
        }
        MarketSource::Synthetic { bars } => Some(SyntheticMarket::new(opts.seed, *bars).generate()),
        MarketSource::Csv(path) => Some(csv::load(path)?),
        MarketSource::Given(m) => Some((**m).clone()),
    };
    if let Some(market) = one {
        let streams = selected.iter().map(|s| Stream::new(s.clone(), &market)).collect::<Result<_, _>>()?;
        return Ok((market.source.clone(), market.len(), streams, Vec::new()));
    }
    let (btc, stocks) = (real::btc_hourly()?, real::us_stocks_daily()?);
    let streams = selected
        .iter()
        .map(
            |s| if s.name == "crypto" { Stream::new(s.clone(), &btc) } else { Stream::interleaved(s.clone(), &stocks) },
        )
        .collect::<Result<_, _>>()?;
    let bars = btc.len() + stocks.iter().map(Market::len).sum::<usize>();
    let label = format!("real data: crypto on {}; stocks and options on {} daily stocks", btc.source, stocks.len());
    Ok((label, bars, streams, Vec::new()))
}

/// One module: the agent, every baseline and the oracle on the same stream.
pub fn run_module(
    space: Arc<ModuleSpace>,
    market: &Market,
    opts: &BacktestOptions,
) -> Result<ModuleBacktest, BacktestError> {
    run_stream(Arc::new(Stream::new(space, market)?), opts)
}

/// One module's stream: the agent, every baseline, the peers and the oracles.
pub fn run_stream(stream: Arc<Stream>, opts: &BacktestOptions) -> Result<ModuleBacktest, BacktestError> {
    let space = stream.space.clone();
    let n = stream.opportunities.len();
    let progress = |policy: &str| {
        let module = space.name.clone();
        let policy = policy.to_string();
        let cb = opts.progress.clone();
        move |done: usize| {
            if let Some(cb) = &cb {
                cb(&ProgressEvent { module: module.clone(), policy: policy.clone(), done, total: n });
            }
        }
    };

    let mut single = Spaces::default();
    single.insert((*space).clone()).expect("one module");
    let agent = Agent::new(&single, AgentOptions { seed: Some(opts.seed), ..Default::default() });
    let mut driver = AgentDriver { agent: &agent, stream: &stream, log: Vec::with_capacity(n) };
    let agent_pass = drive(&stream, &mut driver, &progress("agent"))?;
    agent.flush();
    let agent_log = std::mem::take(&mut driver.log);
    let agent_view = Some(agent.view(&space.name)?);
    let mut greedy = Vec::with_capacity(Context::COUNT);
    for c in Context::all() {
        greedy.push(agent.greedy(&space.name, c)?.0);
    }
    tracing::debug!(module = %space.name, decisions = n, "agent pass done");

    let mut passes: Vec<(String, Pass)> = vec![("agent".into(), agent_pass)];
    let mut learners: Vec<Box<dyn Baseline>> = vec![
        Box::new(Fixed::defaults(&space)),
        Box::new(UniformRandom::new(&space)),
        Box::new(EpsilonGreedy::new(&space, opts.epsilon)),
        Box::new(Ucb1::new(&space)),
        Box::new(Thompson::new(&space)),
    ];
    for (i, policy) in learners.iter_mut().enumerate() {
        let name = policy.name().to_string();
        let rng = Pcg64Mcg::seed_from_u64(crate::util::splitmix64(opts.seed ^ (0xba5e + i as u64)));
        let mut driver = BaselineDriver { policy: policy.as_mut(), space: &space, rng };
        passes.push((name.clone(), drive(&stream, &mut driver, &progress(&name))?));
    }
    if let Some(Ok(python)) = &opts.peers {
        // Each peer is a process of its own: run them side by side.
        let peer_passes: Vec<Result<Pass, BacktestError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = PEERS
                .iter()
                .map(|&peer| {
                    let (stream, progress) = (&stream, progress(peer));
                    scope.spawn(move || {
                        let mut driver = PeerDriver::start(python, peer, opts.seed, stream)?;
                        let pass = drive(stream, &mut driver, &progress)?;
                        let learned = driver.finish()?;
                        tracing::debug!(module = %stream.space.name, peer, learned, "peer pass done");
                        Ok(pass)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("peer thread panicked")).collect()
        });
        for (peer, pass) in PEERS.iter().zip(peer_passes) {
            passes.push((peer.to_string(), pass?));
        }
    }
    Ok(assemble(stream, passes, &greedy, (agent_log, agent_view), opts, &progress("oracle"), true))
}

/// Scores an agent whose decisions were made elsewhere (`paramopt demo`: a
/// served agent, over HTTP) on `stream` as [`run_module`] scores its own:
/// against the seed defaults and the oracle, on the same opportunities.
/// `agent` is its pass over the whole stream, in decision order; `greedy` its
/// greedy values per context (by [`Context::index`]) at the end.
pub fn compare_served(
    stream: Arc<Stream>,
    agent: Pass,
    greedy: &[Vec<f64>],
    opts: &BacktestOptions,
) -> Result<ModuleBacktest, BacktestError> {
    let n = stream.opportunities.len();
    if agent.returns.len() != n || agent.traded.len() != n || greedy.len() != Context::COUNT {
        return Err(BacktestError::PassLength {
            module: stream.space.name.clone(),
            decisions: agent.returns.len(),
            want: n,
        });
    }
    let space = stream.space.clone();
    let mut defaults = Fixed::defaults(&space);
    let rng = Pcg64Mcg::seed_from_u64(crate::util::splitmix64(opts.seed ^ 0xba5e));
    let mut driver = BaselineDriver { policy: &mut defaults, space: &space, rng };
    let defaults_pass = drive(&stream, &mut driver, &|_| {})?;
    let passes = vec![("agent".to_string(), agent), ("defaults".to_string(), defaults_pass)];
    // The demo compares the agent with the defaults and the out-of-sample
    // oracle, the best fixed choice that could have been known at half time.
    Ok(assemble(stream, passes, greedy, (Vec::new(), None), opts, &|_| {}, true))
}
