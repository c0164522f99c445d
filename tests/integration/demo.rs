//! `paramopt demo`, run as a newcomer would (with a small budget): the
//! closing table, the charts (SVG and PNG, read back) and the printed
//! `inspect` commands.

use std::process::Command;

use crate::support::{BIN, MODELS};

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

/// The closing table's rows for `module`: its section's policy rows, by policy name.
fn policy_rows<'a>(stdout: &'a str, module: &str) -> Vec<&'a str> {
    let section =
        stdout.split(&format!("\n{module}: ")).nth(1).unwrap_or_else(|| panic!("no table for {module}: {stdout}"));
    let lines: Vec<&str> = section.lines().skip(1).collect();
    assert!(lines[0].starts_with("policy"), "{module}: {lines:?}");
    lines[2..].iter().copied().take_while(|l| !l.starts_with("loss budget")).collect()
}

#[test]
fn demo_on_the_synthetic_market_prints_a_table_charts_and_working_inspect_commands() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo-data");
    // A previous demo's directory: cleared, so the run starts cold.
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join(".paramopt-demo"), "").unwrap();
    std::fs::write(data.join("left-over"), "").unwrap();
    let out = Command::new(BIN)
        .args(["demo", "--synthetic", "--bars", "2000", "--seed", "3", "--data-dir"])
        .arg(&data)
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(!data.join("left-over").exists(), "a rerun starts clean");
    assert!(stdout.contains("serving the agent on http://127.0.0.1:"), "{stdout}");
    // Not a terminal: progress as plain lines on stderr, each module to 100%.
    for module in ["crypto", "options", "stocks"] {
        assert!(stderr.lines().any(|l| l.starts_with(module) && l.contains("100%")), "{module}: {stderr}");
    }

    // The table: per module, the agent, the defaults and the out-of-sample
    // oracle, then the loss budget; a sentence per module.
    for module in ["crypto", "options", "stocks"] {
        let rows = policy_rows(&stdout, module);
        let names: Vec<&str> = rows.iter().map(|r| r.split_whitespace().next().unwrap()).collect();
        assert_eq!(names, ["agent", "defaults", "oracle-oos"], "{module}: {rows:?}");
        for row in rows {
            assert!(row.split_whitespace().skip(1).all(|c| c.parse::<f64>().is_ok_and(f64::is_finite)), "{row}");
        }
        assert!(stdout.contains(&format!("{module}: the agent ")), "{module}: {stdout}");
    }

    // The chart: an SVG that parses, with each module's panels, and a PNG.
    let chart_line =
        stdout.lines().find(|l| l.starts_with("Cumulative return and drawdown")).expect("the charts' paths");
    let (svg_path, png_path) = chart_line.rsplit_once(": ").unwrap().1.split_once(" and ").unwrap();
    let svg = std::fs::read_to_string(dir.path().join(svg_path)).unwrap();
    let texts: Vec<String> = labels(&svg).into_iter().map(|l| l.text).collect();
    for module in ["crypto", "options", "stocks"] {
        for panel in ["cumulative return", "drawdown"] {
            assert!(texts.iter().any(|t| t.starts_with(&format!("{module}: {panel}"))), "{module} {panel}: {texts:?}");
        }
    }
    for legend in ["agent", "defaults (the seed values)", "out-of-sample oracle (fitted on the first half)"] {
        assert_eq!(texts.iter().filter(|t| *t == legend).count(), 1, "one legend: {legend}: {texts:?}");
    }
    assert!(std::fs::read(dir.path().join(png_path)).unwrap().starts_with(PNG_MAGIC));

    // Every printed inspect command runs as printed, from the same directory.
    let commands: Vec<&str> = stdout.lines().map(str::trim).filter(|l| l.contains(" inspect ")).collect();
    assert!(commands.len() >= 3, "{stdout}");
    assert!(commands.iter().any(|c| c.contains(" inspect diff ")), "{stdout}");
    for command in commands {
        let run = Command::new("sh").args(["-c", command]).current_dir(dir.path()).output().unwrap();
        let text = String::from_utf8_lossy(&run.stdout);
        assert!(run.status.success(), "{command}: {text}{}", String::from_utf8_lossy(&run.stderr));
        assert!(!text.trim().is_empty(), "{command} printed nothing");
        assert!(!text.contains("no parameter_effectiveness rows"), "{command}: {text}");
    }
}

