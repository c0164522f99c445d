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

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;
use serde::Serialize;

use crate::agent::{Agent, AgentError, AgentOptions, Evidence, ModuleView, Outcome};
use crate::eval::simulate::align;
use crate::space::{Context, ModuleSpace, Spaces};

use super::baselines::{self, arm_values, Baseline, EpsilonGreedy, Fixed, Thompson, Ucb1, UniformRandom};
use super::csv::{self, CsvError};
use super::market::{Market, SyntheticMarket};
pub use super::metrics::{growth_cell, Metrics, Paired, BLOCK};
use super::ope::LoggedDecision;
use super::peers::{PeerDriver, PeerError, PEERS};
use super::real;
pub use super::stream::Stream;
use super::trading::{Opportunity, RuleError, Trade};

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

/// The share of the gap from `defaults` to `oracle` (mean returns) that
/// `mean` closes; 1 when there is no gap.
pub fn gap_share(mean: f64, defaults: f64, oracle: f64) -> f64 {
    let gap = oracle - defaults;
    if gap.abs() > 1e-15 {
        (mean - defaults) / gap
    } else {
        1.0
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
#[derive(Debug, Clone, Default)]
pub struct Pass {
    pub returns: Vec<f64>,
    pub traded: Vec<bool>,
}

/// Drives one policy through the stream with delayed outcomes: the agent
/// in-process, the baselines, or (`paramopt demo`) a served agent over HTTP.
pub trait Driver {
    /// What a decision needs to remember until its outcome is reported.
    type Ticket;
    type Error;
    /// The module's parameters (in the space's order) for this opportunity.
    fn decide(&mut self, opp: &Opportunity) -> Result<(Vec<f64>, Self::Ticket), Self::Error>;
    /// The outcome of the decision `ticket`, once its trade closed: what
    /// [`drive`] calls. By default it passes the return to [`Driver::report`];
    /// a driver that reports what a module would (the strategy, confidence
    /// and path of [`Trade`]) overrides it.
    fn report_trade(
        &mut self,
        opp: &Opportunity,
        ticket: Self::Ticket,
        trade: &Trade,
        reward: f64,
    ) -> Result<(), Self::Error> {
        self.report(opp, ticket, trade.return_pct, trade.traded, reward)
    }
    /// The outcome of the decision `ticket`, once its trade closed.
    fn report(
        &mut self,
        opp: &Opportunity,
        ticket: Self::Ticket,
        trade_return: f64,
        traded: bool,
        reward: f64,
    ) -> Result<(), Self::Error>;
    /// Called once per bar after that bar's reports.
    fn sync(&mut self) {}
}

/// Walks the stream in bar order: before each decision, reports every trade
/// that closed by its bar; after the last, reports the trades still open.
/// `progress` gets the number of decisions made, every 1% of the stream.
pub fn drive<D: Driver>(stream: &Stream, driver: &mut D, progress: &dyn Fn(usize)) -> Result<Pass, D::Error> {
    let n = stream.opportunities.len();
    let mut open: BinaryHeap<Reverse<(usize, usize)>> = BinaryHeap::new();
    let mut tickets: Vec<Option<D::Ticket>> = (0..n).map(|_| None).collect();
    let mut trades: Vec<Option<Trade>> = vec![None; n];
    let mut pass = Pass { returns: Vec::with_capacity(n), traded: Vec::with_capacity(n) };
    let step = (n / 100).max(1);
    for (i, opp) in stream.opportunities.iter().enumerate() {
        let mut reported = false;
        while let Some(&Reverse((close, j))) = open.peek() {
            if close > opp.bar {
                break;
            }
            open.pop();
            let trade = trades[j].take().expect("decided, reported once");
            let ticket = tickets[j].take().expect("reported once");
            let o = &stream.opportunities[j];
            driver.report_trade(o, ticket, &trade, stream.reward(trade.traded, trade.return_pct))?;
            reported = true;
        }
        if reported {
            driver.sync();
        }
        let (values, ticket) = driver.decide(opp)?;
        let trade = stream.rule.trade(opp, &values);
        pass.returns.push(trade.return_pct);
        pass.traded.push(trade.traded);
        open.push(Reverse((trade.close_bar, i)));
        trades[i] = Some(trade);
        tickets[i] = Some(ticket);
        if i % step == 0 {
            progress(i);
        }
    }
    // Trades still open after the last decision close within the data
    // (decisions stop a holding period before its end): report them too, so
    // every log entry has its outcome.
    while let Some(Reverse((_, j))) = open.pop() {
        let trade = trades[j].take().expect("decided, reported once");
        let ticket = tickets[j].take().expect("reported once");
        let o = &stream.opportunities[j];
        driver.report_trade(o, ticket, &trade, stream.reward(trade.traded, trade.return_pct))?;
    }
    driver.sync();
    progress(n);
    Ok(pass)
}

struct AgentDriver<'a> {
    agent: &'a Agent,
    stream: &'a Stream,
    log: Vec<LoggedDecision>,
}

impl Driver for AgentDriver<'_> {
    type Ticket = (String, usize);
    type Error = BacktestError;
    fn decide(&mut self, opp: &Opportunity) -> Result<(Vec<f64>, Self::Ticket), BacktestError> {
        let features: Vec<(&str, f64)> =
            self.stream.rule.feature_names().iter().copied().zip(opp.features.iter().copied()).collect();
        // The strategy is chosen before the parameters are asked for, as a module does.
        let d = self.agent.decide_for(&self.stream.space.name, opp.context, &features, opp.strategy, true)?;
        self.log.push(LoggedDecision {
            context: d.context,
            arms: d.arms.clone(),
            values: d.values.clone(),
            propensities: d.propensities.clone(),
            propensity: d.propensity,
            traded: false,
            reward: 0.0,
        });
        Ok((d.values.clone(), (d.id.to_string(), self.log.len() - 1)))
    }
    fn report(
        &mut self,
        _: &Opportunity,
        ticket: Self::Ticket,
        ret: f64,
        traded: bool,
        _: f64,
    ) -> Result<(), BacktestError> {
        self.learn(ticket, ret, traded, Evidence::default())
    }
    fn report_trade(
        &mut self,
        opp: &Opportunity,
        ticket: Self::Ticket,
        trade: &Trade,
        reward: f64,
    ) -> Result<(), BacktestError> {
        let _ = (opp, reward);
        // What a module reports besides the return: the trade's strategy and
        // the confidence its gate compared, the position's path, the capital
        // it really used (docs/counterfactuals.md).
        let capital = self.stream.space.param_index("position_sizing.max_allocation");
        let evidence = Evidence {
            strategy: trade.strategy.map(str::to_string),
            confidence: Some(trade.confidence),
            path: trade.path.clone(),
            applied: match (capital, trade.capital) {
                (Some(p), Some(c)) => [(self.stream.space.params[p].full_name.clone(), c)].into(),
                _ => Default::default(),
            },
        };
        self.learn(ticket, trade.return_pct, trade.traded, evidence)
    }
    fn sync(&mut self) {
        // Deterministic runs: every closed trade is learned before the next decision.
        self.agent.flush();
    }
}

