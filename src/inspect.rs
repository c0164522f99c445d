//! `paramopt inspect`: what the agent believes, and why, read from any store.
//!
//! Everything here reads checkpoints; nothing writes except the files a user
//! asks for (exports and plots). Posteriors are shown as the sampling policy
//! sees them: each arm's mean advantage with a 95% interval.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::Arc;

use serde::Serialize;

use crate::agent::ModuleLearner;
use crate::plot::PlotError;
use crate::plot::{self, ArmPoint, Rendered};
use crate::report::align;
use crate::space::{Context, ModuleSpace};
use crate::store::{Checkpoint, CheckpointMeta, HistoryPoint, Store, StoreError};

/// What `paramopt inspect` could not do, naming the module, generation or
/// parameter it was asked for.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("module {module:?} has no generation {generation}")]
    NoGeneration { module: String, generation: u64 },
    #[error("module {module:?} has no checkpoint yet")]
    NoCheckpoint { module: String },
    #[error("generations {a} and {b} have different parameters")]
    DifferentParameters { a: u64, b: u64 },
    #[error("module {module:?} has no parameter {parameter:?}")]
    NoParameter { module: String, parameter: String },
    #[error("rows to export: {0}")]
    Rows(#[from] serde_json::Error),
    #[error("rows to export must be objects, not {0}")]
    NotAnObject(String),
    #[error("nothing to plot: {0}")]
    NothingToPlot(&'static str),
    #[error(transparent)]
    Plot(#[from] PlotError),
}

type Result<T> = std::result::Result<T, InspectError>;

/// One arm of one parameter in one context.
#[derive(Debug, Clone, Serialize)]
pub struct ArmRow {
    pub context: String,
    pub parameter: String,
    pub arm: usize,
    pub value: f64,
    /// Outcomes behind this arm in this context (discounted).
    pub samples: f64,
    /// Posterior mean advantage over the context's running mean reward.
    pub mean: f64,
    pub lo95: f64,
    pub hi95: f64,
    pub incumbent: f64,
}

/// Loads a generation (the newest when `generation` is `None`).
pub async fn load(store: &dyn Store, module: &str, generation: Option<u64>) -> Result<Checkpoint> {
    let cp = match generation {
        Some(g) => store.get_checkpoint(module, g).await?,
        None => store.latest_checkpoint(module).await?,
    };
    cp.ok_or_else(|| match generation {
        Some(generation) => InspectError::NoGeneration { module: module.to_string(), generation },
        None => InspectError::NoCheckpoint { module: module.to_string() },
    })
}

/// Every arm's posterior in every context (or just `only`).
pub fn arm_rows(cp: &Checkpoint, space: &Arc<ModuleSpace>, only: Option<Context>) -> Result<Vec<ArmRow>> {
    let learner: ModuleLearner = cp.to_learner(space.clone(), 0)?;
    let mut rows = Vec::new();
    for ctx in Context::all().filter(|c| only.is_none_or(|o| o == *c)) {
        let c = ctx.index();
        for (p, param) in space.params.iter().enumerate() {
            for (k, &value) in param.arms.iter().enumerate() {
                let post = learner.stats.posterior(&learner.settings, c, p, k);
                let sd = post.mean_sd();
                rows.push(ArmRow {
                    context: ctx.to_string(),
                    parameter: param.full_name.clone(),
                    arm: k,
                    value,
                    samples: learner.stats.cells[c][p][k].n,
                    mean: post.m,
                    lo95: post.m - 1.96 * sd,
                    hi95: post.m + 1.96 * sd,
                    incumbent: learner.incumbents[c][p],
                });
            }
        }
    }
    Ok(rows)
}

pub fn list_table(metas: &[CheckpointMeta]) -> String {
    let mut rows = vec![["module", "generation", "kind", "parent", "created", "outcomes", "mean reward", "note"]
        .map(String::from)
        .to_vec()];
    for m in metas {
        rows.push(vec![
            m.module.clone(),
            m.generation.to_string(),
            format!("{:?}", m.kind).to_lowercase(),
            m.parent.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            crate::store::rfc3339(m.created_at),
            m.outcome_count.to_string(),
            format!("{:.6}", m.mean_reward),
            m.note.clone().unwrap_or_default(),
        ]);
    }
    align(&rows)
}

/// Per context: each parameter's incumbent, default, and its arms as
/// `value: mean [lo, hi] n=samples`.
pub fn show_table(cp: &Checkpoint, space: &ModuleSpace, rows: &[ArmRow]) -> String {
    let mut out = format!(
        "{} generation {} ({:?}), {} outcomes, mean reward {:.6}\n",
        cp.module, cp.generation, cp.kind, cp.outcome_count, cp.mean_reward
    );
    for ctx in Context::all() {
        let in_ctx: Vec<&ArmRow> = rows.iter().filter(|r| r.context == ctx.to_string()).collect();
        if in_ctx.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n[{ctx}]");
        let mut table = vec![["parameter", "incumbent", "default", "arms: value = mean advantage [95% interval] (n)"]
            .map(String::from)
            .to_vec()];
        for param in &space.params {
            let arms: Vec<String> = in_ctx
                .iter()
                .filter(|r| r.parameter == param.full_name)
                .map(|r| format!("{:.4} = {:+.4} [{:+.4}, {:+.4}] ({:.0})", r.value, r.mean, r.lo95, r.hi95, r.samples))
                .collect();
            let incumbent =
                in_ctx.iter().find(|r| r.parameter == param.full_name).map(|r| r.incumbent).unwrap_or(f64::NAN);
            table.push(vec![
                param.full_name.clone(),
                format!("{incumbent:.4}"),
                format!("{}", param.default),
                arms.join("; "),
            ]);
        }
        out.push_str(&align(&table));
    }
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct DiffRow {
    pub context: String,
    pub parameter: String,
    pub from: f64,
    pub to: f64,
    pub change: f64,
}

/// Incumbents that differ between two generations.
pub fn diff(a: &Checkpoint, b: &Checkpoint) -> Result<Vec<DiffRow>> {
    if a.parameter_names != b.parameter_names {
        return Err(InspectError::DifferentParameters { a: a.generation, b: b.generation });
    }
    let mut rows = Vec::new();
    for (c, ctx) in Context::all().enumerate() {
        for (p, name) in a.parameter_names.iter().enumerate() {
            let (from, to) = (a.incumbents[c][p], b.incumbents[c][p]);
            if from != to {
                rows.push(DiffRow { context: ctx.to_string(), parameter: name.clone(), from, to, change: to - from });
            }
        }
    }
    Ok(rows)
}

pub fn diff_table(a: &Checkpoint, b: &Checkpoint, rows: &[DiffRow]) -> String {
    let mut out = format!(
        "{}: generation {} ({} outcomes) -> {} ({} outcomes): {} incumbents changed\n",
        a.module,
        a.generation,
        a.outcome_count,
        b.generation,
        b.outcome_count,
        rows.len()
    );
    let mut table = vec![["context", "parameter", "from", "to", "change"].map(String::from).to_vec()];
    for r in rows {
        table.push(vec![
            r.context.clone(),
            r.parameter.clone(),
            format!("{:.4}", r.from),
            format!("{:.4}", r.to),
            format!("{:+.4}", r.change),
        ]);
    }
    out.push_str(&align(&table));
    out
}

/// The incumbent of `parameter` in `context` at every generation, oldest
/// first. Reads every checkpoint, so it reports progress on a terminal.
pub async fn history(store: &dyn Store, module: &str, parameter: &str, context: Context) -> Result<Vec<HistoryPoint>> {
    let mut metas = store.list_checkpoints(module).await?;
    metas.reverse();
    let progress = std::io::stderr().is_terminal();
    let mut points = Vec::with_capacity(metas.len());
    for (i, m) in metas.iter().enumerate() {
        if progress {
            eprint!("\rreading generation {}/{}", i + 1, metas.len());
        }
        let cp = load(store, module, Some(m.generation)).await?;
        let p = cp.parameter_names.iter().position(|n| n == parameter).ok_or_else(|| InspectError::NoParameter {
            module: module.to_string(),
            parameter: parameter.to_string(),
        })?;
        points.push(HistoryPoint {
            generation: m.generation,
            kind: format!("{:?}", m.kind).to_lowercase(),
            created_at: m.created_at,
            outcomes: m.outcome_count,
            incumbent: cp.incumbents[context.index()][p],
        });
    }
    if progress {
        eprintln!();
    }
    Ok(points)
}

pub fn history_table(parameter: &str, context: Context, points: &[HistoryPoint]) -> String {
    let mut table = vec![["generation", "kind", "created", "outcomes", "incumbent"].map(String::from).to_vec()];
    for p in points {
        table.push(vec![
            p.generation.to_string(),
            p.kind.clone(),
            crate::store::rfc3339(p.created_at),
            p.outcomes.to_string(),
            format!("{:.4}", p.incumbent),
        ]);
    }
    format!("{parameter} in {context}:\n{}", align(&table))
}

/// `parameter_effectiveness` rows as a table: per parameter value and
/// context (`all` over every context), success rate, average return and
/// sample size, best average return first within each parameter and context.
pub fn effectiveness_table(rows: &[crate::store::ParameterEffectiveness]) -> String {
    let mut sorted: Vec<_> = rows.iter().collect();
    let context = |r: &crate::store::ParameterEffectiveness| match (r.session, r.regime) {
        (Some(s), Some(g)) => format!("{}/{}", s.as_str(), g.as_str()),
        _ => "all".to_string(),
    };
    sorted.sort_by(|a, b| {
        (&a.parameter_type, context(a))
            .cmp(&(&b.parameter_type, context(b)))
            .then(b.avg_return.total_cmp(&a.avg_return))
    });
    let mut table =
        vec![["parameter", "context", "value", "success", "avg return", "samples"].map(String::from).to_vec()];
    for r in sorted {
        table.push(vec![
            r.parameter_type.clone(),
            context(r),
            format!("{:.4}", r.parameter_value),
            format!("{:.1}%", 100.0 * r.success_rate),
            format!("{:+.5}", r.avg_return),
            r.sample_size.to_string(),
        ]);
    }
    align(&table)
}

/// CSV of serialisable rows, header from the field names.
pub fn to_csv<T: Serialize>(rows: &[T]) -> Result<String> {
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let value = serde_json::to_value(row)?;
        let obj = value.as_object().ok_or_else(|| InspectError::NotAnObject(value.to_string()))?;
        if i == 0 {
            out.push_str(&obj.keys().cloned().collect::<Vec<_>>().join(","));
            out.push('\n');
        }
        let cells: Vec<String> = obj
            .values()
            .map(|v| match v {
                serde_json::Value::String(s) if s.contains([',', '"', '\n']) => {
                    format!("\"{}\"", s.replace('"', "\"\""))
                }
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    Ok(out)
}

/// Each arm's posterior mean with its 95% interval, and the incumbent, for
/// one parameter in one context (`crate::plot`, SVG and PNG).
pub fn posterior_chart(rows: &[ArmRow]) -> Result<Rendered> {
    let first = rows.first().ok_or(InspectError::NothingToPlot("no arms"))?;
    let arms: Vec<ArmPoint> = rows
        .iter()
        .map(|r| ArmPoint { value: r.value, mean: r.mean, lo95: r.lo95, hi95: r.hi95, samples: r.samples })
        .collect();
    let title = format!("{} in {}: posterior per arm (95%)", first.parameter, first.context);
    Ok(plot::posterior_chart(&title, &arms, first.incumbent)?)
}

/// The incumbent over generations, rollbacks and promotions marked (`crate::plot`, SVG and PNG).
pub fn history_chart(parameter: &str, context: Context, points: &[HistoryPoint]) -> Result<Rendered> {
    if points.is_empty() {
        return Err(InspectError::NothingToPlot("no generations"));
    }
    let points: Vec<plot::HistoryPoint> = points
        .iter()
        .map(|p| plot::HistoryPoint { generation: p.generation, incumbent: p.incumbent, kind: p.kind.clone() })
        .collect();
    Ok(plot::history_chart(&format!("{parameter} in {context}: incumbent by generation"), &points)?)
}
