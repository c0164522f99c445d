//! `paramopt backtest` and off-policy evaluation on the synthetic market and
//! on a CSV, each with a fixed seed and stated bounds.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use paramopt::eval::backtest::{self, gap_share, BacktestOptions, BacktestReport, MarketSource, ModuleBacktest};
use paramopt::eval::baselines::arm_values;
use paramopt::eval::csv;
use paramopt::ope::{doubly_robust, ips, snips, LoggedDecision, TargetPolicy};
use paramopt::runtime::effectiveness::{attribution, effectiveness};
use paramopt::space::{Context, Spaces};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

const SEEDS: [u64; 3] = [1, 2, 3];
const BARS: usize = 30_000;

/// The synthetic market tests what learning finds on a learnable market, so
/// its agent has room in its loss budget to explore from the start (the
/// shipped 0.02 holds a cold module at its incumbents; the real-data
/// benchmark runs with it).
fn report(seed: u64) -> BacktestReport {
    let opts = BacktestOptions { market: MarketSource::Synthetic { bars: BARS }, seed, ..Default::default() };
    backtest::run(&super::support::builtin_with_budget(10.0), &opts).unwrap()
}

fn second_half(m: &ModuleBacktest, policy: &str) -> (f64, f64) {
    let p = m.policy(policy).unwrap();
    (p.second_half.mean_return, p.second_half.sharpe)
}

/// Second half of each module's stream, three seeds. What the agent does
/// reliably: a better mean return and Sharpe ratio than the seed defaults and
/// than random parameters in every run; a share of the defaults-to-oracle gap
/// that differs by module (seeds 1-3 average 78%, 30% and 26% with issue
/// 15's agent, 38%, 41% and 22% with issue 14's rules, 44%, 42% and 25%
/// before, as BENCHMARKS.md's "Backtest" records; the bounds leave room below
/// those). The oracle, searched from the defaults, is never worse than them.
#[test]
fn backtest_agent_beats_defaults_and_random_on_the_synthetic_market() {
    let spaces = Spaces::builtin();
    let mut gap = std::collections::BTreeMap::<String, Vec<f64>>::new();
    let mut means = std::collections::BTreeMap::<String, (f64, f64)>::new();
    for seed in SEEDS {
        let r = report(seed);
        assert_eq!(r.modules.len(), 3);
        for m in &r.modules {
            let (agent, defaults, random, oracle) = (
                second_half(m, "agent"),
                second_half(m, "defaults"),
                second_half(m, "random"),
                second_half(m, "oracle"),
            );
            let tag = format!("{} seed {seed}", m.module);
            eprintln!(
                "{tag}: agent {agent:?} defaults {defaults:?} random {random:?} oracle {oracle:?} gap closed {:.0}%",
                100.0 * m.policy("agent").unwrap().gap_closed
            );
            assert!(agent.1 > defaults.1 && agent.1 > random.1, "{tag}: Sharpe");
            assert!(agent.0 > defaults.0 && agent.0 > random.0, "{tag}: mean");
            assert!(oracle.0 >= defaults.0, "{tag}: the oracle starts from the defaults");
            // Every decision of the second half was scored, by every policy.
            for p in &m.policies {
                assert_eq!(p.second_half.decisions, m.decisions - m.second_half_from, "{tag} {}", p.policy);
            }
            assert!(spaces.get(&m.module).is_some());
            gap.entry(m.module.clone()).or_default().push(m.policy("agent").unwrap().gap_closed);
            let e = means.entry(m.module.clone()).or_default();
            e.0 += agent.0;
            e.1 += defaults.0;
        }
    }
    for (module, (agent, defaults)) in &means {
        assert!(agent > defaults, "{module}: mean over seeds, agent {agent} vs defaults {defaults}");
    }
    let avg = |m: &str| gap[m].iter().sum::<f64>() / gap[m].len() as f64;
    eprintln!("mean gap closed: crypto {:.2} options {:.2} stocks {:.2}", avg("crypto"), avg("options"), avg("stocks"));
    assert!(avg("crypto") >= 0.60, "crypto closes {:.2}", avg("crypto"));
    // Measured with issue 15's agent (seeds 1-3, room in the budget):
    // crypto 0.78, options 0.30, stocks 0.26. Options' sizing (contracts,
    // allocation) is opaque and, in a module with roles, no longer moves
    // without a test, so its gap closes less than before (0.41).
    assert!(avg("options") >= 0.25, "options closes {:.2}", avg("options"));
    assert!(avg("stocks") >= 0.20, "stocks closes {:.2}", avg("stocks"));
}

