//! `paramopt demo`, run as a newcomer would (with a small budget): the
//! table, the learning curves and the printed `inspect` commands.

use std::process::Command;

use crate::support::{BIN, MODELS};

#[test]
fn demo_serves_drives_three_modules_and_prints_a_table_curves_and_working_inspect_commands() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo-data");
    // A previous demo's directory: cleared, so the run starts cold.
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join(".paramopt-demo"), "").unwrap();
    std::fs::write(data.join("left-over"), "").unwrap();
    let out = Command::new(BIN)
        .args(["demo", "--bars", "2000", "--seed", "3", "--data-dir"])
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

    // The table: per module, the agent, the defaults and the oracle.
    for module in ["crypto", "options", "stocks"] {
        let section =
            stdout.split(&format!("\n{module}: ")).nth(1).unwrap_or_else(|| panic!("no table for {module}: {stdout}"));
        let rows: Vec<&str> = section.lines().skip(1).take(5).collect();
        assert!(rows[0].starts_with("policy"), "{module}: {rows:?}");
        for (row, policy) in rows[2..5].iter().zip(["agent", "defaults", "oracle"]) {
            assert!(row.starts_with(policy), "{module}: {rows:?}");
            assert!(row.contains('%'), "{module}: {row}");
        }
    }

    // The learning curves: a valid SVG, a panel per module, a line per policy.
    let svg_line = stdout.lines().find(|l| l.starts_with("Learning curves")).expect("the SVG's path");
    let svg_path = svg_line.rsplit(": ").next().unwrap();
    let svg = std::fs::read_to_string(dir.path().join(svg_path)).unwrap();
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""), "{svg}");
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<svg").count(), 4, "one document, three panels");
    assert_eq!(svg.matches("</svg>").count(), 4);
    assert_eq!(svg.matches("<polyline").count(), 9, "agent, defaults and oracle per module");
    for text in ["crypto: cumulative", "options: cumulative", "stocks: cumulative", ">agent<", ">defaults<", ">oracle<"]
    {
        assert!(svg.contains(text), "{text}");
    }
    for line in svg.lines().filter(|l| l.starts_with("<polyline")) {
        let points = line.split('"').nth(1).unwrap();
        for xy in points.split(' ') {
            let (x, y) = xy.split_once(',').unwrap();
            assert!(x.parse::<f64>().unwrap().is_finite() && y.parse::<f64>().unwrap().is_finite(), "{line}");
        }
    }

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
