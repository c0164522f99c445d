use super::*;

const MINIMAL: &str = r#"
module = "toy"
[reward]
source = "return_pct"
scale = 1.0
clip = 0.5
[learning]
prior_mean = 0.0
prior_strength = 1.0
prior_shape = 2.0
prior_noise_sd = 0.02
pooling_strength = 4.0
discount = 1.0
baseline_window = 100.0
pool_refresh_outcomes = 64
[safety]
max_change_rate = 0.25
trust_initial = 0.4
trust_growth_outcomes = 25.0
[pending]
capacity = 10
ttl_secs = 60.0
[[features]]
name = "f"
lo = 0.0
hi = 1.0
[[groups]]
name = "g"
[[groups.parameters]]
name = "x"
default = 0.5
lo = 0.0
hi = 1.0
[[groups]]
name = "w"
simplex = true
[[groups.parameters]]
name = "a"
default = 0.5
lo = 0.2
hi = 0.8
[[groups.parameters]]
name = "b"
default = 0.5
lo = 0.2
hi = 0.8
"#;

fn load_err(text: &str) -> String {
    ModuleSpace::from_toml_str(text, "models/toy.toml").unwrap_err().to_string()
}

#[test]
fn minimal_file_loads() {
    let s = ModuleSpace::from_toml_str(MINIMAL, "models/toy.toml").unwrap();
    assert_eq!(s.params.len(), 3);
    assert_eq!(s.params[0].full_name, "g.x");
    assert_eq!(s.simplex_groups[0].members, vec![1, 2]);
}

#[test]
fn lo_above_hi_names_file_field_and_value() {
    let err = load_err(&MINIMAL.replacen("default = 0.5\nlo = 0.0\nhi = 1.0", "default = 0.5\nlo = 2.0\nhi = 1.0", 1));
    assert!(err.contains("models/toy.toml"), "{err}");
    assert!(err.contains("groups[0].parameters[0].lo"), "{err}");
    assert!(err.contains("= 2"), "{err}");
}

#[test]
fn default_outside_range_is_refused() {
    let err = load_err(&MINIMAL.replacen("default = 0.5\nlo = 0.0", "default = 1.5\nlo = 0.0", 1));
    assert!(err.contains("groups[0].parameters[0].default"), "{err}");
    assert!(err.contains("1.5"), "{err}");
    assert!(err.contains("outside"), "{err}");
}

#[test]
fn unknown_key_is_refused_with_its_name() {
    let err = load_err(&MINIMAL.replacen("clip = 0.5", "clip = 0.5\nclipp = 1.0", 1));
    assert!(err.contains("models/toy.toml"), "{err}");
    assert!(err.contains("clipp"), "{err}");
}

#[test]
fn empty_group_is_refused() {
    let text =
        MINIMAL.replacen("[[groups]]\nname = \"g\"", "[[groups]]\nname = \"empty\"\n[[groups]]\nname = \"g\"", 1);
    let err = load_err(&text);
    assert!(err.contains("groups[0].parameters"), "{err}");
    assert!(err.contains("\"empty\""), "{err}");
}

#[test]
fn simplex_defaults_must_sum_to_one() {
    let err = load_err(&MINIMAL.replacen("name = \"b\"\ndefault = 0.5", "name = \"b\"\ndefault = 0.6", 1));
    assert!(err.contains("groups[1].parameters[*].default"), "{err}");
    assert!(err.contains("1.1"), "{err}");
}

#[test]
fn integer_parameter_needs_whole_bounds() {
    let err = load_err(&MINIMAL.replacen(
        "name = \"x\"\ndefault = 0.5",
        "name = \"x\"\nkind = \"integer\"\ndefault = 0.5",
        1,
    ));
    assert!(err.contains("whole number"), "{err}");
    assert!(err.contains("0.5"), "{err}");
}

#[test]
fn unknown_kind_and_bad_discount_are_refused() {
    let err = load_err(&MINIMAL.replacen("name = \"x\"\n", "name = \"x\"\nkind = \"float\"\n", 1));
    assert!(err.contains("\"float\""), "{err}");
    let err = load_err(&MINIMAL.replacen("discount = 1.0", "discount = 1.5", 1));
    assert!(err.contains("learning.discount"), "{err}");
}