#[test]
fn demo_refuses_a_data_dir_it_did_not_write() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious"), "keep me").unwrap();
    let out = Command::new(BIN)
        .args(["--models", MODELS, "demo", "--bars", "1000", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not written by `paramopt demo`"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.path().join("precious")).unwrap(), "keep me");
}

/// The default demo trades the shipped real prices (here each module's
/// first 1,500 decisions), from an empty directory: the closing table has
/// the three policies and the loss budget for every module, a sentence per
/// module says whether the agent beat the defaults, and the charts exist as
/// SVG (which parses, with round ticks and clear axis titles) and PNG.
#[test]
fn demo_on_real_prices_from_an_empty_directory_compares_three_policies_and_draws_svg_and_png() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["demo", "--bars", "1500", "--png", "copy.png"])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .env_remove("PARAMOPT_MODELS")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("Market: real data: crypto on BTC/USD 1h"), "{stdout}");
    for module in ["crypto", "options", "stocks"] {
        let rows = policy_rows(&stdout, module);
        let names: Vec<&str> = rows.iter().map(|r| r.split_whitespace().next().unwrap()).collect();
        assert_eq!(names, ["agent", "defaults", "oracle-oos"], "{module}: {stdout}");
        let section = stdout.split(&format!("\n{module}: ")).nth(1).unwrap();
        assert!(section.starts_with("1500 decisions on "), "{module}: {section}");
        let budget = section.lines().find(|l| l.starts_with("loss budget: ")).expect("the budget line");
        assert!(budget.contains("of capital") && budget.contains("remaining"), "{budget}");
        let verdict = stdout.lines().find(|l| l.starts_with(&format!("{module}: the agent "))).expect("a verdict");
        assert!(verdict.contains("beat the defaults") && verdict.contains(" vs "), "{verdict}");
    }
    for stem in ["demo-data/returns", "copy"] {
        let png = std::fs::read(dir.path().join(format!("{stem}.png"))).unwrap();
        assert!(png.starts_with(PNG_MAGIC), "{stem}.png");
    }
    let svg = std::fs::read_to_string(dir.path().join("demo-data/returns.svg")).unwrap();
    let panels = check_axes(&svg);
    assert_eq!(panels, 6, "cumulative return and drawdown for each of three modules");
}

/// A returns chart and a posterior chart, rendered and read back: every
/// axis's ticks are a run of round numbers (steps of 1, 2 or 5 x 10^k) and
/// every axis title lies outside the area of its tick labels.
#[test]
fn plots_have_round_ticks_and_axis_titles_clear_of_their_tick_labels() {
    use paramopt::plot::{posterior_chart, returns_chart, ArmPoint, Line, ReturnsPanel};
    let returns: Vec<f64> = (0..7_331).map(|i| 0.0004 * ((i as f64) * 0.37).sin() - 0.00003).collect();
    let panel = ReturnsPanel {
        module: "stocks".into(),
        second_half_from: 3_665,
        lines: vec![
            Line { policy: "agent".into(), returns: returns.iter().map(|r| r * 1.3 + 0.00004).collect() },
            Line { policy: "defaults".into(), returns: returns.clone() },
            Line { policy: "oracle-oos".into(), returns: returns.iter().map(|r| r * 0.7 + 0.00011).collect() },
        ],
    };
    let chart = returns_chart(&[panel]).unwrap();
    assert!(chart.png.starts_with(PNG_MAGIC));
    assert_eq!(check_axes(&chart.svg), 2, "cumulative return and drawdown");
    let arms: Vec<ArmPoint> = (0..5)
        .map(|k| {
            let value = 0.35 + 0.05 * k as f64;
            ArmPoint {
                value,
                mean: 0.013 * k as f64 - 0.021,
                lo95: 0.013 * k as f64 - 0.05,
                hi95: 0.013 * k as f64 + 0.01,
                samples: 40.0,
            }
        })
        .collect();
    let chart = posterior_chart("crypto: a parameter's posterior", &arms, 0.45).unwrap();
    assert!(chart.png.starts_with(PNG_MAGIC));
    assert_eq!(check_axes(&chart.svg), 1);
}

/// A text element of an SVG, with the box it covers (estimated from its
/// anchor, its font size and 0.65 em per character, wider than any digit
/// of the font).
#[derive(Debug)]
struct Label {
    text: String,
    x0: f64,
    y0: f64,
    x1: f64,
    y1: f64,
    rotated: bool,
    dy: String,
    anchor: String,
}