/// The target issue 6 sets: in the second half the agent beats every
/// non-oracle baseline on mean return and Sharpe and closes at least 70% of
/// the gap to the oracle. Not met (BENCHMARKS.md, "Backtest": 47%, 44% and
/// 21% of the gap over seeds 1-5, and UCB1 keeps the higher mean on options),
/// and for options and stocks out of reach of bandit feedback on this market
/// (`bandit_feedback_from_the_first_half_cannot_reveal_70_percent_of_the_gap`);
/// kept so the shortfall is measured by a command, not remembered.
#[test]
#[ignore = "not met, and beyond what bandit feedback reveals on this market: see BENCHMARKS.md, Backtest"]
fn backtest_agent_meets_the_issue_6_target() {
    for seed in SEEDS {
        for m in &report(seed).modules {
            let agent = second_half(m, "agent");
            for b in ["defaults", "random", "epsilon-greedy", "ucb1"] {
                let other = second_half(m, b);
                assert!(
                    agent.0 > other.0 && agent.1 > other.1,
                    "{} seed {seed}: agent {agent:?} vs {b} {other:?}",
                    m.module
                );
            }
            let closed = m.policy("agent").unwrap().gap_closed;
            assert!(closed >= 0.7, "{} seed {seed}: closed {closed:.2}", m.module);
        }
    }
}

/// Share of the defaults-to-oracle gap (second half, per module, averaged
/// over `seeds`) that fixed arms chosen from the first half close, by what
/// the first half revealed: every arm's return on every bar (the oracle's
/// search run on the first half), or only the reward of uniformly random
/// arms (explore-then-commit), with each context's arm means shrunk
/// towards their regime's by 0, 300 or 1,000 pseudo-outcomes. No exploration
/// is paid for in the second half, so a learner with bandit feedback cannot
/// expect more than the best of the latter.
fn first_half_information(bars: usize, seeds: &[u64]) -> std::collections::BTreeMap<(String, String), f64> {
    use paramopt::eval::backtest::Stream;
    use paramopt::eval::baselines::{explore_then_commit, oracle};
    use paramopt::eval::market::SyntheticMarket;
    use paramopt::eval::trading::Opportunity;
    let mut shares = std::collections::BTreeMap::<(String, String), f64>::new();
    for &seed in seeds {
        let market = SyntheticMarket::new(seed, bars).generate();
        for space in Spaces::builtin().iter() {
            let stream = Stream::new(space.clone(), &market).unwrap();
            let all: Vec<&Opportunity> = stream.opportunities.iter().collect();
            let half = all.len() / 2;
            let second_half_mean = |arms: &[Vec<usize>]| {
                let r = stream.returns_of(half..all.len(), |c| arm_values(space, &arms[c.index()]));
                r.iter().sum::<f64>() / r.len() as f64
            };
            let defaults: Vec<usize> = space.params.iter().map(|p| p.default_arm).collect();
            let floor = second_half_mean(&vec![defaults; Context::COUNT]);
            let top = second_half_mean(&oracle(space, stream.rule.as_ref(), &all[half..]).arms);
            let mut fits = vec![("every arm's return".to_string(), oracle(space, stream.rule.as_ref(), &all[..half]))];
            for pooling in [0.0, 300.0, 1000.0] {
                let mut rng = Pcg64Mcg::seed_from_u64(seed);
                let reward = |t: &paramopt::eval::trading::Trade| stream.reward(t.traded, t.return_pct);
                let known_by = all[half].bar;
                let fit = explore_then_commit(
                    space,
                    stream.rule.as_ref(),
                    &all[..half],
                    known_by,
                    &reward,
                    pooling,
                    &mut rng,
                );
                fits.push((format!("drawn arms' rewards, regime pooling {pooling}"), fit));
            }
            for (what, fit) in fits {
                let share = gap_share(second_half_mean(&fit.arms), floor, top);
                *shares.entry((space.name.clone(), what)).or_default() += share / seeds.len() as f64;
            }
        }
    }
    for ((module, what), share) in &shares {
        eprintln!("{bars} bars, {module}: {what}: {:.0}% of the gap", 100.0 * share);
    }
    shares
}

/// Per module of `shares`: what full information closes, and the best any
/// bandit-feedback estimator closes.
fn full_and_best_bandit(shares: &std::collections::BTreeMap<(String, String), f64>, module: &str) -> (f64, f64) {
    let full = shares[&(module.to_string(), "every arm's return".to_string())];
    let best_bandit = shares
        .iter()
        .filter(|((m, what), _)| m == module && what.starts_with("drawn"))
        .map(|(_, &s)| s)
        .fold(f64::MIN, f64::max);
    (full, best_bandit)
}

