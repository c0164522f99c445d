//! The agent with its store: restart, journal replay and rollback on the
//! embedded store.

use paramopt::agent::Outcome;
use paramopt::runtime::{RollbackTarget, Runtime, RuntimeOptions};
use paramopt::space::Context;
use paramopt::store::CheckpointKind;
use rand::Rng;

use crate::support::{rng, spaces};

fn options(dir: &std::path::Path) -> RuntimeOptions {
    RuntimeOptions {
        store: format!("local://{}", dir.join("store").display()),
        data_dir: dir.to_path_buf(),
        seed: Some(3),
        // Only explicit checkpoints in these tests.
        checkpoint_every_outcomes: u64::MAX,
        checkpoint_every_secs: f64::INFINITY,
        ..Default::default()
    }
}

fn stream(rt: &Runtime, n: usize, seed: u64) {
    let mut r = rng(seed);
    for _ in 0..n {
        let ctx = Context::from_index(r.random_range(0..Context::COUNT)).unwrap();
        let d = rt.agent.decide("crypto", ctx, &[], true).unwrap();
        let reward = 0.01 * d.values[0] - 0.004 + 0.002 * r.random::<f64>();
        rt.agent.report(&d.id.to_string(), Outcome { reward: Some(reward), traded: true, return_pct: None }).unwrap();
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
