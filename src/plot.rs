//! Every chart paramopt draws, with the `plotters` crate, each as an SVG
//! document and a PNG image of the same drawing: the cumulative return and
//! drawdown of policies on a stream (`paramopt demo`, `paramopt backtest
//! --plot`), and a parameter's posterior per arm and incumbent over
//! generations (`paramopt inspect plot`).
//!
//! Text is laid out and rasterised with a font compiled into the binary
//! (DejaVu Sans, `assets/fonts/`), so the PNGs look the same on a machine
//! without fonts, such as a fresh CI machine. The SVGs name the generic
//! `sans-serif` family and leave the choice to the viewer.
//!
//! Ticks are plotters' own: steps of 1, 2 or 5 times a power of ten,
//! labelled by [`tick_label`] without floating-point noise. Each axis says
//! what it measures and in which unit.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;
use plotters_backend::{BackendColor, BackendCoord, BackendTextStyle, DrawingErrorKind};

use crate::eval::backtest::ModuleBacktest;

/// The font every chart's text uses, compiled in.
const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
/// The family the font is registered as, and that the SVGs name.
const FAMILY: &str = "sans-serif";
/// Width of every chart, pixels.
const WIDTH: u32 = 1000;
/// Height of one module's block of a returns chart (cumulative return and drawdown beneath).
const BLOCK_HEIGHT: u32 = 560;
/// Height of the returns chart's legend, above its panels.
const LEGEND_HEIGHT: u32 = 40;
/// Height of a posterior or history chart.
const SMALL_HEIGHT: u32 = 480;
/// Points per line at most: longer series are thinned (a stream has tens of
/// thousands of decisions, which would make the SVG megabytes long).
const MAX_POINTS: usize = 1_000;

/// The x axis of the returns charts.
pub const DECISIONS: &str = "decision (count, in stream order)";
/// The y axis of the cumulative-return panel.
pub const CUMULATIVE: &str = "cumulative return (fraction of equity)";
/// The y axis of the drawdown panel.
pub const DRAWDOWN: &str = "drawdown (fraction of equity)";

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("the built-in font does not load")]
    Font,
    #[error("drawing the chart: {0}")]
    Draw(String),
    #[error("encoding the PNG: {0}")]
    Png(#[from] png::EncodingError),
    #[error("nothing to plot: {0}")]
    Empty(&'static str),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

fn draw_err(e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw(e.to_string())
}

/// One drawing, as SVG text and as PNG bytes.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub svg: String,
    pub png: Vec<u8>,
}

impl Rendered {
    /// Writes `dir/stem.svg` and `dir/stem.png`; their paths, SVG first.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<[PathBuf; 2], PlotError> {
        let svg = dir.join(format!("{stem}.svg"));
        let png = dir.join(format!("{stem}.png"));
        for (path, bytes) in [(&svg, self.svg.as_bytes()), (&png, &self.png[..])] {
            std::fs::write(path, bytes).map_err(|source| PlotError::Write { path: path.clone(), source })?;
        }
        Ok([svg, png])
    }
}

/// One policy's per-decision returns (fraction of equity), in stream order.
#[derive(Debug, Clone)]
pub struct Line {
    /// The policy, as tables name it (`agent`, `defaults`, `oracle-oos`, ...).
    pub policy: String,
    pub returns: Vec<f64>,
}

/// One module's block of a returns chart.
#[derive(Debug, Clone)]
pub struct ReturnsPanel {
    pub module: String,
    /// The first decision of the second half, marked on both panels.
    pub second_half_from: usize,
    pub lines: Vec<Line>,
}

/// The policies the return charts draw: the agent, the defaults and the
/// out-of-sample oracle (the best fixed choice the first half revealed).
pub const PLOTTED: [&str; 3] = ["agent", "defaults", "oracle-oos"];

/// A module's block of a return chart ([`returns_chart`]): the
/// [`PLOTTED`] policies it has, per decision over the whole stream.
pub fn returns_panel(m: &ModuleBacktest) -> ReturnsPanel {
    let lines = PLOTTED
        .iter()
        .filter_map(|name| m.policy(name))
        .map(|p| Line { policy: p.policy.clone(), returns: p.returns.clone() })
        .collect();
    ReturnsPanel { module: m.module.clone(), second_half_from: m.second_half_from, lines }
}

