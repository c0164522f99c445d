//! `paramopt inspect`: what the agent believes, and why, read from any store.
//!
//! Everything here reads checkpoints; nothing writes except the files a user
//! asks for (exports and plots). Posteriors are shown as the sampling policy
//! sees them: each arm's mean advantage with a 95% interval.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _, Result};
use serde::Serialize;

use crate::agent::ModuleLearner;
use crate::eval::simulate::align;
use crate::space::{Context, ModuleSpace};
use crate::store::{Checkpoint, CheckpointMeta, Store};

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
        Some(g) => anyhow!("module {module:?} has no generation {g}"),
        None => anyhow!("module {module:?} has no checkpoint yet"),
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
        bail!("generations {} and {} have different parameters", a.generation, b.generation);
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

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct HistoryPoint {
    pub generation: u64,
    pub kind: String,
    pub created_at: f64,
    pub outcomes: u64,
    pub incumbent: f64,
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
        let p = cp
            .parameter_names
            .iter()
            .position(|n| n == parameter)
            .with_context(|| format!("module {module:?} has no parameter {parameter:?}"))?;
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
        let obj = value.as_object().context("rows are objects")?;
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

pub(crate) const W: f64 = 720.0;
pub(crate) const H: f64 = 360.0;
pub(crate) const PAD: f64 = 56.0;

pub(crate) fn svg_frame(
    title: &str,
    x_label: &str,
    y_label: &str,
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
) -> String {
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>
<line x1="{PAD}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{}</text>
"##,
        W / 2.0,
        escape(title),
        H - PAD,
        W - PAD,
        H - PAD,
        H - PAD,
        W / 2.0,
        H - 12.0,
        escape(x_label),
        H / 2.0,
        H / 2.0,
        escape(y_label),
    );
    for (i, t) in [0.0, 0.5, 1.0].iter().enumerate() {
        let (xv, yv) = (x0 + t * (x1 - x0), y0 + t * (y1 - y0));
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{:.3}</text><text x="{}" y="{:.1}" text-anchor="end">{:.4}</text>"#,
            PAD + t * (W - 2.0 * PAD),
            H - PAD + 16.0,
            xv,
            PAD - 6.0,
            H - PAD - t * (H - 2.0 * PAD) + 4.0,
            yv
        );
        let _ = i;
    }
    s
}

pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

pub(crate) fn scale(v: f64, (lo, hi): (f64, f64), from: f64, to: f64) -> f64 {
    if hi > lo {
        from + (v - lo) / (hi - lo) * (to - from)
    } else {
        (from + to) / 2.0
    }
}

pub(crate) fn padded(lo: f64, hi: f64) -> (f64, f64) {
    let pad = ((hi - lo) * 0.1).max(1e-6);
    (lo - pad, hi + pad)
}

/// Each arm's posterior mean with its 95% interval, and the incumbent, for
/// one parameter in one context.
pub fn posterior_svg(rows: &[ArmRow]) -> Result<String> {
    let first = rows.first().context("no arms to plot")?;
    let xs = padded(
        rows.iter().map(|r| r.value).fold(f64::INFINITY, f64::min),
        rows.iter().map(|r| r.value).fold(f64::NEG_INFINITY, f64::max),
    );
    let ys = padded(
        rows.iter().map(|r| r.lo95).fold(f64::INFINITY, f64::min),
        rows.iter().map(|r| r.hi95).fold(f64::NEG_INFINITY, f64::max),
    );
    let mut s = svg_frame(
        &format!("{} in {}: posterior per arm (95%)", first.parameter, first.context),
        "arm value",
        "mean advantage",
        xs,
        ys,
    );
    for r in rows {
        let x = scale(r.value, xs, PAD, W - PAD);
        let (ylo, yhi, ym) =
            (scale(r.lo95, ys, H - PAD, PAD), scale(r.hi95, ys, H - PAD, PAD), scale(r.mean, ys, H - PAD, PAD));
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{ylo:.1}" x2="{x:.1}" y2="{yhi:.1}" stroke="#3366cc" stroke-width="2"/><circle cx="{x:.1}" cy="{ym:.1}" r="4" fill="#3366cc"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#555">n={:.0}</text>"##,
            yhi - 6.0,
            r.samples
        );
    }
    let xi = scale(first.incumbent, xs, PAD, W - PAD);
    let _ = writeln!(
        s,
        r##"<line x1="{xi:.1}" y1="{PAD}" x2="{xi:.1}" y2="{}" stroke="#cc3333" stroke-dasharray="5,4"/><text x="{xi:.1}" y="{}" fill="#cc3333" text-anchor="middle">incumbent</text>"##,
        H - PAD,
        PAD - 4.0
    );
    s.push_str("</svg>\n");
    Ok(s)
}

/// The incumbent over generations; rollbacks marked.
pub fn history_svg(parameter: &str, context: Context, points: &[HistoryPoint]) -> Result<String> {
    if points.is_empty() {
        bail!("no generations to plot");
    }
    let xs = padded(points[0].generation as f64, points[points.len() - 1].generation as f64);
    let ys = padded(
        points.iter().map(|p| p.incumbent).fold(f64::INFINITY, f64::min),
        points.iter().map(|p| p.incumbent).fold(f64::NEG_INFINITY, f64::max),
    );
    let mut s =
        svg_frame(&format!("{parameter} in {context}: incumbent by generation"), "generation", "incumbent", xs, ys);
    let path: Vec<String> = points
        .iter()
        .map(|p| {
            format!("{:.1},{:.1}", scale(p.generation as f64, xs, PAD, W - PAD), scale(p.incumbent, ys, H - PAD, PAD))
        })
        .collect();
    let _ = writeln!(s, r##"<polyline points="{}" fill="none" stroke="#3366cc" stroke-width="2"/>"##, path.join(" "));
    for p in points.iter().filter(|p| p.kind != "checkpoint") {
        let x = scale(p.generation as f64, xs, PAD, W - PAD);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{PAD}" x2="{x:.1}" y2="{}" stroke="#cc3333" stroke-dasharray="4,3"/><text x="{x:.1}" y="{}" fill="#cc3333" text-anchor="middle">{}</text>"##,
            H - PAD,
            PAD - 4.0,
            p.kind
        );
    }
    s.push_str("</svg>\n");
    Ok(s)
}
