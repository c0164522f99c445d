//! The `paramopt` command line.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use paramopt::eval::simulate::{self, SimulateOptions};
use paramopt::space::Spaces;

#[derive(Parser)]
#[command(name = "paramopt", version, about = "Online parameter learning for trading modules")]
struct Cli {
    /// Directory of module parameter spaces (*.toml).
    #[arg(long, global = true, env = "PARAMOPT_MODELS", default_value = "models")]
    models: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every module's parameter space.
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
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let spaces =
        || Spaces::load_dir(&cli.models).with_context(|| format!("loading spaces from {}", cli.models.display()));
    match &cli.command {
        Command::Spaces { json } => {
            let spaces = spaces()?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&spaces_json(&spaces))?);
            } else {
                print!("{}", spaces_table(&spaces));
            }
        }
        Command::Simulate { outcomes, seed, module, json } => {
            let spaces = spaces()?;
            let opts = SimulateOptions { outcomes: *outcomes, seed: *seed, module: module.clone() };
            let report = simulate::run(&spaces, &opts)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", simulate::table(&report));
            }
        }
    }
    Ok(())
}

fn spaces_json(spaces: &Spaces) -> serde_json::Value {
    let modules: Vec<serde_json::Value> = spaces
        .iter()
        .map(|s| {
            serde_json::json!({
                "module": s.name,
                "features": s.features,
                "simplex_groups": s.simplex_groups.iter().map(|g| &g.name).collect::<Vec<_>>(),
                "parameters": s.params.iter().map(|p| serde_json::json!({
                    "name": p.full_name,
                    "group": p.group,
                    "default": p.default,
                    "lo": p.lo,
                    "hi": p.hi,
                    "kind": p.kind,
                    "arms": p.arms,
                    "max_change_rate": p.max_change_rate,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({ "modules": modules })
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
    paramopt::eval::simulate::align(&rows)
}