/// Per panel, stacked: the cumulative return (the running sum of
/// per-decision returns, as the tables' totals) of each line, with a legend
/// and the second half's start marked, and its drawdown beneath (how far
/// that sum is below its running peak).
pub fn returns_chart(panels: &[ReturnsPanel]) -> Result<Rendered, PlotError> {
    if panels.is_empty() || panels.iter().all(|p| p.lines.iter().all(|l| l.returns.is_empty())) {
        return Err(PlotError::Empty("no returns"));
    }
    let height = LEGEND_HEIGHT + BLOCK_HEIGHT * panels.len() as u32;
    let mut policies: Vec<&str> = Vec::new();
    for l in panels.iter().flat_map(|p| &p.lines) {
        if !policies.contains(&l.policy.as_str()) {
            policies.push(&l.policy);
        }
    }
    let entries: Vec<(String, ShapeStyle)> =
        policies.iter().enumerate().map(|(i, p)| (legend_name(p), line_style(p, i))).collect();
    render((WIDTH, height), |root| {
        let (strip, body) = root.split_vertically(LEGEND_HEIGHT);
        legend_strip(&strip, &entries)?;
        for (area, panel) in body.split_evenly((panels.len(), 1)).iter().zip(panels) {
            draw_returns(area, panel)?;
        }
        Ok(())
    })
}

/// One arm of a posterior chart.
#[derive(Debug, Clone, Copy)]
pub struct ArmPoint {
    pub value: f64,
    pub mean: f64,
    pub lo95: f64,
    pub hi95: f64,
    pub samples: f64,
}

/// Each arm's posterior mean advantage with its 95% interval, and the
/// incumbent as a vertical line.
pub fn posterior_chart(title: &str, arms: &[ArmPoint], incumbent: f64) -> Result<Rendered, PlotError> {
    if arms.is_empty() {
        return Err(PlotError::Empty("no arms"));
    }
    let xs = span(arms.iter().map(|a| a.value).chain([incumbent]));
    let ys = span(arms.iter().flat_map(|a| [a.lo95, a.hi95]));
    let entries = [
        ("95% interval".to_string(), BLUE_LINE),
        ("posterior mean (n = outcomes)".to_string(), BLUE.stroke_width(8)),
        ("incumbent".to_string(), RED.stroke_width(2)),
    ];
    render((WIDTH, SMALL_HEIGHT + LEGEND_HEIGHT), |root| {
        let (strip, body) = root.split_vertically(LEGEND_HEIGHT);
        legend_strip(&strip, &entries)?;
        let x_title = "arm value (parameter units)";
        let mut chart = frame(&body, title, xs, ys, x_title, "mean advantage (reward units)", 8)?;
        chart
            .draw_series(arms.iter().map(|a| PathElement::new(vec![(a.value, a.lo95), (a.value, a.hi95)], BLUE_LINE)))
            .map_err(draw_err)?;
        chart.draw_series(arms.iter().map(|a| Circle::new((a.value, a.mean), 4, BLUE.filled()))).map_err(draw_err)?;
        chart
            .draw_series(
                arms.iter()
                    .map(|a| Text::new(format!(" n={:.0}", a.samples), (a.value, a.hi95), text(12).color(&GREY_TEXT))),
            )
            .map_err(draw_err)?;
        chart
            .draw_series(DashedLineSeries::new([(incumbent, ys.0), (incumbent, ys.1)], 6, 4, RED.stroke_width(2)))
            .map_err(draw_err)?;
        Ok(())
    })
}

/// One generation of a history chart.
#[derive(Debug, Clone)]
pub struct HistoryPoint {
    pub generation: u64,
    pub incumbent: f64,
    /// `checkpoint`, `rollback`, `promotion`...: all but checkpoints are marked.
    pub kind: String,
}

