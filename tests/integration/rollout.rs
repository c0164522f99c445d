//! Safe rollout on the embedded store: A/B tests that promote a clearly
//! better challenger and not a clearly worse one, and the automatic rollback
//! an injected degradation triggers (and that the same run without the
//! injection does not). Seeded; the runtime's own review is called between
//! batches, as its checkpointer does every tick.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::StatusCode;
use paramopt::agent::Outcome;
use paramopt::rollout::AbSettings;
use paramopt::rollout::AbVerdict;
use paramopt::runtime::{Challenger, Review, Runtime};
use paramopt::space::{Context, ModuleSpace};
use paramopt::store::{CheckpointKind, LearningEventKind};
use rand::Rng;
use rand_distr::StandardNormal;
use rand_pcg::Pcg64Mcg;
use serde_json::{json, Value};

use crate::support::{explicit_checkpoints, rng, send, served, spaces_with};

const MODULE: &str = "crypto";

async fn start(dir: &std::path::Path) -> Arc<Runtime> {
    // A 200-decision window, so the watch can judge within a short test.
    let spaces = spaces_with(false, &[("window = 500", "window = 200")]);
    Runtime::start(spaces, explicit_checkpoints(dir, 5)).await.unwrap()
}

/// The first three crypto parameters (session confidence thresholds) earn
/// most at the top of their ranges; the others do not matter.
struct Market {
    targets: Vec<(usize, f64)>,
}

impl Market {
    fn new(space: &ModuleSpace) -> Market {
        Market { targets: (0..3).map(|p| (p, space.params[p].hi)).collect() }
    }

    fn mean_reward(&self, space: &ModuleSpace, values: &[f64]) -> f64 {
        let distance: f64 = self.targets.iter().map(|&(p, t)| (values[p] - t).abs() / space.params[p].range()).sum();
        0.004 - 0.03 * distance / self.targets.len() as f64
    }

    fn challenger(&self, space: &ModuleSpace, at_top: bool) -> BTreeMap<String, f64> {
        self.targets
            .iter()
            .map(|&(p, _)| {
                let param = &space.params[p];
                (param.full_name.clone(), if at_top { param.hi } else { param.lo })
            })
            .collect()
    }
}

/// `n` decisions in random contexts, each logged and reported as the service
/// does, with the reward `reward` gives for its values.
fn trade(rt: &Runtime, n: usize, r: &mut Pcg64Mcg, mut reward: impl FnMut(&[f64], &mut Pcg64Mcg) -> f64) {
    for _ in 0..n {
        let ctx = Context::from_index(r.random_range(0..Context::COUNT)).unwrap();
        let d = rt.agent.decide(MODULE, ctx, &[], true).unwrap();
        let value = reward(&d.values, r);
        // The runtime's journal takes both; the decision log stores them from there.
        rt.agent
            .report(
                &d.id.to_string(),
                Outcome { reward: Some(value), traded: true, return_pct: None, evidence: Default::default() },
            )
            .unwrap();
    }
    rt.agent.flush();
}

fn honest<'a>(space: &'a ModuleSpace, market: &'a Market) -> impl FnMut(&[f64], &mut Pcg64Mcg) -> f64 + 'a {
    move |values, r| market.mean_reward(space, values) + 0.01 * r.sample::<f64, _>(StandardNormal)
}

/// Trades in batches of 50, reviewing after each, until an A/B test ends.
async fn run_test_to_its_end(rt: &Runtime, space: &ModuleSpace, market: &Market, seed: u64) -> AbVerdict {
    let mut r = rng(seed);
    for _ in 0..200 {
        trade(rt, 50, &mut r, honest(space, market));
        if let Review::AbLook(verdict) = rt.review(MODULE).await.unwrap() {
            if verdict.ends_test() {
                return verdict;
            }
        }
    }
    panic!("the A/B test did not end within 10,000 decisions");
}