#[test]
fn builtin_spaces_carry_the_plans_exact_tables() {
    let spaces = Spaces::builtin();
    let expect: &[(&str, &str, f64, f64, f64)] = &[
        ("options", "confidence_thresholds.long_calls", 0.75, 0.65, 0.85),
        ("options", "confidence_thresholds.bull_spreads", 0.60, 0.50, 0.70),
        ("options", "confidence_thresholds.protective_puts", 0.40, 0.30, 0.50),
        ("options", "confidence_thresholds.covered_calls", 0.50, 0.40, 0.60),
        ("options", "confidence_thresholds.straddles", 0.60, 0.50, 0.70),
        ("options", "position_sizing.stop_loss_pct", 0.50, 0.30, 0.70),
        ("options", "position_sizing.profit_target_pct", 1.0, 0.50, 2.0),
        ("options", "position_sizing.contracts_multiplier", 2.0, 1.0, 5.0),
        ("options", "position_sizing.max_allocation", 0.30, 0.20, 0.40),
        ("crypto", "session_confidence.asia_prime", 0.45, 0.35, 0.55),
        ("crypto", "session_confidence.europe_prime", 0.50, 0.40, 0.60),
        ("crypto", "session_confidence.us_prime", 0.40, 0.30, 0.50),
        ("crypto", "position_multipliers.asia_session", 1.2, 0.8, 1.6),
        ("crypto", "position_multipliers.europe_session", 1.0, 0.8, 1.4),
        ("crypto", "position_multipliers.us_session", 1.1, 0.8, 1.5),
        ("crypto", "analysis_weights.momentum", 0.40, 0.20, 0.60),
        ("crypto", "analysis_weights.volatility", 0.30, 0.15, 0.45),
        ("crypto", "analysis_weights.volume", 0.30, 0.15, 0.45),
        ("stocks", "strategy_thresholds.leveraged_etfs", 0.70, 0.60, 0.80),
        ("stocks", "strategy_thresholds.momentum_amp", 0.75, 0.65, 0.85),
        ("stocks", "strategy_thresholds.sector_rotation", 0.60, 0.50, 0.70),
        ("stocks", "strategy_thresholds.volatility_trading", 0.55, 0.45, 0.65),
        ("stocks", "strategy_thresholds.core_equity", 0.55, 0.45, 0.65),
        ("stocks", "position_multipliers.leveraged_etfs", 2.5, 1.5, 3.5),
        ("stocks", "position_multipliers.momentum_amp", 2.0, 1.2, 2.8),
        ("stocks", "position_multipliers.sector_rotation", 1.5, 1.0, 2.0),
        ("stocks", "position_multipliers.volatility_trading", 1.8, 1.2, 2.4),
        ("stocks", "position_multipliers.core_equity", 1.0, 0.8, 1.5),
        ("stocks", "intelligence_weights.technical", 0.40, 0.25, 0.55),
        ("stocks", "intelligence_weights.regime", 0.40, 0.25, 0.55),
        ("stocks", "intelligence_weights.pattern", 0.20, 0.10, 0.35),
    ];
    let total: usize = spaces.iter().map(|s| s.params.len()).sum();
    assert_eq!(total, expect.len(), "every parameter of the plan, and no other");
    for &(module, name, default, lo, hi) in expect {
        let space = spaces.get(module).unwrap();
        let p = &space.params[space.param_index(name).unwrap_or_else(|| panic!("{module} lacks {name}"))];
        assert_eq!((p.default, p.lo, p.hi), (default, lo, hi), "{module} {name}");
        assert_eq!(p.arms.len(), 5);
        assert_eq!(p.arms[p.default_arm], p.default);
    }
    let contracts = &spaces.get("options").unwrap().params[7];
    assert_eq!(contracts.kind, ParamKind::Integer);
    let simplex: Vec<&str> = spaces.iter().flat_map(|s| s.simplex_groups.iter().map(|g| g.name.as_str())).collect();
    assert_eq!(simplex, vec!["analysis_weights", "intelligence_weights"]);
}

#[test]
fn models_dir_matches_the_compiled_in_copy() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let from_disk = Spaces::load_dir(&dir).unwrap();
    let names: Vec<&str> = from_disk.names().collect();
    assert_eq!(names, vec!["crypto", "options", "stocks"]);
}

mod roles {
    use super::super::*;

    const STOCKS: &str = include_str!("../../models/stocks.toml");
    const OPTIONS: &str = include_str!("../../models/options.toml");
    const CRYPTO: &str = include_str!("../../models/crypto.toml");

    fn edited(text: &str, from: &str, to: &str) -> Result<ModuleSpace, SpaceError> {
        assert!(text.contains(from), "no {from:?}");
        ModuleSpace::from_toml_str(&text.replacen(from, to, 1), "models/x.toml")
    }

