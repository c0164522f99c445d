//! Walks a module's stream in bar order with delayed outcomes, for any
//! policy: the agent in-process, a baseline, a peer, or (`paramopt demo`) a
//! served agent over HTTP.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand_pcg::Pcg64Mcg;

use crate::agent::{Agent, Evidence, Outcome};
use crate::eval::baselines::{arm_values, Baseline};
use crate::eval::stream::Stream;
use crate::eval::trading::{Opportunity, Trade};
use crate::ope::LoggedDecision;
use crate::space::ModuleSpace;

use super::BacktestError;

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

/// The agent in-process, keeping its log for off-policy evaluation.
pub(super) struct AgentDriver<'a> {
    pub(super) agent: &'a Agent,
    pub(super) stream: &'a Stream,
    pub(super) log: Vec<LoggedDecision>,
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

/// A baseline policy, learning from each reward it is reported.
pub(super) struct BaselineDriver<'a> {
    pub(super) policy: &'a mut dyn Baseline,
    pub(super) space: &'a ModuleSpace,
    pub(super) rng: Pcg64Mcg,
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
