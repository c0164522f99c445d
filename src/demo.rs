//! `paramopt demo`: a newcomer's first look at the agent at work.
//!
//! It serves the agent exactly as `paramopt serve` does (the same runtime,
//! router and embedded local store, in a data directory of its own, on
//! 127.0.0.1 with a port the OS picks) and drives the three trading modules
//! against it over HTTP, concurrently, one thread each, as a real module
//! would: `POST /v1/decisions` with the opportunity's context and features,
//! then `POST /v1/outcomes` when the trade closes, bars later. The markets
//! are `paramopt backtest`'s, built by `eval::backtest::streams`: by default
//! the real prices the project ships (crypto on BTC/USD hours, stocks on
//! nine daily US stocks, options priced on them), or with `--synthetic` the
//! seeded synthetic market; the trading rules and the bar-order walk with
//! delayed outcomes are the backtest's too (`eval::trading`,
//! `eval::backtest::drive`). At the end it stops the server, scores the
//! served agent's decisions against the seed defaults and the out-of-sample
//! oracle on the same opportunities (`eval::backtest::compare_served`),
//! prints the closing table (the second half: return, Sharpe, maximum
//! drawdown; each module's loss budget) with one sentence per module on
//! whether the agent beat the defaults, draws the cumulative returns and
//! drawdowns (`crate::plot`, SVG and PNG) and prints the `paramopt inspect`
//! commands that show what was learned.
//!
//! Each run starts from a cold agent: it deletes the data directory a
//! previous demo wrote (marked by a `.paramopt-demo` file) and refuses any
//! other non-empty directory. The seed fixes the agent's random draws (and
//! the synthetic market); served decisions also depend on when the writer
//! publishes what it learned, so two runs with one seed agree closely, not
//! exactly.

use std::collections::VecDeque;
use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use tokio::runtime::Handle;

use paramopt::agent::BudgetStatus;
use paramopt::eval::backtest::{
    self, BacktestOptions, BacktestReport, Driver, MarketSource, ModuleBacktest, Pass, Stream,
};
use paramopt::eval::trading::{Opportunity, Trade};
use paramopt::runtime::RuntimeOptions;
use paramopt::service::client::{Client, Method};
use paramopt::service::compose::Served;
use paramopt::service::{server, ServiceOptions};
use paramopt::space::{Context, ModuleSpace, Spaces};

mod closing;

/// The file that marks a data directory as the demo's own, safe to clear.
const MARKER: &str = ".paramopt-demo";
/// Connections per module that report outcomes: an outcome is acknowledged
/// once it is in the journal (one `fdatasync` per batch), so a module keeps
/// several in flight rather than waiting for each.
const REPORTERS: usize = 4;
/// Decisions in the progress bars' moving averages.
const WINDOW: usize = 2_000;
/// Hourly bars of the synthetic market unless `--bars` says otherwise.
pub const SYNTHETIC_BARS: usize = 20_000;

pub struct DemoOptions {
    pub seed: u64,
    /// The synthetic market instead of the real prices.
    pub synthetic: bool,
    /// Synthetic: hourly bars (default [`SYNTHETIC_BARS`]). Real: at most
    /// this many decisions per module, the first of its stream (default: all).
    pub bars: Option<usize>,
    /// Also write the chart's PNG here (README's picture: `docs/demo.png`).
    pub png: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub addr: SocketAddr,
    /// The `--models` the command was given, repeated in the printed commands.
    pub models: Option<PathBuf>,
}