/// The incumbent by generation, with rollbacks and promotions marked.
pub fn history_chart(title: &str, points: &[HistoryPoint]) -> Result<Rendered, PlotError> {
    if points.is_empty() {
        return Err(PlotError::Empty("no generations"));
    }
    let xs = span(points.iter().map(|p| p.generation as f64));
    let ys = span(points.iter().map(|p| p.incumbent));
    let marked: Vec<&HistoryPoint> = points.iter().filter(|p| p.kind != "checkpoint").collect();
    let mut entries = vec![("incumbent".to_string(), BLUE_LINE)];
    if !marked.is_empty() {
        entries.push(("rollback or promotion".to_string(), RED.stroke_width(1)));
    }
    // Generations are whole numbers: no more ticks than generations, so
    // that no tick falls between two.
    let generations = (points[points.len() - 1].generation - points[0].generation + 1).clamp(2, 8) as usize;
    render((WIDTH, SMALL_HEIGHT + LEGEND_HEIGHT), |root| {
        let (strip, body) = root.split_vertically(LEGEND_HEIGHT);
        legend_strip(&strip, &entries)?;
        let x_title = "generation (checkpoint number)";
        let mut chart = frame(&body, title, xs, ys, x_title, "incumbent (parameter units)", generations)?;
        let line: Vec<(f64, f64)> = points.iter().map(|p| (p.generation as f64, p.incumbent)).collect();
        chart.draw_series(LineSeries::new(line, BLUE_LINE).point_size(3)).map_err(draw_err)?;
        for p in &marked {
            let x = p.generation as f64;
            chart.draw_series(DashedLineSeries::new([(x, ys.0), (x, ys.1)], 5, 4, RED.into())).map_err(draw_err)?;
            chart.draw_series([Text::new(p.kind.clone(), (x, ys.1), text(12).color(&RED))]).map_err(draw_err)?;
        }
        Ok(())
    })
}

/// A tick's label: the value with no floating-point noise (`0.3`, not
/// `0.30000000000000004`), thousands separated by commas.
pub fn tick_label(v: f64) -> String {
    let v = if v.abs() < 1e-12 { 0.0 } else { v };
    let fixed = format!("{v:.9}");
    let trimmed = fixed.trim_end_matches('0').trim_end_matches('.');
    let (sign, digits) = trimmed.strip_prefix('-').map_or(("", trimmed), |d| ("-", d));
    let (int, frac) = digits.split_once('.').map_or((digits, None), |(i, f)| (i, Some(f)));
    let int = if int.len() > 3 {
        let bytes = int.as_bytes();
        let mut out = String::new();
        for (i, b) in bytes.iter().enumerate() {
            if i > 0 && (bytes.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(*b as char);
        }
        out
    } else {
        int.to_string()
    };
    match frac {
        Some(f) => format!("{sign}{int}.{f}"),
        None => format!("{sign}{int}"),
    }
}

const BLUE_LINE: ShapeStyle = ShapeStyle { color: RGBAColor(0x33, 0x66, 0xcc, 1.0), filled: false, stroke_width: 2 };
const GREY_TEXT: RGBColor = RGBColor(0x55, 0x55, 0x55);

/// Each policy keeps its colour whichever policies a chart holds.
fn colour_of(policy: &str, i: usize) -> RGBColor {
    const NAMED: [(&str, RGBColor); 10] = [
        ("agent", RGBColor(0xcc, 0x33, 0x33)),
        ("defaults", RGBColor(0x55, 0x55, 0x55)),
        ("random", RGBColor(0xbb, 0xbb, 0x33)),
        ("epsilon-greedy", RGBColor(0x33, 0xaa, 0x55)),
        ("ucb1", RGBColor(0x33, 0x66, 0xcc)),
        ("thompson", RGBColor(0xaa, 0x55, 0xcc)),
        ("vw", RGBColor(0x33, 0xbb, 0xbb)),
        ("mabwiser", RGBColor(0x77, 0x77, 0x22)),
        ("oracle-oos", RGBColor(0xee, 0x88, 0x33)),
        ("oracle", RGBColor(0x22, 0x22, 0x22)),
    ];
    NAMED.iter().find(|(n, _)| *n == policy).map_or(NAMED[i % NAMED.len()].1, |(_, c)| *c)
}

/// How a policy's line is drawn. The agent is drawn last and thinner than
/// the defaults' wide pale line, so that where it served the defaults both
/// stay visible, one inside the other.
fn line_style(policy: &str, i: usize) -> ShapeStyle {
    match policy {
        "defaults" => RGBColor(0x99, 0x99, 0x99).stroke_width(5),
        other => colour_of(other, i).stroke_width(2),
    }
}

/// The order lines are drawn in: the agent on top.
fn drawing_order(lines: &[Line]) -> Vec<(usize, &Line)> {
    let mut order: Vec<(usize, &Line)> = lines.iter().enumerate().collect();
    order.sort_by_key(|(_, l)| l.policy == "agent");
    order
}

/// A chart's legend, in a strip above it (inside the plotting area it would
/// hide some of what is drawn): each entry's line style and name.
fn legend_strip(area: &DrawingArea<SvgOrBitmap<'_>, Shift>, entries: &[(String, ShapeStyle)]) -> Result<(), PlotError> {
    let style = text(14).pos(Pos::new(HPos::Left, VPos::Center));
    let (mut x, y) = (110, LEGEND_HEIGHT as i32 / 2);
    for (name, line) in entries {
        area.draw(&PathElement::new(vec![(x, y), (x + 30, y)], *line)).map_err(draw_err)?;
        area.draw(&Text::new(name.clone(), (x + 38, y), style.clone())).map_err(draw_err)?;
        let (w, _) = area.estimate_text_size(name, &style).map_err(draw_err)?;
        x += 38 + w as i32 + 36;
    }
    Ok(())
}

/// What the legend calls a policy.
fn legend_name(policy: &str) -> String {
    match policy {
        "defaults" => "defaults (the seed values)".into(),
        "oracle-oos" => "out-of-sample oracle (fitted on the first half)".into(),
        "oracle" => "hindsight oracle".into(),
        other => other.into(),
    }
}

fn text(size: u32) -> TextStyle<'static> {
    (FAMILY, size).into_font().into()
}

