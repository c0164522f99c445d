//! The store conformance suite: one set of tests, run against the local store
//! (a temporary directory) and against the official Firestore emulator.
//!
//! The emulator: `FIRESTORE_EMULATOR_HOST` when set (as `scripts/test` does);
//! otherwise [`emulator::host`] starts one for this test process on a free
//! port, under a watchdog that kills it when this process is gone. If no
//! emulator can be had the Firestore tests fail; they never skip.

use std::sync::Arc;
use std::time::Instant;

use paramopt::agent::{AbArm, AbAssignment, ModuleLearner};
use paramopt::bandit::{ModuleStats, Stats};
use paramopt::space::{Context, Regime, Session, Spaces};
use paramopt::store::checkpoint::{self, FORMAT_VERSION};
use paramopt::store::{
    open_store, Checkpoint, CheckpointKind, DecisionLogRecord, FirestoreOptions, FirestoreStore, LearningEvent,
    LearningEventKind, LocalStore, OptimizationData, ParameterEffectiveness, PerformancePoint, Store, StoreError,
    TradeRecord,
};
use rand::{Rng, RngCore};
use serde_json::json;
use tempfile::TempDir;

use crate::support;

pub mod emulator {
    //! One Firestore emulator per test process, started on first use.

    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    const DEFAULT_BINARY: &str = "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator";

    static HOST: OnceLock<Result<String, String>> = OnceLock::new();

    /// `HOST:PORT` of a running emulator; panics, naming the cause, if none
    /// can be had.
    pub fn host() -> String {
        HOST.get_or_init(|| match std::env::var("FIRESTORE_EMULATOR_HOST") {
            Ok(h) if !h.trim().is_empty() => {
                wait_ready(h.trim(), Duration::from_secs(60)).map(|_| h.trim().to_string())
            }
            _ => start(),
        })
        .clone()
        .unwrap_or_else(|e| panic!("no Firestore emulator for the store conformance tests: {e}"))
    }

    /// Deletes every document of `project`, so a reused emulator starts clean.
    pub fn clear(host: &str, project: &str) {
        let path = format!("/emulator/v1/projects/{project}/databases/(default)/documents");
        let (status, body) =
            http(host, "DELETE", &path).unwrap_or_else(|e| panic!("clearing {project} on {host}: {e}"));
        assert!(status == 200, "clearing {project} on {host}: HTTP {status} {body}");
    }

    fn start() -> Result<String, String> {
        let port = free_port()?;
        let (_watchdog, log) = spawn(port)?;
        let host = format!("127.0.0.1:{port}");
        eprintln!("started a Firestore emulator at {host} (log {})", log.display());
        Ok(host)
    }

    /// A free port below the kernel's ephemeral range. The emulator is
    /// restarted on its port while clients keep retrying it, and a port in
    /// that range can meanwhile be taken as the local end of an outgoing
    /// connection (a retry can even connect to itself), so the restart would
    /// find it in use.
    fn free_port() -> Result<u16, String> {
        let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(32768);
        let start = 10_000 + (std::process::id() as u16 % 1000) * 7;
        (start..low)
            .chain(10_000..start)
            .find(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
            .ok_or_else(|| format!("finding a free port: none below {low}"))
    }

    /// Starts an emulator on `port` and waits until it answers. Returns the
    /// watchdog, the leader of the process group that holds the emulator,
    /// and the emulator's log.
    fn spawn(port: u16) -> Result<(Child, PathBuf), String> {
        let binary = std::env::var("FIRESTORE_EMULATOR_BIN").unwrap_or_else(|_| DEFAULT_BINARY.to_string());
        if !Path::new(&binary).exists() {
            return Err(format!(
                "{binary} does not exist; install google-cloud-cli-firestore-emulator or set FIRESTORE_EMULATOR_HOST"
            ));
        }
        let host = format!("127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("paramopt-firestore-emulator-{port}.log"));
        let log_file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        // The watchdog shell leads a new process group holding the emulator
        // (a script that starts java). When this test process is gone, however
        // it ended, the loop ends and `kill 0` takes the whole group down.
        let watchdog = r#"parent=$1; shift; "$@" & child=$!
            while kill -0 "$parent" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 1; done
            kill -TERM 0"#;
        let child = Command::new("sh")
            .args(["-c", watchdog, "sh", &std::process::id().to_string(), &binary, "start"])
            .arg("--host=127.0.0.1")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("starting {binary}: {e}"))?;
        wait_ready(&host, Duration::from_secs(120)).map_err(|e| {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: String =
                tail.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            format!("{e}; emulator log {}:\n{tail}", log.display())
        })?;
        Ok((child, log))
    }

    /// An emulator of one test's own, on a port of its own, that the test
    /// stops and starts again (the shared one serves other tests meanwhile).
    /// Its data lives in memory: a restart comes back empty.
    pub struct Owned {
        port: u16,
        watchdog: Option<Child>,
    }

    impl Owned {
        /// Starts one on a free port; panics, naming the cause, if it cannot.
        pub fn start() -> Owned {
            let port = free_port().unwrap_or_else(|e| panic!("{e}"));
            let mut owned = Owned { port, watchdog: None };
            owned.restart();
            owned
        }

        pub fn host(&self) -> String {
            format!("127.0.0.1:{}", self.port)
        }

        /// Kills the emulator outright (SIGKILL to its whole process group,
        /// as a crash or a lost host would) and waits until its port refuses
        /// connections.
        pub fn stop(&mut self) {
            let Some(mut watchdog) = self.watchdog.take() else { return };
            // The watchdog leads the group, so its pid is the group id.
            // SAFETY: kill(2) on a process group this test created.
            unsafe { libc::kill(-(watchdog.id() as i32), libc::SIGKILL) };
            let _ = watchdog.wait();
            let started = Instant::now();
            while TcpStream::connect(self.host()).is_ok() {
                assert!(started.elapsed() < Duration::from_secs(60), "the emulator at {} did not go away", self.host());
                std::thread::sleep(Duration::from_millis(100));
            }
        }

        /// Starts it again on the same port, empty, and waits until it answers.
        pub fn restart(&mut self) {
            self.stop();
            let (watchdog, log) =
                spawn(self.port).unwrap_or_else(|e| panic!("no Firestore emulator on port {}: {e}", self.port));
            eprintln!("started a Firestore emulator at {} (log {})", self.host(), log.display());
            self.watchdog = Some(watchdog);
        }
    }

    impl Drop for Owned {
        fn drop(&mut self) {
            if let Some(mut watchdog) = self.watchdog.take() {
                // SAFETY: as in `stop`.
                unsafe { libc::kill(-(watchdog.id() as i32), libc::SIGKILL) };
                let _ = watchdog.wait();
            }
        }
    }

    fn wait_ready(host: &str, within: Duration) -> Result<(), String> {
        let started = Instant::now();
        loop {
            match http(host, "GET", "/") {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) if started.elapsed() > within => {
                    return Err(format!("{host} answers HTTP {status} {body}"))
                }
                Err(e) if started.elapsed() > within => {
                    return Err(format!("{host} did not answer within {within:?}: {e}"))
                }
                _ => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }

    /// A minimal HTTP/1.1 request, enough for the emulator's admin endpoints.
    /// The emulator keeps connections open, so the body is read by its length.
    fn http(host: &str, method: &str, path: &str) -> Result<(u16, String), String> {
        let mut s = TcpStream::connect(host).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
        write!(s, "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let status = head
                        .split_whitespace()
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .ok_or(format!("no status in {head:?}"))?;
                    return Ok((status, String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).trim().to_string()));
                }
            }
            let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(format!("connection closed after {} bytes", buf.len()));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// One backend under test: a store handle, and how to open another handle
/// onto the same data (another replica).
pub struct Backend {
    pub store: Arc<dyn Store>,
    pub url: String,
    _dir: Option<TempDir>,
}

impl Backend {
    pub async fn local() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("local://{}", dir.path().display());
        Backend { store: open_store(&url).await.unwrap(), url, _dir: Some(dir) }
    }

    /// A Firestore backend on a project of its own, cleared first.
    pub async fn firestore(test: &str) -> Backend {
        let host = emulator::host();
        let project = format!("paramopt-{}", test.replace('_', "-"));
        emulator::clear(&host, &project);
        let url = format!("firestore://{project}?emulator={host}");
        Backend { store: open_store(&url).await.unwrap(), url, _dir: None }
    }

    pub async fn another(&self) -> Arc<dyn Store> {
        open_store(&self.url).await.unwrap()
    }
}

/// Each test function runs once per backend.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::local().await).await
                }
            )*
        }
        mod firestore {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::firestore(stringify!($name)).await).await
                }
            )*
        }
    };
}

