//! The decision log at scale: fills an embedded store with a million logged
//! decisions of one module (settled, spread over the last six days), then
//! times the analysis the runtime runs after checkpoints (the newest window,
//! parameter effectiveness and the defaults' off-policy estimate) and reports
//! the peak memory it added. See BENCHMARKS.md for figures.
//!
//! Reproduce: `cargo build --release && target/release/logbench`.

use std::time::Instant;

use anyhow::{Context as _, Result};
use clap::Parser;

use paramopt::agent::{Agent, AgentOptions};
use paramopt::runtime::{analyse_decision_log, EFFECTIVENESS_WINDOW};
use paramopt::space::{Context, Spaces};
use paramopt::store::{now_secs, open_store, DecisionLogRecord};

#[derive(Parser, Debug)]
#[command(about = "Time and peak memory of the decision-log analysis over a large log")]
struct Args {
    /// Decisions to log first.
    #[arg(long, default_value_t = 1_000_000)]
    decisions: usize,
    /// The module whose log is filled and analysed.
    #[arg(long, default_value = "crypto")]
    module: String,
}

/// The process's resident set and its peak since the last reset, in MiB (Linux).
fn memory_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the peak resident set to the current one (Linux 4.0 and later).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// A scratch directory, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let spaces = Spaces::builtin();
    let space = spaces.get(&args.module).with_context(|| format!("no module {:?}", args.module))?.clone();
    let dir = TempDir(std::env::temp_dir().join(format!("paramopt-logbench-{}", std::process::id())));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let store = open_store(&format!("local://{}", dir.path().join("store").display())).await?;
        let agent = Agent::new(&spaces, AgentOptions { seed: Some(1), ..Default::default() });
        // A thousand real decisions, logged over and over under fresh ids and times.
        let templates: Vec<DecisionLogRecord> = (0..1000)
            .map(|i| {
                let d = agent.decide(&args.module, Context::from_index(i % Context::COUNT).unwrap(), &[], true)?;
                anyhow::Ok(DecisionLogRecord::new(&d, &space))
            })
            .collect::<Result<_>>()?;
        let now = now_secs();
        let started = Instant::now();
        for batch in 0..args.decisions.div_ceil(10_000) {
            let records: Vec<DecisionLogRecord> = (batch * 10_000..((batch + 1) * 10_000).min(args.decisions))
                .map(|i| {
                    let mut r = templates[i % templates.len()].clone();
                    r.decision_id = format!("{i:032x}");
                    r.created_at = now - 6.0 * 86_400.0 * (1.0 - i as f64 / args.decisions as f64);
                    r.reward = Some(0.001 * ((i % 13) as f64 - 6.0));
                    r.settled_at = Some(r.created_at + 60.0);
                    r
                })
                .collect();
            store.append_decisions(&records).await?;
        }
        let bytes = std::fs::metadata(dir.path().join("store/decisions").join(format!("{}.jsonl", args.module)))?.len();
        println!(
            "logged {} decisions ({:.0} MB) in {:.1} s",
            args.decisions,
            bytes as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
        drop(templates);
        let (before, _) = memory_mib();
        reset_peak();
        let started = Instant::now();
        let analysis = analyse_decision_log(&*store, &space, now_secs()).await?.context("no decisions in the window")?;
        let secs = started.elapsed().as_secs_f64();
        let (_, peak) = memory_mib();
        println!(
            "analysed the newest {} (window {EFFECTIVENESS_WINDOW}) in {secs:.2} s: {} effectiveness rows, defaults' estimate {}",
            analysis.decisions,
            analysis.rows.len(),
            match &analysis.defaults {
                Ok(e) => format!("{:+.5}", e.value),
                Err(e) => e.to_string(),
            }
        );
        println!("memory: {before:.0} MiB resident before, peak {peak:.0} MiB during (+{:.0} MiB)", peak - before);
        anyhow::Ok(())
    })
}