/// Registers the compiled-in font once; every chart's text uses it.
fn font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

/// Draws `draw` twice, once per backend, into an SVG string and an RGB
/// buffer, and encodes the buffer as PNG.
fn render(
    (w, h): (u32, u32),
    draw: impl Fn(&DrawingArea<SvgOrBitmap<'_>, Shift>) -> Result<(), PlotError>,
) -> Result<Rendered, PlotError> {
    font()?;
    let mut svg = String::new();
    {
        let root = SvgOrBitmap::Svg(SVGBackend::with_string(&mut svg, (w, h))).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        draw(&root)?;
        root.present().map_err(draw_err)?;
    }
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    {
        let root = SvgOrBitmap::Bitmap(BitMapBackend::with_buffer(&mut rgb, (w, h))).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        draw(&root)?;
        root.present().map_err(draw_err)?;
    }
    let mut png = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&rgb)?;
        writer.finish()?;
    }
    Ok(Rendered { svg, png })
}

/// The two backends behind one type, so that each chart is one function
/// (a closure cannot be generic over the backend).
enum SvgOrBitmap<'a> {
    Svg(SVGBackend<'a>),
    Bitmap(BitMapBackend<'a>),
}

#[derive(Debug)]
struct BackendError(String);

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BackendError {}

fn backend_err<E: std::error::Error + Send + Sync>(e: DrawingErrorKind<E>) -> DrawingErrorKind<BackendError> {
    match e {
        DrawingErrorKind::DrawingError(e) => DrawingErrorKind::DrawingError(BackendError(e.to_string())),
        DrawingErrorKind::FontError(e) => DrawingErrorKind::FontError(e),
    }
}

macro_rules! both {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            SvgOrBitmap::Svg($b) => $e.map_err(backend_err),
            SvgOrBitmap::Bitmap($b) => $e.map_err(backend_err),
        }
    };
}