conformance!(
    checkpoints_round_trip_newest_first,
    generations_stay_unique_under_concurrent_writers,
    a_checkpoint_over_a_mebibyte_round_trips_bit_identically,
    the_v1_fixture_stores_and_loads,
    trades_round_trip_with_their_decision_context,
    trades_are_written_in_batches_across_modules,
    a_trades_own_fields_are_stored_exactly_as_sent,
    parameter_effectiveness_rows_upsert,
    learning_events_list_newest_first,
    optimization_data_is_replaced,
    decision_log_round_trips_and_settles,
    concurrent_merges_lose_no_increment,
    health_reports_the_backend,
    crypto_checkpoint_timings,
    retention_keeps_the_newest_and_marked_checkpoints_and_recent_records,
);

fn crypto_learner(outcomes: usize, seed: u64) -> ModuleLearner {
    let space = Spaces::builtin().get("crypto").unwrap().clone();
    let mut learner = ModuleLearner::new(space.clone(), 1).unwrap();
    let mut rng = support::rng(seed);
    for _ in 0..outcomes {
        let ctx = rng.random_range(0..Context::COUNT);
        let arms: Vec<usize> = space.params.iter().map(|p| rng.random_range(0..p.arms.len())).collect();
        learner.learn(ctx, &arms, rng.random_range(-0.02..0.03));
    }
    learner
}

fn crypto_checkpoint(outcomes: usize, seed: u64) -> Checkpoint {
    Checkpoint::from_learner(&crypto_learner(outcomes, seed), CheckpointKind::Checkpoint, None, None, 1_750_000_000.5)
}

async fn checkpoints_round_trip_newest_first(b: Backend) {
    let s = &b.store;
    assert!(s.latest_checkpoint("crypto").await.unwrap().is_none());
    assert!(s.list_checkpoints("crypto").await.unwrap().is_empty());
    let mut written = Vec::new();
    for i in 0..3u64 {
        let mut cp = crypto_checkpoint(20 * (i as usize + 1), i);
        cp.generation = 999; // ignored: the store allocates
        cp.parent = (i > 0).then_some(i);
        cp.created_at += i as f64;
        if i == 2 {
            cp.kind = CheckpointKind::Rollback;
            cp.rollback_to = Some(1);
            cp.note = Some("rollback to 1".into());
            cp.policy_weights = Some(vec![7, 0, 255, 1]);
        }
        let generation = s.put_checkpoint(&cp).await.unwrap();
        assert_eq!(generation, i + 1, "the first generations are 1, 2, 3");
        cp.generation = generation;
        written.push(cp);
    }
    for cp in &written {
        assert_eq!(s.get_checkpoint("crypto", cp.generation).await.unwrap().as_ref(), Some(cp));
    }
    assert_eq!(s.latest_checkpoint("crypto").await.unwrap().as_ref(), Some(&written[2]));
    let listed = s.list_checkpoints("crypto").await.unwrap();
    let expected: Vec<_> = written.iter().rev().map(|c| c.meta()).collect();
    assert_eq!(listed, expected, "newest first, with the header of each");
    assert_eq!(listed[0].kind, CheckpointKind::Rollback);
    assert_eq!(listed[0].format_version, FORMAT_VERSION);
    assert!(s.get_checkpoint("crypto", 4).await.unwrap().is_none());
    assert!(s.list_checkpoints("stocks").await.unwrap().is_empty(), "modules are separate");
    // Restoring gives the learner's state back.
    let space = Spaces::builtin().get("crypto").unwrap().clone();
    let restored = s.latest_checkpoint("crypto").await.unwrap().unwrap().to_learner(space, 1).unwrap();
    assert_eq!(restored.stats, written[2].stats);
    assert_eq!(restored.generation, 3);
    let err = s.get_checkpoint("../etc", 1).await.unwrap_err().to_string();
    assert!(err.contains("\"../etc\""), "{err}");
}

