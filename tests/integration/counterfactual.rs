//! Counterfactual credit against a reference rule written from the
//! declarations' contract (docs/counterfactuals.md), not from the agent's
//! code: exactness per role, credit only where a parameter matters, the
//! checkpoint round trip, and learning on streams with and without an edge.

use std::collections::BTreeMap;

use paramopt::agent::{alternatives, observe, AgentOptions, Evidence, Outcome};
use paramopt::space::{Context, ModuleSpace, Regime, Session, Spaces};
use paramopt::store::checkpoint::{decode, encode, Checkpoint, CheckpointKind};
use paramopt::{Agent, Decision};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rand_pcg::Pcg64Mcg;

/// One opportunity: what the module knows before and after the trade.
#[derive(Debug, Clone)]
struct Opp {
    ctx: Context,
    strategy: Option<&'static str>,
    /// The score's three features (crypto, stocks) or the options confidence.
    f: [f64; 3],
    /// Return per unit of scale (crypto, stocks).
    u: f64,
    /// Options: P&L per unit of premium at each check, capital and spread.
    path: Vec<f64>,
    capital: f64,
    spread: f64,
}

const STOCKS: [&str; 5] = ["leveraged_etfs", "momentum_amp", "sector_rotation", "volatility_trading", "core_equity"];
const OPTIONS: [&str; 5] = ["long_calls", "bull_spreads", "protective_puts", "covered_calls", "straddles"];

fn v(space: &ModuleSpace, values: &[f64], name: &str) -> f64 {
    values[space.param_index(name).unwrap_or_else(|| panic!("{name}"))]
}

/// The module's score under `values`.
fn score(space: &ModuleSpace, o: &Opp, values: &[f64]) -> f64 {
    let group = match space.name.as_str() {
        "crypto" => ["analysis_weights.momentum", "analysis_weights.volatility", "analysis_weights.volume"],
        "stocks" => ["intelligence_weights.technical", "intelligence_weights.regime", "intelligence_weights.pattern"],
        _ => return o.f[0],
    };
    let w: Vec<f64> = group.iter().map(|n| v(space, values, n)).collect();
    (w[0] * o.f[0] + w[1] * o.f[1] + w[2] * o.f[2]) / (w[0] + w[1] + w[2])
}

/// The trading rule: (traded, return).
fn rule(space: &ModuleSpace, o: &Opp, values: &[f64]) -> (bool, f64) {
    let s = score(space, o, values);
    match space.name.as_str() {
        "crypto" => {
            let session = o.ctx.session.as_str();
            let short = session.trim_end_matches("_prime");
            let theta = v(space, values, &format!("session_confidence.{session}"));
            let m = v(space, values, &format!("position_multipliers.{short}_session"));
            if s >= theta {
                (true, m * o.u)
            } else {
                (false, 0.0)
            }
        }
        "stocks" => {
            let st = o.strategy.unwrap();
            let theta = v(space, values, &format!("strategy_thresholds.{st}"));
            let m = v(space, values, &format!("position_multipliers.{st}"));
            if s >= theta {
                (true, m * o.u)
            } else {
                (false, 0.0)
            }
        }
        _ => {
            let st = o.strategy.unwrap();
            if s < v(space, values, &format!("confidence_thresholds.{st}")) {
                return (false, 0.0);
            }
            let (stop, target) = (
                v(space, values, "position_sizing.stop_loss_pct"),
                v(space, values, "position_sizing.profit_target_pct"),
            );
            let pnl = o.path.iter().copied().find(|&p| p <= -stop || p >= target).unwrap_or(*o.path.last().unwrap());
            (true, o.capital * (pnl - o.spread))
        }
    }
}

fn random_opp(module: &str, rng: &mut Pcg64Mcg, ctx: Context) -> Opp {
    let strategy = match module {
        "stocks" => Some(STOCKS[rng.random_range(0..5)]),
        "options" => Some(OPTIONS[rng.random_range(0..5)]),
        _ => None,
    };
    let mut p = 0.0;
    let path = (0..12)
        .map(|_| {
            p += 0.25 * rng.sample::<f64, _>(StandardNormal);
            p
        })
        .collect();
    Opp {
        ctx,
        strategy,
        f: [rng.random(), rng.random(), rng.random()],
        u: 0.03 * rng.sample::<f64, _>(StandardNormal),
        path,
        capital: rng.random_range(0.12..0.4),
        spread: 0.03,
    }
}