impl DrawingBackend for SvgOrBitmap<'_> {
    type ErrorType = BackendError;

    fn get_size(&self) -> (u32, u32) {
        match self {
            SvgOrBitmap::Svg(b) => b.get_size(),
            SvgOrBitmap::Bitmap(b) => b.get_size(),
        }
    }
    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<BackendError>> {
        both!(self, b => b.ensure_prepared())
    }
    fn present(&mut self) -> Result<(), DrawingErrorKind<BackendError>> {
        both!(self, b => b.present())
    }
    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> Result<(), DrawingErrorKind<BackendError>> {
        both!(self, b => b.draw_pixel(point, color))
    }
    fn draw_line<S: plotters_backend::BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<BackendError>> {
        both!(self, b => b.draw_line(from, to, style))
    }
    fn draw_rect<S: plotters_backend::BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<BackendError>> {
        both!(self, b => b.draw_rect(upper_left, bottom_right, style, fill))
    }
    fn draw_path<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<BackendError>> {
        both!(self, b => b.draw_path(path, style))
    }
    fn draw_circle<S: plotters_backend::BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<BackendError>> {
        both!(self, b => b.draw_circle(center, radius, style, fill))
    }
    fn fill_polygon<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<BackendError>> {
        both!(self, b => b.fill_polygon(vert, style))
    }
    fn draw_text<T: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &T,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<BackendError>> {
        both!(self, b => b.draw_text(text, style, pos))
    }
    fn estimate_text_size<T: BackendTextStyle>(
        &self,
        text: &str,
        style: &T,
    ) -> Result<(u32, u32), DrawingErrorKind<BackendError>> {
        both!(self, b => b.estimate_text_size(text, style))
    }
}

type Chart<'a, 'b> = ChartContext<'a, SvgOrBitmap<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A titled chart with labelled, ticked axes and a light grid.
fn frame<'a, 'b>(
    area: &'a DrawingArea<SvgOrBitmap<'b>, Shift>,
    title: &str,
    xs: (f64, f64),
    ys: (f64, f64),
    x_title: &str,
    y_title: &str,
    x_ticks: usize,
) -> Result<Chart<'a, 'b>, PlotError> {
    let mut chart = ChartBuilder::on(area)
        .caption(title, text(18))
        .margin(12)
        .x_label_area_size(52)
        .y_label_area_size(96)
        .build_cartesian_2d(xs.0..xs.1, ys.0..ys.1)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(0xe4, 0xe4, 0xe4))
        .x_labels(x_ticks)
        .y_labels(6)
        .x_label_formatter(&|v| tick_label(*v))
        .y_label_formatter(&|v| tick_label(*v))
        .x_label_style(text(13))
        .y_label_style(text(13))
        .axis_desc_style(text(14))
        .x_desc(x_title)
        .y_desc(y_title)
        .draw()
        .map_err(draw_err)?;
    Ok(chart)
}

/// A line's (x, y) points, in data coordinates.
type Points = Vec<(f64, f64)>;

/// A module's block: cumulative return above, drawdown beneath.
fn draw_returns(area: &DrawingArea<SvgOrBitmap<'_>, Shift>, panel: &ReturnsPanel) -> Result<(), PlotError> {
    let n = panel.lines.iter().map(|l| l.returns.len()).max().unwrap_or(0);
    let (top, bottom) = area.split_vertically((BLOCK_HEIGHT as f64 * 0.62) as u32);
    let curves: Vec<(Points, Points)> = panel.lines.iter().map(|l| cumulative_and_drawdown(&l.returns)).collect();
    let xs = (0.0, n.max(1) as f64);
    let cum_span = span(curves.iter().flat_map(|(c, _)| c.iter().map(|p| p.1)).chain([0.0]));
    let dd_span = span(curves.iter().flat_map(|(_, d)| d.iter().map(|p| p.1)).chain([0.0]));
    let half = panel.second_half_from as f64;

    let title = format!("{}: cumulative return, the sum of per-decision returns", panel.module);
    let order = drawing_order(&panel.lines);
    let mut chart = frame(&top, &title, xs, cum_span, DECISIONS, CUMULATIVE, 8)?;
    for &(i, line) in &order {
        chart.draw_series(LineSeries::new(curves[i].0.clone(), line_style(&line.policy, i))).map_err(draw_err)?;
    }
    half_marker(&mut chart, half, cum_span, true)?;

    let title = format!("{}: drawdown below the running peak of that sum", panel.module);
    let mut chart = frame(&bottom, &title, xs, dd_span, DECISIONS, DRAWDOWN, 8)?;
    for &(i, line) in &order {
        chart.draw_series(LineSeries::new(curves[i].1.clone(), line_style(&line.policy, i))).map_err(draw_err)?;
    }
    half_marker(&mut chart, half, dd_span, false)
}