async fn generations_stay_unique_under_concurrent_writers(b: Backend) {
    let other = b.another().await;
    let cp = crypto_checkpoint(5, 1);
    let write_five = |s: Arc<dyn Store>, cp: Checkpoint| async move {
        let mut gens = Vec::new();
        for _ in 0..5 {
            gens.push(s.put_checkpoint(&cp).await.unwrap());
        }
        gens
    };
    let (a, c) = tokio::join!(
        tokio::spawn(write_five(b.store.clone(), cp.clone())),
        tokio::spawn(write_five(other, cp.clone()))
    );
    let (a, c) = (a.unwrap(), c.unwrap());
    assert!(a.windows(2).all(|w| w[0] < w[1]) && c.windows(2).all(|w| w[0] < w[1]), "{a:?} {c:?}");
    let mut all: Vec<u64> = a.iter().chain(&c).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=10).collect::<Vec<_>>(), "every writer got its own generations");
    let listed: Vec<u64> = b.store.list_checkpoints("crypto").await.unwrap().iter().map(|m| m.generation).collect();
    assert_eq!(listed, (1..=10).rev().collect::<Vec<_>>());
}

/// A checkpoint of about 4 MiB: a wide module's statistics plus 1 MiB of
/// policy weights, with random bits in every float.
fn big_checkpoint() -> Checkpoint {
    let (contexts, params, arms) = (12, 16, 120);
    let mut rng = support::rng(42);
    let mut stats = ModuleStats::new(contexts, &vec![arms; params]);
    let random = |rng: &mut rand_pcg::Pcg64Mcg| Stats {
        n: rng.random_range(0.0..1e4),
        mean: rng.random_range(-0.1..0.1),
        m2: f64::from_bits(rng.next_u64() >> 2), // arbitrary finite bit patterns
    };
    for s in stats.cells.iter_mut().flatten().flatten().chain(stats.pool.iter_mut().flatten()) {
        *s = random(&mut rng);
    }
    stats.cell_outcomes.iter_mut().for_each(|c| *c = rng.random());
    let mut weights = vec![0u8; 1 << 20];
    rng.fill_bytes(&mut weights);
    Checkpoint {
        format_version: FORMAT_VERSION,
        module: "wide".into(),
        generation: 0,
        parent: None,
        created_at: 1_750_000_000.0,
        outcome_count: 123_456,
        mean_reward: 0.1 + 0.2,
        kind: CheckpointKind::Checkpoint,
        rollback_to: None,
        note: None,
        reward_sum: 37036.8,
        parameter_names: (0..params).map(|p| format!("group.param_{p}")).collect(),
        arms: (0..params).map(|_| (0..arms).map(|k| k as f64 / arms as f64).collect()).collect(),
        contexts: Context::all().map(|c| c.to_string()).collect(),
        stats,
        incumbents: (0..contexts).map(|_| (0..params).map(|_| rng.random()).collect()).collect(),
        policy_weights: Some(weights),
        journal_seq: 77,
        replica: None,
        ab_test: None,
        rolling_reward: Some(random(&mut rng)),
        rolling_by_context: Some((0..contexts).map(|_| random(&mut rng)).collect()),
        counterfactual: None,
        loss_ledger: Some(paramopt::agent::LossLedger {
            exact: -0.1 + 0.2 * rng.random::<f64>(),
            estimated_n: 3.0,
            estimated_realised: 0.01,
            worst_explored: -0.04,
            ..Default::default()
        }),
    }
}

async fn a_checkpoint_over_a_mebibyte_round_trips_bit_identically(b: Backend) {
    let mut cp = big_checkpoint();
    let size = checkpoint::encode(&cp).unwrap().len();
    assert!(size > 3 << 20, "the test checkpoint is {size} bytes, meant to be well over Firestore's 1 MiB");
    let t = Instant::now();
    cp.generation = b.store.put_checkpoint(&cp).await.unwrap();
    let wrote = t.elapsed();
    let t = Instant::now();
    let back = b.store.get_checkpoint("wide", cp.generation).await.unwrap().unwrap();
    eprintln!("{}: {size}-byte checkpoint written in {wrote:?}, read in {:?}", b.store.kind(), t.elapsed());
    let bits = |c: &Checkpoint| -> Vec<u64> {
        c.stats
            .cells
            .iter()
            .flatten()
            .flatten()
            .chain(c.stats.pool.iter().flatten())
            .flat_map(|s| [s.n, s.mean, s.m2])
            .map(f64::to_bits)
            .collect()
    };
    assert_eq!(bits(&back), bits(&cp), "every statistic reads back bit for bit");
    assert_eq!(back.policy_weights, cp.policy_weights);
    assert_eq!(back, cp);
    assert_eq!(b.store.latest_checkpoint("wide").await.unwrap().unwrap(), cp);
}

const V1_FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/checkpoint-v1.json");

/// What `checkpoint-v1.json` was generated from, with
/// `PARAMOPT_WRITE_V1_FIXTURE=1 cargo test --test integration v1_fixture`, and
/// committed. Only ever regenerated while version 1 is current; after that the
/// file is frozen and a v2 fixture is added beside it.
fn v1_fixture_source() -> Checkpoint {
    let mut cp = Checkpoint::from_learner(
        &crypto_learner(60, 7),
        CheckpointKind::Promotion,
        Some(6),
        Some(b"safetensors-stand-in\x00\x01\x02".to_vec()),
        1_748_687_400.25,
    );
    cp.generation = 7;
    cp.note = Some("v1 fixture".into());
    cp
}