fn features(space: &ModuleSpace, o: &Opp) -> Vec<(&'static str, f64)> {
    match space.name.as_str() {
        "crypto" => vec![("momentum_score", o.f[0]), ("volatility_score", o.f[1]), ("volume_score", o.f[2])],
        "stocks" => {
            vec![("technical_confidence", o.f[0]), ("regime_confidence", o.f[1]), ("pattern_confidence", o.f[2])]
        }
        _ => vec![("signal_confidence", o.f[0])],
    }
}

/// The outcome the module reports for `values`, with its evidence.
fn outcome(space: &ModuleSpace, o: &Opp, values: &[f64]) -> Outcome {
    let (traded, r) = rule(space, o, values);
    let mut applied = BTreeMap::new();
    let mut path = vec![];
    if space.name == "options" {
        applied.insert("position_sizing.max_allocation".to_string(), o.capital);
        path = o.path.clone();
    }
    Outcome {
        reward: Some(r),
        traded,
        return_pct: None,
        evidence: Evidence {
            strategy: o.strategy.map(str::to_string),
            confidence: Some(score(space, o, values)),
            path,
            applied,
        },
    }
}

/// A random table: an arm per parameter, the weights' arms normalised.
fn random_table(space: &ModuleSpace, rng: &mut Pcg64Mcg) -> Vec<f64> {
    let mut t: Vec<f64> = space.params.iter().map(|p| p.arms[rng.random_range(0..p.arms.len())]).collect();
    for g in &space.simplex_groups {
        let sum: f64 = g.members.iter().map(|&p| t[p]).sum();
        g.members.iter().for_each(|&p| t[p] /= sum);
    }
    t
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * (1.0 + a.abs().max(b.abs()))
}

