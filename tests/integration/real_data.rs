//! The real-data benchmark: the shipped markets, the rules' structure (the
//! score, gate, scale, exit and scope that counterfactual credit relies
//! on), the Python peers' bridge and `paramopt backtest` on real data.

use std::process::Command;
use std::sync::Arc;

use paramopt::eval::backtest::{self, BacktestOptions, Driver, MarketSource, Stream, WARMUP};
use paramopt::eval::baselines::arm_values;
use paramopt::eval::peers::{self, PeerDriver, PEERS};
use paramopt::eval::real;
use paramopt::eval::trading::{Opportunity, Trade};
use paramopt::space::{ModuleSpace, Session, Spaces};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

/// Each module's stream on its real market (stocks and options on the
/// first `tickers` stocks).
fn real_stream(space: &Arc<ModuleSpace>, tickers: usize) -> Stream {
    if space.name == "crypto" {
        Stream::new(space.clone(), &real::btc_hourly().unwrap()).unwrap()
    } else {
        let stocks = real::us_stocks_daily().unwrap();
        Stream::interleaved(space.clone(), &stocks[..tickers]).unwrap()
    }
}

/// The parameter names a decision's threshold and multiplier have.
fn scoped(space: &ModuleSpace, o: &Opportunity) -> (usize, Option<usize>) {
    let idx = |n: String| space.param_index(&n).unwrap_or_else(|| panic!("{}: no {n}", space.name));
    match space.name.as_str() {
        "crypto" => {
            let s = o.context.session.as_str();
            let m = match o.context.session {
                Session::AsiaPrime => "asia_session",
                Session::EuropePrime => "europe_session",
                Session::UsPrime => "us_session",
            };
            (idx(format!("session_confidence.{s}")), Some(idx(format!("position_multipliers.{m}"))))
        }
        "stocks" => {
            let s = o.strategy.unwrap();
            (idx(format!("strategy_thresholds.{s}")), Some(idx(format!("position_multipliers.{s}"))))
        }
        _ => (idx(format!("confidence_thresholds.{}", o.strategy.unwrap())), None),
    }
}

/// The score a decision's sent features and served weights give.
fn score(space: &ModuleSpace, o: &Opportunity, v: &[f64]) -> f64 {
    let (group, features) = match space.name.as_str() {
        "crypto" => (
            "analysis_weights",
            [("momentum", "momentum_score"), ("volatility", "volatility_score"), ("volume", "volume_score")],
        ),
        "stocks" => (
            "intelligence_weights",
            [("technical", "technical_confidence"), ("regime", "regime_confidence"), ("pattern", "pattern_confidence")],
        ),
        _ => return o.features[space.feature_index("signal_confidence").unwrap()],
    };
    let (mut num, mut den) = (0.0, 0.0);
    for (w, f) in features {
        let w = v[space.param_index(&format!("{group}.{w}")).unwrap()];
        num += w * o.features[space.feature_index(f).unwrap()];
        den += w;
    }
    num / den
}

fn random_values(space: &ModuleSpace, rng: &mut Pcg64Mcg) -> Vec<f64> {
    let arms: Vec<usize> = space.params.iter().map(|p| rng.random_range(0..p.arms.len())).collect();
    arm_values(space, &arms)
}