/// What the first half can reveal bounds the issue-6 target. Knowing every
/// arm's return on every first-half bar, fixed arms close about 90% of the
/// second half's gap in every module; knowing only the rewards of the arms
/// drawn (bandit feedback, which is all a live agent ever gets), the best
/// estimator here closes about two thirds on crypto and options and half on
/// stocks, before any exploration in the second half is paid for (with the
/// rules of issue 14: 68%, 68% and 55%, against 94%, 93% and 86% with every
/// arm's return; BENCHMARKS.md, "Backtest", has the earlier rules' figures).
#[test]
fn bandit_feedback_from_the_first_half_cannot_reveal_70_percent_of_the_gap() {
    let shares = first_half_information(BARS, &[1, 2, 3, 4, 5]);
    for module in ["crypto", "options", "stocks"] {
        let (full, best_bandit) = full_and_best_bandit(&shares, module);
        assert!(full > 0.85, "{module}: full information closes {full:.2}");
        assert!(best_bandit < full - 0.1, "{module}: bandit feedback {best_bandit:.2} vs full {full:.2}");
        // The estimators do learn (uniform random arms close less than 0%).
        assert!(best_bandit > 0.3, "{module}: bandit feedback closes only {best_bandit:.2}");
        if module != "crypto" {
            assert!(best_bandit < 0.7, "{module}: bandit feedback closes {best_bandit:.2}");
        }
    }
}

/// The same with ten times the bars (150,000 decisions per half): bandit
/// feedback then reveals most of crypto's gap, but options and stocks stay
/// near 85% and 75%, because each parameter's arm is judged on average over
/// the others' draws (a stocks leg's best multiplier depends on its
/// threshold, for instance) where the oracle searches them jointly. About 30 s.
#[test]
#[ignore = "diagnostic: about 30 s; prints its figures"]
fn bandit_feedback_with_ten_times_the_bars() {
    let shares = first_half_information(10 * BARS, &[1, 2, 3, 4, 5]);
    let (_, crypto) = full_and_best_bandit(&shares, "crypto");
    assert!(crypto > 0.9, "crypto: bandit feedback closes {crypto:.2}");
    for module in ["options", "stocks"] {
        let (full, best_bandit) = full_and_best_bandit(&shares, module);
        assert!(best_bandit < full - 0.1, "{module}: bandit feedback {best_bandit:.2} vs full {full:.2}");
    }
}

/// The crypto stream both off-policy tests evaluate on: seed 11, `BARS` bars.
fn crypto_backtest_seed_11() -> backtest::BacktestReport {
    let opts = BacktestOptions {
        market: MarketSource::Synthetic { bars: BARS },
        seed: 11,
        modules: vec!["crypto".into()],
        ..Default::default()
    };
    backtest::run(&Spaces::builtin(), &opts).unwrap()
}