#[test]
fn the_v1_fixture_keeps_loading() {
    let path = std::path::Path::new(V1_FIXTURE);
    if std::env::var_os("PARAMOPT_WRITE_V1_FIXTURE").is_some() {
        assert_eq!(FORMAT_VERSION, 1, "version 1 is frozen: never regenerate its fixture from a later format");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut doc: serde_json::Value =
            serde_json::from_slice(&checkpoint::encode(&v1_fixture_source()).unwrap()).unwrap();
        doc["format_version"] = 1.into();
        std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
    }
    let cp = checkpoint::decode(&std::fs::read(path).unwrap(), V1_FIXTURE).unwrap();
    assert_eq!(cp.format_version, FORMAT_VERSION, "loaded and lifted to the current version");
    assert_eq!(
        (cp.module.as_str(), cp.generation, cp.parent, cp.kind),
        ("crypto", 7, Some(6), CheckpointKind::Promotion)
    );
    assert_eq!((cp.outcome_count, cp.created_at), (60, 1_748_687_400.25));
    assert_eq!(cp.policy_weights.as_deref(), Some(&b"safetensors-stand-in\x00\x01\x02"[..]));
    assert_eq!(cp.contexts.len(), 12);
    assert_eq!(cp.stats.cells.len(), 12);
    assert_eq!(cp.incumbents.len(), 12);
    assert_eq!(cp.parameter_names.len(), cp.arms.len());
    assert!(cp.parameter_names.iter().any(|n| n == "session_confidence.asia_prime"));
    let learned: f64 = cp.stats.cell_outcomes.iter().sum();
    assert!(learned > 0.0 && (cp.reward_sum / 60.0 - cp.mean_reward).abs() < 1e-12);
}

async fn the_v1_fixture_stores_and_loads(b: Backend) {
    let mut cp = checkpoint::decode(&std::fs::read(V1_FIXTURE).unwrap(), V1_FIXTURE).unwrap();
    cp.generation = b.store.put_checkpoint(&cp).await.unwrap();
    assert_eq!(b.store.latest_checkpoint("crypto").await.unwrap(), Some(cp));
}

async fn trades_round_trip_with_their_decision_context(b: Backend) {
    let agent = support::agent(3);
    let space = agent.space("crypto").unwrap().clone();
    let ctx = Context::new(Session::AsiaPrime, Regime::Bullish);
    let mut trades = Vec::new();
    for i in 0..3 {
        let d = agent.decide("crypto", ctx, &[("momentum_score", 0.72), ("volume_score", 0.63)], true).unwrap();
        let mut t = TradeRecord {
            created_at: 1_750_000_000.0 + i as f64,
            symbol: Some("BTCUSD".into()),
            side: Some("BUY".into()),
            quantity: Some(0.044),
            price: Some(45000.0),
            strategy: Some("crypto_asia_momentum".into()),
            confidence: Some(0.67),
            profit_loss: Some(1250.5),
            exit_reason: Some("intelligent_exit".into()),
            return_pct: Some(0.0123),
            reward: Some(0.0123),
            exit_analysis: json!({"hold_duration_hours": 4.2, "final_decision_reason": "major_profit_protection"})
                .as_object()
                .unwrap()
                .clone(),
            parameter_performance: json!({"alternative_outcomes": {"threshold_0_60": "would_have_triggered"}})
                .as_object()
                .unwrap()
                .clone(),
            ..Default::default()
        };
        t.fill_from_decision(&d, &space);
        assert_eq!(t.entry_parameters.len(), space.params.len());
        assert_eq!(t.entry_parameters["session_confidence.asia_prime"], json!(d.values[0]));
        assert_eq!(t.module_specific_params["momentum_score"], json!(0.72));
        assert_eq!(t.market_context["session"], json!("asia_prime"));
        b.store.put_trade(&t).await.unwrap();
        trades.push(t);
    }
    // A retried write of the same decision's trade does not duplicate it.
    b.store.put_trade(&trades[1]).await.unwrap();
    let mut anonymous = trades[0].clone();
    anonymous.decision_id = None;
    anonymous.created_at -= 10.0;
    b.store.put_trade(&anonymous).await.unwrap();

    let listed = b.store.list_trades("crypto", 10).await.unwrap();
    let expected: Vec<TradeRecord> = trades.iter().rev().cloned().chain([anonymous]).collect();
    assert_eq!(listed, expected, "newest first, each once, every field intact");
    assert_eq!(b.store.list_trades("crypto", 2).await.unwrap(), expected[..2]);
    assert!(b.store.list_trades("crypto", 0).await.unwrap().is_empty());
    assert!(b.store.list_trades("stocks", 10).await.unwrap().is_empty());
}