/// A dashed vertical line where the second half starts, named on the upper panel.
fn half_marker(chart: &mut Chart<'_, '_>, x: f64, ys: (f64, f64), named: bool) -> Result<(), PlotError> {
    let grey = RGBColor(0x77, 0x77, 0x77);
    chart.draw_series(DashedLineSeries::new([(x, ys.0), (x, ys.1)], 6, 4, grey.stroke_width(2))).map_err(draw_err)?;
    if named {
        let label = Text::new(" second half \u{2192}", (x, ys.1), text(13).color(&grey));
        chart.draw_series([label]).map_err(draw_err)?;
    }
    Ok(())
}

/// The running sum of `returns` and its distance below its running peak
/// (zero or negative), at most [`MAX_POINTS`] points each: the sum at each
/// bucket's end, the drawdown's deepest point in each bucket (so thinning
/// never hides the worst of it).
fn cumulative_and_drawdown(returns: &[f64]) -> (Points, Points) {
    let step = returns.len().div_ceil(MAX_POINTS).max(1);
    let (mut cum, mut peak) = (0.0f64, 0.0f64);
    let (mut sums, mut drawdowns) = (vec![(0.0, 0.0)], vec![(0.0, 0.0)]);
    let mut deepest = 0.0f64;
    for (i, r) in returns.iter().enumerate() {
        cum += r;
        peak = peak.max(cum);
        deepest = deepest.min(cum - peak);
        if (i + 1) % step == 0 || i + 1 == returns.len() {
            let x = (i + 1) as f64;
            sums.push((x, cum));
            drawdowns.push((x, deepest));
            deepest = 0.0;
        }
    }
    (sums, drawdowns)
}

/// The range of `values`, padded by 5% each side (1 wide when they are all one value).
fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) =
        values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { lo.abs().max(1.0) * 0.5 };
    (lo - pad, hi + pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_have_no_float_noise_and_separate_thousands() {
        assert_eq!(tick_label(0.1 + 0.2), "0.3");
        assert_eq!(tick_label(-0.000_5), "-0.0005");
        assert_eq!(tick_label(20_000.0), "20,000");
        assert_eq!(tick_label(1_234_567.0), "1,234,567");
        assert_eq!(tick_label(5000.0), "5,000");
        assert_eq!(tick_label(-500.0), "-500");
        assert_eq!(tick_label(-1e-15), "0");
        assert_eq!(tick_label(-12_500.5), "-12,500.5");
    }

    #[test]
    fn drawdown_keeps_the_deepest_point_of_every_thinned_bucket() {
        let mut returns = vec![0.001; 5_000];
        returns[2_501] = -1.0;
        let (cum, dd) = cumulative_and_drawdown(&returns);
        assert!(cum.len() <= MAX_POINTS + 1 && dd.len() == cum.len());
        let deepest = dd.iter().map(|p| p.1).fold(0.0, f64::min);
        assert!((deepest + 1.0).abs() < 1e-9, "{deepest}");
        let total: f64 = returns.iter().sum();
        assert!((cum.last().unwrap().1 - total).abs() < 1e-9);
        assert_eq!(cum.last().unwrap().0, 5_000.0);
    }

    #[test]
    fn a_chart_renders_as_svg_text_and_a_png_image() {
        let panel = ReturnsPanel {
            module: "crypto".into(),
            second_half_from: 50,
            lines: vec![
                Line { policy: "agent".into(), returns: (0..100).map(|i| (i as f64).sin() * 0.01).collect() },
                Line { policy: "defaults".into(), returns: vec![-0.001; 100] },
            ],
        };
        let r = returns_chart(&[panel]).unwrap();
        assert!(r.svg.starts_with("<svg") && r.svg.contains(CUMULATIVE) && r.svg.contains(DRAWDOWN));
        assert_eq!(&r.png[..8], b"\x89PNG\r\n\x1a\n");
        // Some pixels are neither white nor black: the coloured lines were drawn.
        assert!(r.png.len() > 10_000, "{}", r.png.len());
    }
}
