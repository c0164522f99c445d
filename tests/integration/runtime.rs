//! The agent with its store: restart, journal replay and rollback on the
//! embedded store.

use paramopt::agent::Outcome;
use paramopt::runtime::{RollbackTarget, Runtime, RuntimeOptions};
use paramopt::space::Context;
use paramopt::store::CheckpointKind;
use rand::Rng;

use crate::support::{explicit_checkpoints, rng, spaces};

fn options(dir: &std::path::Path) -> RuntimeOptions {
    explicit_checkpoints(dir, 3)
}

fn stream(rt: &Runtime, n: usize, seed: u64) {
    let mut r = rng(seed);
    for _ in 0..n {
        let ctx = Context::from_index(r.random_range(0..Context::COUNT)).unwrap();
        let d = rt.agent.decide("crypto", ctx, &[], true).unwrap();
        let reward = 0.01 * d.values[0] - 0.004 + 0.002 * r.random::<f64>();
        rt.agent
            .report(
                &d.id.to_string(),
                Outcome { reward: Some(reward), traded: true, return_pct: None, evidence: Default::default() },
            )
            .unwrap();
        // Another module's outcomes in between: journal sequence numbers are
        // shared, so crypto's own have gaps that replay must not trip on.
        if r.random::<f64>() < 0.5 {
            let d = rt.agent.decide("stocks", ctx, &[], true).unwrap();
            rt.agent
                .report(
                    &d.id.to_string(),
                    Outcome { reward: Some(0.001), traded: true, return_pct: None, evidence: Default::default() },
                )
                .unwrap();
        }
    }
    rt.agent.flush();
}

fn learned(rt: &Runtime) -> (u64, paramopt::bandit::ModuleStats, Vec<Vec<f64>>) {
    let i = rt.agent.module_index("crypto").unwrap();
    rt.agent.with_writer(move |l| (l[i].outcomes, l[i].stats.clone(), l[i].incumbents.clone())).unwrap()
}

/// Outcomes after the last checkpoint live only in the journal; a restart
/// that never wrote a final checkpoint (as after kill -9) replays them, so the
/// learned state is exactly what it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_a_final_checkpoint_loses_no_acknowledged_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::start(spaces(false), options(dir.path())).await.unwrap();
    stream(&rt, 300, 1);
    let meta = rt.checkpoint("crypto").await.unwrap();
    assert_eq!((meta.generation, meta.outcome_count), (1, 300));
    stream(&rt, 200, 2);
    let before = learned(&rt);
    assert_eq!(before.0, 500);
    rt.agent.shutdown();
    drop(rt);

    let rt = Runtime::start(spaces(false), options(dir.path())).await.unwrap();
    let after = learned(&rt);
    assert_eq!(after.0, 500, "200 outcomes replayed from the journal on top of generation 1");
    assert_eq!(after.1, before.1, "the same posterior statistics");
    assert_eq!(after.2, before.2, "the same incumbents");
    let (_, generation) = rt.agent.greedy("crypto", Context::from_index(0).unwrap()).unwrap();
    assert_eq!(generation, 1);

    // A checkpoint now compacts the journal, and the next restart still agrees.
    // (Compaction keeps what the decision log has not stored yet: it catches up first.)
    rt.decision_log.flush().await;
    rt.checkpoint("crypto").await.unwrap();
    assert!(rt.journal.replay("crypto", 0).unwrap().is_empty(), "the journal was compacted");
    rt.agent.shutdown();
    drop(rt);
    let rt = Runtime::start(spaces(false), options(dir.path())).await.unwrap();
    assert_eq!(learned(&rt).1, before.1);
}

/// Rollback to a generation or to the defaults writes a new generation equal
/// to its target, serves it at once, and deletes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_makes_a_new_generation_equal_to_its_target() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::start(spaces(false), options(dir.path())).await.unwrap();
    stream(&rt, 400, 5);
    let g1 = rt.checkpoint("crypto").await.unwrap().generation;
    let at_g1 = learned(&rt);
    stream(&rt, 400, 6);
    let g2 = rt.checkpoint("crypto").await.unwrap().generation;
    assert_ne!(learned(&rt).1, at_g1.1);

    let back = rt.rollback("crypto", RollbackTarget::Generation(g1)).await.unwrap();
    assert_eq!(back.generation, g2 + 1);
    assert_eq!(back.kind, CheckpointKind::Rollback);
    assert_eq!(back.rollback_to, Some(g1));
    assert_eq!(back.parent, Some(g2));
    let now = learned(&rt);
    assert_eq!((now.0, &now.1, &now.2), (at_g1.0, &at_g1.1, &at_g1.2), "serving generation 1's state");
    let ctx = Context::from_index(4).unwrap();
    assert_eq!(rt.agent.greedy("crypto", ctx).unwrap().1, back.generation);

    let defaults = rt.rollback("crypto", RollbackTarget::Defaults).await.unwrap();
    let space = rt.spaces.get("crypto").unwrap().clone();
    for c in Context::all() {
        assert_eq!(rt.agent.greedy("crypto", c).unwrap().0, space.defaults());
    }
    let history: Vec<u64> = rt.store.list_checkpoints("crypto").await.unwrap().iter().map(|m| m.generation).collect();
    assert_eq!(history, vec![defaults.generation, back.generation, g2, g1], "newest first, nothing deleted");
    let events = rt.store.list_learning_events("crypto", 10).await.unwrap();
    assert_eq!(events.len(), 4);

    // Outcomes learned before the rollback are not replayed onto it at restart.
    rt.agent.shutdown();
    drop(rt);
    let rt = Runtime::start(spaces(false), options(dir.path())).await.unwrap();
    assert_eq!(learned(&rt).0, 0);
    assert_eq!(rt.agent.greedy("crypto", ctx).unwrap().0, space.defaults());

    let err = rt.rollback("crypto", RollbackTarget::Generation(99)).await.unwrap_err().to_string();
    assert!(err.contains("99"), "{err}");
}