fn labels(svg: &str) -> Vec<Label> {
    let doc = roxmltree::Document::parse(svg).unwrap();
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| {
            let num = |a: &str| n.attribute(a).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            let (x, y, size) = (num("x"), num("y"), num("font-size"));
            let text = n.text().unwrap_or("").trim().to_string();
            let width = 0.65 * size * text.chars().count() as f64;
            let anchor = n.attribute("text-anchor").unwrap_or("start").to_string();
            let dy = n.attribute("dy").unwrap_or("").to_string();
            let rotated = n.attribute("transform").is_some_and(|t| t.starts_with("rotate(270"));
            let (x0, y0, x1, y1) = if rotated {
                // Turned a quarter anticlockwise about (x, y): it reads upwards,
                // centred on y, and its glyphs lie right of x.
                (x, y - width / 2.0, x + size, y + width / 2.0)
            } else {
                let x0 = match anchor.as_str() {
                    "end" => x - width,
                    "middle" => x - width / 2.0,
                    _ => x,
                };
                let y0 = match dy.as_str() {
                    "0.76em" => y,
                    "0.5ex" => y - size / 2.0,
                    _ => y - size,
                };
                (x0, y0, x0 + width, y0 + size)
            };
            Label { text, x0, y0, x1, y1, rotated, dy, anchor }
        })
        .collect()
}

fn value(l: &Label) -> Option<f64> {
    l.text.replace(',', "").parse::<f64>().ok()
}

/// Checks every panel's axes (see the test above); the number of panels.
fn check_axes(svg: &str) -> usize {
    let all = labels(svg);
    let x_titles: Vec<&Label> = all.iter().filter(|l| !l.rotated && l.dy == "-0.5ex" && value(l).is_none()).collect();
    let y_titles: Vec<&Label> = all.iter().filter(|l| l.rotated).collect();
    assert_eq!(x_titles.len(), y_titles.len(), "{x_titles:?} {y_titles:?}");
    let x_ticks: Vec<&Label> =
        all.iter().filter(|l| !l.rotated && l.anchor == "middle" && l.dy == "0.76em" && value(l).is_some()).collect();
    let y_ticks: Vec<&Label> = all.iter().filter(|l| !l.rotated && l.anchor == "end" && value(l).is_some()).collect();
    // A tick belongs to the panel whose x-axis title is the nearest below it.
    let panel_of = |l: &Label| {
        (0..x_titles.len())
            .filter(|&k| x_titles[k].y1 > l.y1)
            .min_by(|&a, &b| x_titles[a].y1.total_cmp(&x_titles[b].y1))
            .unwrap_or_else(|| panic!("no x-axis title below {l:?}"))
    };
    for (k, title) in x_titles.iter().enumerate() {
        let xs: Vec<&Label> = x_ticks.iter().copied().filter(|l| panel_of(l) == k).collect();
        let ys: Vec<&Label> = y_ticks.iter().copied().filter(|l| panel_of(l) == k).collect();
        assert!(xs.len() >= 3 && ys.len() >= 3, "{}: {xs:?} {ys:?}", title.text);
        for (axis, ticks) in [("x", &xs), ("y", &ys)] {
            let values: Vec<f64> = ticks.iter().map(|l| value(l).unwrap()).collect();
            assert_round(&values, &format!("{} ({axis})", title.text));
        }
        for t in &xs {
            assert!(title.y0 >= t.y1, "x title {title:?} overlaps tick {t:?}");
        }
    }
    for title in &y_titles {
        for t in &y_ticks {
            assert!(title.x1 <= t.x0, "y title {title:?} overlaps tick {t:?}");
        }
    }
    x_titles.len()
}

/// `values` (tick labels in drawing order) are evenly spaced multiples of
/// one step of 1, 2 or 5 x 10^k.
fn assert_round(values: &[f64], what: &str) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.dedup();
    assert!(v.len() >= 3, "{what}: {v:?}");
    let step = v[1] - v[0];
    let power = 10f64.powf(step.log10().floor());
    let mantissa = step / power;
    assert!([1.0, 2.0, 5.0, 10.0].iter().any(|m| (mantissa - m).abs() < 1e-6), "{what}: step {step} of {v:?}");
    for w in v.windows(2) {
        assert!(((w[1] - w[0]) - step).abs() < 1e-6 * step, "{what}: uneven {v:?}");
    }
    for x in &v {
        assert!(((x / step) - (x / step).round()).abs() < 1e-6, "{what}: {x} is not a multiple of {step}");
    }
}
