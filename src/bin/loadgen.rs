//! Load generator for `paramopt serve`: concurrent decide + outcome traffic
//! over keep-alive loopback connections, bounded in time and count, printing
//! throughput and latency percentiles.
//!
//! By default it starts the `paramopt` binary that sits next to it
//! (`target/release/paramopt`) on a free loopback port and stops it with
//! SIGTERM afterwards; `--url` targets a server already running, and
//! `--in-process` runs the service inside this process instead. By default
//! (`--pattern split`) some connections decide and others report, as in
//! trading, where a trade closes long after its decision: every decision is
//! queued for a reporting connection, and a full queue holds the deciders
//! back, so every decision gets its outcome and outcomes keep up. With
//! `--pattern paired` each connection decides, then reports that decision
//! at once. Latency is
//! measured per request from just before it is written to when its whole
//! answer has been read. See BENCHMARKS.md for figures.
//!
//! Reproduce: `cargo build --release && target/release/loadgen`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use clap::Parser;
use paramopt::service::client::{Client, Method, Reply};

#[derive(Parser, Debug, Clone)]
#[command(about = "Concurrent decide + outcome load against paramopt serve")]
struct Args {
    /// Target a running server (http://host:port, loopback only) instead of starting one.
    #[arg(long)]
    url: Option<String>,
    /// Run the service in this process instead of starting the `paramopt` binary.
    #[arg(long, conflicts_with = "url")]
    in_process: bool,
    /// The `paramopt` binary to start [default: the one next to this program].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Tokio worker threads of a started server (`paramopt serve --workers`) [default: one per core].
    #[arg(long)]
    server_workers: Option<usize>,
    /// Model files for a started server.
    #[arg(long, default_value = "models")]
    models: PathBuf,
    /// Bearer token for --url servers that require one.
    #[arg(long, env = "PARAMOPT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Concurrent keep-alive connections, each with one request in flight.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Seconds of measured load.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of unmeasured load first (connections, caches, allocator warm up).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Stop after this many measured decisions, whichever comes first.
    #[arg(long, default_value_t = 5_000_000)]
    max_decisions: u64,
    /// Tokio worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Decisions only, no outcomes: isolates the HTTP and decide path from learning.
    #[arg(long)]
    no_outcomes: bool,
    /// How outcomes follow decisions. `split`: decisions and outcomes go on
    /// connections of their own, as in trading, where a trade closes long after
    /// its decision; every decision is queued for an outcome connection to
    /// report, and a full queue holds decisions back, so outcomes keep up.
    /// `paired`: each connection decides, then reports that decision at once.
    #[arg(long, value_enum, default_value_t = Pattern::Split)]
    pattern: Pattern,
    /// Connections that report outcomes in the split pattern [default: twice --connections, since
    /// each outcome waits for a disk flush].
    #[arg(long)]
    outcome_connections: Option<usize>,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    Split,
    Paired,
}

/// Decisions waiting for an outcome connection, in the split pattern.
const OUTCOME_QUEUE: usize = 4096;

