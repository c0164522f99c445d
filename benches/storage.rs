//! Checkpoint storage: writing and reading a crypto checkpoint (12 contexts,
//! every posterior populated) on each backend, and the `decide` latency while
//! checkpoints are being written compared with idle.
//!
//! Run: `cargo bench --bench storage`. The Firestore figures need an emulator
//! (`FIRESTORE_EMULATOR_HOST=127.0.0.1:PORT`; BENCHMARKS.md says how to start
//! one); without it they are skipped, saying so.
//!
//! Criterion measures `put_checkpoint` and `get_checkpoint`. The decide part
//! is a plain loop of individually timed calls, printed as percentiles: first
//! idle, then while a task writes checkpoints back to back through
//! `Runtime::checkpoint` (a snapshot on the agent's writer thread, then the
//! store write), as the background checkpointer does.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{warm_agent, FEATURES};
use criterion::{criterion_group, Criterion};
use paramopt::agent::Agent;
use paramopt::runtime::{Runtime, RuntimeOptions};
use paramopt::space::{Context, Spaces};
use paramopt::store::{checkpoint, open_store, Checkpoint, CheckpointKind};

/// Decisions timed per phase; under the crypto module's pending capacity
/// (100,000) for both phases together, so none is dropped for space.
const DECIDES: usize = 40_000;
/// One decision every this long: a phase then lasts 2 s, long enough for
/// many checkpoints to be written while decisions are made (back to back,
/// 40,000 decisions would take a tenth of a checkpoint's time).
const PACE: Duration = Duration::from_micros(50);

/// The crypto checkpoint of an agent that learned from 6,000 outcomes spread
/// over all 12 contexts (as `benches/agent.rs` warms up).
fn warm_checkpoint() -> Checkpoint {
    let agent = warm_agent();
    let learner = agent.shutdown().into_iter().find(|l| l.space.name == "crypto").unwrap();
    assert!(learner.stats.cell_outcomes.iter().all(|&n| n > 0.0), "every context learned");
    Checkpoint::from_learner(&learner, CheckpointKind::Checkpoint, None, None, 1_750_000_000.0)
}

/// Each backend to measure: its name and store URL. Firestore only with an
/// emulator, on a project of this run's own.
fn backends(dir: &std::path::Path) -> Vec<(&'static str, String)> {
    let mut out = vec![("local", format!("local://{}", dir.join("store").display()))];
    match std::env::var("FIRESTORE_EMULATOR_HOST") {
        Ok(host) if !host.trim().is_empty() => {
            out.push(("firestore", format!("firestore://paramopt-bench-{}", std::process::id())));
        }
        _ => println!("firestore: skipped (FIRESTORE_EMULATOR_HOST is not set; see BENCHMARKS.md)"),
    }
    out
}

fn bench(c: &mut Criterion) {
    let cp = warm_checkpoint();
    let size = checkpoint::encode(&cp).unwrap().len();
    println!("crypto checkpoint: 12 contexts, {} outcomes, {size} bytes encoded", cp.outcome_count);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, url) in backends(dir.path()) {
        let store = rt.block_on(open_store(&url)).unwrap();
        let generation = rt.block_on(store.put_checkpoint(&cp)).unwrap();
        let mut group = c.benchmark_group(format!("checkpoint/{name}"));
        if name == "firestore" {
            // Tens of milliseconds a call: fewer, longer samples.
            group.sample_size(20).measurement_time(Duration::from_secs(15));
        }
        group.bench_function("put", |b| b.iter(|| black_box(rt.block_on(store.put_checkpoint(&cp)).unwrap())));
        group.bench_function("get", |b| {
            b.iter(|| black_box(rt.block_on(store.get_checkpoint("crypto", generation)).unwrap().unwrap()))
        });
        group.finish();
    }
}

/// Jiffies the whole machine spent busy, and this process's own.
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
    let busy = fields.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    let own = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command's closing parenthesis, from the state on:
    // utime and stime (all threads) are the 12th and 13th.
    let own: Vec<&str> = own.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let field = |i: usize| own.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (busy, field(11) + field(12))
}

/// Percent of the machine's cores that other processes kept busy since `from`.
fn others_cpu(from: (u64, u64), elapsed: Duration) -> f64 {
    let now = cpu_jiffies();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    // USER_HZ is 100 on Linux.
    let others = (now.0 - from.0).saturating_sub(now.1 - from.1) as f64 / 100.0;
    100.0 * others / (elapsed.as_secs_f64() * cores)
}