/// Re-running each rule with random parameters: the trade's confidence is
/// the score of the features it sent (or `signal_confidence`); it trades
/// iff that reaches its own strategy's threshold, and earns 0 when not;
/// its return is proportional to its own multiplier; and no other
/// strategy's threshold or multiplier changes it. Options: the return is
/// the capital times the path's last value less the spread, and the path
/// stops at the first check beyond the stop or target.
#[test]
fn every_rule_has_the_score_gate_scale_exit_and_scope_structure() {
    let spaces = Spaces::builtin();
    let mut rng = Pcg64Mcg::seed_from_u64(14);
    for space in spaces.iter() {
        let stream = real_stream(space, 2);
        let mut strategies = std::collections::BTreeMap::<String, (usize, usize)>::new();
        for o in stream.opportunities.iter().step_by(7) {
            let v = random_values(space, &mut rng);
            let t: Trade = stream.rule.trade(o, &v);
            let tag = format!("{} bar {}", space.name, o.bar);
            assert!((t.confidence - score(space, o, &v)).abs() < 1e-12, "{tag}: confidence");
            assert!(o.features.iter().take(3).all(|f| (0.0..=1.0).contains(f)) || space.name == "options", "{tag}");
            assert_eq!(t.strategy, o.strategy, "{tag}");
            let (threshold, multiplier) = scoped(space, o);
            assert_eq!(t.traded, t.confidence >= v[threshold], "{tag}: gate");
            let e = strategies.entry(o.strategy.unwrap_or(o.context.session.as_str()).to_string()).or_default();
            *e = (e.0 + 1, e.1 + usize::from(t.traded));
            if !t.traded {
                assert_eq!((t.return_pct, t.close_bar, t.path.len()), (0.0, o.bar, 0), "{tag}: a skip earns 0");
            }
            if let Some(m) = multiplier {
                let mut doubled = v.clone();
                doubled[m] *= 2.0;
                let t2 = stream.rule.trade(o, &doubled);
                assert!((t2.return_pct - 2.0 * t.return_pct).abs() < 1e-12, "{tag}: scale");
                assert!(t.path.is_empty());
            }
            // Scope: every other parameter that is not a weight or sizing leaves the trade alone.
            for (p, param) in space.params.iter().enumerate() {
                let own = p == threshold || Some(p) == multiplier;
                let shared = param.simplex || param.group == "position_sizing";
                if own || shared {
                    continue;
                }
                let mut other = v.clone();
                other[p] = if v[p] == param.lo { param.hi } else { param.lo };
                assert_eq!(stream.rule.trade(o, &other), t, "{tag}: {} is out of scope", param.full_name);
            }
            if space.name == "options" && t.traded {
                let stop = v[space.param_index("position_sizing.stop_loss_pct").unwrap()];
                let target = v[space.param_index("position_sizing.profit_target_pct").unwrap()];
                let contracts = v[space.param_index("position_sizing.contracts_multiplier").unwrap()];
                let cap = (contracts * 0.12).min(v[space.param_index("position_sizing.max_allocation").unwrap()]);
                // The whole path to the horizon is reported (at the horizon);
                // the position closed at the first check beyond a level, else at the last.
                let (_, pnl) = paramopt::agent::exit_on_path(&t.path, Some(stop), Some(target)).unwrap();
                assert_eq!(t.close_bar, o.bar + t.path.len(), "{tag}");
                assert_eq!(t.capital, Some(cap), "{tag}");
                assert!((t.return_pct - cap * (pnl - 0.03)).abs() < 1e-12, "{tag}: exit");
            }
        }
        eprintln!("{}: (decisions sampled, traded) per strategy: {strategies:?}", space.name);
        // Every strategy occurs and both sides of its gate are seen.
        let want = if space.name == "crypto" { 3 } else { 5 };
        assert_eq!(strategies.len(), want, "{}: {strategies:?}", space.name);
        assert!(strategies.values().all(|&(n, traded)| traded > 0 && traded < n), "{}: {strategies:?}", space.name);
    }
}

/// The real streams have the documented sizes: BTC hours after the
/// warm-up and the longest hold, and every ticker-day of the nine stocks
/// after theirs, decided in time order.
#[test]
fn real_streams_have_the_documented_sizes() {
    let spaces = Spaces::builtin();
    let stocks = real::us_stocks_daily().unwrap();
    for space in spaces.iter() {
        let stream = real_stream(space, 9);
        let h = stream.rule.horizon() + 1;
        let want = if space.name == "crypto" {
            20_111 - WARMUP - h
        } else {
            stocks.iter().map(|m| m.len() - WARMUP - h).sum()
        };
        assert_eq!(stream.opportunities.len(), want, "{}", space.name);
        assert!(stream.opportunities.windows(2).all(|w| w[0].bar <= w[1].bar), "{}", space.name);
        if space.name != "crypto" {
            assert!((2_000.0..2_400.0).contains(&stream.periods_per_year), "{}", stream.periods_per_year);
        }
    }
}

/// The venv's Python, or why the peers' tests are skipped (printed).
fn peers_python() -> Option<std::path::PathBuf> {
    match peers::find_python(&peers::default_venv()) {
        Ok(p) => Some(p),
        Err(why) => {
            eprintln!("SKIPPED: the Python peers' venv is missing: {why}");
            None
        }
    }
}

/// Both peers through the JSON-lines bridge on 400 BTC hours and 400
/// stock decisions (several per tick): every decision gets valid arms,
/// every outcome is learned, and the same seed gives the same pass.
#[test]
fn peers_bridge_decides_and_learns_a_few_hundred_decisions() {
    let Some(python) = peers_python() else { return };
    let spaces = Spaces::builtin();
    for module in ["crypto", "stocks"] {
        let mut stream = real_stream(spaces.get(module).unwrap(), 3);
        stream.opportunities.truncate(400);
        for peer in PEERS {
            let run = || {
                let mut driver = PeerDriver::start(&python, peer, 3, &stream).unwrap();
                let pass = backtest::drive(&stream, &mut driver, &|_| {}).unwrap();
                assert_eq!(driver.finish().unwrap(), 400, "{module} {peer}: every outcome learned");
                pass
            };
            let (a, b) = (run(), run());
            assert_eq!(a.returns.len(), 400);
            assert_eq!(a.returns, b.returns, "{module} {peer}: seeded");
            assert!(a.traded.iter().any(|&t| t), "{module} {peer}: never traded");
        }
    }
}