impl AgentDriver<'_> {
    fn learn(
        &mut self,
        ticket: (String, usize),
        ret: f64,
        traded: bool,
        evidence: Evidence,
    ) -> Result<(), BacktestError> {
        let entry = &mut self.log[ticket.1];
        entry.traded = traded;
        entry.reward = ret;
        self.agent.report(&ticket.0, Outcome { reward: None, traded, return_pct: Some(ret), evidence })?;
        Ok(())
    }
}

struct BaselineDriver<'a> {
    policy: &'a mut dyn Baseline,
    space: &'a ModuleSpace,
    rng: Pcg64Mcg,
}

impl Driver for BaselineDriver<'_> {
    type Ticket = Vec<usize>;
    type Error = BacktestError;
    fn decide(&mut self, opp: &Opportunity) -> Result<(Vec<f64>, Self::Ticket), BacktestError> {
        let arms = self.policy.choose(opp.context, &mut self.rng);
        Ok((arm_values(self.space, &arms), arms))
    }
    fn report(
        &mut self,
        opp: &Opportunity,
        arms: Vec<usize>,
        _: f64,
        _: bool,
        reward: f64,
    ) -> Result<(), BacktestError> {
        self.policy.learn(opp.context, &arms, reward);
        Ok(())
    }
}

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

