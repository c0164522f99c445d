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