fn replica_options(dir: &std::path::Path, store: &str) -> RuntimeOptions {
    RuntimeOptions { store: store.to_string(), sync_every_secs: Some(3600.0), ..options(dir) }
}

/// One outcome of the shared stream: context, the arms chosen, the reward.
type Event = (usize, Vec<usize>, f64);

/// Two replicas on one Firestore (the emulator) each learn half of a stream;
/// after they sync, each holds the statistics of one agent that learned the
/// whole stream. Each replica gets whole contexts, as behind a balancer that
/// routes by session and regime: arms learn advantages over their cell's
/// running mean, which is the same only if one process sees a cell's rewards
/// in order. Forgetting is off, so the increments add up exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_firestore_sync_to_the_statistics_of_one_agent() {
    let host = crate::store::emulator::host();
    let project = "paramopt-replicas";
    crate::store::emulator::clear(&host, project);
    let url = format!("firestore://{project}?emulator={host}");
    // All forgetting off: the arms' discount and the baseline's window.
    let forgetting_off =
        [("discount = 0.9993", "discount = 1.0"), ("baseline_window = 100.0", "baseline_window = 1e300")];
    let spaces = crate::support::spaces_with(false, &forgetting_off);
    let (dir_a, dir_b, dir_c) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Runtime::start(spaces.clone(), replica_options(dir_a.path(), &url)).await.unwrap();
    let b = Runtime::start(spaces.clone(), replica_options(dir_b.path(), &url)).await.unwrap();
    let whole = Runtime::start(spaces.clone(), options(dir_c.path())).await.unwrap();
    let index = whole.agent.module_index("crypto").unwrap();
    let arms = whole
        .agent
        .with_writer(move |l| l[index].space.params.iter().map(|p| p.arms.len()).collect::<Vec<_>>())
        .unwrap();

    let mut r = rng(21);
    let events: Vec<Event> = (0..3000)
        .map(|_| {
            let ctx = r.random_range(0..Context::COUNT);
            let chosen: Vec<usize> = arms.iter().map(|&k| r.random_range(0..k)).collect();
            let reward = 0.004 * chosen[0] as f64 - 0.01 + 0.01 * r.random::<f64>();
            (ctx, chosen, reward)
        })
        .collect();
    let learn = |rt: &Runtime, events: Vec<Event>| {
        let i = rt.agent.module_index("crypto").unwrap();
        rt.agent
            .with_writer(move |l| {
                for (ctx, chosen, reward) in events {
                    l[i].learn(ctx, &chosen, reward);
                }
            })
            .unwrap()
    };
    let (even, odd): (Vec<Event>, Vec<Event>) = events.iter().cloned().partition(|e| e.0 % 2 == 0);
    // In rounds, with syncs in between and both replicas syncing at once.
    for round in 0..3 {
        let part = |v: &[Event]| v[v.len() * round / 3..v.len() * (round + 1) / 3].to_vec();
        learn(&a, part(&even));
        learn(&b, part(&odd));
        let (ra, rb) = tokio::join!(a.sync("crypto"), b.sync("crypto"));
        ra.unwrap();
        rb.unwrap();
    }
    // The last sync of each gathers what the other merged after it.
    a.sync("crypto").await.unwrap();
    b.sync("crypto").await.unwrap();
    learn(&whole, events);

    let stats = |rt: &Runtime| {
        let i = rt.agent.module_index("crypto").unwrap();
        rt.agent.with_writer(move |l| l[i].stats.clone()).unwrap()
    };
    let expected = stats(&whole);
    for (name, rt) in [("a", &a), ("b", &b)] {
        let got = stats(rt);
        let pairs = got
            .cells
            .iter()
            .flatten()
            .flatten()
            .chain(got.pool.iter().flatten())
            .zip(expected.cells.iter().flatten().flatten().chain(expected.pool.iter().flatten()));
        let mut compared = 0;
        for (g, e) in pairs {
            assert!(
                (g.n - e.n).abs() < 1e-9 && (g.mean - e.mean).abs() < 1e-9 && (g.m2 - e.m2).abs() < 1e-9,
                "replica {name}: {g:?} vs one agent's {e:?}"
            );
            compared += 1;
        }
        assert_eq!(compared, (Context::COUNT + 1) * arms.iter().sum::<usize>(), "every cell's and the pool's arms");
        for (g, e) in got.baselines.iter().zip(&expected.baselines) {
            assert!((g.n - e.n).abs() < 1e-9 && (g.mean - e.mean).abs() < 1e-9, "replica {name} baseline");
        }
        assert_eq!(got.cell_outcomes, expected.cell_outcomes);
    }
    let total: f64 = expected.cell_outcomes.iter().sum();
    assert_eq!(total, 3000.0);
}