/// Runs the demo and prints its report on standard output (progress on standard error).
pub fn run(spaces: Spaces, opts: &DemoOptions) -> Result<()> {
    let started = Instant::now();
    prepare_data_dir(&opts.data_dir)?;
    let market = if opts.synthetic {
        MarketSource::Synthetic { bars: opts.bars.unwrap_or(SYNTHETIC_BARS) }
    } else {
        MarketSource::Real
    };
    let bt = BacktestOptions { market, seed: opts.seed, ..Default::default() };
    let selected: Vec<Arc<ModuleSpace>> = spaces.iter().cloned().collect();
    let (label, market_bars, mut streams, _) =
        backtest::streams(&selected, &bt).context("building the modules' decision streams")?;
    if let (false, Some(n)) = (opts.synthetic, opts.bars) {
        // A shorter run on the same prices: each module's first n decisions.
        // Their trades still close inside the data, which goes on after them.
        for s in &mut streams {
            s.opportunities.truncate(n.max(2));
        }
    }
    let streams: Vec<Arc<Stream>> = streams.into_iter().map(Arc::new).collect();
    let decisions = streams.iter().map(|s| s.opportunities.len()).max().unwrap_or(0);
    let store = format!("{}/", opts.data_dir.display());

    let tokio_rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    let options = RuntimeOptions {
        store: store.clone(),
        data_dir: opts.data_dir.clone(),
        seed: Some(opts.seed),
        // About four generations per module, for `inspect list`, `diff` and `history`.
        checkpoint_every_outcomes: (decisions as u64 / 4).max(250),
        ..Default::default()
    };
    let served = tokio_rt
        .block_on(Served::start(spaces.clone(), options, ServiceOptions::default()))
        .with_context(|| format!("opening the store {store}"))?;
    let listener = tokio_rt
        .block_on(tokio::net::TcpListener::bind(opts.addr))
        .with_context(|| format!("binding {}", opts.addr))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio_rt.spawn(server::serve(listener, served.state.clone(), async {
        let _ = stopped.await;
    }));
    tracing::info!(%addr, store = %store, decisions, seed = opts.seed, "demo serving");

    outln!("paramopt demo: serving the agent on http://{addr} (embedded store in {})", opts.data_dir.display());
    let lengths: Vec<String> = streams.iter().map(|s| format!("{} {}", s.space.name, s.opportunities.len())).collect();
    outln!(
        "Decisions: {}. Each module asks for its parameters at every opportunity and reports the trade's \
         outcome when it closes.",
        lengths.join(", ")
    );
    std::io::stdout().flush()?;

    let bars: Vec<Arc<Progress>> =
        streams.iter().map(|s| Arc::new(Progress::new(&s.space.name, s.opportunities.len()))).collect();
    let drawing = Arc::new(AtomicBool::new(true));
    let drawer = {
        let (bars, drawing) = (bars.clone(), drawing.clone());
        std::thread::spawn(move || draw_progress(&bars, &drawing))
    };
    let handle = tokio_rt.handle().clone();
    let driven: Vec<Result<Pass>> = std::thread::scope(|scope| {
        let threads: Vec<_> = streams
            .iter()
            .zip(&bars)
            .map(|(stream, progress)| {
                let handle = handle.clone();
                scope.spawn(move || drive_module(&handle, addr, stream, progress))
            })
            .collect();
        threads.into_iter().map(|t| t.join().expect("module thread panicked")).collect()
    });
    drawing.store(false, Ordering::Relaxed);
    drawer.join().expect("progress thread panicked");
    let passes = driven.into_iter().collect::<Result<Vec<_>>>();

    // What each module would now be served without exploring; then stop,
    // which learns every accepted outcome and writes the final checkpoints.
    let greedy = passes.as_ref().ok().map(|_| {
        tokio_rt.block_on(async {
            let mut client = Client::connect(addr).await?;
            let mut greedy = Vec::new();
            for stream in &streams {
                greedy.push(greedy_values(&mut client, &stream.space).await?);
            }
            anyhow::Ok(greedy)
        })
    });
    eprintln!("Stopping the server: learning the last outcomes and writing the final checkpoints...");
    let _ = stop.send(());
    let ended = tokio_rt.block_on(serving);
    let errors = served.stop();
    // Each module's loss budget once every outcome is learned, as `/healthz` shows it.
    let budgets: Vec<BudgetStatus> =
        streams.iter().map(|s| served.runtime.agent.budget(&s.space.name)).collect::<Result<_, _>>()?;
    drop(tokio_rt);
    let passes = passes?;
    let greedy = greedy.expect("passes succeeded")?;
    ended.context("the server task")?.context("serving")?;
    anyhow::ensure!(errors.is_empty(), "shutdown hooks failed: {errors:?}");

    eprintln!("Scoring the same opportunities with the seed defaults and the out-of-sample oracle...");
    let modules: Vec<ModuleBacktest> = std::thread::scope(|scope| {
        let threads: Vec<_> = streams
            .iter()
            .zip(passes)
            .zip(&greedy)
            .map(|((stream, pass), greedy)| {
                let bt = &bt;
                scope.spawn(move || backtest::compare_served(stream.clone(), pass, greedy, bt))
            })
            .collect();
        threads.into_iter().map(|t| t.join().expect("scoring thread panicked")).collect::<Result<_, _>>()
    })?;
    let report = BacktestReport { market: label, bars: market_bars, seed: opts.seed, modules, notes: vec![] };

    outln!();
    out!("{}", closing::table(&report, &budgets));
    outln!();
    for (m, budget) in report.modules.iter().zip(&budgets) {
        outln!("{}", closing::verdict(m, budget));
    }

    let panels: Vec<_> = report.modules.iter().map(paramopt::plot::returns_panel).collect();
    let chart = paramopt::plot::returns_chart(&panels)?;
    let [svg, png] = chart.write(&opts.data_dir, "returns")?;
    outln!(
        "\nCumulative return and drawdown (the agent, the defaults, the out-of-sample oracle): {} and {}",
        svg.display(),
        png.display()
    );
    if let Some(copy) = &opts.png {
        std::fs::write(copy, &chart.png).with_context(|| format!("writing {}", copy.display()))?;
        outln!("The PNG copied to {}", copy.display());
    }
    outln!("Served, learned and scored in {:.0} s.", started.elapsed().as_secs_f64());

    let exe = shell_word(&program());
    let models = opts.models.as_ref().map(|m| format!(" --models {}", shell_word(&m.display().to_string())));
    let models = models.as_deref().unwrap_or("");
    let store = shell_word(&store);
    let (module, context) = busiest_context(&report.modules[0]);
    let generations = generations(&opts.data_dir, &module)?;
    outln!("\nWhat was learned is in {}. Look at it with:", opts.data_dir.display());
    outln!("  {exe}{models} inspect list --store {store}");
    outln!("  {exe}{models} inspect show {module} --context {context} --store {store}");
    if let (Some(first), Some(last)) = (generations.first(), generations.last().filter(|_| generations.len() > 1)) {
        outln!("  {exe}{models} inspect diff {module} {first} {last} --store {store}");
    }
    outln!("  {exe}{models} inspect effectiveness {module} --context all --store {store}");
    outln!(
        "or serve it, with the dashboard at http://127.0.0.1:8700/:\n  {exe}{models} serve --store {store} --data-dir {}",
        shell_word(&opts.data_dir.display().to_string())
    );
    outln!("(A rerun starts from scratch: it clears {}.)", opts.data_dir.display());
    Ok(())
}