/// The module's own trade fields, of every JSON type (arrays of arrays, which
/// Firestore cannot hold natively; integers past 64 bits; nulls), come back
/// byte for byte, in batches and one at a time.
async fn a_trades_own_fields_are_stored_exactly_as_sent(b: Backend) {
    let agent = support::agent(5);
    let ctx = Context::new(Session::UsPrime, Regime::Sideways);
    let sent = r#"{"symbol": "ETHUSD", "return_pct": -0.004, "threshold": 0.6, "instrument": "ETH-PERP",
        "direction": "short", "position_size": 0.25, "hold_duration_hours": 4.2,
        "orders": [{"id": 1, "fills": [[3000.5, 0.01], [3001, 0.034]]}],
        "meta": {"venue": {"name": "x", "tier": null}, "tags": ["a", "b"], "retry": false},
        "note": null, "live": true, "big_id": 123456789012345678901234567890, "max_u64": 18446744073709551615,
        "min_i64": -9223372036854775808, "tiny": 5e-324, "unicode": "€ ✓", "empty_obj": {}, "empty_list": []}"#;
    let mut trades = Vec::new();
    for i in 0..3 {
        let d = agent.decide("crypto", ctx, &[("momentum_score", 0.4)], true).unwrap();
        let mut t = TradeRecord::from_fields(serde_json::from_str(sent).unwrap()).unwrap();
        t.created_at = 1_760_000_000.0 + i as f64;
        t.fill_from_decision(&d, agent.space("crypto").unwrap());
        trades.push(t);
    }
    assert_eq!(trades[0].module_fields.len(), 16);
    b.store.put_trades(&trades[..2]).await.unwrap();
    b.store.put_trade(&trades[2]).await.unwrap();
    let listed = b.store.list_trades("crypto", 10).await.unwrap();
    let expected: Vec<TradeRecord> = trades.iter().rev().cloned().collect();
    assert_eq!(listed, expected, "every field intact, the module's own byte for byte");
    assert_eq!(listed[0].module_fields.get("big_id"), Some("123456789012345678901234567890"));
    assert_eq!(listed[0].module_fields.get("orders"), Some(r#"[{"id": 1, "fills": [[3000.5, 0.01], [3001, 0.034]]}]"#));
    assert_eq!(listed[0].side, None, "absent stays absent");
}

/// The decision log writes trades in batches of any modules; a batch lands
/// whole, in each module's listing, and a retried batch duplicates nothing.
async fn trades_are_written_in_batches_across_modules(b: Backend) {
    let agent = support::agent(4);
    let ctx = Context::new(Session::EuropePrime, Regime::Volatile);
    let mut batch = Vec::new();
    for i in 0..40 {
        let module = if i % 3 == 0 { "stocks" } else { "crypto" };
        let d = agent.decide(module, ctx, &[], true).unwrap();
        let mut t = TradeRecord {
            created_at: 1_750_000_000.0 + i as f64,
            symbol: Some(format!("SYM{i}")),
            return_pct: Some(0.001 * i as f64),
            reward: Some(0.001 * i as f64),
            ..Default::default()
        };
        t.fill_from_decision(&d, agent.space(module).unwrap());
        batch.push(t);
    }
    b.store.put_trades(&batch).await.unwrap();
    b.store.put_trades(&batch).await.unwrap();
    for module in ["crypto", "stocks"] {
        let expected: Vec<TradeRecord> = batch.iter().rev().filter(|t| t.module_name == module).cloned().collect();
        assert_eq!(
            b.store.list_trades(module, 100).await.unwrap(),
            expected,
            "{module}: every trade once, newest first"
        );
    }
    let mut bad = batch[0].clone();
    bad.module_name = "no/such".into();
    let err = b.store.put_trades(&[bad]).await.unwrap_err().to_string();
    assert!(err.contains("no/such"), "the error names the bad module: {err}");
}

fn effectiveness(param: &str, value: f64, session: Option<Session>, success: f64) -> ParameterEffectiveness {
    ParameterEffectiveness {
        module_name: "crypto".into(),
        parameter_type: param.into(),
        parameter_value: value,
        success_rate: success,
        avg_return: 0.058,
        sample_size: 23,
        last_updated: "2025-05-31T10:30:00Z".into(),
        session,
        regime: session.map(|_| Regime::Bullish),
    }
}

async fn parameter_effectiveness_rows_upsert(b: Backend) {
    let p = "session_confidence.asia_prime";
    let rows = vec![
        effectiveness(p, 0.45, None, 0.67),
        effectiveness(p, 0.40, None, 0.55),
        effectiveness(p, 0.45, Some(Session::AsiaPrime), 0.71),
        effectiveness("analysis_weights.momentum", 0.4, None, 0.5),
    ];
    b.store.put_parameter_effectiveness(&rows).await.unwrap();
    let mut stocks = effectiveness("strategy_thresholds.core_equity", 0.55, None, 0.6);
    stocks.module_name = "stocks".into();
    b.store.put_parameter_effectiveness(&[stocks.clone()]).await.unwrap();
    // The same key again replaces its row.
    let updated = effectiveness(p, 0.45, None, 0.69);
    b.store.put_parameter_effectiveness(std::slice::from_ref(&updated)).await.unwrap();
    let listed = b.store.list_parameter_effectiveness("crypto").await.unwrap();
    let expected = vec![rows[3].clone(), rows[1].clone(), updated, rows[2].clone()];
    assert_eq!(listed, expected, "by parameter, context, value; one row per key");
    assert_eq!(b.store.list_parameter_effectiveness("stocks").await.unwrap(), vec![stocks]);
}

async fn learning_events_list_newest_first(b: Backend) {
    let kinds = [
        LearningEventKind::Checkpoint,
        LearningEventKind::Rollback,
        LearningEventKind::Promotion,
        LearningEventKind::Other("strategy_selector_retrained".into()),
    ];
    let mut events = Vec::new();
    for (i, kind) in kinds.into_iter().enumerate() {
        let e = LearningEvent {
            model_name: "crypto.bandit".into(),
            module_name: "crypto".into(),
            learning_event: kind,
            parameters_before: json!({"session_confidence.asia_prime": 0.45}),
            parameters_after: json!({"session_confidence.asia_prime": 0.47, "nested": {"asia_prime/bullish": [0.1, 0.2]}}),
            performance_impact: 0.03,
            confidence_change: -0.02,
            timestamp: paramopt::store::rfc3339(1_748_687_400.0 + i as f64),
            created_at: 1_748_687_400.0 + i as f64,
            generation: (i != 3).then_some(i as u64 + 1),
            reason: (i == 2).then(|| "automatic rollback: rolling reward 0.001 below generation 2's 0.004".into()),
            evidence: (i == 3).then(|| paramopt::store::MoveEvidence {
                context: "asia_prime/bullish".into(),
                paired: "table - defaults".into(),
                estimate: 0.0125,
                lower_bound: 0.0004,
                n: 1_234.0,
                alpha: 0.2,
                margin: 0.0,
            }),
        };
        b.store.put_learning_event(&e).await.unwrap();
        events.push(e);
    }
    assert_eq!(events[0].timestamp, "2025-05-31T10:30:00Z");
    let listed = b.store.list_learning_events("crypto", 10).await.unwrap();
    events.reverse();
    assert_eq!(listed, events);
    assert_eq!(b.store.list_learning_events("crypto", 1).await.unwrap(), events[..1]);
}

async fn optimization_data_is_replaced(b: Backend) {
    assert!(b.store.get_optimization_data("options").await.unwrap().is_none());
    let mut data = OptimizationData {
        module_name: "options".into(),
        optimized_parameters: Context::all()
            .map(|c| (c.to_string(), [("confidence_thresholds.long_calls".to_string(), 0.75)].into()))
            .collect(),
        performance_history: vec![PerformancePoint {
            generation: 14,
            timestamp: "2025-05-31T10:00:00Z".into(),
            outcome_count: 200,
            mean_reward: 0.011,
        }],
        optimization_generation: 14,
        last_optimization: "2025-05-31T10:00:00Z".into(),
        performance_improvement: 0.2,
    };
    b.store.put_optimization_data(&data).await.unwrap();
    data.optimization_generation = 15;
    data.performance_history.push(PerformancePoint {
        generation: 15,
        timestamp: "2025-05-31T10:30:00Z".into(),
        outcome_count: 260,
        mean_reward: 0.013,
    });
    b.store.put_optimization_data(&data).await.unwrap();
    assert_eq!(b.store.get_optimization_data("options").await.unwrap(), Some(data));
}

async fn decision_log_round_trips_and_settles(b: Backend) {
    let agent = support::agent(11);
    let space = |m: &str| agent.space(m).unwrap().clone();
    let mut records = Vec::new();
    for (i, ctx) in Context::all().take(6).enumerate() {
        let d = agent.decide("crypto", ctx, &[("volatility_score", 0.85)], i % 2 == 0).unwrap();
        let mut r = DecisionLogRecord::new(&d, &space("crypto"));
        assert_eq!(r.features, [("volatility_score".to_string(), 0.85)].into());
        r.created_at = 1_750_000_000.0 + i as f64; // distinct, ordered times
        records.push(r);
    }
    records[0].seed = u64::MAX; // beyond Firestore's signed integers
                                // Served by an A/B test's challenger (ids have 53 bits).
    records[1].ab = Some(AbAssignment { test: (1 << 53) - 1, arm: AbArm::Challenger });
    let other = {
        let d = agent.decide("stocks", Context::new(Session::UsPrime, Regime::Volatile), &[], true).unwrap();
        DecisionLogRecord::new(&d, &space("stocks"))
    };
    b.store.append_decisions(&records[..4]).await.unwrap();
    b.store.append_decisions(&[records[4].clone(), other.clone(), records[5].clone()]).await.unwrap();

    b.store.settle_decision("crypto", &records[2].decision_id, -0.004, 1_750_000_100.0).await.unwrap();
    records[2].reward = Some(-0.004);
    records[2].settled_at = Some(1_750_000_100.0);
    let err = b.store.settle_decision("crypto", "00000000000000000000000000000bad", 0.1, 0.0).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }) && err.to_string().contains("bad"), "{err}");
    let err = b.store.settle_decision("stocks", &records[3].decision_id, 0.1, 0.0).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "a decision is settled in its own module: {err}");
    // Many at once: each answered in order, an unknown one refused alone.
    let batch = [
        (records[4].decision_id.clone(), 0.007, 1_750_000_101.0),
        ("00000000000000000000000000000bad".to_string(), 0.1, 0.0),
        (records[5].decision_id.clone(), 0.0, 1_750_000_102.0),
    ];
    let results = b.store.settle_decisions("crypto", &batch).await.unwrap();
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(matches!(results[1], Err(StoreError::NotFound { .. })), "{results:?}");
    assert_eq!(results.len(), 3);
    (records[4].reward, records[4].settled_at) = (Some(0.007), Some(1_750_000_101.0));
    (records[5].reward, records[5].settled_at) = (Some(0.0), Some(1_750_000_102.0));

    assert_eq!(
        b.store.list_decisions("crypto", 0.0, 100).await.unwrap(),
        records,
        "oldest first, settled reward joined"
    );
    // A limit keeps the newest window (handed back oldest first), never the oldest.
    assert_eq!(b.store.list_decisions("crypto", 1_750_000_002.0, 2).await.unwrap(), records[4..6]);
    assert_eq!(b.store.list_decisions("crypto", 1_750_000_002.0, 3).await.unwrap(), records[3..6]);
    assert_eq!(b.store.list_decisions("crypto", 0.0, 0).await.unwrap(), vec![]);
    assert_eq!(b.store.list_decisions("stocks", 0.0, 100).await.unwrap(), vec![other]);
    let first = &b.store.list_decisions("crypto", 0.0, 100).await.unwrap()[0];
    assert_eq!(first.seed, u64::MAX);
    assert!((first.propensities.iter().product::<f64>() - first.propensity).abs() < 1e-12);
}

