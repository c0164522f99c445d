//! The `paramopt` binary, run as a user would.

use std::process::Command;

use paramopt::space::Spaces;

#[test]
fn spaces_json_lists_all_three_modules_with_the_plans_values() {
    let out = Command::new(env!("CARGO_BIN_EXE_paramopt"))
        .args(["spaces", "--json", "--models", concat!(env!("CARGO_MANIFEST_DIR"), "/models")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let modules = json["modules"].as_array().unwrap();
    let names: Vec<&str> = modules.iter().map(|m| m["module"].as_str().unwrap()).collect();
    assert_eq!(names, ["crypto", "options", "stocks"]);
    let builtin = Spaces::builtin();
    let mut count = 0;
    for m in modules {
        let space = builtin.get(m["module"].as_str().unwrap()).unwrap();
        for p in m["parameters"].as_array().unwrap() {
            let want = &space.params[space.param_index(p["name"].as_str().unwrap()).unwrap()];
            assert_eq!(p["default"].as_f64().unwrap(), want.default);
            assert_eq!(p["lo"].as_f64().unwrap(), want.lo);
            assert_eq!(p["hi"].as_f64().unwrap(), want.hi);
            assert_eq!(p["group"].as_str().unwrap(), want.group);
            assert_eq!(p["arms"].as_array().unwrap().len(), 5);
            count += 1;
        }
    }
    assert_eq!(count, 31);
    let contracts = &modules[1]["parameters"][7];
    assert_eq!(contracts["name"], "position_sizing.contracts_multiplier");
    assert_eq!(contracts["kind"], "integer");
    assert_eq!(contracts["default"], 2.0);
}

#[test]
fn a_bad_model_file_fails_with_file_field_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let text = include_str!("../../models/crypto.toml").replace("default = 0.45", "default = 0.75");
    std::fs::write(dir.path().join("crypto.toml"), text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_paramopt"))
        .args(["spaces", "--models", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("crypto.toml"), "{err}");
    assert!(err.contains("groups[0].parameters[0].default"), "{err}");
    assert!(err.contains("0.75"), "{err}");
}

/// The models are built in: `spaces` and `models export` need no checkout.
#[test]
fn spaces_and_models_export_work_from_an_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_paramopt"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("PARAMOPT_MODELS")
            .env("RUST_LOG", "info")
            .output()
            .unwrap();
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        assert!(out.status.success(), "{args:?}: {stdout}{stderr}");
        (stdout, stderr)
    };
    let (table, log) = run(&["spaces"]);
    for module in ["crypto", "options", "stocks"] {
        assert!(table.lines().any(|l| l.starts_with(module)), "{table}");
    }
    assert!(log.contains("built-in"), "the log says which models were loaded: {log}");

    let (written, _) = run(&["models", "export", "edit-me"]);
    assert_eq!(written.lines().count(), 3, "{written}");
    for (origin, text) in Spaces::builtin_files() {
        let name = std::path::Path::new(origin).file_name().unwrap();
        assert_eq!(&std::fs::read_to_string(dir.path().join("edit-me").join(name)).unwrap(), text);
    }
    // An edited copy replaces the built-in files.
    let edited = dir.path().join("edit-me/crypto.toml");
    let text = std::fs::read_to_string(&edited).unwrap().replace("default = 0.45", "default = 0.50");
    std::fs::write(&edited, text).unwrap();
    let (json, log) = run(&["spaces", "--json", "--models", "edit-me"]);
    assert!(log.contains("edit-me"), "{log}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["modules"][0]["parameters"][0]["default"], 0.5);

    // Exporting again refuses to overwrite what was edited.
    let out = Command::new(env!("CARGO_BIN_EXE_paramopt"))
        .args(["models", "export", "edit-me"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
}

/// `paramopt spaces --json | head -1`: a reader that stops reading ends the
/// command quietly, with status 0.
#[test]
fn spaces_json_into_a_closed_pipe_exits_0_with_nothing_on_stderr() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader); // closed before the first write, so every write meets EPIPE
    let out = Command::new(env!("CARGO_BIN_EXE_paramopt"))
        .args(["spaces", "--json"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// An error prints each cause once.
#[test]
fn an_error_names_each_cause_once() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_paramopt")).args(["spaces", "--models", "/no/such/models"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/models"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

/// `cargo install --path . --root TMP`, then the installed binary from `/`:
/// no models directory, no checkout, and every subcommand that needs models
/// finds the built-in ones. The install reuses this build's target directory,
/// so it only copies the binary that the tests already built.
#[test]
fn an_installed_binary_runs_from_the_root_directory() {
    let root = tempfile::tempdir().unwrap();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_paramopt"));
    let target_dir = bin.parent().and_then(|p| p.parent()).unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["install", "--locked", "--offline", "--quiet", "--path", env!("CARGO_MANIFEST_DIR"), "--root"])
        .arg(root.path())
        .arg("--target-dir")
        .arg(target_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo install: {}", String::from_utf8_lossy(&out.stderr));
    let installed = root.path().join("bin/paramopt");
    let data = tempfile::tempdir().unwrap();
    for args in [
        vec!["spaces"],
        vec!["simulate", "--outcomes", "300", "--module", "crypto"],
        vec!["backtest", "--bars", "600", "--module", "crypto"],
        vec!["inspect", "list", "--store", data.path().to_str().unwrap()],
    ] {
        let out = Command::new(&installed).args(&args).current_dir("/").env_remove("PARAMOPT_MODELS").output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!out.stdout.is_empty() || args[0] == "inspect", "{args:?} printed nothing");
    }
}
