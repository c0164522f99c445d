//! A Firestore outage under a running `paramopt serve`: the emulator is
//! killed while decisions and outcomes stream in, then started again.
//!
//! Decisions and outcomes never touch the store (outcomes are durable in the
//! local journal), so every one must still answer 200; `/healthz` and
//! `/metrics` must show the fault while it lasts; once the store is back,
//! checkpoints resume and the newest holds every outcome acknowledged before
//! and during the outage.
//!
//! The test runs an emulator of its own (see [`emulator::Owned`]): killing
//! the shared one would break the store tests running alongside.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::store::emulator;
use crate::support::{self, http, http_json, sigterm, BIN};

const PROJECT: &str = "paramopt-outage";
const SESSIONS: [&str; 3] = ["asia_prime", "europe_prime", "us_prime"];
const REGIMES: [&str; 4] = ["bullish", "bearish", "sideways", "volatile"];
/// Long enough for a loaded 2-core machine; no assertion is about speed.
const PATIENCE: Duration = Duration::from_secs(60);

/// Drives decide + outcome pairs over all 12 contexts and counts the
/// outcomes the server acknowledged.
struct Driver {
    url: String,
    acknowledged: u64,
}

impl Driver {
    /// One decision and its outcome; both must answer 200, store or no store.
    fn pair(&mut self) {
        let i = self.acknowledged as usize;
        let ctx = json!({"session": SESSIONS[i % 3], "regime": REGIMES[(i / 3) % 4]});
        let body = json!({"module": "crypto", "context": ctx}).to_string();
        let (status, text) = http("POST", &format!("{}/v1/decisions", self.url), &body);
        assert_eq!(status, 200, "decision {i}: {text}");
        let decision: Value = serde_json::from_str(&text).unwrap();
        let reward = 0.01 * decision["parameters"]["session_confidence.asia_prime"].as_f64().unwrap() - 0.004;
        let body = json!({"decision_id": decision["decision_id"], "reward": reward}).to_string();
        let (status, text) = http("POST", &format!("{}/v1/outcomes", self.url), &body);
        assert_eq!(status, 200, "outcome {i}: {text}");
        self.acknowledged += 1;
    }

    fn pairs(&mut self, n: usize) {
        for _ in 0..n {
            self.pair();
        }
    }

    fn store_healthy(&self) -> bool {
        let health = http_json("GET", &format!("{}/healthz", self.url), "");
        assert_eq!(health["store"], "firestore", "{health}");
        health["store_healthy"].as_bool().unwrap_or_else(|| panic!("{health}"))
    }

    fn store_errors(&self) -> u64 {
        let (status, text) = http("GET", &format!("{}/metrics", self.url), "");
        assert_eq!(status, 200, "{text}");
        text.lines()
            .find_map(|l| l.strip_prefix("paramopt_store_errors_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no paramopt_store_errors_total in /metrics:\n{text}"))
    }

    /// Crypto's generations, newest first, as `(generation, outcomes)`.
    fn checkpoints(&self) -> Vec<(u64, u64)> {
        let list = http_json("GET", &format!("{}/v1/checkpoints?module=crypto", self.url), "");
        list["checkpoints"]
            .as_array()
            .unwrap_or_else(|| panic!("{list}"))
            .iter()
            .map(|c| (c["generation"].as_u64().unwrap(), c["outcomes"].as_u64().unwrap()))
            .collect()
    }
}

/// Polls `check` every 100 ms until it holds; fails with `what` and the last
/// observation after [`PATIENCE`].
fn eventually<T: std::fmt::Debug>(what: &str, mut observe: impl FnMut() -> T, check: impl Fn(&T) -> bool) -> T {
    let started = Instant::now();
    loop {
        let seen = observe();
        if check(&seen) {
            return seen;
        }
        assert!(started.elapsed() < PATIENCE, "{what}: still not so after {PATIENCE:?}; last seen {seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn decisions_go_on_through_a_firestore_outage_and_checkpoints_resume_with_nothing_lost() {
    let mut emulator = emulator::Owned::start();
    let host = emulator.host();
    let dir = tempfile::tempdir().unwrap();
    let (server, url) = support::serve(
        [
            "--store",
            // Each request to a dead emulator gives up within seconds, so the
            // outage shows in health soon after it starts.
            &format!("firestore://{PROJECT}?timeout_ms=2000"),
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--checkpoint-every-outcomes",
            "100",
            "--checkpoint-every-secs",
            "0.2",
            // The checkpointer's wait between failed attempts doubles up to
            // this: low, so the store's return is noticed within seconds.
            "--store-retry-max-secs",
            "1",
        ],
        &[("FIRESTORE_EMULATOR_HOST", &host)],
    );
    let mut driver = Driver { url, acknowledged: 0 };

    // Before: checkpoints land in Firestore and the store is healthy.
    driver.pairs(200);
    eventually(
        "a checkpoint holding outcomes is in the store",
        || driver.checkpoints(),
        |c| c.first().is_some_and(|&(_, outcomes)| outcomes > 0),
    );
    assert!(driver.store_healthy(), "healthy while the emulator is up");
    let errors_before = driver.store_errors();
    let at_stop = driver.acknowledged;

    // The outage: decisions and outcomes go on (`pair` asserts every 200)
    // until health shows the fault, and for a while after.
    emulator.stop();
    let started = Instant::now();
    while driver.store_healthy() {
        assert!(started.elapsed() < PATIENCE, "/healthz still says store_healthy after {PATIENCE:?} of outage");
        driver.pairs(10);
    }
    driver.pairs(300);
    let errors = driver.store_errors();
    assert!(errors > errors_before, "/metrics counts the failed checkpoints: {errors_before} before, {errors} now");
    eprintln!("outage: {} outcomes acknowledged during it, {errors} store errors", driver.acknowledged - at_stop);

    // The store comes back, empty (the emulator keeps data in memory only).
    emulator.restart();
    driver.pairs(50);
    let total = driver.acknowledged;
    // Nothing lost: the newest checkpoint holds every outcome acknowledged,
    // before and during the outage.
    let after = eventually(
        "after the outage, a checkpoint holding every acknowledged outcome",
        || driver.checkpoints(),
        |c| c.first().is_some_and(|&(_, outcomes)| outcomes == total),
    );
    eprintln!("after the outage: generations (newest first, with outcomes) {after:?}");
    assert!(
        after.iter().all(|&(_, outcomes)| outcomes > at_stop),
        "the emulator came back empty, so every generation holds outcomes of the outage: {after:?}"
    );
    assert!(driver.store_healthy(), "a successful checkpoint makes the store healthy again");

    // `paramopt inspect`, a separate process on the same store, agrees.
    let out = Command::new(BIN)
        .args(["--models", support::opaque_models(), "inspect", "--store", &format!("firestore://{PROJECT}")])
        .args(["list", "crypto", "--json"])
        .env("FIRESTORE_EMULATOR_HOST", &host)
        .output()
        .unwrap();
    assert!(out.status.success(), "inspect: {}", String::from_utf8_lossy(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["outcome_count"], total, "{list}");

    sigterm(server);
}