fn incumbents(rt: &Runtime) -> Vec<Vec<f64>> {
    let i = rt.agent.module_index(MODULE).unwrap();
    rt.agent.with_writer(move |l| l[i].incumbents.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clearly_better_challenger_is_promoted() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start(dir.path()).await;
    let space = rt.spaces.get(MODULE).unwrap().clone();
    let market = Market::new(&space);
    let given = market.challenger(&space, true);
    let settings = AbSettings::new(0.3, 100, 1600, 0.05, 0.0).unwrap();
    rt.start_ab(MODULE, Challenger::Parameters(given.clone()), settings).await.unwrap();

    let verdict = run_test_to_its_end(&rt, &space, &market, 1).await;
    let AbVerdict::Promote { comparison, ope } = verdict else { panic!("not promoted: {verdict:?}") };
    // The champion starts at the defaults and learns towards the challenger
    // meanwhile, so the measured gap lies between nothing and the gap the
    // defaults leave (how much the champion has caught up by the look
    // depends on the writer's timing).
    let mut top = space.defaults();
    for (name, v) in &given {
        top[space.param_index(name).unwrap()] = *v;
    }
    let defaults_gap = market.mean_reward(&space, &top) - market.mean_reward(&space, &space.defaults());
    assert!(
        comparison.difference > 2.0 * comparison.se && comparison.difference < defaults_gap + 4.0 * comparison.se,
        "{comparison:?}, defaults' gap {defaults_gap}"
    );
    assert!(ope.value > 0.0, "the off-policy estimate of the challenger: {ope:?}");

    // The challenger's values are now the incumbents in every context.
    for ctx in incumbents(&rt) {
        for (name, v) in &given {
            assert_eq!(ctx[space.param_index(name).unwrap()], *v, "{name}");
        }
    }
    let latest = rt.store.latest_checkpoint(MODULE).await.unwrap().unwrap();
    assert_eq!(latest.kind, CheckpointKind::Promotion);
    assert!(latest.ab_test.is_none(), "the test ended with the promotion");
    let events = rt.store.list_learning_events(MODULE, 10).await.unwrap();
    let promotion =
        events.iter().find(|e| e.learning_event == LearningEventKind::Promotion).expect("a promotion event");
    assert_eq!(promotion.generation, Some(latest.generation));
    let reason = promotion.reason.as_deref().unwrap();
    assert!(reason.contains("promoted") && reason.contains("doubly robust"), "{reason}");
    assert_eq!(rt.status.promotions(MODULE), 1);
    let result = rt.status.last_ab_result(MODULE).unwrap();
    assert_eq!((result.outcome.as_str(), result.generation), ("promoted", Some(latest.generation)));
    // The split held: about 30% of the test's outcomes went to the challenger,
    // within 4 binomial sds (the test's id, which seeds the assignment, comes
    // from the clock, and the test ends after a few hundred outcomes).
    let n = result.challenger_rewards.n + result.champion_rewards.n;
    let share = result.challenger_rewards.n / n;
    let sd = (0.3 * 0.7 / n).sqrt();
    assert!((share - 0.3).abs() < 4.0 * sd, "challenger share {share} of {n} outcomes (sd {sd})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clearly_worse_challenger_is_not_promoted() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start(dir.path()).await;
    let space = rt.spaces.get(MODULE).unwrap().clone();
    let market = Market::new(&space);
    let given = market.challenger(&space, false);
    let settings = AbSettings::new(0.3, 100, 1600, 0.05, 0.0).unwrap();
    rt.start_ab(MODULE, Challenger::Parameters(given.clone()), settings).await.unwrap();

    let verdict = run_test_to_its_end(&rt, &space, &market, 2).await;
    assert!(matches!(verdict, AbVerdict::Reject { .. }), "{verdict:?}");
    for ctx in incumbents(&rt) {
        for (name, v) in &given {
            assert_ne!(ctx[space.param_index(name).unwrap()], *v, "{name} took the rejected value");
        }
    }
    assert!(rt.store.latest_checkpoint(MODULE).await.unwrap().is_none(), "no generation was made");
    let events = rt.store.list_learning_events(MODULE, 10).await.unwrap();
    assert!(events.iter().all(|e| e.learning_event != LearningEventKind::Promotion));
    let rejected = events
        .iter()
        .find(|e| e.learning_event == LearningEventKind::Other("ab_test_rejected".into()))
        .expect("the rejection is an ml_learning_events record");
    assert!(rejected.reason.as_deref().unwrap().contains("rejected"));
    assert_eq!(rt.status.promotions(MODULE), 0);
    assert_eq!(rt.status.last_ab_result(MODULE).unwrap().outcome, "rejected");
    assert!(rt.agent.view(MODULE).unwrap().ab.is_none(), "the test is over");
}

/// Learns honestly, checkpoints twice, then (when `inject`) a buggy reporter
/// inverts the rewards for 400 outcomes, which drags the bandit to the worst
/// thresholds; honest trading then goes on with reviews after every 50.
async fn degrade(inject: bool) -> (Arc<Runtime>, Vec<Review>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let rt = start(dir.path()).await;
    let space = rt.spaces.get(MODULE).unwrap().clone();
    let market = Market::new(&space);
    let mut r = rng(9);
    trade(&rt, 1500, &mut r, honest(&space, &market));
    rt.checkpoint(MODULE).await.unwrap();
    trade(&rt, 300, &mut r, honest(&space, &market));
    rt.checkpoint(MODULE).await.unwrap();
    if inject {
        trade(&rt, 400, &mut r, |values, _| if market.mean_reward(&space, values) < -0.005 { 0.5 } else { -0.5 });
    } else {
        trade(&rt, 400, &mut r, honest(&space, &market));
    }
    let mut reviews = Vec::new();
    for _ in 0..16 {
        trade(&rt, 50, &mut r, honest(&space, &market));
        reviews.push(rt.review(MODULE).await.unwrap());
    }
    (rt, reviews, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_degradation_triggers_the_automatic_rollback() {
    let (rt, reviews, _dir) = degrade(true).await;
    let rolled: Vec<_> = reviews
        .iter()
        .filter_map(|r| match r {
            Review::RolledBack { meta, reason } => Some((meta, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(rolled.len(), 1, "exactly one automatic rollback: {reviews:?}");
    let (meta, reason) = rolled[0];
    assert_eq!((meta.kind, meta.rollback_to), (CheckpointKind::Rollback, Some(2)), "back to the last good generation");
    assert!(reason.starts_with("automatic rollback") && reason.contains("generation 2"), "{reason}");

    // Recorded where operators look: the event with its reason, the status
    // behind /metrics, and the checkpoint's note.
    let events = rt.store.list_learning_events(MODULE, 10).await.unwrap();
    let event = events.iter().find(|e| e.learning_event == LearningEventKind::Rollback).unwrap();
    assert_eq!(event.reason.as_deref(), Some(reason.as_str()));
    assert_eq!(rt.status.auto_rollbacks(MODULE), (1, Some(reason.clone())));
    let stored = rt.store.get_checkpoint(MODULE, meta.generation).await.unwrap().unwrap();
    assert_eq!(stored.note.as_deref(), Some(reason.as_str()));
    let good = rt.store.get_checkpoint(MODULE, 2).await.unwrap().unwrap();
    assert_eq!(stored.incumbents, good.incumbents, "serving generation 2's values again");

    // Served after the rollback, the restored policy earns what it did.
    let space = rt.spaces.get(MODULE).unwrap().clone();
    let market = Market::new(&space);
    let mut r = rng(10);
    trade(&rt, 300, &mut r, honest(&space, &market));
    let live = rt.agent.view(MODULE).unwrap().rolling;
    let reference = good.rolling_reward.unwrap();
    assert!(live.mean > reference.mean - 0.003, "recovered: {} vs generation 2's {}", live.mean, reference.mean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_run_without_the_injection_does_not_roll_back() {
    let (rt, reviews, _dir) = degrade(false).await;
    assert!(reviews.iter().all(|r| *r == Review::Nothing), "{reviews:?}");
    assert_eq!(rt.status.auto_rollbacks(MODULE).0, 0);
    assert_eq!(rt.store.latest_checkpoint(MODULE).await.unwrap().unwrap().generation, 2);
}

/// The A/B routes: start, status, the assignment on each decision, refusals
/// that name the bad value and change nothing, stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_test_routes_start_report_and_stop_a_test() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start(dir.path()).await;
    let router = served(&rt);

    let bad = [
        (
            json!({"module": MODULE, "challenger": "defaults", "split": 1.5}),
            "split must be within [0.01, 0.99], got 1.5",
        ),
        (json!({"module": MODULE, "challenger": {"parameters": {"nope.x": 0.5}}}), "unknown parameter \"nope.x\""),
        (
            json!({"module": MODULE, "challenger": {"parameters": {"session_confidence.asia_prime": 0.9}}}),
            "session_confidence.asia_prime = 0.9 is outside its range",
        ),
        (json!({"module": MODULE, "challenger": {"parameters": {"analysis_weights.momentum": 0.5}}}), "sum to"),
        (json!({"module": MODULE, "challenger": "champion"}), "got \"champion\""),
    ];
    for (body, message) in bad {
        let (status, reply) = send(&router, "POST", "/v1/ab-tests", body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {reply}");
        assert!(reply["error"].as_str().unwrap().contains(message), "{body}: {reply}");
    }
    let (status, reply) = send(&router, "POST", "/v1/ab-tests", json!({"module": MODULE, "challenger": 7})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{reply}");
    assert!(rt.agent.view(MODULE).unwrap().ab.is_none(), "refused requests start nothing");

    let start = json!({"module": MODULE, "challenger": "defaults", "split": 0.5, "min_outcomes": 50});
    let (status, reply) = send(&router, "POST", "/v1/ab-tests", start.clone()).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let test = reply["ab_test"]["test"].as_str().unwrap().to_string();
    assert_eq!(reply["ab_test"]["challenger"], "defaults");
    let (status, reply) = send(&router, "POST", "/v1/ab-tests", start).await;
    assert_eq!(status, StatusCode::CONFLICT, "{reply}");

    let mut arms = BTreeMap::new();
    for _ in 0..40 {
        let body = json!({"module": MODULE, "context": {"session": "asia_prime", "regime": "bullish"}});
        let (status, d) = send(&router, "POST", "/v1/decisions", body).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(d["ab_test"]["test"], test.as_str());
        *arms.entry(d["ab_test"]["arm"].as_str().unwrap().to_string()).or_insert(0) += 1;
        let outcome = json!({"decision_id": d["decision_id"], "reward": 0.01});
        assert_eq!(send(&router, "POST", "/v1/outcomes", outcome).await.0, StatusCode::OK);
    }
    assert!(arms.get("champion").is_some_and(|&n| n > 5) && arms.get("challenger").is_some_and(|&n| n > 5), "{arms:?}");
    rt.agent.flush();
    let (status, reply) = send(&router, "GET", "/v1/ab-tests/crypto", Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    let counted = reply["running"]["champion"]["outcomes"].as_f64().unwrap()
        + reply["running"]["challenger_arm"]["outcomes"].as_f64().unwrap();
    assert_eq!(counted, 40.0, "{reply}");

    let (status, reply) = send(&router, "DELETE", "/v1/ab-tests/crypto", Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["stopped"]["outcome"], "stopped");
    let (_, reply) = send(&router, "GET", "/v1/ab-tests/crypto", Value::Null).await;
    assert!(reply["running"].is_null() && reply["last"]["outcome"] == "stopped", "{reply}");
    assert_eq!(send(&router, "DELETE", "/v1/ab-tests/crypto", Value::Null).await.0, StatusCode::NOT_FOUND);
    let (_, d) = send(
        &router,
        "POST",
        "/v1/decisions",
        json!({"module": MODULE, "context": {"session": "asia_prime", "regime": "bullish"}}),
    )
    .await;
    assert!(d.get("ab_test").is_none(), "no assignment once the test is over: {d}");
}