/// A logging policy whose propensities are known: every parameter keeps its
/// default arm with probability 0.8, else takes one of the other four
/// uniformly. On the crypto stream of the synthetic market, IPS, SNIPS and DR
/// estimates of two fixed policies — the defaults, and the defaults with the
/// Asia threshold one arm higher — contain the truth: those parameters run
/// through the trading rule on the same bars.
#[test]
fn ope_estimates_cover_the_true_value_of_fixed_policies() {
    let r = crypto_backtest_seed_11();
    let stream = &r.modules[0].stream;
    let space = stream.space.clone();
    let mut rng = Pcg64Mcg::seed_from_u64(11);
    let logs: Vec<LoggedDecision> = stream
        .opportunities
        .iter()
        .map(|o| {
            let (mut arms, mut propensities) = (vec![], vec![]);
            for p in &space.params {
                let keep = rng.random::<f64>() < 0.8;
                let k = if keep {
                    p.default_arm
                } else {
                    let other = rng.random_range(0..p.arms.len() - 1);
                    if other >= p.default_arm {
                        other + 1
                    } else {
                        other
                    }
                };
                arms.push(k);
                propensities.push(if k == p.default_arm { 0.8 } else { 0.2 / (p.arms.len() - 1) as f64 });
            }
            let values = arm_values(&space, &arms);
            let trade = stream.rule.trade(o, &values);
            LoggedDecision {
                context: o.context,
                propensity: propensities.iter().product(),
                arms,
                values,
                propensities,
                traded: trade.traded,
                reward: trade.return_pct,
            }
        })
        .collect();
    let defaults: Vec<usize> = space.params.iter().map(|p| p.default_arm).collect();
    let mut raised = defaults.clone();
    let asia = space.param_index("session_confidence.asia_prime").unwrap();
    raised[asia] += 1;
    for (name, arms) in [("defaults", defaults), ("asia threshold +1 arm", raised)] {
        let target = TargetPolicy::fixed(name, &space, &vec![arms.clone(); Context::COUNT]);
        let values = arm_values(&space, &arms);
        let truth_returns = stream.returns_of(0..stream.opportunities.len(), |_| values.clone());
        let truth = truth_returns.iter().sum::<f64>() / truth_returns.len() as f64;
        for (estimator, est) in [
            ("ips", ips(&logs, &target).unwrap()),
            ("snips", snips(&logs, &target).unwrap()),
            ("dr", doubly_robust(&logs, &target).unwrap()),
        ] {
            eprintln!("{name} {estimator}: {est:?} truth {truth}");
            assert!(est.effective_n >= 100.0, "{name} {estimator}: {est:?}");
            assert!(est.contains(truth), "{name} {estimator}: {est:?} does not contain {truth}");
            assert!(est.ci_high - est.ci_low < 0.01, "{name} {estimator}: interval too wide to be useful: {est:?}");
        }
    }
}

/// The agent's own log: its exploring policy at the end of the stream (the
/// last checkpoint's Thompson sampling) evaluated on the last quarter of its
/// decisions. The truth draws that policy's choices (values as it serves
/// them) on the same bars, 16 per bar. A deterministic target over nine
/// parameters would match almost no logged decision, which is why this uses
/// the stochastic one (see ope.rs).
///
/// Fails today: the logged mean is 0.0070 and the truth 0.0076, but IPS says
/// 0.0036 with a mean weight near 0.5. The final policy explores arms the
/// trust regions of the logged decisions did not reach, so the log has no
/// support there. Kept to measure that limit.
#[test]
#[ignore = "no support: the agent's log cannot evaluate its own later policy (see the comment)"]
fn ope_estimates_cover_the_true_value_of_the_agents_final_policy() {
    let r = crypto_backtest_seed_11();
    let m = &r.modules[0];
    let space = m.stream.space.clone();
    let view = m.agent_view.as_ref().unwrap();
    let target = TargetPolicy::thompson(&space, view);
    let from = 3 * m.decisions / 4;
    let mut rng = Pcg64Mcg::seed_from_u64(12);
    let (mut sum, mut count) = (0.0, 0usize);
    for o in &m.stream.opportunities[from..] {
        let features: Vec<Option<f64>> = o.features.iter().map(|&f| Some(f)).collect();
        for _ in 0..16 {
            let choice = view.cells[o.context.index()].choose(&space, None, o.context, &features, true, &mut rng);
            sum += m.stream.rule.trade(o, &choice.values).return_pct;
            count += 1;
        }
    }
    let truth = sum / count as f64;
    let logs = &m.agent_log[from..];
    let logged = logs.iter().map(|l| l.reward).sum::<f64>() / logs.len() as f64;
    let (mut greedy_sum, mut n) = (0.0, 0usize);
    for o in &m.stream.opportunities[from..] {
        let features: Vec<Option<f64>> = o.features.iter().map(|&f| Some(f)).collect();
        let choice = view.cells[o.context.index()].choose(&space, None, o.context, &features, false, &mut rng);
        greedy_sum += m.stream.rule.trade(o, &choice.values).return_pct;
        n += 1;
    }
    eprintln!("logged mean {logged}, final greedy {}, final thompson {truth}", greedy_sum / n as f64);
    for (name, est) in [
        ("ips", ips(logs, &target).unwrap()),
        ("snips", snips(logs, &target).unwrap()),
        ("dr", doubly_robust(logs, &target).unwrap()),
    ] {
        eprintln!("agent's final policy {name}: {est:?} truth {truth}");
        assert!(est.mean_weight > 0.9, "{name}: the log lacks support for the target: {est:?}");
        assert!(est.effective_n >= 100.0, "{name}: {est:?}");
        assert!(est.contains(truth), "{name}: {est:?} does not contain {truth}");
    }
}