/// Increments that replicas behind a context-sticky balancer would publish:
/// each records outcomes of its own contexts only.
fn increments(replica: usize, count: usize) -> Vec<ModuleStats> {
    let learner = crypto_learner(0, 0);
    let arms: Vec<usize> = learner.space.params.iter().map(|p| p.arms.len()).collect();
    // Without forgetting, as replicas that share learning run.
    let settings = paramopt::bandit::BanditSettings { discount: 1.0, ..learner.settings };
    let mut rng = support::rng(100 + replica as u64);
    (0..count)
        .map(|_| {
            let mut inc = ModuleStats::new(Context::COUNT, &arms);
            for _ in 0..5 {
                let ctx = 2 * rng.random_range(0..Context::COUNT / 2) + replica;
                let chosen: Vec<usize> = arms.iter().map(|&k| rng.random_range(0..k)).collect();
                inc.record(&settings, ctx, &chosen, rng.random_range(-0.02..0.03));
            }
            inc
        })
        .collect()
}

async fn concurrent_merges_lose_no_increment(b: Backend) {
    let replicas = [b.store.clone(), b.another().await];
    let per_replica = 8;
    let tasks: Vec<_> = replicas
        .iter()
        .enumerate()
        .map(|(r, store)| {
            let store = store.clone();
            tokio::spawn(async move {
                for inc in increments(r, per_replica) {
                    store.merge_increment("crypto", &inc).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut expected = increments(0, per_replica)[0].clone();
    for inc in increments(0, per_replica).iter().skip(1).chain(&increments(1, per_replica)) {
        expected.merge(inc);
    }
    let total = b.store.live_stats("crypto").await.unwrap().expect("live stats exist after merging");
    // Counts are exact whatever the order; means and spreads agree to rounding.
    assert_eq!(total.cell_outcomes, expected.cell_outcomes, "no replica's outcomes were lost");
    let all = |s: &ModuleStats| -> Vec<Stats> {
        s.cells.iter().flatten().flatten().chain(s.pool.iter().flatten()).copied().collect()
    };
    for (x, y) in all(&total).iter().zip(&all(&expected)) {
        assert_eq!(x.n, y.n);
        assert!((x.mean - y.mean).abs() < 1e-12 && (x.m2 - y.m2).abs() < 1e-12, "{x:?} vs {y:?}");
    }
    // A shape that does not fit is refused, naming the module, and changes nothing.
    let err = b.store.merge_increment("crypto", &ModuleStats::new(2, &[3])).await.unwrap_err();
    assert!(matches!(err, StoreError::ShapeMismatch { .. }) && err.to_string().contains("crypto"), "{err}");
    assert_eq!(b.store.live_stats("crypto").await.unwrap(), Some(total));
}

async fn health_reports_the_backend(b: Backend) {
    let h = b.store.health().await;
    assert!(h.healthy, "{h:?}");
    assert_eq!(h.kind, b.store.kind());
    assert!(["local", "firestore"].contains(&b.store.kind()));
}

/// Not a benchmark (BENCHMARKS.md has those): prints what one crypto
/// checkpoint costs on each backend, with `--nocapture`.
async fn crypto_checkpoint_timings(b: Backend) {
    let mut cp = crypto_checkpoint(2000, 5);
    cp.policy_weights = Some(vec![1u8; 64 * 1024]);
    let size = checkpoint::encode(&cp).unwrap().len();
    let (mut writes, mut reads) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        let g = b.store.put_checkpoint(&cp).await.unwrap();
        writes.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let back = b.store.get_checkpoint("crypto", g).await.unwrap().unwrap();
        reads.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(back.stats, cp.stats);
    }
    writes.sort_by(f64::total_cmp);
    reads.sort_by(f64::total_cmp);
    eprintln!(
        "{}: crypto checkpoint of {size} bytes: write median {:.1} ms, read median {:.1} ms",
        b.store.kind(),
        writes[2],
        reads[2]
    );
}

// ----- local only -----

#[tokio::test]
async fn local_a_torn_write_leaves_the_previous_checkpoint_loadable() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let first = crypto_checkpoint(30, 1);
    let g1 = store.put_checkpoint(&first).await.unwrap();
    // A crash mid-write of generation 2 leaves the writer's temporary file
    // half written, and never renamed into place.
    let mut second = crypto_checkpoint(40, 2);
    second.generation = 2;
    let bytes = checkpoint::encode(&second).unwrap();
    let ckpt_dir = store.checkpoint_path("crypto", 2).parent().unwrap().to_path_buf();
    let torn = ckpt_dir.join(format!(".{:020}.json.tmp-999999-0", 2));
    std::fs::write(&torn, &bytes[..bytes.len() / 2]).unwrap();
    // So does a crash mid-append of a trade.
    let trade = TradeRecord {
        module_name: "crypto".into(),
        symbol: Some("BTCUSD".into()),
        created_at: 1.0,
        ..Default::default()
    };
    store.put_trade(&trade).await.unwrap();
    let trades = dir.path().join("trades/crypto.jsonl");
    let mut f = std::fs::OpenOptions::new().append(true).open(&trades).unwrap();
    std::io::Write::write_all(&mut f, br#"{"module_name":"crypto","symbol":"ETH"#).unwrap();

    let mut expected = first.clone();
    expected.generation = g1;
    assert_eq!(store.latest_checkpoint("crypto").await.unwrap(), Some(expected.clone()));
    assert_eq!(store.list_checkpoints("crypto").await.unwrap(), vec![expected.meta()]);
    assert_eq!(store.list_trades("crypto", 10).await.unwrap(), vec![trade.clone()], "the torn line is skipped");

    // After a restart the leftovers are cleaned up and writing goes on.
    let store = LocalStore::open(dir.path()).unwrap();
    assert!(!torn.exists(), "the interrupted temporary file is removed on open");
    assert_eq!(store.put_checkpoint(&second).await.unwrap(), 2);
    assert_eq!(store.get_checkpoint("crypto", 2).await.unwrap(), Some(second));
    assert_eq!(store.get_checkpoint("crypto", 1).await.unwrap(), Some(expected));
    let mut later = trade.clone();
    later.created_at = 2.0;
    store.put_trade(&later).await.unwrap();
    assert_eq!(store.list_trades("crypto", 10).await.unwrap(), vec![later, trade], "the torn tail was cut off");
}

#[tokio::test]
async fn local_a_corrupt_checkpoint_is_an_error_naming_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    store.put_checkpoint(&crypto_checkpoint(3, 1)).await.unwrap();
    let path = store.checkpoint_path("crypto", 1);
    std::fs::write(&path, b"{\"format_version\": 1, \"module\": ").unwrap();
    let err = store.get_checkpoint("crypto", 1).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
}

#[tokio::test]
async fn open_store_reads_urls_and_names_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    for url in [format!("local://{}", dir.path().display()), dir.path().display().to_string()] {
        let s = open_store(&url).await.unwrap();
        assert_eq!((s.kind(), s.location()), ("local", dir.path().display().to_string()));
    }
    for (url, needle) in
        [("s3://bucket", "unknown scheme"), ("firestore://", "project"), ("firestore://p?x=1", "\"x=1\"")]
    {
        let err = open_store(url).await.unwrap_err().to_string();
        assert!(err.contains(url) && err.contains(needle), "{url}: {err}");
    }
}

/// The emulator refuses a document over 1 MiB, as Firestore does: what makes
/// the chunked checkpoint test above meaningful.
#[tokio::test]
async fn firestore_emulator_enforces_the_document_limit() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Doc {
        a: String,
        b: String,
    }
    let host = emulator::host();
    emulator::clear(&host, "paramopt-limit");
    let options = FirestoreOptions { emulator_host: Some(host), ..FirestoreOptions::new("paramopt-limit") };
    let store = FirestoreStore::connect(options).await.unwrap();
    let write = |len: usize| {
        // Two fields, each under the per-field limit: only the document's is at stake.
        let doc = Doc { a: "x".repeat(len / 2), b: "y".repeat(len / 2) };
        let db = store.db().clone();
        async move {
            db.fluent()
                .update()
                .in_col("limit_probe")
                .return_only_fields(["none"])
                .document_id(format!("d{len}"))
                .object(&doc)
                .execute::<serde::de::IgnoredAny>()
                .await
        }
    };
    write(900 * 1024).await.expect("a document under 1 MiB is accepted");
    let err = write(1200 * 1024).await.expect_err("a document over 1 MiB is refused");
    eprintln!("the emulator refused a 1.2 MiB document: {err}");
    // Live stats are one document: too large a payload is refused before sending.
    let err = store.merge_increment("huge", &ModuleStats::new(12, &[400; 20])).await.unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }) && err.to_string().contains("huge"), "{err}");
}