/// Makes `dir` an empty directory marked as the demo's. A previous demo's is
/// cleared; anything else that is not empty is left alone, with an error.
fn prepare_data_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        let marked = dir.join(MARKER).exists();
        let empty = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?.next().is_none();
        if !marked && !empty {
            bail!("{} is not empty and was not written by `paramopt demo`; choose another --data-dir", dir.display());
        }
        if marked {
            std::fs::remove_dir_all(dir).with_context(|| format!("clearing the previous demo's {}", dir.display()))?;
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), "written by `paramopt demo`; the next demo run deletes this directory\n")
        .with_context(|| format!("writing {}", dir.join(MARKER).display()))?;
    Ok(())
}

/// How this program was started, for commands to copy: relative to the
/// working directory when it is below it (`target/release/paramopt`).
fn program() -> String {
    let Ok(exe) = std::env::current_exe() else { return "paramopt".into() };
    let relative = std::env::current_dir().ok().and_then(|cwd| exe.strip_prefix(cwd).ok().map(Path::to_path_buf));
    relative.unwrap_or(exe).display().to_string()
}

/// `s` quoted for a POSIX shell when it needs it.
fn shell_word(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-:+=,@".contains(&b)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The module's stored generations, oldest first.
fn generations(data_dir: &Path, module: &str) -> Result<Vec<u64>> {
    let url = format!("{}/", data_dir.display());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let metas = rt.block_on(async { paramopt::store::open_store(&url).await?.list_checkpoints(module).await })?;
    let mut generations: Vec<u64> = metas.iter().map(|m| m.generation).collect();
    generations.sort_unstable();
    Ok(generations)
}

/// The module and the context (`session/regime`) with the most decisions.
fn busiest_context(m: &ModuleBacktest) -> (String, String) {
    let mut counts = [0usize; Context::COUNT];
    for o in &m.stream.opportunities {
        counts[o.context.index()] += 1;
    }
    let best = (0..Context::COUNT).max_by_key(|&i| counts[i]).unwrap_or(0);
    (m.module.clone(), Context::from_index(best).expect("a context index").to_string())
}

/// The module's greedy values in every context, by [`Context::index`].
async fn greedy_values(client: &mut Client, space: &ModuleSpace) -> Result<Vec<Vec<f64>>> {
    let mut all = Vec::with_capacity(Context::COUNT);
    for c in Context::all() {
        let path = format!("/v1/parameters/{}?session={}&regime={}", space.name, c.session.as_str(), c.regime.as_str());
        let reply = client.request(Method::GET, &path, "").await?;
        if reply.status != 200 {
            bail!("GET {path}: {} {}", reply.status, reply.text());
        }
        all.push(parameter_values(space, &serde_json::from_slice(&reply.body)?)?);
    }
    Ok(all)
}

/// `{"parameters": {name: value}}` as values in the space's parameter order.
fn parameter_values(space: &ModuleSpace, answer: &serde_json::Value) -> Result<Vec<f64>> {
    space
        .params
        .iter()
        .map(|p| {
            answer["parameters"][&p.full_name]
                .as_f64()
                .with_context(|| format!("no value for {} in {answer}", p.full_name))
        })
        .collect()
}

/// One module's pass through its stream, through the server.
fn drive_module(handle: &Handle, addr: SocketAddr, stream: &Stream, progress: &Progress) -> Result<Pass> {
    let (queue, receiver) = tokio::sync::mpsc::channel::<String>(4 * 1024);
    let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
    let reporters: Vec<_> = (0..REPORTERS)
        .map(|_| {
            let receiver = receiver.clone();
            handle.spawn(async move {
                let mut client = Client::connect(addr).await?;
                let mut count = 0u64;
                loop {
                    let Some(body) = receiver.lock().await.recv().await else { break };
                    let reply = client.request(Method::POST, "/v1/outcomes", body.clone()).await?;
                    if reply.status != 200 {
                        bail!("POST /v1/outcomes {body}: {} {}", reply.status, reply.text());
                    }
                    count += 1;
                }
                anyhow::Ok(count)
            })
        })
        .collect();
    let client = handle.block_on(Client::connect(addr))?;
    let defaults: Vec<f64> = stream.space.params.iter().map(|p| p.default).collect();
    let mut driver = HttpDriver { handle, client, stream, queue, progress, defaults, recent: VecDeque::new() };
    let pass = backtest::drive(stream, &mut driver, &|_| {});
    drop(driver);
    let mut acknowledged = 0;
    for r in reporters {
        match handle.block_on(r) {
            Ok(Ok(n)) => acknowledged += n,
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(e).context("an outcome reporter"),
        }
    }
    let pass = pass?;
    progress.reported.store(acknowledged as usize, Ordering::Relaxed);
    progress.done.store(true, Ordering::Relaxed);
    tracing::debug!(module = %stream.space.name, decisions = pass.returns.len(), acknowledged, "module driven");
    Ok(pass)
}

impl HttpDriver<'_> {
    fn send(&mut self, body: serde_json::Value) -> Result<()> {
        self.queue.blocking_send(body.to_string()).ok().context("the outcome reporters stopped")?;
        self.progress.reported.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A trading module calling the service: decides over one connection (the
/// bar waits for its parameters) and queues each outcome for the reporters.
struct HttpDriver<'a> {
    handle: &'a Handle,
    client: Client,
    stream: &'a Stream,
    queue: tokio::sync::mpsc::Sender<String>,
    progress: &'a Progress,
    defaults: Vec<f64>,
    /// The last [`WINDOW`] decisions' returns: (agent, defaults).
    recent: VecDeque<(f64, f64)>,
}

impl Driver for HttpDriver<'_> {
    type Ticket = String;
    type Error = anyhow::Error;

    fn decide(&mut self, opp: &Opportunity) -> Result<(Vec<f64>, String)> {
        let space = &self.stream.space;
        let features: serde_json::Map<String, serde_json::Value> = self
            .stream
            .rule
            .feature_names()
            .iter()
            .zip(&opp.features)
            .map(|(name, v)| (name.to_string(), (*v).into()))
            .collect();
        let mut body = serde_json::json!({
            "module": space.name,
            "context": {"session": opp.context.session.as_str(), "regime": opp.context.regime.as_str()},
            "features": features,
            "explore": true,
        });
        // The trade this decision is for: parameters of other strategies are
        // served at their incumbents and learn nothing from it.
        if let Some(strategy) = opp.strategy {
            body["strategy"] = strategy.into();
        }
        let body = body.to_string();
        let reply = self.handle.block_on(self.client.request(Method::POST, "/v1/decisions", body.clone()))?;
        if reply.status != 200 {
            bail!("POST /v1/decisions {body}: {} {}", reply.status, reply.text());
        }
        let answer: serde_json::Value = serde_json::from_slice(&reply.body)?;
        let values = parameter_values(space, &answer)?;
        let id = answer["decision_id"].as_str().context("no decision_id")?.to_string();

        let agent = self.stream.rule.trade(opp, &values).return_pct;
        let defaults = self.stream.rule.trade(opp, &self.defaults).return_pct;
        self.recent.push_back((agent, defaults));
        if self.recent.len() > WINDOW {
            self.recent.pop_front();
        }
        let n = self.recent.len() as f64;
        let (a, d) = self.recent.iter().fold((0.0, 0.0), |(a, d), (x, y)| (a + x, d + y));
        self.progress.agent_mean.store((a / n).to_bits(), Ordering::Relaxed);
        self.progress.defaults_mean.store((d / n).to_bits(), Ordering::Relaxed);
        self.progress.decided.fetch_add(1, Ordering::Relaxed);
        Ok((values, id))
    }

    fn report(&mut self, _: &Opportunity, id: String, return_pct: f64, traded: bool, _: f64) -> Result<()> {
        let body = serde_json::json!({"decision_id": id, "traded": traded, "trade": {"return_pct": return_pct}});
        self.send(body)
    }

    /// What a module reports besides the return, as docs/api.md has it: the
    /// strategy and the confidence its gate compared, the position's path
    /// (options) and the capital it really used, so that every other value's
    /// outcome is known (docs/counterfactuals.md).
    fn report_trade(&mut self, _: &Opportunity, id: String, trade: &Trade, _: f64) -> Result<()> {
        let mut t = serde_json::json!({"return_pct": trade.return_pct, "confidence": trade.confidence});
        if let Some(strategy) = trade.strategy {
            t["strategy"] = strategy.into();
        }
        if !trade.path.is_empty() {
            t["exit_analysis"] = serde_json::json!({ "path": trade.path });
        }
        let mut body = serde_json::json!({"decision_id": id, "traded": trade.traded, "trade": t});
        let capital = self.stream.space.param_index("position_sizing.max_allocation");
        if let (Some(p), Some(c)) = (capital, trade.capital) {
            body["applied"] = serde_json::json!({ self.stream.space.params[p].full_name.clone(): c });
        }
        self.send(body)
    }
}

/// One module's progress, shared by its driver and the progress bars.
struct Progress {
    module: String,
    total: usize,
    decided: AtomicUsize,
    /// Outcomes sent (acknowledged ones once the module is done).
    reported: AtomicUsize,
    agent_mean: AtomicU64,
    defaults_mean: AtomicU64,
    done: AtomicBool,
}

impl Progress {
    fn new(module: &str, total: usize) -> Progress {
        Progress {
            module: module.to_string(),
            total,
            decided: AtomicUsize::new(0),
            reported: AtomicUsize::new(0),
            agent_mean: AtomicU64::new(0f64.to_bits()),
            defaults_mean: AtomicU64::new(0f64.to_bits()),
            done: AtomicBool::new(false),
        }
    }

    fn line(&self, elapsed: f64, width: usize) -> String {
        let decided = self.decided.load(Ordering::Relaxed);
        let share = decided as f64 / self.total.max(1) as f64;
        let filled = ((share * width as f64).round() as usize).min(width);
        let bar: String = std::iter::repeat_n('#', filled).chain(std::iter::repeat_n('-', width - filled)).collect();
        let state = if self.done.load(Ordering::Relaxed) { "done" } else { "" };
        format!(
            "{:<8} [{bar}] {:>3.0}% {:>6}/{} decisions {:>6} outcomes {:>5.0}/s  last {}: agent {:+.5} defaults {:+.5} {state}",
            self.module,
            100.0 * share,
            decided,
            self.total,
            self.reported.load(Ordering::Relaxed),
            decided as f64 / elapsed.max(1e-3),
            WINDOW,
            f64::from_bits(self.agent_mean.load(Ordering::Relaxed)),
            f64::from_bits(self.defaults_mean.load(Ordering::Relaxed)),
        )
    }
}

/// Until `running` turns false: on a terminal, one bar per module redrawn in
/// place; otherwise a line per module at every tenth of its stream.
fn draw_progress(bars: &[Arc<Progress>], running: &AtomicBool) {
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    let mut printed_tenths = vec![usize::MAX; bars.len()];
    let mut first = true;
    loop {
        let last = !running.load(Ordering::Relaxed);
        let elapsed = start.elapsed().as_secs_f64();
        let mut err = std::io::stderr().lock();
        if tty {
            if !first {
                let _ = write!(err, "\x1b[{}A", bars.len());
            }
            for b in bars {
                let _ = writeln!(err, "\r\x1b[2K{}", b.line(elapsed, 30));
            }
            first = false;
        } else {
            for (b, printed) in bars.iter().zip(printed_tenths.iter_mut()) {
                let tenth = 10 * b.decided.load(Ordering::Relaxed) / b.total.max(1);
                if tenth != *printed {
                    *printed = tenth;
                    let _ = writeln!(err, "{}", b.line(elapsed, 20));
                }
            }
        }
        let _ = err.flush();
        drop(err);
        if last {
            break;
        }
        std::thread::sleep(Duration::from_millis(if tty { 200 } else { 500 }));
    }
}