    #[test]
    fn the_shipped_models_declare_their_roles_and_scopes() {
        let spaces = Spaces::builtin();
        let crypto = spaces.get("crypto").unwrap();
        let cf = crypto.counterfactual.as_ref().unwrap();
        let p = |s: &ModuleSpace, n: &str| s.param_index(n).unwrap();
        assert_eq!(cf.roles[p(crypto, "session_confidence.asia_prime")], Role::Gate);
        assert_eq!(cf.scopes[p(crypto, "session_confidence.asia_prime")], Scope::Session(Session::AsiaPrime));
        assert_eq!(cf.scopes[p(crypto, "position_multipliers.us_session")], Scope::Session(Session::UsPrime));
        assert_eq!(cf.roles[p(crypto, "analysis_weights.volume")], Role::Weights);
        assert_eq!(cf.score, Some(ScoreSource::Weights));
        assert!(cf.strategies.is_empty() && !cf.strategy_scoped());

        let stocks = spaces.get("stocks").unwrap();
        let cf = stocks.counterfactual.as_ref().unwrap();
        assert_eq!(cf.strategies.len(), 5);
        let k = cf.strategy_index("sector_rotation").unwrap();
        assert_eq!(cf.scopes[p(stocks, "strategy_thresholds.sector_rotation")], Scope::Strategy(k));
        assert_eq!(cf.scopes[p(stocks, "position_multipliers.sector_rotation")], Scope::Strategy(k));
        assert!(cf.in_scope(p(stocks, "strategy_thresholds.sector_rotation"), Session::AsiaPrime, Some(k)));
        assert!(!cf.in_scope(p(stocks, "strategy_thresholds.sector_rotation"), Session::AsiaPrime, None));

        let options = spaces.get("options").unwrap();
        let cf = options.counterfactual.as_ref().unwrap();
        assert_eq!(cf.score, Some(ScoreSource::Confidence));
        assert_eq!(cf.roles[p(options, "position_sizing.stop_loss_pct")], Role::StopLoss);
        assert_eq!(cf.roles[p(options, "position_sizing.profit_target_pct")], Role::ProfitTarget);
        assert_eq!(cf.roles[p(options, "position_sizing.contracts_multiplier")], Role::Opaque);
        assert_eq!(cf.roles[p(options, "position_sizing.max_allocation")], Role::Opaque);
        assert_eq!(cf.exit.as_ref().unwrap().capital, "position_sizing.max_allocation");
    }

    /// Each mistake is refused with the file, the field and the value.
    #[test]
    fn bad_declarations_name_file_field_and_value() {
        let cases: [(&str, &str, &str, &[&str]); 8] = [
            (STOCKS, "role = \"scale\"", "role = \"size\"", &["counterfactual.roles[1].role", "\"size\""]),
            (
                STOCKS,
                "group = \"position_multipliers\"\nrole",
                "group = \"multipliers\"\nrole",
                &["counterfactual.roles[1].group", "\"multipliers\""],
            ),
            (STOCKS, "\"core_equity\"]", "\"core\"]", &["counterfactual.roles[0].members", "\"core_equity\""]),
            (
                CRYPTO,
                "volume = \"volume_score\"",
                "volume = \"flow\"",
                &["counterfactual.roles[2].features", "\"flow\""],
            ),
            (
                CRYPTO,
                "europe_session = \"europe_prime\"",
                "europe_session = \"europe\"",
                &["counterfactual.roles[1].members", "\"europe\""],
            ),
            (
                OPTIONS,
                "score = \"confidence\"",
                "score = \"weights\"",
                &["counterfactual.roles[0].score", "\"weights\""],
            ),
            (OPTIONS, "explore_rate = 0.1", "explore_rate = 1.5", &["counterfactual.explore_rate", "1.5"]),
            (
                OPTIONS,
                "parameter = \"position_sizing.stop_loss_pct\"",
                "parameter = \"position_sizing.contracts_multiplier\"",
                &["counterfactual.roles[1].role", "contracts_multiplier", "integer"],
            ),
        ];
        for (text, from, to, want) in cases {
            let err = edited(text, from, to).unwrap_err().to_string();
            assert!(err.starts_with("models/x.toml: "), "{err}");
            for w in want {
                assert!(err.contains(w), "{from:?} -> {to:?}: {err:?} lacks {w:?}");
            }
        }
        let unknown = edited(CRYPTO, "refit_every = 32", "refit_every = 32\nrefit = 3").unwrap_err().to_string();
        assert!(unknown.contains("refit"), "{unknown}");
    }

    #[test]
    fn a_file_without_declarations_is_all_opaque() {
        let s = ModuleSpace::from_toml_str(super::MINIMAL, "models/toy.toml").unwrap();
        assert!(s.counterfactual.is_none());
    }
}

#[test]
fn a_reward_is_the_one_given_else_zero_untraded_else_the_scaled_return() {
    let reward = RewardConfig { source: RewardSource::ReturnPct, scale: 2.0, clip: 0.5, objective: Objective::Mean };
    assert_eq!(reward.raw(Some(0.7), true, Some(0.125)), Some(0.7), "a given reward wins");
    assert_eq!(reward.raw(None, false, Some(0.125)), Some(0.0), "a trade not taken earns nothing");
    assert_eq!(reward.raw(None, true, Some(0.125)), Some(0.25));
    assert_eq!(reward.raw(None, true, None), None, "a taken trade needs a reward or a return");
    assert_eq!((reward.clipped(0.7), reward.clipped(-0.7), reward.clipped(0.1)), (0.5, -0.5, 0.1));
}