struct Phase {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    others_cpu: f64,
}

/// Times `DECIDES` decisions one by one, over all 12 contexts, one per
/// `PACE`. The thread spins between them, as a busy server's would, rather
/// than sleeping: a wake-up would be timed too.
fn time_decides(agent: &Agent) -> Phase {
    let mut ns = Vec::with_capacity(DECIDES);
    let (from, started) = (cpu_jiffies(), Instant::now());
    for i in 0..DECIDES {
        let next = started + PACE * i as u32;
        while Instant::now() < next {
            std::hint::spin_loop();
        }
        let ctx = Context::from_index(i % 12).unwrap();
        let t = Instant::now();
        black_box(agent.decide("crypto", ctx, &FEATURES, true).unwrap());
        ns.push(t.elapsed().as_nanos() as u64);
    }
    let others_cpu = others_cpu(from, started.elapsed());
    ns.sort_unstable();
    let q = |p: f64| ns[((ns.len() as f64 * p) as usize).min(ns.len() - 1)] as f64 / 1000.0;
    Phase { p50: q(0.5), p90: q(0.9), p99: q(0.99), p999: q(0.999), others_cpu }
}

fn print_phase(what: &str, p: &Phase) {
    println!(
        "  decide {what:<22} n={DECIDES} p50={:.2}us p90={:.2}us p99={:.2}us p99.9={:.2}us (other processes: {:.0}% CPU)",
        p.p50, p.p90, p.p99, p.p999, p.others_cpu
    );
}

/// `decide` idle, then while checkpoints are written back to back, per backend.
fn decide_during_checkpoints() {
    let cp = warm_checkpoint();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("decide during checkpoints (load average at start: {})", load.trim());
    let dir = tempfile::tempdir().unwrap();
    let tokio_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    for (name, url) in backends(dir.path()) {
        // The runtime restores the warm checkpoint, so decisions sample warm views.
        tokio_rt.block_on(async { open_store(&url).await.unwrap().put_checkpoint(&cp).await.unwrap() });
        let options = RuntimeOptions {
            store: url.clone(),
            data_dir: dir.path().join(format!("data-{name}")),
            seed: Some(2),
            // No background checkpointer here: this bench writes them itself.
            checkpoint_every_outcomes: u64::MAX,
            checkpoint_every_secs: f64::INFINITY,
            ..Default::default()
        };
        let runtime = tokio_rt.block_on(Runtime::start(Spaces::builtin(), options)).unwrap();
        for i in 0..2_000 {
            black_box(runtime.agent.decide("crypto", Context::from_index(i % 12).unwrap(), &FEATURES, true).unwrap());
        }
        let idle = time_decides(&runtime.agent);

        let stop = Arc::new(AtomicBool::new(false));
        let (written, write_us) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let writer = tokio_rt.spawn({
            let (runtime, stop, written, write_us) = (runtime.clone(), stop.clone(), written.clone(), write_us.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    runtime.checkpoint("crypto").await.unwrap();
                    write_us.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                    written.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        // Decisions start once the first checkpoint is under way.
        while written.load(Ordering::Relaxed) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (started, before) = (Instant::now(), written.load(Ordering::Relaxed));
        let busy = time_decides(&runtime.agent);
        let busy_for = started.elapsed();
        let during = written.load(Ordering::Relaxed) - before;
        stop.store(true, Ordering::Relaxed);
        tokio_rt.block_on(writer).unwrap();
        let (n, us) = (written.load(Ordering::Relaxed), write_us.load(Ordering::Relaxed));

        println!("{name}:");
        print_phase("idle", &idle);
        print_phase("during checkpoints", &busy);
        println!(
            "  {} checkpoints written back to back during the {:.2} s of timed decisions (mean {:.1} ms each, \
             learning event and optimization data included)",
            during,
            busy_for.as_secs_f64(),
            us as f64 / n as f64 / 1000.0
        );
        println!(
            "  ratio during/idle: p50 {:.2}x, p99 {:.2}x (target: within 2x)",
            busy.p50 / idle.p50,
            busy.p99 / idle.p99
        );
        runtime.agent.shutdown();
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    decide_during_checkpoints();
    Criterion::default().configure_from_args().final_summary();
}