/// Retention on both backends: periodic checkpoints beyond the newest N go,
/// rollbacks, promotions and rollback targets stay, the newest is never
/// deleted, pages of the listing follow `before`, and decisions and trades
/// older than their cutoff go while newer ones (and their rewards) stay.
async fn retention_keeps_the_newest_and_marked_checkpoints_and_recent_records(b: Backend) {
    use paramopt::store::retention::{Retention, RetentionArgs};
    let s = &*b.store;
    let base = crypto_checkpoint(20, 1);
    for g in 1..=8u64 {
        let mut cp = base.clone();
        (cp.kind, cp.rollback_to) = match g {
            6 => (CheckpointKind::Rollback, Some(2)),
            4 => (CheckpointKind::Promotion, None),
            _ => (CheckpointKind::Checkpoint, None),
        };
        assert_eq!(s.put_checkpoint(&cp).await.unwrap(), g);
    }
    let page: Vec<u64> =
        s.list_checkpoints_page("crypto", Some(7), 3).await.unwrap().iter().map(|m| m.generation).collect();
    assert_eq!(page, vec![6, 5, 4]);
    let err = s.delete_checkpoint("crypto", 8).await.unwrap_err();
    assert!(err.to_string().contains("newest"), "{err}");
    let retention =
        Retention::try_from(RetentionArgs { keep_checkpoints: 2, decision_log_days: 1.0, trade_days: 1.0 }).unwrap();
    assert_eq!(retention.prune_checkpoints(s, "crypto").await.unwrap(), 3);
    let kept: Vec<u64> = s.list_checkpoints("crypto").await.unwrap().iter().map(|m| m.generation).collect();
    assert_eq!(kept, vec![8, 7, 6, 4, 2], "the newest two, the rollback, the promotion and the rollback's target");
    assert!(s.get_checkpoint("crypto", 3).await.unwrap().is_none());
    assert_eq!(s.get_checkpoint("crypto", 2).await.unwrap().unwrap().generation, 2);
    assert_eq!(s.put_checkpoint(&base).await.unwrap(), 9, "numbers are never reused");

    let now = 1_760_000_000.0;
    let agent = support::agent(4);
    let space = agent.space("crypto").unwrap().clone();
    let mut records = Vec::new();
    let mut trades = Vec::new();
    for (i, age_days) in [3.0, 2.0, 0.5, 0.1].into_iter().enumerate() {
        let d = agent.decide("crypto", Context::from_index(i).unwrap(), &[], true).unwrap();
        let mut r = DecisionLogRecord::new(&d, &space);
        r.created_at = now - age_days * 86_400.0;
        records.push(r);
        trades.push(TradeRecord {
            module_name: "crypto".into(),
            decision_id: Some(d.id.to_string()),
            created_at: now - age_days * 86_400.0,
            ..TradeRecord::default()
        });
    }
    s.append_decisions(&records).await.unwrap();
    s.settle_decision("crypto", &records[3].decision_id, 0.02, now - 3600.0).await.unwrap();
    s.put_trades(&trades).await.unwrap();
    let pruned = retention.prune_logs(s, "crypto", now).await.unwrap();
    assert_eq!((pruned.decisions, pruned.trades), (2, 2));
    let left = s.list_decisions("crypto", 0.0, 100).await.unwrap();
    assert_eq!(
        left.iter().map(|r| r.decision_id.clone()).collect::<Vec<_>>(),
        vec![records[2].decision_id.clone(), records[3].decision_id.clone()]
    );
    assert_eq!(left[1].reward, Some(0.02), "a kept decision keeps its reward");
    let left: Vec<f64> = s.list_trades("crypto", 100).await.unwrap().iter().map(|t| t.created_at).collect();
    assert_eq!(left, vec![trades[3].created_at, trades[2].created_at]);
    assert_eq!(retention.prune_logs(s, "crypto", now).await.unwrap().decisions, 0, "a second pass finds nothing");
}