/// The oracle and every figure of a module's result from its policies'
/// passes (the agent first, the defaults second) and the agent's final greedy
/// values (and its log and final view); with `out_of_sample`, the `oracle-oos` row too.
fn assemble(
    stream: Arc<Stream>,
    passes: Vec<(String, Pass)>,
    greedy: &[Vec<f64>],
    (agent_log, agent_view): (Vec<LoggedDecision>, Option<Arc<ModuleView>>),
    opts: &BacktestOptions,
    progress: &dyn Fn(usize),
    out_of_sample: bool,
) -> ModuleBacktest {
    let (seed, curve_points) = (opts.seed, opts.curve_points);
    let space = stream.space.clone();
    let n = stream.opportunities.len();
    let half = n / 2;
    // The oracle is searched separately for the reported stretches, so it is
    // the best fixed choice for exactly the decisions it is compared on.
    let all: Vec<&Opportunity> = stream.opportunities.iter().collect();
    let oracle_full = baselines::oracle(&space, stream.rule.as_ref(), &all);
    let oracle_half = baselines::oracle(&space, stream.rule.as_ref(), &all[half..]);
    let full_returns = stream.returns_of(0..n, |c| arm_values(&space, &oracle_full.arms[c.index()]));
    let half_returns = stream.returns_of(half..n, |c| arm_values(&space, &oracle_half.arms[c.index()]));
    let traded_of = |f: &Fixed, range: std::ops::Range<usize>| -> Vec<bool> {
        stream.opportunities[range]
            .iter()
            .map(|o| stream.rule.trade(o, &arm_values(&space, &f.arms[o.context.index()])).traded)
            .collect()
    };
    let oracle_full_traded = traded_of(&oracle_full, 0..n);
    let final_greedy = Metrics::of(
        &stream.returns_of(half..n, |c| greedy[c.index()].clone()),
        &stream.opportunities[half..n]
            .iter()
            .map(|o| stream.rule.trade(o, &greedy[o.context.index()]).traded)
            .collect::<Vec<_>>(),
        stream.periods_per_year,
    );
    let oracle_first = baselines::oracle(&space, stream.rule.as_ref(), &all[..half]);
    let oos_returns = stream.returns_of(0..n, |c| arm_values(&space, &oracle_first.arms[c.index()]));
    let oos_traded = traded_of(&oracle_first, 0..n);
    let first_half_fit = Metrics::of(&oos_returns[half..], &oos_traded[half..], stream.periods_per_year);
    let mut rng = Pcg64Mcg::seed_from_u64(crate::util::splitmix64(seed ^ 0xe7c));
    let known_by = stream.opportunities.get(half).map_or(usize::MAX, |o| o.bar);
    let committed = baselines::explore_then_commit(
        &space,
        stream.rule.as_ref(),
        &all[..half],
        known_by,
        &|t| stream.reward(t.traded, t.return_pct),
        0.0,
        &mut rng,
    );
    let first_half_bandit_fit = Metrics::of(
        &stream.returns_of(half..n, |c| arm_values(&space, &committed.arms[c.index()])),
        &traded_of(&committed, half..n),
        stream.periods_per_year,
    );
    let oracle_half_traded = traded_of(&oracle_half, half..n);
    progress(n);

    let ppy = stream.periods_per_year;
    let oracle_second = Metrics::of(&half_returns, &oracle_half_traded, ppy);
    // Per policy: its name, whole-stream figures, second-half figures and
    // returns, learning curve and whole-stream returns.
    type Row = (String, Metrics, Metrics, Vec<f64>, Vec<f64>, Vec<f64>);
    let mut rows: Vec<Row> = passes
        .into_iter()
        .map(|(name, p)| {
            let full = Metrics::of(&p.returns, &p.traded, ppy);
            let second = Metrics::of(&p.returns[half..], &p.traded[half..], ppy);
            let curve = curve(&p.returns, curve_points);
            (name, full, second, p.returns[half..].to_vec(), curve, p.returns)
        })
        .collect();
    if out_of_sample {
        rows.push((
            "oracle-oos".into(),
            Metrics::of(&oos_returns, &oos_traded, ppy),
            first_half_fit,
            oos_returns[half..].to_vec(),
            curve(&oos_returns, curve_points),
            oos_returns,
        ));
    }
    rows.push((
        "oracle".into(),
        Metrics::of(&full_returns, &oracle_full_traded, ppy),
        oracle_second,
        half_returns,
        curve(&full_returns, curve_points),
        full_returns,
    ));
    let defaults_second = rows.get(1).map(|r| r.3.clone()).unwrap_or_default();
    let defaults_mean = rows.get(1).map_or(0.0, |r| r.2.mean_return);
    let mut policies: Vec<PolicyResult> = Vec::with_capacity(rows.len());
    for (name, full, second_half, second, curve, returns) in rows {
        policies.push(PolicyResult {
            policy: name,
            full,
            regret: oracle_second.total_return - second_half.total_return,
            improvement_over_defaults: second_half.mean_return - defaults_mean,
            gap_closed: gap_share(second_half.mean_return, defaults_mean, oracle_second.mean_return),
            vs_defaults: Paired::of(&second, &defaults_second, opts.block),
            second_half,
            curve,
            returns,
        });
    }
    let oracle_values = Context::all()
        .map(|c| {
            let values = arm_values(&space, &oracle_half.arms[c.index()]);
            (c.to_string(), space.params.iter().map(|p| p.full_name.clone()).zip(values).collect())
        })
        .collect();
    ModuleBacktest {
        module: space.name.clone(),
        market: stream.source.clone(),
        decisions: n,
        second_half_from: half,
        policies,
        first_half_fit,
        first_half_bandit_fit,
        final_greedy,
        oracle_values,
        agent_log,
        agent_view,
        stream,
    }
}