/// What one connection measured.
#[derive(Default)]
struct Tally {
    decide_us: Vec<u32>,
    outcome_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

const CONTEXTS: [(&str, &str); 6] = [
    ("asia_prime", "bullish"),
    ("europe_prime", "bearish"),
    ("us_prime", "sideways"),
    ("asia_prime", "volatile"),
    ("europe_prime", "bullish"),
    ("us_prime", "bearish"),
];

/// A realistic mix of request bodies: all three modules, six contexts, features where declared.
fn decision_bodies() -> Vec<Bytes> {
    let mut out = Vec::new();
    for (i, (session, regime)) in CONTEXTS.iter().enumerate() {
        let x = 0.1 + 0.13 * i as f64;
        out.push(Bytes::from(format!(
            r#"{{"module":"crypto","context":{{"session":"{session}","regime":"{regime}"}},"features":{{"momentum_score":{x:.2},"volatility_score":0.85,"volume_score":0.63}}}}"#
        )));
        out.push(Bytes::from(format!(
            r#"{{"module":"stocks","context":{{"session":"{session}","regime":"{regime}"}},"features":{{"technical_confidence":0.82,"regime_confidence":{x:.2}}}}}"#
        )));
        out.push(Bytes::from(format!(
            r#"{{"module":"options","context":{{"session":"{session}","regime":"{regime}"}}}}"#
        )));
    }
    out
}

fn decision_id(body: &[u8]) -> Option<&str> {
    const KEY: &[u8] = br#""decision_id":""#;
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    std::str::from_utf8(body.get(at..at + 32)?).ok()
}

/// A keep-alive connection to the service, with the bearer token when there is one.
async fn connect(addr: SocketAddr, token: Option<&str>) -> Result<Client> {
    let client = Client::connect(addr).await?;
    Ok(match token {
        Some(t) => client.with_token(t)?,
        None => client,
    })
}

/// Where a deciding connection sends each decision's outcome.
enum Outcomes {
    None,
    Paired,
    Queue(tokio::sync::mpsc::Sender<(String, f64)>),
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

#[allow(clippy::too_many_arguments)]
async fn decider(
    index: usize,
    addr: SocketAddr,
    token: Option<String>,
    measure_from: Instant,
    until: Instant,
    budget: std::sync::Arc<std::sync::atomic::AtomicI64>,
    outcomes: Outcomes,
) -> Result<Tally> {
    let bodies = decision_bodies();
    let mut client = connect(addr, token.as_deref()).await?;
    let mut tally = Tally::default();
    let mut n = index * 7;
    while Instant::now() < until {
        let measured = Instant::now() >= measure_from;
        if measured && budget.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) <= 0 {
            break;
        }
        n += 1;
        let t0 = Instant::now();
        let Reply { status, body } =
            client.request(Method::POST, "/v1/decisions", bodies[n % bodies.len()].clone()).await?;
        let t1 = Instant::now();
        let Some(id) = decision_id(&body).filter(|_| status == 200) else {
            tally.errors += 1;
            tally.first_error.get_or_insert_with(|| format!("decide {status}: {}", String::from_utf8_lossy(&body)));
            continue;
        };
        if measured {
            tally.decide_us.push(micros(t1 - t0));
        }
        let reward = ((n % 21) as f64 - 10.0) / 1000.0;
        match &outcomes {
            Outcomes::None => {}
            Outcomes::Queue(queue) => {
                if queue.send((id.to_string(), reward)).await.is_err() {
                    break;
                }
            }
            Outcomes::Paired => {
                let id = id.to_string();
                report(&mut client, &id, reward, measured, &mut tally).await?;
            }
        }
    }
    Ok(tally)
}

/// Reports queued decisions until the deciders are done and the queue is empty.
async fn reporter(
    addr: SocketAddr,
    token: Option<String>,
    measure_from: Instant,
    queue: std::sync::Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<(String, f64)>>>,
) -> Result<Tally> {
    let mut client = connect(addr, token.as_deref()).await?;
    let mut tally = Tally::default();
    loop {
        let Some((id, reward)) = queue.lock().await.recv().await else { break };
        let measured = Instant::now() >= measure_from;
        report(&mut client, &id, reward, measured, &mut tally).await?;
    }
    Ok(tally)
}

async fn report(client: &mut Client, id: &str, reward: f64, measured: bool, tally: &mut Tally) -> Result<()> {
    let outcome = Bytes::from(format!(r#"{{"decision_id":"{id}","reward":{reward}}}"#));
    let t0 = Instant::now();
    let Reply { status, body } = client.request(Method::POST, "/v1/outcomes", outcome).await?;
    let t1 = Instant::now();
    if status != 200 {
        tally.errors += 1;
        tally.first_error.get_or_insert_with(|| format!("outcome {status}: {}", String::from_utf8_lossy(&body)));
    }
    if measured {
        tally.outcome_us.push(micros(t1 - t0));
    }
    Ok(())
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

struct Stats {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

fn stats(mut v: Vec<u32>) -> Stats {
    v.sort_unstable();
    Stats {
        p50: percentile(&v, 50.0),
        p99: percentile(&v, 99.0),
        p999: percentile(&v, 99.9),
        max: v.last().map_or(f64::NAN, |m| *m as f64 / 1000.0),
    }
}

/// CPU seconds used so far by the whole machine (busy time) and by `pids`,
/// from /proc: on a shared machine, what others ran during the measurement
/// is part of the figures' context.
#[cfg(target_os = "linux")]
fn cpu_seconds(pids: &[u32]) -> Option<(f64, f64)> {
    let tick = 100.0; // USER_HZ, 100 on every Linux ABI in use
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<f64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let busy = cpu.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum::<f64>();
    let mut ours = 0.0;
    for pid in pids {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let after_comm = &text[text.rfind(')')? + 2..];
        let f: Vec<&str> = after_comm.split_whitespace().collect();
        ours += f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    }
    Some((busy / tick, ours / tick))
}

#[cfg(not(target_os = "linux"))]
fn cpu_seconds(_pids: &[u32]) -> Option<(f64, f64)> {
    None
}

/// A started `paramopt serve` and its throwaway store, stopped with SIGTERM
/// and removed on drop.
struct Spawned(Child, std::path::PathBuf);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn spawn_server(args: &Args) -> Result<(Spawned, SocketAddr)> {
    use std::io::BufRead;
    let bin = match &args.server_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("paramopt"),
    };
    if !bin.exists() {
        bail!("{} not found: build it first (cargo build --release), or pass --server-bin or --url", bin.display());
    }
    // The embedded store and the outcome journal, as in production, but
    // somewhere that is cleaned up afterwards.
    let data = std::env::temp_dir().join(format!("paramopt-loadgen-{}", std::process::id()));
    std::fs::create_dir_all(&data)?;
    // Its log goes to a file, so the run can say how much it wrote.
    let log = std::fs::File::create(data.join("server.log"))?;
    let mut command = Command::new(&bin);
    command.args(["serve", "--addr", "127.0.0.1:0", "--models"]).arg(&args.models);
    command.arg("--store").arg(data.join("store")).arg("--data-dir").arg(&data);
    if let Some(w) = args.server_workers {
        command.args(["--workers", &w.to_string()]);
    }
    let mut child = command
        .env_remove("PARAMOPT_TOKEN")
        .env_remove("PARAMOPT_CONFIG")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("server stdout")?).read_line(&mut line)?;
    let spawned = Spawned(child, data);
    let addr = line.trim().rsplit("http://").next().unwrap_or("").parse().with_context(|| {
        format!("the server did not print its address (got {line:?}); is {} a paramopt with `serve`?", bin.display())
    })?;
    Ok((spawned, addr))
}

fn in_process_server() -> Result<SocketAddr> {
    use paramopt::service::{server, AppState, Hooks, ServiceOptions};
    // The same logging as `paramopt serve`, so request spans cost what they cost there.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let agent = paramopt::Agent::new(&paramopt::Spaces::builtin(), Default::default());
    let state = AppState::new(agent, ServiceOptions::default(), Hooks::default());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("server runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("send addr");
            server::serve(listener, state, std::future::pending()).await.expect("serve");
        });
    });
    Ok(rx.recv()?)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !(args.duration > 0.0 && args.duration <= 600.0 && (0.0..=60.0).contains(&args.warmup)) {
        bail!("--duration must be in (0, 600] and --warmup in [0, 60] seconds");
    }
    let mut _spawned = None;
    let (addr, target) = match (&args.url, args.in_process) {
        (Some(url), _) => {
            let hostport = url.trim_start_matches("http://").trim_end_matches('/');
            let addr: SocketAddr =
                hostport.parse().with_context(|| format!("--url {url:?}: expected http://IP:PORT"))?;
            if !addr.ip().is_loopback() {
                bail!("--url {url}: this load generator only targets loopback addresses");
            }
            (addr, format!("server at {url}"))
        }
        (None, true) => (in_process_server()?, "in-process service".to_string()),
        (None, false) => {
            let (child, addr) = spawn_server(&args)?;
            _spawned = Some(child);
            (addr, "paramopt serve child process".to_string())
        }
    };
    let outcome_connections = args.outcome_connections.unwrap_or(2 * args.connections);

    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.client_threads.max(1)).enable_all().build()?;
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let until = measure_from + Duration::from_secs_f64(args.duration);
    let budget = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(args.max_decisions as i64));
    let mut pids = vec![std::process::id()];
    pids.extend(_spawned.as_ref().map(|s: &Spawned| s.0.id()));
    let cpu_at = |t: Instant| {
        let pids = pids.clone();
        async move {
            tokio::time::sleep_until(t.into()).await;
            cpu_seconds(&pids)
        }
    };
    // The started server's resident memory, once a second from the start of
    // the measurement: a soak shows whether it stays bounded.
    // With it, the bytes its data directory (journal and store) holds.
    let server_pid = _spawned.as_ref().map(|s: &Spawned| s.0.id());
    let server_data = _spawned.as_ref().map(|s: &Spawned| s.1.clone());
    let memory = rt.spawn(async move {
        let mut samples = Vec::new();
        let (Some(pid), Some(data)) = (server_pid, server_data) else { return samples };
        let sample = move || Some((rss_kib(pid)?, dir_bytes(&data)));
        tokio::time::sleep_until(measure_from.into()).await;
        while Instant::now() < until {
            samples.extend(sample());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        samples.extend(sample());
        samples
    });
    let (tallies, cpu_start, cpu_end) = rt.block_on(async {
        let cpu_start = tokio::spawn(cpu_at(measure_from));
        let cpu_end = tokio::spawn(cpu_at(until));
        let (queue_tx, queue_rx) = tokio::sync::mpsc::channel(OUTCOME_QUEUE);
        let queue_rx = std::sync::Arc::new(tokio::sync::Mutex::new(queue_rx));
        let mut tasks = Vec::new();
        for i in 0..args.connections {
            let outcomes = match (args.no_outcomes, args.pattern) {
                (true, _) => Outcomes::None,
                (false, Pattern::Paired) => Outcomes::Paired,
                (false, Pattern::Split) => Outcomes::Queue(queue_tx.clone()),
            };
            tasks.push(tokio::spawn(decider(
                i,
                addr,
                args.token.clone(),
                measure_from,
                until,
                budget.clone(),
                outcomes,
            )));
        }
        drop(queue_tx);
        if !args.no_outcomes && args.pattern == Pattern::Split {
            for _ in 0..outcome_connections {
                tasks.push(tokio::spawn(reporter(addr, args.token.clone(), measure_from, queue_rx.clone())));
            }
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await??);
        }
        anyhow::Ok((out, cpu_start.await?, cpu_end.await?))
    })?;
    let measured = (Instant::now().min(until) - measure_from).as_secs_f64().max(1e-9);
    let (rss, disk): (Vec<u64>, Vec<u64>) = rt.block_on(memory)?.into_iter().unzip();
    let mib = |kib: u64| kib as f64 / 1024.0;
    let disk_mb = |bytes: u64| bytes as f64 / 1e6;
    let (rss_first, rss_peak, rss_last) =
        (rss.first().map(|&k| mib(k)), rss.iter().max().map(|&k| mib(k)), rss.last().map(|&k| mib(k)));
    let log_bytes =
        _spawned.as_ref().and_then(|s: &Spawned| std::fs::metadata(s.1.join("server.log")).ok()).map(|m| m.len());

    let errors: u64 = tallies.iter().map(|t| t.errors).sum();
    let first_error = tallies.iter().find_map(|t| t.first_error.clone());
    let decide: Vec<u32> = tallies.iter().flat_map(|t| t.decide_us.iter().copied()).collect();
    let outcome: Vec<u32> = tallies.iter().flat_map(|t| t.outcome_us.iter().copied()).collect();
    let decisions = decide.len() as f64;
    let all: Vec<u32> = decide.iter().chain(&outcome).copied().collect();
    let requests = all.len() as f64;
    let (d, o, a) = (stats(decide), stats(outcome), stats(all));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    // Cores' worth of CPU used during the measurement by this generator plus
    // the server it started, and by everything else on the machine.
    let (ours_cores, others_cores) = match (cpu_start, cpu_end) {
        (Some((b0, o0)), Some((b1, o1))) => {
            let ours = (o1 - o0) / measured;
            (ours, ((b1 - b0) / measured - ours).max(0.0))
        }
        _ => (f64::NAN, f64::NAN),
    };
    if args.json {
        let s = |s: &Stats| serde_json::json!({"p50_ms": s.p50, "p99_ms": s.p99, "p99_9_ms": s.p999, "max_ms": s.max});
        println!(
            "{}",
            serde_json::json!({
                "target": target, "connections": args.connections, "pattern": format!("{:?}", args.pattern).to_lowercase(),
                "outcome_connections": outcome_connections, "cores": cores,
                "seconds": measured, "decisions": decisions, "outcomes": outcome_count(&tallies),
                "decisions_per_sec": decisions / measured, "requests_per_sec": requests / measured,
                "errors": errors, "cpu_cores_used": ours_cores, "cpu_cores_used_by_others": others_cores,
                "decide": s(&d), "outcome": s(&o), "all": s(&a),
                "server_rss_mib": {"first": rss_first, "peak": rss_peak, "last": rss_last},
                "server_disk_mb": {"peak": disk.iter().max().map(|&b| disk_mb(b)), "last": disk.last().map(|&b| disk_mb(b))},
                "server_log_bytes": log_bytes,
            })
        );
    } else {
        let reporters = match (args.no_outcomes, args.pattern) {
            (false, Pattern::Split) => format!(" + {outcome_connections} reporting outcomes"),
            (false, Pattern::Paired) => " (each decides, then reports)".to_string(),
            (true, _) => " (decisions only)".to_string(),
        };
        println!("target: {target}, {} keep-alive connections deciding{reporters}, {cores} cores", args.connections);
        println!(
            "measured {measured:.1} s after {:.1} s warm-up: {decisions:.0} decisions + {} outcomes, {errors} errors",
            args.warmup,
            outcome_count(&tallies)
        );
        println!(
            "cpu: {ours_cores:.2} cores used by generator + server, {others_cores:.2} by other processes (of {cores})"
        );
        println!("throughput: {:.0} decisions/s ({:.0} requests/s)", decisions / measured, requests / measured);
        println!("{:<9} {:>8} {:>8} {:>8} {:>8}", "latency", "p50 ms", "p99 ms", "p99.9 ms", "max ms");
        for (name, s) in [("decide", &d), ("outcome", &o), ("all", &a)] {
            println!("{name:<9} {:>8.3} {:>8.3} {:>8.3} {:>8.3}", s.p50, s.p99, s.p999, s.max);
        }
        if let (Some(first), Some(peak), Some(last)) = (rss_first, rss_peak, rss_last) {
            println!(
                "server rss: {first:.0} MiB when measuring began, {peak:.0} MiB at most, {last:.0} MiB at the end ({} samples)",
                rss.len()
            );
            let every: Vec<String> = rss.iter().step_by(10).map(|&k| format!("{:.0}", mib(k))).collect();
            println!("server rss every 10 s (MiB): {}", every.join(" "));
            let every: Vec<String> = disk.iter().step_by(10).map(|&b| format!("{:.0}", disk_mb(b))).collect();
            println!("server data directory every 10 s (MB): {}", every.join(" "));
        }
        if let Some(bytes) = log_bytes {
            println!("server log: {bytes} bytes");
        }
    }
    if let Some(e) = first_error {
        eprintln!("first error: {e}");
    }
    if errors > 0 {
        bail!("{errors} requests failed");
    }
    Ok(())
}

/// Bytes of the files under `dir`, recursively; files that vanish while
/// being counted (a compaction's temporary file) count as nothing.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// A process's resident set, from `/proc` (Linux).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

fn outcome_count(tallies: &[Tally]) -> usize {
    tallies.iter().map(|t| t.outcome_us.len()).sum()
}