/// A peer that fails says so with its error rather than hanging or
/// passing silently.
#[test]
fn a_peer_error_stops_the_pass_with_its_message() {
    let Some(python) = peers_python() else { return };
    let spaces = Spaces::builtin();
    let mut stream = real_stream(spaces.get("crypto").unwrap(), 1);
    stream.opportunities.truncate(50);
    let err = PeerDriver::start(&python, "no-such-peer", 1, &stream).err().unwrap().to_string();
    assert!(err.contains("no-such-peer") && err.contains("KeyError"), "{err}");
    let mut driver = PeerDriver::start(&python, "vw", 1, &stream).unwrap();
    // Reporting a decision it never made.
    driver.report(&stream.opportunities[0], 999, 0.0, true, 0.1).unwrap();
    let err = driver.decide(&stream.opportunities[0]).unwrap_err().to_string();
    assert!(err.contains("vw") && err.contains("999"), "{err}");
}

/// `paramopt backtest` on the real crypto stream from an empty directory,
/// with a venv that does not exist: it says how to make one, goes on
/// without the peers, and its JSON has every other policy with its block
/// t-statistic against the defaults.
#[test]
fn backtest_cli_runs_real_data_from_anywhere_and_says_why_peers_are_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_paramopt"))
        .current_dir(dir.path())
        .args(["backtest", "--json", "--module", "crypto", "--peers-venv", "/nonexistent/venv"])
        .args(["--models", concat!(env!("CARGO_MANIFEST_DIR"), "/models")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("scripts/peers/setup") && stderr.contains("/nonexistent/venv"), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["notes"][0].as_str().unwrap().contains("scripts/peers/setup"), "{}", json["notes"]);
    let m = &json["modules"][0];
    assert!(m["market"].as_str().unwrap().contains("BTC/USD"), "{}", m["market"]);
    let names: Vec<&str> = m["policies"].as_array().unwrap().iter().map(|p| p["policy"].as_str().unwrap()).collect();
    assert_eq!(names, ["agent", "defaults", "random", "epsilon-greedy", "ucb1", "thompson", "oracle-oos", "oracle"]);
    let defaults = &m["policies"][1]["vs_defaults"];
    assert_eq!((defaults["mean_diff"].as_f64(), defaults["block_t"].as_f64()), (Some(0.0), Some(0.0)));
    let half = m["decisions"].as_u64().unwrap() - m["second_half_from"].as_u64().unwrap();
    assert_eq!(m["policies"][6]["vs_defaults"]["blocks"].as_u64().unwrap(), half / 100);
}

/// The library's default real-data run on one module, without peers:
/// every policy scored on the same second half; the hindsight oracle,
/// searched from the defaults, is never below them.
#[test]
fn real_data_backtest_scores_every_policy_on_the_same_second_half() {
    let opts =
        BacktestOptions { market: MarketSource::Real, seed: 1, modules: vec!["options".into()], ..Default::default() };
    let r = backtest::run(&Spaces::builtin(), &opts).unwrap();
    assert!(r.notes.is_empty());
    let m = &r.modules[0];
    for p in &m.policies {
        assert_eq!(p.second_half.decisions, m.decisions - m.second_half_from, "{}", p.policy);
        assert!(p.second_half.mean_return.is_finite() && p.vs_defaults.block_t.is_finite(), "{}", p.policy);
    }
    let mean = |n: &str| m.policy(n).unwrap().second_half.mean_return;
    assert!(mean("oracle") >= mean("defaults"));
    assert!(mean("oracle") >= mean("oracle-oos"));
}

/// `--seeds` runs every seed and sums them up: per policy the means over
/// seeds and each seed's mean, in JSON as on the terminal.
#[test]
fn backtest_cli_with_several_seeds_reports_each_run_and_the_means() {
    let run = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_paramopt"));
        cmd.args(["backtest", "--synthetic", "--bars", "1500", "--seeds", "1,2", "--no-peers", "--module", "crypto"])
            .args(["--models", concat!(env!("CARGO_MANIFEST_DIR"), "/models")]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    let json: serde_json::Value = serde_json::from_slice(&run(true)).unwrap();
    assert_eq!(json["runs"].as_array().unwrap().len(), 2);
    assert_eq!(json["means"]["seeds"], serde_json::json!([1, 2]));
    let policies = json["means"]["modules"][0]["policies"].as_array().unwrap();
    let agent = &policies[0];
    let per_seed: Vec<f64> = agent["per_seed_mean"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let runs: Vec<f64> = (0..2)
        .map(|k| json["runs"][k]["modules"][0]["policies"][0]["second_half"]["mean_return"].as_f64().unwrap())
        .collect();
    assert_eq!(per_seed, runs);
    assert!((agent["mean_return"].as_f64().unwrap() - (runs[0] + runs[1]) / 2.0).abs() < 1e-15);
    assert_eq!(policies[1]["policy"], "defaults");
    assert_eq!(policies[1]["at_least_defaults"], 2);
    let text = String::from_utf8(run(false)).unwrap();
    assert!(text.contains("Means over seeds 1, 2") && text.contains("seed 2"), "{text}");
}