/// Mean return in `points` consecutive windows.
fn curve(returns: &[f64], points: usize) -> Vec<f64> {
    let w = (returns.len() / points.max(1)).max(1);
    returns.chunks(w).map(|c| c.iter().sum::<f64>() / c.len() as f64).collect()
}

/// Per module: every policy's metrics over the second half and in full.
pub fn table(report: &BacktestReport) -> String {
    let mut out = format!("Market {}, {} bars, seed {}.\n", report.market, report.bars, report.seed);
    for note in &report.notes {
        let _ = writeln!(out, "Note: {note}");
    }
    for m in &report.modules {
        let block = m.policies.first().map_or(BLOCK, |p| p.vs_defaults.block_size);
        let _ = writeln!(
            out,
            "\n{}: {} decisions on {}; second half from decision {} (returns per decision, fraction of equity; \
             t: block t-statistic of the difference from the defaults, blocks of {block} decisions)",
            m.module, m.decisions, m.market, m.second_half_from
        );
        let mut rows = vec![[
            "policy",
            "mean 2nd",
            "total 2nd",
            "growth 2nd",
            "sharpe 2nd",
            "max dd 2nd",
            "win 2nd",
            "traded 2nd",
            "vs defaults",
            "t",
            "gap closed",
            "total (all)",
        ]
        .map(String::from)
        .to_vec()];
        for p in &m.policies {
            let (s, f) = (&p.second_half, &p.full);
            rows.push(vec![
                p.policy.clone(),
                format!("{:+.6}", s.mean_return),
                format!("{:+.3}", s.total_return),
                growth_cell(s.log_growth),
                format!("{:.2}", s.sharpe),
                format!("{:.3}", s.max_drawdown),
                format!("{:.1}%", 100.0 * s.win_rate),
                format!("{:.1}%", 100.0 * s.traded_share),
                format!("{:+.6}", p.improvement_over_defaults),
                format!("{:+.2}", p.vs_defaults.block_t),
                format!("{:.0}%", 100.0 * p.gap_closed),
                format!("{:+.3}", f.total_return),
            ]);
        }
        out.push_str(&align(&rows));
        let fixed = |what: &str, f: &Metrics| {
            format!(
                "{what} {:+.6} mean, {:.2} Sharpe, {:.0}% of the gap",
                f.mean_return,
                f.sharpe,
                100.0 * m.gap_closed_by(f)
            )
        };
        let _ = writeln!(
            out,
            "Fixed on the second half: {}; {}; {}.",
            fixed("the oracle's search on the first half (every arm's return known)", &m.first_half_fit),
            fixed(
                "explore-then-commit on the first half (only the drawn arms' rewards known)",
                &m.first_half_bandit_fit
            ),
            fixed("the agent's final greedy values", &m.final_greedy),
        );
    }
    out
}