/// Syncing is for replicas: a process started without a sync interval says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_process_refuses_to_sync() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::start(spaces(false), options(dir.path())).await.unwrap();
    let err = rt.sync("crypto").await.unwrap_err();
    assert!(err.to_string().contains("not set up as a replica"), "{err}");
}

/// Trades that outcomes carry reach the store through the decision log's
/// batches, each with its decision's parameters and context, and `/metrics`
/// counts them; none is lost at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcomes_trade_reaches_the_store_and_is_counted() {
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::start(spaces(false), options(dir.path())).await.unwrap();
    let router = crate::support::served(&rt);
    let mut ids = Vec::new();
    for i in 0..300 {
        // Trading code sends what it has: an undeclared feature, and trade fields of its own.
        let body = json!({"module": "stocks", "context": {"session": "us_prime", "regime": "bullish"},
                          "features": {"technical_confidence": 0.6, "rsi_14": 40 + i % 20}});
        let (status, decision) = crate::support::send(&router, "POST", "/v1/decisions", body).await;
        assert_eq!(status, 200, "{decision}");
        assert_eq!(decision["ignored_features"], json!(["rsi_14"]));
        let id = decision["decision_id"].as_str().unwrap().to_string();
        let trade = json!({"symbol": "SPY", "side": "BUY", "return_pct": 0.0001 * i as f64,
                           "instrument": "SPY-ETF", "hold_duration_hours": i, "fills": [[1, 2], [3, 4]]});
        let (status, reply) = crate::support::send(
            &router,
            "POST",
            "/v1/outcomes",
            json!({"decision_id": id, "traded": true, "trade": trade}),
        )
        .await;
        assert_eq!((status.as_u16(), &reply["accepted"]), (200, &json!(true)), "{reply}");
        ids.push(id);
    }
    rt.shutdown().await;

    let trades = rt.store.list_trades("stocks", 1_000).await.unwrap();
    let mut stored: Vec<String> = trades.iter().map(|t| t.decision_id.clone().unwrap()).collect();
    stored.sort();
    ids.sort();
    assert_eq!(stored, ids, "every acknowledged outcome's trade, once");
    let space = rt.spaces.get("stocks").unwrap();
    for t in &trades {
        assert!(space.params.iter().all(|p| t.entry_parameters[&p.full_name].is_f64()), "{:?}", t.entry_parameters);
        assert_eq!(t.market_context["session"], json!("us_prime"));
        assert_eq!(t.module_fields.get("instrument"), Some("\"SPY-ETF\""));
        assert_eq!(t.module_fields.get("fills"), Some("[[1,2],[3,4]]"));
    }
    // The undeclared feature is kept with its decision in the decision log, by name.
    let log = rt.store.list_decisions("stocks", 0.0, 1_000).await.unwrap();
    assert_eq!(log.len(), 300);
    for d in &log {
        assert_eq!(d.features.keys().collect::<Vec<_>>(), ["technical_confidence"]);
        let rsi = d.ignored_features["rsi_14"];
        assert!((40.0..60.0).contains(&rsi), "{:?}", d.ignored_features);
    }
    let metrics = {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let req = axum::http::Request::builder().uri("/metrics").body(axum::body::Body::empty()).unwrap();
        let res = router.clone().oneshot(req).await.unwrap();
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    };
    assert!(metrics.contains("paramopt_log_records_total{kind=\"trade\"} 300\n"), "{metrics}");
    assert!(metrics.contains("paramopt_log_dropped_total 0\n"), "{metrics}");
}

/// A background task that dies shows in `/healthz` (503, naming it) instead
/// of a stale "ok"; a healthy runtime answers 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_dies_shows_in_healthz() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::start(spaces(false), options(dir.path())).await.unwrap();
    let router = crate::support::served(&rt);
    let (status, body) = crate::support::send(&router, "GET", "/healthz", serde_json::Value::Null).await;
    assert_eq!(status, 200, "{body}");
    rt.status.tasks.spawn(&tokio::runtime::Handle::current(), "checkpointer", async {
        panic!("the disk is full");
    });
    let mut answer = (status, body);
    for _ in 0..400 {
        answer = crate::support::send(&router, "GET", "/healthz", serde_json::Value::Null).await;
        if answer.0 != 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(answer.0, 503, "{}", answer.1);
    let error = answer.1["error"].as_str().unwrap();
    assert!(error.contains("checkpointer") && error.contains("the disk is full"), "{error}");
    rt.status.tasks.stop();
    rt.shutdown().await;
}