fn decide(agent: &Agent, space: &ModuleSpace, o: &Opp) -> std::sync::Arc<Decision> {
    agent.decide_for(&space.name, o.ctx, &features(space, o), o.strategy, true).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Re-running the rule with any table (weights x threshold x scale x
    /// exit together) gives exactly the reward the observation credits it:
    /// 0 where its gate skips, the rule's return where the served trade was
    /// taken, and nothing (`None`) where its gate lets through a trade that
    /// was not taken. Each parameter's alternative outcomes agree too.
    #[test]
    fn every_table_is_credited_what_the_rule_gives(
        seed in any::<u64>(),
        module in prop::sample::select(vec!["crypto", "stocks", "options"]),
        ctx_index in 0usize..12,
    ) {
        let spaces = Spaces::builtin();
        let space = spaces.get(module).unwrap().clone();
        let cf = space.counterfactual.as_ref().unwrap();
        let agent = Agent::new(&spaces, AgentOptions { seed: Some(seed), ..Default::default() });
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        let o = random_opp(module, &mut rng, Context::from_index(ctx_index).unwrap());
        let d = decide(&agent, &space, &o);
        let out = outcome(&space, &o, &d.values);
        let obs = observe(&space, cf, &d, &out).unwrap();
        prop_assert!(obs.p_obs > 0.0 || !out.traded);
        for _ in 0..40 {
            let table = random_table(&space, &mut rng);
            let (fires, r) = rule(&space, &o, &table);
            let credited = obs.value(cf, &table);
            match (fires, out.traded) {
                (false, _) => prop_assert_eq!(credited, Some(0.0)),
                (true, true) => prop_assert!(credited.is_some_and(|c| close(c, r)), "{credited:?} vs {r}"),
                (true, false) => prop_assert_eq!(credited, None),
            }
        }
        for alt in alternatives(&space, &d, &out).unwrap() {
            let p = space.param_index(&alt.parameter).unwrap();
            for arm in &alt.arms {
                let mut values = d.values.clone();
                values[p] = arm.value;
                let (fires, r) = rule(&space, &o, &values);
                prop_assert_eq!(arm.traded, fires, "{} = {}", alt.parameter, arm.value);
                match (fires, out.traded) {
                    (false, _) => prop_assert_eq!(arm.reward, Some(0.0)),
                    (true, true) => prop_assert!(arm.reward.is_some_and(|c| close(c, r))),
                    (true, false) => prop_assert_eq!(arm.reward, None),
                }
            }
        }
    }
}

/// Exits on recorded paths: every (stop, target) pair's return, against the
/// rule, including paths that hit both levels and paths that hit neither.
#[test]
fn exit_arms_follow_the_recorded_path() {
    let spaces = Spaces::builtin();
    let space = spaces.get("options").unwrap().clone();
    let cf = space.counterfactual.as_ref().unwrap();
    let agent = Agent::new(&spaces, AgentOptions { seed: Some(3), ..Default::default() });
    let ctx = Context::new(Session::UsPrime, Regime::Bullish);
    let paths =
        [vec![0.1, -0.35, 0.8, 2.1, -0.9], vec![0.05, 0.1, -0.1, 0.2], vec![-0.6, 1.5], vec![0.55, -0.75, 0.6, 1.2]];
    let (stop, target) = (
        space.param_index("position_sizing.stop_loss_pct").unwrap(),
        space.param_index("position_sizing.profit_target_pct").unwrap(),
    );
    let mut checked = 0;
    for path in paths {
        let o = Opp {
            ctx,
            strategy: Some("protective_puts"),
            f: [0.9, 0.0, 0.0],
            u: 0.0,
            path,
            capital: 0.24,
            spread: 0.03,
        };
        let d = decide(&agent, &space, &o);
        let out = outcome(&space, &o, &d.values);
        assert!(out.traded, "a confidence of 0.9 opens protective puts");
        let obs = observe(&space, cf, &d, &out).unwrap();
        for &s in &space.params[stop].arms {
            for &t in &space.params[target].arms {
                let mut values = d.values.clone();
                (values[stop], values[target]) = (s, t);
                let want = rule(&space, &o, &values).1;
                let got = obs.value(cf, &values).unwrap();
                assert!(close(got, want), "stop {s} target {t}: {got} vs {want}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 4 * 25);
}

fn module_index(agent: &Agent, module: &str) -> usize {
    agent.module_index(module).unwrap()
}

/// Only the leveraged-ETF strategy trades, and its lower threshold pays:
/// its arms learn, while every other strategy's threshold and multiplier
/// keep their defaults, their statistics empty and their slots of the
/// estimator untouched, in every context. (With room in the loss budget:
/// a lower threshold is only seen by exploring.)
#[test]
fn only_the_strategy_that_traded_learns() {
    let spaces = super::support::builtin_with_budget(10.0);
    let space = spaces.get("stocks").unwrap().clone();
    let agent = Agent::new(&spaces, AgentOptions { seed: Some(21), ..Default::default() });
    let ctx = Context::new(Session::UsPrime, Regime::Bullish);
    let mut rng = Pcg64Mcg::seed_from_u64(21);
    // Enough trades for the grouped test (every table of every cell) to move.
    for _ in 0..12_000 {
        let mut o = random_opp("stocks", &mut rng, ctx);
        o.strategy = Some("leveraged_etfs");
        // Every trade earns on average: lower thresholds and larger sizes pay.
        o.u = 0.01 + 0.01 * rng.sample::<f64, _>(StandardNormal);
        let d = decide(&agent, &space, &o);
        agent.report(&d.id.to_string(), outcome(&space, &o, &d.values)).unwrap();
        // Each decision sees what the previous outcome taught: the same
        // decisions on any machine, however loaded.
        agent.flush();
    }
    let i = module_index(&agent, "stocks");
    let (incumbents, stats, joint) = agent
        .with_writer(move |l| (l[i].incumbents.clone(), l[i].stats.clone(), l[i].joint.clone().unwrap().state))
        .unwrap();
    let defaults = space.defaults();
    let (nw, ne, slots, thresholds) = joint.shape;
    for other in STOCKS.iter().skip(1) {
        for name in [format!("strategy_thresholds.{other}"), format!("position_multipliers.{other}")] {
            let p = space.param_index(&name).unwrap();
            for c in Context::all() {
                assert_eq!(incumbents[c.index()][p], defaults[p], "{name} moved in {c}");
                assert!(stats.cells[c.index()][p].iter().all(|s| s.n == 0.0), "{name} has evidence in {c}");
            }
        }
        let slot = STOCKS.iter().position(|s| s == other).unwrap();
        for cell in &joint.cells {
            assert_eq!(cell.opportunities[slot], 0.0);
            for s in 0..nw * ne {
                for k in 0..thresholds {
                    assert_eq!(cell.sums[(s * slots + slot) * thresholds + k].x, 0.0);
                }
            }
        }
    }
    let moved: Vec<&str> = ["strategy_thresholds.leveraged_etfs", "position_multipliers.leveraged_etfs"]
        .into_iter()
        .filter(|n| {
            let p = space.param_index(n).unwrap();
            incumbents[ctx.index()][p] != defaults[p]
        })
        .collect();
    assert_eq!(
        moved.len(),
        2,
        "the strategy that paid moved its threshold down and its size up: {:?}",
        incumbents[ctx.index()]
    );
    let p = space.param_index("strategy_thresholds.leveraged_etfs").unwrap();
    assert!(incumbents[ctx.index()][p] < defaults[p]);
}

/// A skipped trade moves no scale or exit arm: the estimator's sums for every
/// exit and the bandit statistics of the scale and exit parameters are as
/// they were.
#[test]
fn a_skipped_trade_changes_no_scale_or_exit_arm() {
    for module in ["options", "stocks"] {
        let spaces = Spaces::builtin();
        let space = spaces.get(module).unwrap().clone();
        let agent = Agent::new(&spaces, AgentOptions { seed: Some(4), ..Default::default() });
        let ctx = Context::new(Session::EuropePrime, Regime::Sideways);
        let mut rng = Pcg64Mcg::seed_from_u64(4);
        let i = module_index(&agent, module);
        let snapshot = |agent: &Agent| {
            agent
                .with_writer(move |l| (l[i].joint.clone().unwrap().state, l[i].stats.clone(), l[i].incumbents.clone()))
                .unwrap()
        };
        // Some trades first, so there is something to keep.
        for _ in 0..200 {
            let o = random_opp(module, &mut rng, ctx);
            let d = decide(&agent, &space, &o);
            agent.report(&d.id.to_string(), outcome(&space, &o, &d.values)).unwrap();
        }
        agent.flush();
        let before = snapshot(&agent);
        let mut skips = 0;
        while skips < 50 {
            let mut o = random_opp(module, &mut rng, ctx);
            o.f = [0.0, 0.0, 0.0];
            let d = decide(&agent, &space, &o);
            let out = outcome(&space, &o, &d.values);
            assert!(!out.traded, "a score of 0 is below every threshold");
            agent.report(&d.id.to_string(), out).unwrap();
            skips += 1;
        }
        agent.flush();
        let after = snapshot(&agent);
        let cf = space.counterfactual.as_ref().unwrap();
        for (p, param) in space.params.iter().enumerate() {
            let scale_or_exit = matches!(
                cf.roles[p],
                paramopt::space::Role::Scale | paramopt::space::Role::StopLoss | paramopt::space::Role::ProfitTarget
            );
            if scale_or_exit {
                assert_eq!(after.1.cells[ctx.index()][p], before.1.cells[ctx.index()][p], "{}", param.full_name);
                assert_eq!(after.2[ctx.index()][p], before.2[ctx.index()][p], "{}", param.full_name);
            }
        }
        let (a, b) = (&after.0.cells[ctx.index()], &before.0.cells[ctx.index()]);
        for (x, y) in a.sums.iter().zip(&b.sums) {
            assert_eq!((x.x, x.xx), (y.x, y.xx), "{module}: a skip adds nothing to any table's value");
        }
        assert_eq!(a.opportunities.iter().sum::<f64>(), b.opportunities.iter().sum::<f64>() + skips as f64);
    }
}

/// A learner with roles declared, saved and loaded, serves bit-identical
/// decisions from the same seed: values, arms, propensities and the
/// counterfactual serving record.
#[test]
fn save_and_load_with_roles_gives_identical_decisions() {
    let spaces = Spaces::builtin();
    let agent = Agent::new(&spaces, AgentOptions { seed: Some(8), ..Default::default() });
    let mut rng = Pcg64Mcg::seed_from_u64(8);
    for module in ["crypto", "stocks", "options"] {
        let space = spaces.get(module).unwrap().clone();
        for _ in 0..600 {
            let ctx = Context::from_index(rng.random_range(0..Context::COUNT)).unwrap();
            let mut o = random_opp(module, &mut rng, ctx);
            o.u += 0.01;
            let d = decide(&agent, &space, &o);
            agent.report(&d.id.to_string(), outcome(&space, &o, &d.values)).unwrap();
        }
    }
    agent.flush();
    let learners = agent.shutdown();
    let restored: Vec<_> = learners
        .iter()
        .map(|l| {
            let cp = Checkpoint::from_learner(l, CheckpointKind::Checkpoint, None, None, 1.0);
            let back = decode(&encode(&cp).unwrap(), "round trip").unwrap();
            assert_eq!(back, cp);
            back.to_learner(l.space.clone(), 1).unwrap()
        })
        .collect();
    assert!(restored.iter().any(|l| l.joint.as_ref().unwrap().state.counts.refits > 0));
    let copy: Vec<_> = learners
        .iter()
        .map(|l| {
            let cp = Checkpoint::from_learner(l, CheckpointKind::Checkpoint, None, None, 1.0);
            cp.to_learner(l.space.clone(), 1).unwrap()
        })
        .collect();
    let a = Agent::with_learners(restored, AgentOptions { seed: Some(9), ..Default::default() });
    let b = Agent::with_learners(copy, AgentOptions { seed: Some(9), ..Default::default() });
    let mut r1 = Pcg64Mcg::seed_from_u64(10);
    for module in ["crypto", "stocks", "options"] {
        let space = spaces.get(module).unwrap().clone();
        for _ in 0..200 {
            let ctx = Context::from_index(r1.random_range(0..Context::COUNT)).unwrap();
            let o = random_opp(module, &mut r1, ctx);
            let (da, db) = (decide(&a, &space, &o), decide(&b, &space, &o));
            assert_eq!(
                da.values.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                db.values.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
            assert_eq!(
                (&da.arms, &da.propensities, &da.counterfactual),
                (&db.arms, &db.propensities, &db.counterfactual)
            );
        }
    }
}

/// Mean reward per opportunity over the second half of a stream: the agent
/// (exploring, delayed by `open` outcomes) and the seed defaults on the same
/// opportunities.
fn second_half(module: &str, seed: u64, n: usize, edge: impl Fn(&Opp) -> f64) -> (f64, f64) {
    let spaces = Spaces::builtin();
    let space = spaces.get(module).unwrap().clone();
    let agent = Agent::new(&spaces, AgentOptions { seed: Some(seed), ..Default::default() });
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    let defaults = space.defaults();
    let (mut agent_sum, mut default_sum) = (0.0, 0.0);
    let mut open = std::collections::VecDeque::new();
    for t in 0..n {
        let ctx = Context::from_index(rng.random_range(0..Context::COUNT)).unwrap();
        let mut o = random_opp(module, &mut rng, ctx);
        o.u = edge(&o) + 0.03 * rng.sample::<f64, _>(StandardNormal);
        let d = decide(&agent, &space, &o);
        let out = outcome(&space, &o, &d.values);
        if t >= n / 2 {
            agent_sum += rule(&space, &o, &d.values).1;
            default_sum += rule(&space, &o, &defaults).1;
        }
        open.push_back((d.id.to_string(), out));
        if open.len() > 16 {
            let (id, out) = open.pop_front().unwrap();
            agent.report(&id, out).unwrap();
            agent.flush();
        }
    }
    let half = (n - n / 2) as f64;
    agent.flush();
    let i = module_index(&agent, module);
    let (counts, moved) = agent
        .with_writer(move |l| {
            let j = l[i].joint.as_ref().unwrap();
            (j.state.counts.clone(), j.state.cells.iter().filter(|c| c.target.is_some()).count())
        })
        .unwrap();
    eprintln!(
        "{module} seed {seed}: {counts:?}, {moved} of 12 cells off the defaults at the end; {:?}",
        agent.budget(module).unwrap()
    );
    (agent_sum / half, default_sum / half)
}

/// Where trades below today's thresholds also earn and larger sizes pay, the
/// agent earns more than the defaults on the second half of the stream. With
/// the shipped loss budget a cold module cannot hold one exploring trade's
/// worst case, so it first moves on what the incumbents' own trades reveal
/// (larger sizes, other weights) and explores lower thresholds only out of
/// what that earned, and every move must pass the grouped test: the gain
/// comes later than without them (measured crypto 1.10 x the defaults here,
/// stocks 1.04 x; 1.2 x before either).
#[test]
fn with_an_edge_the_agent_beats_the_defaults() {
    for module in ["crypto", "stocks"] {
        let (agent, defaults) = second_half(module, 31, 24_000, |o| 0.004 + 0.01 * o.f[0]);
        eprintln!("{module}: agent {agent:.5} defaults {defaults:.5} per opportunity");
        assert!(agent > defaults * 1.02, "{module}: agent {agent} vs defaults {defaults}");
    }
}

/// Where the defaults are best (trades below them lose), the agent gives up
/// at most the cost of its exploration.
#[test]
fn without_an_edge_the_agent_stays_near_the_defaults() {
    for module in ["crypto", "stocks"] {
        let spaces = Spaces::builtin();
        let space = spaces.get(module).unwrap().clone();
        let defaults = space.defaults();
        let sp = space.clone();
        // Trades the defaults take earn a little; those they skip lose.
        let edge = move |o: &Opp| if rule(&sp, o, &defaults).0 { 0.002 } else { -0.01 };
        let (agent, defaults) = second_half(module, 32, 24_000, edge);
        eprintln!("{module}: agent {agent:.5} defaults {defaults:.5} per opportunity");
        assert!(agent >= defaults - 0.0015, "{module}: agent {agent} vs defaults {defaults}");
    }
}

/// The version-1 fixture, written before roles existed, still loads into a
/// learner of the shipped crypto space (which declares them): the bandit's
/// state comes back, the estimator starts empty, and its decisions carry
/// their serving record.
#[test]
fn a_checkpoint_from_before_roles_still_loads() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/checkpoint-v1.json");
    let cp = decode(&std::fs::read(path).unwrap(), path).unwrap();
    assert!(cp.counterfactual.is_none());
    let space = Spaces::builtin().get("crypto").unwrap().clone();
    let learner = cp.to_learner(space.clone(), 1).unwrap();
    assert_eq!(learner.stats, cp.stats);
    assert_eq!(learner.incumbents, cp.incumbents);
    let joint = learner.joint.as_ref().unwrap();
    assert_eq!(joint.state.counts.used, 0);
    let agent = Agent::with_learners(vec![learner], AgentOptions { seed: Some(1), ..Default::default() });
    let mut rng = Pcg64Mcg::seed_from_u64(1);
    let o = random_opp("crypto", &mut rng, Context::from_index(5).unwrap());
    let d = decide(&agent, &space, &o);
    assert!(d.counterfactual.is_some());
    agent.report(&d.id.to_string(), outcome(&space, &o, &d.values)).unwrap();
}

/// What journal replay does, learning each accepted outcome again from its
/// stored form (JSON, as the journal keeps it), gives the live writer's
/// state exactly: estimator, incumbents and statistics.
#[test]
fn replaying_the_journaled_outcomes_learns_the_same() {
    let spaces = Spaces::builtin();
    let space = spaces.get("options").unwrap().clone();
    let agent = Agent::new(&spaces, AgentOptions { seed: Some(12), ..Default::default() });
    let mut rng = Pcg64Mcg::seed_from_u64(12);
    let mut journal = Vec::new();
    for _ in 0..1_500 {
        let ctx = Context::from_index(rng.random_range(0..Context::COUNT)).unwrap();
        let o = random_opp("options", &mut rng, ctx);
        let d = decide(&agent, &space, &o);
        let settled = agent.report(&d.id.to_string(), outcome(&space, &o, &d.values)).unwrap();
        journal.push(serde_json::to_string(&settled).unwrap());
    }
    agent.flush();
    let live = agent.shutdown().into_iter().find(|l| l.space.name == "options").unwrap();
    let mut replayed = paramopt::agent::ModuleLearner::new(space.clone(), 0).unwrap();
    for line in &journal {
        let settled: paramopt::agent::Settled = serde_json::from_str(line).unwrap();
        replayed.apply_settled(&settled).unwrap();
    }
    let (a, b) = (live.joint.as_ref().unwrap(), replayed.joint.as_ref().unwrap());
    assert!(a.state.counts.used > 500, "{:?}", a.state.counts);
    assert_eq!(a.state, b.state);
    assert_eq!(live.incumbents, replayed.incumbents);
    assert_eq!(live.stats, replayed.stats);
}