/// A CSV with a bad row fails with that row's line number, from the library
/// and from the command line.
#[test]
fn csv_bad_row_is_reported_by_line_number() {
    let good = std::fs::read_to_string(fixture()).unwrap();
    let mut lines: Vec<&str> = good.lines().collect();
    // Line 42 (the header is line 1): high below low.
    lines[41] = "2024-06-02T16:00:00Z,60000.00,59000.00,59500.00,60000.00,100.0";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.csv");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let err = csv::load(&path).unwrap_err().to_string();
    assert!(err.contains("bad.csv:42: high"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_paramopt"))
        .args(["backtest", "--no-peers", "--models", concat!(env!("CARGO_MANIFEST_DIR"), "/models"), "--csv"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(":42: high"), "{stderr}");
}

fn fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ohlcv-hourly.csv")
}

/// The fixture (600 hourly bars) backtests every module, reporting progress
/// to the end of every pass; the command line prints JSON and writes plots.
#[test]
fn csv_good_file_backtests_with_progress_and_plots() {
    let events = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let (e, f) = (events.clone(), finished.clone());
    let opts = BacktestOptions {
        market: MarketSource::Csv(fixture()),
        seed: 3,
        progress: Some(Arc::new(move |p: &backtest::ProgressEvent| {
            e.fetch_add(1, Ordering::Relaxed);
            if p.done == p.total {
                f.fetch_add(1, Ordering::Relaxed);
            }
        })),
        ..Default::default()
    };
    let r = backtest::run(&Spaces::builtin(), &opts).unwrap();
    assert_eq!(r.bars, 600);
    for m in &r.modules {
        assert!(m.decisions > 300, "{}: {}", m.module, m.decisions);
        assert_eq!(m.policies.len(), 8);
        let oracle = m.policy("oracle").unwrap().second_half.mean_return;
        assert!(oracle >= m.policy("defaults").unwrap().second_half.mean_return);
        assert!(m.policies.iter().all(|p| p.second_half.mean_return.is_finite() && p.full.sharpe.is_finite()));
    }
    // Parameter effectiveness from the agent's log: per parameter, the rows
    // over all contexts count every decision once.
    for m in &r.modules {
        let space = &m.stream.space;
        let rows = effectiveness(space, &m.agent_log, "2026-11-24T00:00:00Z");
        for p in &space.params {
            let n: u64 = rows
                .iter()
                .filter(|r| r.parameter_type == p.full_name && r.session.is_none())
                .map(|r| r.sample_size)
                .sum();
            assert_eq!(n as usize, m.decisions, "{} {}", m.module, p.full_name);
        }
        assert!(rows.iter().all(|r| (0.0..=1.0).contains(&r.success_rate) && r.avg_return.is_finite()));
        assert!(attribution(space, &m.agent_log).iter().all(|a| a.correlation.abs() <= 1.0 + 1e-12));
    }
    // Six learning passes and the oracle per module each end at 100%.
    assert_eq!(finished.load(Ordering::Relaxed), 3 * 7);
    assert!(events.load(Ordering::Relaxed) > 3 * 7 * 50);

    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_paramopt"))
        .args([
            "backtest",
            "--json",
            "--no-peers",
            "--module",
            "options",
            "--models",
            concat!(env!("CARGO_MANIFEST_DIR"), "/models"),
        ])
        .arg("--csv")
        .arg(fixture())
        .arg("--plot")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["modules"][0]["module"], "options");
    assert_eq!(json["modules"][0]["policies"].as_array().unwrap().len(), 8);
    // The chart: the agent, the defaults and the out-of-sample oracle, as SVG and PNG.
    let svg = std::fs::read_to_string(dir.path().join("backtest-options.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let texts: Vec<&str> = doc.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).collect();
    for legend in ["agent", "defaults (the seed values)", "out-of-sample oracle (fitted on the first half)"] {
        assert!(texts.iter().any(|t| t.trim() == legend), "{legend}: {texts:?}");
    }
    assert!(texts.iter().any(|t| t.trim() == paramopt::plot::DRAWDOWN), "{texts:?}");
    let png = std::fs::read(dir.path().join("backtest-options.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
}

/// The held-out market (`--market sp500`: twenty S&P 500 stocks' daily
/// closes, 2005-01-03 to 2022-12-28, 4,529 dates each), stocks module, agent
/// and baselines, no peers, two seeds. Every ticker-day after the warm-up and
/// before the last holding period is a decision; the policies that draw
/// nothing (the defaults, UCB1, both oracles) give the same finite figures in
/// both seeds, and the agent does not; log growth never exceeds the sum of
/// returns (ln(1 + r) <= r). A few seconds per seed in release mode.
#[test]
fn held_out_sp500_market_backtests_stocks_on_twenty_tickers() {
    let run = |seed: u64| {
        let opts =
            BacktestOptions { market: MarketSource::Sp500, seed, modules: vec!["stocks".into()], ..Default::default() };
        backtest::run(&Spaces::builtin(), &opts).unwrap()
    };
    let (a, b) = (run(1), run(2));
    assert!(a.notes.is_empty(), "{:?}", a.notes);
    assert_eq!(a.bars, 20 * 4_529);
    let (ma, mb) = (&a.modules[0], &b.modules[0]);
    assert_eq!((a.modules.len(), ma.module.as_str()), (1, "stocks"));
    assert!(ma.market.starts_with("20 markets interleaved by time (AAPL, AMD, BAC,"), "{}", ma.market);
    assert!(ma.market.ends_with("UNH, WMT, XOM)"), "{}", ma.market);
    let horizon = ma.stream.rule.horizon();
    assert_eq!(ma.decisions, 20 * (4_529 - backtest::WARMUP - horizon - 1));
    assert_eq!((ma.decisions, ma.second_half_from), (mb.decisions, mb.second_half_from));
    assert_eq!(ma.second_half_from, ma.decisions / 2);
    // 20 decisions per trading day, about 252 trading days a year.
    assert!((4_500.0..5_500.0).contains(&ma.stream.periods_per_year), "{}", ma.stream.periods_per_year);
    let names: Vec<&str> = ma.policies.iter().map(|p| p.policy.as_str()).collect();
    assert_eq!(names, ["agent", "defaults", "random", "epsilon-greedy", "ucb1", "thompson", "oracle-oos", "oracle"]);
    for (ra, rb) in ma.policies.iter().zip(&mb.policies) {
        let (s, tag) = (&ra.second_half, &ra.policy);
        assert_eq!(s.decisions, ma.decisions - ma.second_half_from, "{tag}");
        assert!(s.traded_share > 0.0, "{tag} never traded");
        for v in [s.mean_return, s.total_return, s.sharpe, s.max_drawdown, ra.vs_defaults.block_t] {
            assert!(v.is_finite(), "{tag}: {s:?}");
        }
        // Stocks' trades risk at most a fraction of equity: no ruin, a finite growth below the sum.
        assert_eq!(s.ruins, 0, "{tag}");
        assert!(s.log_growth.is_finite() && s.log_growth <= s.total_return, "{tag}: {s:?}");
        if ["defaults", "ucb1", "oracle-oos", "oracle"].contains(&tag.as_str()) {
            assert_eq!((ra.full, ra.second_half), (rb.full, rb.second_half), "{tag} drew something");
        }
    }
    let defaults = ma.policy("defaults").unwrap();
    assert_eq!((defaults.vs_defaults.mean_diff, defaults.vs_defaults.block_t), (0.0, 0.0));
    // Seeds change what the random policies draw (the agent's stocks module
    // draws nothing: its loss budget cannot hold one exploring trade).
    assert_ne!(ma.policy("thompson").unwrap().second_half, mb.policy("thompson").unwrap().second_half);
    let mean = |n: &str| ma.policy(n).unwrap().second_half.mean_return;
    assert!(mean("oracle") >= mean("defaults") && mean("oracle") >= mean("oracle-oos"));
    let table = paramopt::report::backtest::table(&a);
    let header = table.lines().find(|l| l.starts_with("policy")).unwrap();
    assert!(header.contains("total 2nd  growth 2nd  sharpe 2nd"), "{header}");
}

/// On the command line: `--market sp500` skips crypto with a note (there is
/// no second hourly crypto series) and cannot be combined with another market.
#[test]
fn held_out_market_on_the_command_line_skips_crypto_with_a_note() {
    let backtest = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_paramopt"))
            .args(["backtest", "--no-peers", "--models", concat!(env!("CARGO_MANIFEST_DIR"), "/models")])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = backtest(&["--market", "sp500", "--module", "crypto"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Note: crypto did not run: the held-out market has no hourly crypto series"), "{stdout}");
    assert!(!stdout.contains("decisions on"), "{stdout}");
    for other in [["--synthetic", ""], ["--csv", "x.csv"]] {
        let args: Vec<&str> = ["--market", "sp500"].into_iter().chain(other).filter(|a| !a.is_empty()).collect();
        let out = backtest(&args);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"), "{other:?}");
    }
    let out = backtest(&["--market", "nasdaq"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("[possible values: default, sp500]"));
}
