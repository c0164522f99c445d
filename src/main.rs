//! The `paramopt` command line.

/// `print!` that returns an error instead of panicking when stdout is closed
/// (`paramopt spaces --json | head -1`); `main` ends quietly on that error.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)?
    }};
}

/// `println!`, the same way as [`out!`].
macro_rules! outln {
    () => { out!("\n") };
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

mod demo;

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use paramopt::store::retention::{Retention, RetentionArgs};

use paramopt::eval::backtest::{self, BacktestOptions, MarketSource};
use paramopt::eval::simulate::{self, SimulateOptions};
use paramopt::inspect;
use paramopt::runtime::{RollbackTarget, Runtime, RuntimeOptions};
use paramopt::service::compose::Served;
use paramopt::service::config::{ServeArgs, ServeFile, ServeSettings};
use paramopt::service::server;
use paramopt::space::Context;
use paramopt::space::Spaces;
use paramopt::store::open_store;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "paramopt", version, about = "Online parameter learning for trading modules")]
struct Cli {
    /// Directory of module parameter spaces (*.toml) to use instead of the
    /// three built into the binary (`paramopt models export DIR` writes those out).
    #[arg(long, global = true, env = "PARAMOPT_MODELS")]
    models: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Write the three built-in models files (crypto, options, stocks) into DIR,
    /// to edit and then use with `--models DIR`.
    Export {
        dir: PathBuf,
        /// Overwrite files that exist already.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Print the OpenAPI 3.1 document of the HTTP API (`GET /v1/openapi.json`);
    /// `paramopt openapi > docs/openapi.json` regenerates the checked-in copy.
    Openapi,
    /// Print every module's parameter space (`--json`: the same document as `GET /v1/modules`).
    Spaces {
        /// Machine-readable JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Drive the agent against a seeded synthetic market and compare it with the seed defaults.
    Simulate {
        /// Outcomes per module.
        #[arg(long, default_value_t = 20_000)]
        outcomes: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Only this module.
        #[arg(long)]
        module: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The built-in models files.
    Models {
        #[command(subcommand)]
        what: ModelsCommand,
    },
    /// The first command to run: serve the agent on a local store, drive the three
    /// trading modules against it over HTTP on the shipped real prices, then compare it
    /// with the seed defaults and the out-of-sample oracle, draw the returns and show how
    /// to inspect what it learned.
    Demo {
        /// Seeds the agent (and the synthetic market).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The seeded synthetic market instead of the real prices.
        #[arg(long)]
        synthetic: bool,
        /// Real prices: at most this many decisions per module, the first of each
        /// stream (default: the whole stream). Synthetic: hourly bars [default: 20000],
        /// each module deciding once per bar after a 200-bar warm-up.
        #[arg(long)]
        bars: Option<usize>,
        /// Where the demo's store and charts go; a rerun clears it.
        #[arg(long, default_value = "demo-data")]
        data_dir: PathBuf,
        /// Also write the chart's PNG here (the README's picture: `--png docs/demo.png`).
        #[arg(long)]
        png: Option<PathBuf>,
        /// Address to serve on; by default a free port on 127.0.0.1.
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: std::net::SocketAddr,
    },
    /// Trade each module on a market (the shipped real data by default, the
    /// synthetic market or an OHLCV CSV) with the agent and with baselines and
    /// peers on the same bars, and compare them.
    Backtest(BacktestCli),
    /// Serve the HTTP API (API.md) until SIGINT or SIGTERM.
    Serve(ServeCli),
    /// Look at learned state in a store: checkpoints, posteriors, diffs, history, exports, plots.
    Inspect {
        /// Store URL: `data/`, `local:///path` or `firestore://PROJECT_ID`.
        #[arg(long, env = "PARAMOPT_STORE", default_value = "data/", global = true)]
        store: String,
        #[command(subcommand)]
        what: InspectCmd,
    },
    /// Roll a module back to a generation or to the seed defaults (for a
    /// stopped server; a running one takes `POST /v1/rollback`).
    Rollback {
        module: String,
        /// A generation number, or `defaults`.
        #[arg(long)]
        to: String,
        #[arg(long, env = "PARAMOPT_STORE", default_value = "data/")]
        store: String,
        #[arg(long, env = "PARAMOPT_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum InspectCmd {
    /// Every generation, newest first.
    List {
        /// Only this module.
        module: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One generation as tables per context: incumbents and each arm's posterior.
    Show {
        module: String,
        /// The newest when not given.
        generation: Option<u64>,
        /// Only this context, `session/regime`.
        #[arg(long)]
        context: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The incumbents that changed between two generations.
    Diff {
        module: String,
        from: u64,
        to: u64,
        #[arg(long)]
        json: bool,
    },
    /// One parameter's incumbent over every generation.
    History {
        module: String,
        /// `group.name`.
        parameter: String,
        /// `session/regime`.
        #[arg(long)]
        context: String,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        csv: bool,
    },
    /// `parameter_effectiveness`: how each parameter value did, per context
    /// and overall (recomputed by `serve` from its decision log).
    Effectiveness {
        module: String,
        /// Only this parameter, `group.name`.
        #[arg(long)]
        parameter: Option<String>,
        /// Only this context, `session/regime`, or `all` for the rows over every context.
        #[arg(long)]
        context: Option<String>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        csv: bool,
    },
    /// A generation's posteriors per context, parameter and arm, as JSON or CSV.
    Export {
        module: String,
        generation: Option<u64>,
        #[arg(long, value_parser = ["json", "csv"], default_value = "json")]
        format: String,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Plots, SVG and PNG: each arm's posterior, and the incumbent over generations.
    Plot {
        module: String,
        /// `group.name`.
        parameter: String,
        /// `session/regime`.
        #[arg(long)]
        context: String,
        #[arg(long)]
        generation: Option<u64>,
        /// Directory for the SVG and PNG files.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

/// Each setting comes from the flag, else its environment variable, else the
/// `[serve]` table of the config file, else the default.
#[derive(clap::Args)]
struct ServeCli {
    /// Address to listen on [default: 127.0.0.1:8700]; port 0 picks a free one.
    #[arg(long, env = "PARAMOPT_ADDR")]
    addr: Option<String>,
    /// Require `Authorization: Bearer <token>` on every /v1 request. Prefer
    /// PARAMOPT_TOKEN or --token-file: a flag's value shows in `ps`.
    #[arg(long, env = "PARAMOPT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the token from the first line of this file.
    #[arg(long, env = "PARAMOPT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// A TOML file whose `[serve]` table sets addr, token or token_file,
    /// log_json, request_timeout_secs, header_read_timeout_secs,
    /// max_connections, body_limit_bytes and workers.
    #[arg(long, env = "PARAMOPT_CONFIG")]
    config: Option<PathBuf>,
    /// Log JSON lines instead of human-readable text.
    #[arg(long, env = "PARAMOPT_LOG_JSON")]
    log_json: bool,
    /// Longest a request may take [default: 10].
    #[arg(long, env = "PARAMOPT_REQUEST_TIMEOUT_SECS")]
    request_timeout_secs: Option<f64>,
    /// Longest a connection may take to send a request's headers, or idle between requests [default: 10].
    #[arg(long, env = "PARAMOPT_HEADER_READ_TIMEOUT_SECS")]
    header_read_timeout_secs: Option<f64>,
    /// Connections served at once; more wait until one closes [default: 4096].
    #[arg(long, env = "PARAMOPT_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Largest request body accepted [default: 65536].
    #[arg(long, env = "PARAMOPT_BODY_LIMIT_BYTES")]
    body_limit_bytes: Option<usize>,
    /// Tokio worker threads [default: one per core].
    #[arg(long, env = "PARAMOPT_WORKERS")]
    workers: Option<usize>,
    /// Seed for reproducible decisions (tests); random by default.
    #[arg(long, env = "PARAMOPT_SEED")]
    seed: Option<u64>,
    /// Where checkpoints and the plan's collections go: `data/` (the embedded
    /// default), `local:///path` or `firestore://PROJECT_ID`.
    #[arg(long, env = "PARAMOPT_STORE")]
    store: Option<String>,
    /// Directory of the outcome journal (always local) [default: data].
    #[arg(long, env = "PARAMOPT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Checkpoint a module after this many new outcomes.
    #[arg(long, env = "PARAMOPT_CHECKPOINT_EVERY_OUTCOMES", default_value_t = 10_000)]
    checkpoint_every_outcomes: u64,
    /// ...or this many seconds after its last checkpoint, if it learned since.
    #[arg(long, env = "PARAMOPT_CHECKPOINT_EVERY_SECS", default_value_t = 60.0)]
    checkpoint_every_secs: f64,
    /// Run as one of several replicas on one store: merge what this process
    /// learned into the shared totals, and take in the others', this often.
    #[arg(long, env = "PARAMOPT_SYNC_EVERY_SECS")]
    sync_every_secs: Option<f64>,
    /// While the store is down, the longest wait between checkpoint attempts (doubling from 1 s).
    #[arg(long, env = "PARAMOPT_STORE_RETRY_MAX_SECS", default_value_t = 60.0)]
    store_retry_max_secs: f64,
    /// Periodic checkpoints kept per module, besides every rollback, promotion
    /// and rollback target (those are always kept).
    #[arg(long, env = "PARAMOPT_KEEP_CHECKPOINTS", default_value_t = 500)]
    keep_checkpoints: usize,
    /// Days the decision log keeps a decision; 0 keeps them forever.
    #[arg(long, env = "PARAMOPT_DECISION_LOG_DAYS", default_value_t = 30.0)]
    decision_log_days: f64,
    /// Days the store keeps a trade record; 0 (the default) keeps them forever.
    #[arg(long, env = "PARAMOPT_TRADE_DAYS", default_value_t = 0.0)]
    trade_days: f64,
}

fn init_logging(default_filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().with_current_span(true).with_span_list(false).init();
    } else {
        builder.init();
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // A reader that stopped reading (`| head`) is not an error.
        Err(e) if broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", error_report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// `Error: …` and each cause once: a cause whose text an earlier line
/// already carries (many errors print their source in their own message) is
/// not repeated.
fn error_report(e: &anyhow::Error) -> String {
    let mut text = format!("Error: {e}");
    for cause in e.chain().skip(1) {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(&format!("\nCaused by: {line}"));
        }
    }
    text
}

/// The modules' spaces: the `--models` directory, or the three built in.
fn load_spaces(models: Option<&std::path::Path>) -> Result<Spaces> {
    match models {
        Some(dir) => {
            let spaces = Spaces::load_dir(dir).with_context(|| format!("loading spaces from {}", dir.display()))?;
            let names: Vec<&str> = spaces.names().collect();
            tracing::info!(models = %dir.display(), modules = ?names, "loaded the models directory");
            Ok(spaces)
        }
        None => {
            let spaces = Spaces::builtin();
            let names: Vec<&str> = spaces.names().collect();
            tracing::info!(models = "built-in", modules = ?names, "loaded the built-in models (--models DIR replaces them)");
            Ok(spaces)
        }
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    if let Command::Serve(args) = &cli.command {
        return serve(cli.models.as_deref(), args);
    }
    // The demo drives the service as fast as it answers: its decision log
    // falling behind (and sampling) is expected there, not worth a warning.
    let quiet = matches!(cli.command, Command::Demo { .. });
    init_logging(if quiet { "warn,paramopt::decision_log=error" } else { "warn" }, false);
    let spaces = || load_spaces(cli.models.as_deref());
    match &cli.command {
        Command::Models { what: ModelsCommand::Export { dir, force } } => {
            for path in export_models(dir, *force)? {
                outln!("{}", path.display());
            }
        }
        Command::Openapi => out!("{}", paramopt::service::openapi::text()),
        Command::Spaces { json } => {
            let spaces = spaces()?;
            if *json {
                outln!("{}", serde_json::to_string_pretty(&paramopt::service::wire::modules_json(spaces.iter()))?);
            } else {
                out!("{}", spaces_table(&spaces));
            }
        }
        Command::Simulate { outcomes, seed, module, json } => {
            let spaces = spaces()?;
            let opts = SimulateOptions { outcomes: *outcomes, seed: *seed, module: module.clone() };
            let report = simulate::run(&spaces, &opts)?;
            if *json {
                outln!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                out!("{}", paramopt::report::simulate::table(&report));
            }
        }
        Command::Demo { seed, synthetic, bars, data_dir, png, addr } => {
            let opts = demo::DemoOptions {
                seed: *seed,
                synthetic: *synthetic,
                bars: *bars,
                png: png.clone(),
                data_dir: data_dir.clone(),
                addr: *addr,
                models: cli.models.clone(),
            };
            demo::run(spaces()?, &opts)?;
        }
        Command::Backtest(args) => backtest(&spaces()?, args)?,
        Command::Serve(_) => unreachable!("handled above"),
        Command::Inspect { store, what } => {
            let spaces = spaces()?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(inspect(&spaces, store, what))?;
        }
        Command::Rollback { module, to, store, data_dir, json } => {
            let spaces = spaces()?;
            let target = match to.as_str() {
                "defaults" => RollbackTarget::Defaults,
                n => RollbackTarget::Generation(
                    n.parse().with_context(|| format!("--to {n:?}: expected a generation number or \"defaults\""))?,
                ),
            };
            let options = RuntimeOptions { store: store.clone(), data_dir: data_dir.clone(), ..Default::default() };
            let meta = tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async {
                let rt = Runtime::start(spaces, options).await?;
                let meta = rt.rollback(module, target).await?;
                rt.agent.shutdown();
                anyhow::Ok(meta)
            })?;
            if *json {
                outln!("{}", serde_json::to_string_pretty(&meta)?);
            } else {
                out!("{}", inspect::list_table(&[meta]));
            }
        }
    }
    Ok(())
}

/// Writes the built-in models files into `dir` for editing (then `--models DIR`).
fn export_models(dir: &std::path::Path, force: bool) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let files: Vec<(PathBuf, &str)> = Spaces::builtin_files()
        .iter()
        .map(|(origin, text)| (dir.join(std::path::Path::new(origin).file_name().unwrap_or_default()), *text))
        .collect();
    if !force {
        if let Some((path, _)) = files.iter().find(|(p, _)| p.exists()) {
            anyhow::bail!("{} exists already: pass --force to overwrite it", path.display());
        }
    }
    for (path, text) in &files {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

fn serve(models: Option<&std::path::Path>, cli: &ServeCli) -> Result<()> {
    let file = match &cli.config {
        Some(path) => ServeFile::load(path)?,
        None => ServeFile::default(),
    };
    let args = ServeArgs {
        addr: cli.addr.clone(),
        store: cli.store.clone(),
        data_dir: cli.data_dir.clone(),
        token: cli.token.clone(),
        token_file: cli.token_file.clone(),
        log_json: cli.log_json,
        request_timeout_secs: cli.request_timeout_secs,
        header_read_timeout_secs: cli.header_read_timeout_secs,
        max_connections: cli.max_connections,
        body_limit_bytes: cli.body_limit_bytes,
        workers: cli.workers,
    };
    let settings = ServeSettings::resolve(args, file)?;
    init_logging("info,tower_http=info", settings.log_json);
    let spaces = load_spaces(models)?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = settings.workers {
        builder.worker_threads(n);
    }
    let tokio_rt = builder.enable_all().build().context("starting tokio")?;
    let options = RuntimeOptions {
        store: settings.store.clone(),
        data_dir: settings.data_dir.clone(),
        seed: cli.seed,
        checkpoint_every_outcomes: cli.checkpoint_every_outcomes,
        checkpoint_every_secs: cli.checkpoint_every_secs,
        sync_every_secs: cli.sync_every_secs,
        store_retry_max_secs: cli.store_retry_max_secs,
        retention: Retention::try_from(RetentionArgs {
            keep_checkpoints: cli.keep_checkpoints,
            decision_log_days: cli.decision_log_days,
            trade_days: cli.trade_days,
        })?,
    };
    let served = tokio_rt
        .block_on(Served::start(spaces.clone(), options, settings.options.clone()))
        .with_context(|| format!("opening the store {}", settings.store))?;
    let runtime = tokio_rt;
    runtime.block_on(async {
        let listener =
            tokio::net::TcpListener::bind(settings.addr).await.with_context(|| format!("binding {}", settings.addr))?;
        let local = listener.local_addr()?;
        tracing::info!(
            addr = %local,
            store = %settings.store,
            auth = settings.options.token.is_some(),
            modules = ?spaces.names().collect::<Vec<_>>(),
            "listening"
        );
        // One line on stdout, for scripts that start the server on port 0.
        outln!("paramopt listening on http://{local}");
        use std::io::Write as _;
        std::io::stdout().flush()?;
        server::serve(listener, served.state.clone(), server::shutdown_signal()).await.context("serving")?;
        anyhow::Ok(())
    })?;
    let errors = served.stop();
    drop(runtime);
    anyhow::ensure!(errors.is_empty(), "shutdown hooks failed: {errors:?}");
    Ok(())
}

/// The real markets `paramopt backtest` can replay.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum RealMarket {
    /// Crypto on BTC/USD hours (2017-2019), stocks and options on nine daily stocks (2004-2014).
    Default,
    /// Held out: stocks and options on 20 S&P 500 stocks' daily closes (2005-2022); crypto is skipped.
    Sp500,
}

#[derive(clap::Args, Debug)]
struct BacktestCli {
    /// Which real market: `default` or `sp500` (the held-out one; stocks and options only).
    #[arg(long, value_enum, conflicts_with_all = ["synthetic", "csv"])]
    market: Option<RealMarket>,
    /// The synthetic market (`--bars` hourly bars, seeded) instead of the real data.
    #[arg(long, conflicts_with = "csv")]
    synthetic: bool,
    /// An OHLCV CSV (timestamp,open,high,low,close,volume) instead of the real data.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Hourly bars of the synthetic market.
    #[arg(long, default_value_t = 30_000)]
    bars: usize,
    /// Seeds the agent, the random baselines, the peers and the synthetic market.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Several seeds, comma-separated (`1,2,3,4,5`): a table per seed, then the means.
    #[arg(long, value_delimiter = ',', conflicts_with = "seed")]
    seeds: Vec<u64>,
    /// Only this module (repeatable).
    #[arg(long)]
    module: Vec<String>,
    /// Exploration rate of the epsilon-greedy baseline.
    #[arg(long, default_value_t = 0.1)]
    epsilon: f64,
    /// Decisions per block of the block t-statistics against the defaults.
    #[arg(long, default_value_t = backtest::BLOCK)]
    block: usize,
    /// Skip the Python peers (Vowpal Wabbit, MABWiser).
    #[arg(long)]
    no_peers: bool,
    /// The peers' venv (made by scripts/peers/setup).
    #[arg(long, env = "PARAMOPT_PEERS_VENV")]
    peers_venv: Option<PathBuf>,
    /// Write each module's cumulative return and drawdown (the agent, the defaults, the
    /// out-of-sample oracle) here as `backtest-<module>.svg` and `.png` (the last seed's).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// The report as JSON (with `--seeds`: every run and the means).
    #[arg(long)]
    json: bool,
}

fn backtest(spaces: &Spaces, args: &BacktestCli) -> Result<()> {
    use paramopt::eval::{peers, seeds};
    let market = match (&args.csv, args.synthetic, args.market) {
        (Some(path), _, _) => MarketSource::Csv(path.clone()),
        (None, true, _) => MarketSource::Synthetic { bars: args.bars },
        (None, false, Some(RealMarket::Sp500)) => MarketSource::Sp500,
        (None, false, None | Some(RealMarket::Default)) => MarketSource::Real,
    };
    let peers =
        (!args.no_peers).then(|| peers::find_python(&args.peers_venv.clone().unwrap_or_else(peers::default_venv)));
    if let Some(Err(why)) = &peers {
        eprintln!("Vowpal Wabbit and MABWiser will not run: {why}");
    }
    let progress: Option<backtest::ProgressFn> = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let f: backtest::ProgressFn = Arc::new(|e: &backtest::ProgressEvent| {
            eprint!("\r{:<8} {:<15} {:>3}%", e.module, e.policy, 100 * e.done / e.total.max(1));
        });
        f
    });
    let seed_list = if args.seeds.is_empty() { vec![args.seed] } else { args.seeds.clone() };
    let mut reports = Vec::new();
    for &seed in &seed_list {
        let started = std::time::Instant::now();
        let opts = BacktestOptions {
            market: market.clone(),
            seed,
            modules: args.module.clone(),
            epsilon: args.epsilon,
            progress: progress.clone(),
            peers: peers.clone(),
            block: args.block,
            ..Default::default()
        };
        let report = backtest::run(spaces, &opts)?;
        if progress.is_some() {
            eprintln!();
        }
        eprintln!("seed {seed}: {:.1} s", started.elapsed().as_secs_f64());
        if !args.json {
            out!("{}", paramopt::report::backtest::table(&report));
            outln!();
        }
        reports.push(report);
    }
    if let (Some(dir), Some(report)) = (&args.plot, reports.last()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for m in &report.modules {
            let chart = paramopt::plot::returns_chart(&[paramopt::plot::returns_panel(m)])?;
            for path in chart.write(dir, &format!("backtest-{}", m.module))? {
                eprintln!("wrote {}", path.display());
            }
        }
    }
    let summary = (reports.len() > 1).then(|| seeds::summarise(&reports));
    match (args.json, summary) {
        (true, Some(summary)) => {
            outln!("{}", serde_json::to_string_pretty(&serde_json::json!({"runs": reports, "means": summary}))?)
        }
        (true, None) => outln!("{}", serde_json::to_string_pretty(&reports[0])?),
        (false, Some(summary)) => out!("{}", paramopt::report::seeds::table(&summary)),
        (false, None) => {}
    }
    Ok(())
}

fn parse_context(text: &str) -> Result<Context> {
    let (session, regime) = text
        .split_once('/')
        .with_context(|| format!("context {text:?}: expected session/regime, e.g. asia_prime/bullish"))?;
    Ok(Context::parse(session, regime)?)
}

async fn inspect(spaces: &Spaces, url: &str, what: &InspectCmd) -> Result<()> {
    let store = open_store(url).await.with_context(|| format!("opening the store {url}"))?;
    let space = |m: &str| spaces.get(m).cloned().with_context(|| format!("unknown module {m:?}"));
    match what {
        InspectCmd::List { module, json } => {
            let mut metas = Vec::new();
            for m in spaces.names().filter(|m| module.as_deref().is_none_or(|x| x == *m)) {
                metas.extend(store.list_checkpoints(m).await?);
            }
            if let Some(m) = module {
                space(m)?;
            }
            if *json {
                outln!("{}", serde_json::to_string_pretty(&metas)?);
            } else {
                out!("{}", inspect::list_table(&metas));
            }
        }
        InspectCmd::Show { module, generation, context, json } => {
            let space = space(module)?;
            let cp = inspect::load(store.as_ref(), module, *generation).await?;
            let only = context.as_deref().map(parse_context).transpose()?;
            let rows = inspect::arm_rows(&cp, &space, only)?;
            if *json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({"checkpoint": cp.meta(), "arms": rows}))?
                );
            } else {
                out!("{}", inspect::show_table(&cp, &space, &rows));
            }
        }
        InspectCmd::Diff { module, from, to, json } => {
            space(module)?;
            let a = inspect::load(store.as_ref(), module, Some(*from)).await?;
            let b = inspect::load(store.as_ref(), module, Some(*to)).await?;
            let rows = inspect::diff(&a, &b)?;
            if *json {
                outln!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                out!("{}", inspect::diff_table(&a, &b, &rows));
            }
        }
        InspectCmd::History { module, parameter, context, json, csv } => {
            space(module)?;
            let ctx = parse_context(context)?;
            let points = inspect::history(store.as_ref(), module, parameter, ctx).await?;
            if *json {
                outln!("{}", serde_json::to_string_pretty(&points)?);
            } else if *csv {
                out!("{}", inspect::to_csv(&points)?);
            } else {
                out!("{}", inspect::history_table(parameter, ctx, &points));
            }
        }
        InspectCmd::Effectiveness { module, parameter, context, json, csv } => {
            space(module)?;
            let only = match context.as_deref() {
                None => None,
                Some("all") => Some(None),
                Some(c) => Some(Some(parse_context(c)?)),
            };
            let mut rows = store.list_parameter_effectiveness(module).await?;
            rows.retain(|r| {
                parameter.as_ref().is_none_or(|p| &r.parameter_type == p)
                    && only.is_none_or(|c| match (c, r.session, r.regime) {
                        (None, None, None) => true,
                        (Some(c), Some(s), Some(g)) => c.session == s && c.regime == g,
                        _ => false,
                    })
            });
            if *json {
                outln!("{}", serde_json::to_string_pretty(&rows)?);
            } else if *csv {
                out!("{}", inspect::to_csv(&rows)?);
            } else if rows.is_empty() {
                outln!("no parameter_effectiveness rows for {module} yet: `serve` writes them from its decision log");
            } else {
                out!("{}", inspect::effectiveness_table(&rows));
            }
        }
        InspectCmd::Export { module, generation, format, out } => {
            let space = space(module)?;
            let cp = inspect::load(store.as_ref(), module, *generation).await?;
            let rows = inspect::arm_rows(&cp, &space, None)?;
            let text = if format == "csv" {
                inspect::to_csv(&rows)?
            } else {
                serde_json::to_string_pretty(&serde_json::json!({"checkpoint": cp.meta(), "arms": rows}))?
            };
            match out {
                Some(path) => std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?,
                None => out!("{text}"),
            }
        }
        InspectCmd::Plot { module, parameter, context, generation, out } => {
            let space = space(module)?;
            let ctx = parse_context(context)?;
            let cp = inspect::load(store.as_ref(), module, *generation).await?;
            let rows: Vec<_> =
                inspect::arm_rows(&cp, &space, Some(ctx))?.into_iter().filter(|r| &r.parameter == parameter).collect();
            if rows.is_empty() {
                anyhow::bail!("module {module:?} has no parameter {parameter:?}");
            }
            let points = inspect::history(store.as_ref(), module, parameter, ctx).await?;
            std::fs::create_dir_all(out)?;
            let stem = format!("{module}-{}-{}", parameter.replace('.', "_"), context.replace('/', "_"));
            for (name, chart) in [
                (format!("{stem}-posterior"), inspect::posterior_chart(&rows)?),
                (format!("{stem}-history"), inspect::history_chart(parameter, ctx, &points)?),
            ] {
                for path in chart.write(out, &name)? {
                    outln!("{}", path.display());
                }
            }
        }
    }
    Ok(())
}

fn spaces_table(spaces: &Spaces) -> String {
    let mut rows =
        vec![["module", "parameter", "group", "default", "lo", "hi", "kind", "arms"].map(String::from).to_vec()];
    for s in spaces.iter() {
        for p in &s.params {
            let group = if p.simplex { format!("{} (sum=1)", p.group) } else { p.group.clone() };
            rows.push(vec![
                s.name.clone(),
                p.full_name.clone(),
                group,
                format!("{}", p.default),
                format!("{}", p.lo),
                format!("{}", p.hi),
                format!("{:?}", p.kind).to_lowercase(),
                p.arms.iter().map(|a| format!("{}", (a * 1e6).round() / 1e6)).collect::<Vec<_>>().join(" "),
            ]);
        }
    }
    paramopt::report::align(&rows)
}
