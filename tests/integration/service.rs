//! The HTTP service against API.md: every route and field and every listed
//! error status through `oneshot`, a bad-input table that must leave the agent
//! unchanged, a real socket (TCP_NODELAY, keep-alive), the `serve` binary with
//! its config and signals, and the Python client's own tests.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tower::ServiceExt;

use paramopt::agent::{Agent, AgentOptions, ManualClock};
use paramopt::service::client::Client;
use paramopt::service::config::{ServeArgs, ServeFile, ServeSettings};
use paramopt::service::store::SinkFuture;
use paramopt::service::{
    app, server, AppState, CheckpointStore, CheckpointSummary, Hooks, OutcomeRecord, OutcomeSink, RollbackTarget,
    ServiceOptions, StoreError,
};
use paramopt::space::{Context, Regime, Session, Spaces};

use crate::support;

const TOKEN: &str = "s3cret-token";

fn state_with(agent: Agent, options: ServiceOptions, hooks: Hooks) -> AppState {
    AppState::new(agent, options, hooks)
}

fn plain_state(seed: u64) -> AppState {
    state_with(support::agent(seed), ServiceOptions::default(), Hooks::default())
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
    text: String,
}

/// One request through the whole service. Every answer is held to the
/// OpenAPI document: a status it does not document for the route, or a body
/// off its schema, fails the test that sent it.
async fn send(app: &Router, req: Request<Body>) -> Reply {
    let (method, uri) = (req.method().clone(), req.uri().to_string());
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let content_type = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap());
    support::check_openapi(method.as_str(), &uri, status.as_u16(), content_type, &bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply { status, headers, json, text }
}

fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path).header(header::CONTENT_TYPE, "application/json").body(body.into()).unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn decision_body(module: &str, session: &str, regime: &str) -> String {
    json!({"module": module, "context": {"session": session, "regime": regime}}).to_string()
}

/// serde_json parses decimals to within an ulp, not always exactly (no
/// `float_roundtrip`), so values read back from JSON compare with a tolerance.
fn close(a: f64, b: f64) {
    assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} != {b}");
}

async fn decide(app: &Router, module: &str) -> Value {
    let r = send(app, post("/v1/decisions", decision_body(module, "asia_prime", "bullish"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json
}

fn assert_contract_error(r: &Reply, status: StatusCode, names: &str) {
    assert_eq!(r.status, status, "body: {}", r.text);
    assert_eq!(
        r.headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap()),
        Some("application/json"),
        "{}",
        r.text
    );
    let obj = r.json.as_object().unwrap_or_else(|| panic!("not a JSON object: {}", r.text));
    assert_eq!(obj.len(), 1, "only `error`: {}", r.text);
    let msg = obj["error"].as_str().unwrap();
    assert!(msg.contains(names), "error {msg:?} should name {names:?}");
}

/// An outcome sink that keeps what it gets, as the trades collection will.
#[derive(Default)]
struct KeepingSink(Mutex<Vec<OutcomeRecord>>);

impl OutcomeSink for KeepingSink {
    fn record(&self, record: OutcomeRecord) -> SinkFuture<'_> {
        self.0.lock().push(record);
        Box::pin(async { Ok(()) })
    }
}

/// A sink whose storage is down.
struct FailingSink;

impl OutcomeSink for FailingSink {
    fn record(&self, _: OutcomeRecord) -> SinkFuture<'_> {
        Box::pin(async { Err(StoreError::Unavailable("trade store unreachable".into())) })
    }
}

/// A checkpoint store in memory: what the real store does, minus the disk.
#[derive(Default)]
struct MemoryStore {
    generations: Mutex<Vec<CheckpointSummary>>,
    delay: Option<Duration>,
    rollback_delay: Option<Duration>,
    panic: bool,
}

impl CheckpointStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "local"
    }
    fn healthy(&self) -> bool {
        true
    }
    fn list(&self, module: &str, before: Option<u64>, limit: usize) -> Result<Vec<CheckpointSummary>, StoreError> {
        if let Some(d) = self.delay {
            std::thread::sleep(d);
        }
        assert!(!self.panic, "the store blew up");
        let mut list: Vec<_> = self
            .generations
            .lock()
            .iter()
            .filter(|c| c.module == module && before.is_none_or(|b| c.generation < b))
            .cloned()
            .collect();
        list.reverse();
        list.truncate(limit);
        Ok(list)
    }
    fn get(&self, module: &str, generation: u64) -> Result<Value, StoreError> {
        self.generations
            .lock()
            .iter()
            .find(|c| c.module == module && c.generation == generation)
            .map(|c| json!({"summary": c, "cells": []}))
            .ok_or_else(|| StoreError::NotFound(format!("no generation {generation} of module {module:?}")))
    }
    fn create(&self, module: &str) -> Result<CheckpointSummary, StoreError> {
        let mut g = self.generations.lock();
        let parent = g.iter().filter(|c| c.module == module).map(|c| c.generation).max();
        let summary = CheckpointSummary {
            module: module.into(),
            generation: parent.map_or(1, |p| p + 1),
            parent,
            created_at: 1.0e9,
            outcomes: 0,
            mean_reward: None,
        };
        g.push(summary.clone());
        Ok(summary)
    }
    fn rollback(&self, module: &str, to: RollbackTarget) -> Result<CheckpointSummary, StoreError> {
        if let RollbackTarget::Generation(n) = to {
            self.get(module, n)?;
        }
        if let Some(d) = self.rollback_delay {
            std::thread::sleep(d);
        }
        self.create(module)
    }
    fn checkpoint_age_secs(&self, module: &str) -> Option<f64> {
        self.generations.lock().iter().any(|c| c.module == module).then_some(12.5)
    }
}

// ---------------------------------------------------------------- routes

#[tokio::test]
async fn decisions_answer_every_parameter_and_documented_field_for_every_module() {
    let state = plain_state(1);
    let app = app(state.clone());
    let spaces = Spaces::builtin();
    for space in spaces.iter() {
        let body = json!({"module": space.name, "context": {"session": "europe_prime", "regime": "volatile"}});
        let r = send(&app, post("/v1/decisions", body.to_string())).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
        assert!(r.headers.contains_key("x-request-id"));
        let d = &r.json;
        let id = d["decision_id"].as_str().unwrap();
        assert_eq!(id.len(), 32);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(d["module"], space.name.as_str());
        assert_eq!(d["policy_generation"], 0);
        assert_eq!(d["explore"], true, "explore defaults to true");
        assert_eq!(d["context"], json!({"session": "europe_prime", "regime": "volatile"}));
        let params = d["parameters"].as_object().unwrap();
        assert_eq!(params.len(), space.params.len());
        for p in &space.params {
            let v = params[&p.full_name].as_f64().unwrap();
            assert!((p.lo - 1e-9..=p.hi + 1e-9).contains(&v), "{} = {v}", p.full_name);
            let arm = d["arms"][&p.full_name].as_u64().unwrap() as usize;
            assert!(arm < p.arms.len());
            let prop = d["propensities"][&p.full_name].as_f64().unwrap();
            assert!(prop > 0.0 && prop <= 1.0);
        }
        // Every parameter name on the wire is `<group>.<name>`.
        assert!(params.keys().all(|k| k.split('.').count() == 2));
        assert!(d["propensity"].as_f64().unwrap() > 0.0);
        assert!(d["created_at"].as_f64().unwrap() > 1.6e9);
        assert_eq!(state.agent().pending_count(&space.name).unwrap(), 1);
    }
}

#[tokio::test]
async fn decisions_echo_features_and_without_explore_serve_the_greedy_values() {
    let app = app(plain_state(2));
    let body = json!({"module": "crypto", "context": {"session": "us_prime", "regime": "sideways"},
                      "features": {"momentum_score": 0.72, "volume_score": 0.63}, "explore": false});
    let r = send(&app, post("/v1/decisions", body.to_string())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["features"], json!({"momentum_score": 0.72, "volume_score": 0.63}));
    assert_eq!(r.json["explore"], false);
    assert_eq!(r.json["propensity"], 1.0);
    let greedy = send(&app, get("/v1/parameters/crypto?session=us_prime&regime=sideways")).await;
    assert_eq!(greedy.status, StatusCode::OK);
    assert_eq!(r.json["parameters"], greedy.json["parameters"]);
}

#[tokio::test]
async fn parameters_are_the_seed_defaults_until_learned_and_name_module_context_generation() {
    let app = app(plain_state(3));
    for space in Spaces::builtin().iter() {
        for ctx in Context::all() {
            let path = format!(
                "/v1/parameters/{}?session={}&regime={}",
                space.name,
                ctx.session.as_str(),
                ctx.regime.as_str()
            );
            let r = send(&app, get(&path)).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            assert_eq!(r.json["module"], space.name.as_str());
            assert_eq!(r.json["context"]["session"], ctx.session.as_str());
            assert_eq!(r.json["context"]["regime"], ctx.regime.as_str());
            assert_eq!(r.json["policy_generation"], 0);
            let params = r.json["parameters"].as_object().unwrap();
            assert_eq!(params.len(), space.params.len());
            for p in &space.params {
                assert_eq!(params[&p.full_name].as_f64().unwrap(), p.default, "{}", p.full_name);
            }
        }
    }
}

#[tokio::test]
async fn parameters_follow_what_the_agent_learned() {
    // Rewards without a trade's evidence: the bandit's feedback, every parameter opaque.
    let state = state_with(support::bandit_agent(4), ServiceOptions::default(), Hooks::default());
    let app = app(state.clone());
    for _ in 0..300 {
        let d = decide(&app, "stocks").await;
        // Arms learn advantages over the context's mean reward, so the reward
        // must depend on what was served: higher thresholds earn more.
        let served = d["parameters"]["strategy_thresholds.leveraged_etfs"].as_f64().unwrap();
        let reward = if served > 0.70 { 0.02 } else { -0.02 };
        let r =
            send(&app, post("/v1/outcomes", json!({"decision_id": d["decision_id"], "reward": reward}).to_string()))
                .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        state.agent().flush();
    }
    state.agent().flush();
    let ctx = Context::new(Session::AsiaPrime, Regime::Bullish);
    let (values, generation) = state.agent().greedy("stocks", ctx).unwrap();
    assert_eq!(state.agent().view("stocks").unwrap().outcomes, 300);
    let r = send(&app, get("/v1/parameters/stocks?session=asia_prime&regime=bullish")).await;
    assert_eq!(r.json["policy_generation"], generation);
    let space = state.agent().space("stocks").unwrap().clone();
    let defaults = space.defaults();
    for (p, v) in space.params.iter().zip(&values) {
        close(r.json["parameters"][&p.full_name].as_f64().unwrap(), *v);
    }
    assert!(values[0] > defaults[0], "the rewarded direction moved the incumbent: {values:?}");
    // (A module with declared roles learns its determined parameters from the
    // trades' evidence instead: tests/integration/counterfactual.rs.)
}

#[tokio::test]
async fn modules_list_every_parameter_with_group_name_default_range_kind_and_arms() {
    let app = app(plain_state(5));
    let r = send(&app, get("/v1/modules")).await;
    assert_eq!(r.status, StatusCode::OK);
    let modules = r.json["modules"].as_array().unwrap();
    let builtin = Spaces::builtin();
    assert_eq!(modules.len(), 3);
    let mut count = 0;
    for m in modules {
        let space = builtin.get(m["module"].as_str().unwrap()).unwrap();
        let features: Vec<&str> =
            m["features"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert_eq!(features, space.features.iter().map(|f| f.name.as_str()).collect::<Vec<_>>());
        for (p, want) in m["parameters"].as_array().unwrap().iter().zip(&space.params) {
            assert_eq!(p["name"], want.full_name.as_str());
            assert_eq!(p["group"], want.group.as_str());
            assert_eq!(p["short_name"], want.name.as_str());
            assert_eq!(p["default"].as_f64().unwrap(), want.default);
            close(p["range"][0].as_f64().unwrap(), want.lo);
            close(p["range"][1].as_f64().unwrap(), want.hi);
            assert_eq!(p["kind"], serde_json::to_value(want.kind).unwrap());
            let arms: Vec<f64> = p["arms"].as_array().unwrap().iter().map(|a| a.as_f64().unwrap()).collect();
            assert_eq!(arms.len(), want.arms.len());
            arms.iter().zip(&want.arms).for_each(|(a, b)| close(*a, *b));
            count += 1;
        }
    }
    assert_eq!(count, 31);
}

#[tokio::test]
async fn outcomes_are_accepted_once_then_409_and_the_reward_is_derived_as_documented() {
    let state = plain_state(6);
    let app = app(state.clone());
    let d = decide(&app, "crypto").await;
    let id = d["decision_id"].as_str().unwrap();
    assert_eq!(state.agent().pending_count("crypto").unwrap(), 1);
    let body = json!({"decision_id": id, "reward": 0.0123, "traded": true}).to_string();
    let r = send(&app, post("/v1/outcomes", body.clone())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["accepted"], true);
    assert_eq!(r.json["decision_id"], id);
    assert_eq!(r.json["reward"], 0.0123);
    assert_eq!(state.agent().pending_count("crypto").unwrap(), 0);
    let again = send(&app, post("/v1/outcomes", body)).await;
    assert_contract_error(&again, StatusCode::CONFLICT, id);

    // No reward: the trade's return_pct times the module's scale (1.0 for crypto).
    let d = decide(&app, "crypto").await;
    let r = send(
        &app,
        post("/v1/outcomes", json!({"decision_id": d["decision_id"], "trade": {"return_pct": 0.02}}).to_string()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["reward"], 0.02);

    // A skipped trade (confidence below threshold) is feedback with reward 0.
    let d = decide(&app, "crypto").await;
    let r =
        send(&app, post("/v1/outcomes", json!({"decision_id": d["decision_id"], "traded": false}).to_string())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["reward"], 0.0);

    // Rewards are clipped by the module's setting (crypto: 0.5).
    let d = decide(&app, "crypto").await;
    let r = send(&app, post("/v1/outcomes", json!({"decision_id": d["decision_id"], "reward": 7.0}).to_string())).await;
    assert_eq!(r.json["reward"], 0.5);
    assert_eq!(state.agent().counters("crypto").unwrap().outcomes.load(std::sync::atomic::Ordering::Relaxed), 4);
}

#[tokio::test]
async fn an_outcomes_trade_reaches_the_sink_with_entry_parameters_and_market_context_filled_in() {
    let sink = Arc::new(KeepingSink::default());
    let hooks = Hooks { checkpoints: None, outcomes: sink.clone() };
    let app = app(state_with(support::agent(7), ServiceOptions::default(), hooks));
    let body = json!({"module": "crypto", "context": {"session": "asia_prime", "regime": "bullish"},
                      "features": {"momentum_score": 0.72, "volatility_score": 0.85, "volume_score": 0.63}});
    let d = send(&app, post("/v1/decisions", body.to_string())).await.json;
    let outcome = json!({
        "decision_id": d["decision_id"], "reward": 0.0123, "traded": true,
        "trade": {"symbol": "BTCUSD", "side": "BUY", "quantity": 0.044, "price": 45000,
                  "strategy": "crypto_asia_momentum", "confidence": 0.67,
                  "profit_loss": 1250.5, "return_pct": 0.0123, "exit_reason": "intelligent_exit",
                  "entry_parameters": {"ml_strategy_selection": true},
                  "module_specific_params": {"crypto_session": "asia_prime", "session_multiplier": 1.2},
                  "exit_analysis": {"hold_duration_hours": 4.2, "final_decision_reason": "major_profit_protection"},
                  "market_context": {"us_market_open": false},
                  "parameter_performance": {"alternative_outcomes": {"threshold_0_60": "would_have_triggered"}}}});
    let r = send(&app, post("/v1/outcomes", outcome.to_string())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let records = sink.0.lock();
    assert_eq!(records.len(), 1);
    let rec = &records[0];
    assert_eq!(rec.decision.id.to_string(), d["decision_id"].as_str().unwrap());
    assert_eq!(rec.reward, 0.0123);
    let trade = serde_json::to_value(rec.trade.as_ref().unwrap().flat()).unwrap();
    assert_eq!(trade["symbol"], "BTCUSD");
    assert_eq!(trade["price"], 45000.0);
    assert_eq!(trade["exit_analysis"]["hold_duration_hours"], 4.2);
    assert_eq!(trade["parameter_performance"]["alternative_outcomes"]["threshold_0_60"], "would_have_triggered");
    // The client's keys stay; the server adds every served parameter and the context.
    assert_eq!(trade["entry_parameters"]["ml_strategy_selection"], true);
    assert_eq!(trade["decision_id"], d["decision_id"]);
    assert_eq!(trade["reward"], 0.0123);
    for (name, value) in d["parameters"].as_object().unwrap() {
        assert_eq!(&trade["entry_parameters"][name], value, "{name}");
    }
    assert_eq!(trade["market_context"]["us_market_open"], false);
    assert_eq!(trade["market_context"]["session"], "asia_prime");
    assert_eq!(trade["market_context"]["regime"], "bullish");
    assert_eq!(trade["module_specific_params"]["volatility_score"], 0.85);
    assert_eq!(trade["module_specific_params"]["session_multiplier"], 1.2);
}

/// Ten and more fields the plan does not name, of every JSON type, kept verbatim.
fn module_fields() -> Value {
    serde_json::from_str(
        r#"{"threshold": 0.6, "instrument": "BTC-PERP", "direction": "long", "position_size": 0.25,
            "hold_duration_hours": 4.2, "orders": [{"id": 1, "fills": [[45000.5, 0.01], [45001, 0.034]]}],
            "meta": {"venue": {"name": "x", "tier": null}, "tags": ["a", "b"], "retry": false},
            "note": null, "live": true, "big_id": 123456789012345678901234567890,
            "max_u64": 18446744073709551615, "min_i64": -9223372036854775808, "tiny": 5e-324, "unicode": "€ ✓",
            "empty_obj": {}, "empty_list": []}"#,
    )
    .unwrap()
}

#[tokio::test]
async fn a_trade_keeps_every_field_the_module_sent_and_its_outcome_is_learned() {
    let sink = Arc::new(KeepingSink::default());
    let hooks = Hooks { checkpoints: None, outcomes: sink.clone() };
    let state = state_with(support::agent(7), ServiceOptions::default(), hooks);
    let app = app(state.clone());
    let d = decide(&app, "crypto").await;
    // Sent as text, so the big integer is not rounded by this test's own JSON.
    let fields = r#""threshold": 0.6, "instrument": "BTC-PERP", "direction": "long", "position_size": 0.25,
            "hold_duration_hours": 4.2, "orders": [{"id": 1, "fills": [[45000.5, 0.01], [45001, 0.034]]}],
            "meta": {"venue": {"name": "x", "tier": null}, "tags": ["a", "b"], "retry": false},
            "note": null, "live": true, "big_id": 123456789012345678901234567890,
            "max_u64": 18446744073709551615, "min_i64": -9223372036854775808, "tiny": 5e-324, "unicode": "€ ✓",
            "empty_obj": {}, "empty_list": []"#;
    let body = format!(
        r#"{{"decision_id": "{}", "trade": {{"symbol": "BTCUSD", "return_pct": 0.0123, {fields}}}}}"#,
        d["decision_id"].as_str().unwrap()
    );
    let r = send(&app, post("/v1/outcomes", body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["reward"], 0.0123);
    assert_eq!(state.agent().counters("crypto").unwrap().outcomes.load(std::sync::atomic::Ordering::Relaxed), 1);
    let records = sink.0.lock();
    let trade = records[0].trade.as_ref().unwrap();
    let sent = module_fields();
    assert_eq!(trade.module_fields.len(), sent.as_object().unwrap().len());
    assert!(trade.module_fields.len() >= 10);
    for (name, value) in sent.as_object().unwrap() {
        let kept: Value = serde_json::from_str(trade.module_fields.get(name).unwrap()).unwrap();
        assert_eq!(&kept, value, "{name}");
    }
    assert_eq!(trade.module_fields.get("big_id"), Some("123456789012345678901234567890"));
    // One flat document: the module's fields beside the plan's and the server's.
    let flat = serde_json::to_string(&trade.flat()).unwrap();
    assert!(flat.contains(r#""big_id":123456789012345678901234567890"#), "{flat}");
    let flat: Value = serde_json::from_str(&flat).unwrap();
    assert_eq!(flat["symbol"], "BTCUSD");
    assert_eq!(flat["orders"][0]["fills"][1][0], 45001);
    assert!(flat["entry_parameters"]["session_confidence.asia_prime"].is_f64());
    // Absent plan fields stay absent.
    assert!(flat.get("side").is_none() && flat.get("quantity").is_none(), "{flat}");
}

#[tokio::test]
async fn undeclared_features_are_accepted_listed_counted_and_not_learned_from() {
    let with = plain_state(21);
    let without = plain_state(21);
    let ctx = json!({"session": "europe_prime", "regime": "volatile"});
    let mut served = Vec::new();
    for (state, features) in [
        (&with, json!({"momentum_score": 0.7, "momentum_rsi": 31.5, "sector": 2})),
        (&without, json!({"momentum_score": 0.7})),
    ] {
        let app = app(state.clone());
        let mut values = Vec::new();
        for i in 0..40 {
            let body = json!({"module": "crypto", "context": ctx, "features": features});
            let r = send(&app, post("/v1/decisions", body.to_string())).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            if features.get("sector").is_some() {
                assert_eq!(r.json["ignored_features"], json!(["momentum_rsi", "sector"]), "{}", r.text);
                assert_eq!(r.json["features"], json!({"momentum_score": 0.7}));
            } else {
                assert!(r.json.get("ignored_features").is_none(), "{}", r.text);
            }
            values.push(r.json["parameters"].clone());
            let outcome = json!({"decision_id": r.json["decision_id"], "reward": (i % 7) as f64 * 0.01 - 0.02});
            let o = send(&app, post("/v1/outcomes", outcome.to_string())).await;
            assert_eq!(o.status, StatusCode::OK, "{}", o.text);
            // Each decision sees every earlier outcome, so the two runs cannot differ by the writer's timing.
            state.agent().flush();
        }
        state.agent().flush();
        served.push(values);
    }
    // The same seed, the same outcomes: the undeclared features changed nothing served or learned.
    assert_eq!(served[0], served[1]);
    assert_eq!(snapshot(with.agent()), snapshot(without.agent()));
    let m = send(&app(with.clone()), get("/metrics")).await;
    assert!(
        m.text.contains(r#"paramopt_undeclared_features_total{module="crypto",feature="momentum_rsi"} 40"#),
        "{}",
        m.text
    );
    assert!(m.text.contains(r#"paramopt_undeclared_features_total{module="crypto",feature="sector"} 40"#));
}

#[tokio::test]
async fn a_module_can_refuse_undeclared_features() {
    let text = include_str!("../../models/crypto.toml").replacen(
        "module = \"crypto\"",
        "module = \"crypto\"\nundeclared_features = \"reject\"",
        1,
    );
    let space = paramopt::space::ModuleSpace::from_toml_str(&text, "crypto.toml").unwrap();
    let mut spaces = Spaces::default();
    spaces.insert(space).unwrap();
    let agent = Agent::new(&spaces, AgentOptions { seed: Some(3), ..Default::default() });
    let state = state_with(agent, ServiceOptions::default(), Hooks::default());
    let app = app(state.clone());
    let ctx = json!({"session": "asia_prime", "regime": "bullish"});
    let body = json!({"module": "crypto", "context": ctx, "features": {"momentum_score": 0.5, "rsi": 0.3}});
    let r = send(&app, post("/v1/decisions", body.to_string())).await;
    assert_contract_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "\"rsi\"");
    assert!(r.json["error"].as_str().unwrap().contains("undeclared_features"), "{}", r.text);
    assert_eq!(state.agent().counters("crypto").unwrap().decisions.load(std::sync::atomic::Ordering::Relaxed), 0);
    let body = json!({"module": "crypto", "context": ctx, "features": {"momentum_score": 0.5}});
    assert_eq!(send(&app, post("/v1/decisions", body.to_string())).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_failing_outcome_sink_answers_503_and_counts_a_store_error() {
    let hooks = Hooks { checkpoints: None, outcomes: Arc::new(FailingSink) };
    let state = state_with(support::agent(8), ServiceOptions::default(), hooks);
    let app = app(state.clone());
    let d = decide(&app, "options").await;
    let r = send(&app, post("/v1/outcomes", json!({"decision_id": d["decision_id"], "reward": 0.1}).to_string())).await;
    assert_contract_error(&r, StatusCode::SERVICE_UNAVAILABLE, "trade store unreachable");
    assert_eq!(state.metrics().store_errors(), 1);
    let m = send(&app, get("/metrics")).await;
    assert!(m.text.contains("paramopt_store_errors_total 1"), "{}", m.text);
}

#[tokio::test]
async fn an_expired_decision_is_404_expired() {
    let clock = Arc::new(ManualClock::new(1.7e9));
    let agent = Agent::new(&Spaces::builtin(), AgentOptions { seed: Some(9), clock: clock.clone(), journal: None });
    let app = app(state_with(agent, ServiceOptions::default(), Hooks::default()));
    let d = decide(&app, "crypto").await;
    let id = d["decision_id"].as_str().unwrap();
    clock.advance(604_800.0 + 1.0);
    let r = send(&app, post("/v1/outcomes", json!({"decision_id": id, "reward": 0.1}).to_string())).await;
    assert_contract_error(&r, StatusCode::NOT_FOUND, id);
    assert!(r.json["error"].as_str().unwrap().contains("expired"), "{}", r.text);
}

/// A client that only decides fills its module's open decisions: from then
/// on it gets 429 naming the capacity, nothing open is evicted (each still
/// takes its outcome), other modules are untouched, and the refusals are
/// counted apart from expiries; the decisions free room once they expire.
#[tokio::test]
async fn a_decision_flood_gets_429_and_evicts_nothing() {
    let clock = Arc::new(ManualClock::new(1.7e9));
    let spaces = Spaces::builtin_with(|s| {
        if s.name == "crypto" {
            s.pending.capacity = 50;
        }
    });
    let agent = Agent::new(&spaces, AgentOptions { seed: Some(9), clock: clock.clone(), journal: None });
    let app = app(state_with(agent, ServiceOptions::default(), Hooks::default()));
    let stocks = decide(&app, "stocks").await;
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..400 {
        let r = send(&app, post("/v1/decisions", decision_body("crypto", "asia_prime", "bullish"))).await;
        match r.status {
            StatusCode::OK => open.push(r.json["decision_id"].as_str().unwrap().to_string()),
            StatusCode::TOO_MANY_REQUESTS => {
                assert_contract_error(&r, StatusCode::TOO_MANY_REQUESTS, "\"crypto\"");
                assert!(r.json["error"].as_str().unwrap().contains("50 open decisions"), "{}", r.text);
                refused += 1;
            }
            other => panic!("{other}: {}", r.text),
        }
    }
    assert_eq!((open.len(), refused), (50, 350));
    let metrics = send(&app, get("/metrics")).await.text;
    assert!(metrics.contains("paramopt_decisions_refused_full_total{module=\"crypto\"} 350"), "{metrics}");
    assert!(metrics.contains("paramopt_decisions_expired_total{module=\"crypto\"} 0"), "{metrics}");
    // The other module still decides, and its open decision still reports.
    decide(&app, "stocks").await;
    let r = send(&app, post("/v1/outcomes", json!({"decision_id": stocks["decision_id"], "reward": 0.0}).to_string()))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // Every open crypto decision, the first one too, still takes its outcome.
    for id in &open[..25] {
        let r = send(&app, post("/v1/outcomes", json!({"decision_id": id, "reward": 0.0}).to_string())).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
    decide(&app, "crypto").await;
    // Past the TTL the rest expire, and make room.
    clock.advance(604_800.0 + 1.0);
    for _ in 0..50 {
        decide(&app, "crypto").await;
    }
    let metrics = send(&app, get("/metrics")).await.text;
    assert!(metrics.contains("paramopt_decisions_expired_total{module=\"crypto\"} 26"), "{metrics}");
}

#[tokio::test]
async fn checkpoint_routes_validate_then_answer_503_without_a_store() {
    let state = plain_state(10);
    let app = app(state.clone());
    let cases = [
        send(&app, get("/v1/checkpoints?module=crypto")).await,
        send(&app, get("/v1/checkpoints/crypto/3")).await,
        send(&app, post("/v1/checkpoints/crypto", "")).await,
        send(&app, post("/v1/rollback", r#"{"module": "crypto", "to": 12}"#)).await,
        send(&app, post("/v1/rollback", r#"{"module": "crypto", "to": "defaults"}"#)).await,
    ];
    for r in &cases {
        assert_contract_error(r, StatusCode::SERVICE_UNAVAILABLE, "without a checkpoint store");
    }
    // Validation still comes first.
    let r = send(&app, get("/v1/checkpoints?module=forex")).await;
    assert_contract_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "forex");
    let h = send(&app, get("/healthz")).await;
    let mut safety = h.json.clone();
    assert_eq!(
        h.json,
        json!({"status": "ok", "store": "none", "store_healthy": false, "safety": safety["safety"].take()})
    );
    assert_healthz_safety(&h.json);
    // "No store" is not a store failure.
    assert_eq!(state.metrics().store_errors(), 0);
}

#[tokio::test]
async fn checkpoint_routes_reach_a_configured_store() {
    let store = Arc::new(MemoryStore::default());
    let hooks = Hooks { checkpoints: Some(store.clone()), ..Hooks::default() };
    let app = app(state_with(support::agent(11), ServiceOptions::default(), hooks));
    let c1 = send(&app, post("/v1/checkpoints/crypto", "")).await;
    assert_eq!(c1.status, StatusCode::OK, "{}", c1.text);
    assert_eq!(c1.json["generation"], 1);
    assert_eq!(c1.json["parent"], Value::Null);
    let c2 = send(&app, post("/v1/checkpoints/crypto", "")).await;
    assert_eq!(c2.json["generation"], 2);
    assert_eq!(c2.json["parent"], 1);
    let list = send(&app, get("/v1/checkpoints?module=crypto")).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.json["module"], "crypto");
    let gens: Vec<u64> =
        list.json["checkpoints"].as_array().unwrap().iter().map(|c| c["generation"].as_u64().unwrap()).collect();
    assert_eq!(gens, [2, 1], "newest first");
    assert_eq!(list.json["next_before"], Value::Null, "one page holds them all");
    for field in ["created_at", "parent", "outcomes", "mean_reward"] {
        assert!(list.json["checkpoints"][0].get(field).is_some(), "{field}");
    }
    // A page at a time: each page's next_before leads to the next.
    for _ in 0..3 {
        send(&app, post("/v1/checkpoints/crypto", "")).await;
    }
    let mut pages = Vec::new();
    let mut path = "/v1/checkpoints?module=crypto&limit=2".to_string();
    loop {
        let page = send(&app, get(&path)).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        pages.push(
            page.json["checkpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["generation"].as_u64().unwrap())
                .collect::<Vec<_>>(),
        );
        match page.json["next_before"].as_u64() {
            Some(before) => path = format!("/v1/checkpoints?module=crypto&limit=2&before={before}"),
            None => break,
        }
    }
    assert_eq!(pages, vec![vec![5, 4], vec![3, 2], vec![1]]);
    for bad in ["limit=0", "limit=1001", "limit=x", "before=-1"] {
        let r = send(&app, get(&format!("/v1/checkpoints?module=crypto&{bad}"))).await;
        assert_contract_error(&r, StatusCode::UNPROCESSABLE_ENTITY, bad.split('=').nth(1).unwrap());
    }
    let one = send(&app, get("/v1/checkpoints/crypto/1")).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.json["summary"]["generation"], 1);
    let missing = send(&app, get("/v1/checkpoints/crypto/99")).await;
    assert_contract_error(&missing, StatusCode::NOT_FOUND, "99");
    let rb = send(&app, post("/v1/rollback", r#"{"module": "crypto", "to": 1}"#)).await;
    assert_eq!(rb.status, StatusCode::OK, "{}", rb.text);
    assert_eq!(rb.json["rolled_back_to"], 1);
    assert_eq!(rb.json["checkpoint"]["generation"], 6);
    let rb = send(&app, post("/v1/rollback", r#"{"module": "crypto", "to": "defaults"}"#)).await;
    assert_eq!(rb.json["rolled_back_to"], "defaults");
    let rb = send(&app, post("/v1/rollback", r#"{"module": "crypto", "to": 42}"#)).await;
    assert_contract_error(&rb, StatusCode::NOT_FOUND, "42");
    let h = send(&app, get("/healthz")).await;
    let mut safety = h.json.clone();
    assert_eq!(
        h.json,
        json!({"status": "ok", "store": "local", "store_healthy": true, "safety": safety["safety"].take()})
    );
    assert_healthz_safety(&h.json);
    let m = send(&app, get("/metrics")).await;
    assert!(m.text.contains("paramopt_checkpoint_age_seconds{module=\"crypto\"} 12.5"), "{}", m.text);
    assert!(m.text.contains("paramopt_checkpoint_age_seconds{module=\"stocks\"} NaN"));
}

#[tokio::test]
async fn a_request_slower_than_the_timeout_is_408_and_a_panic_is_500_without_details() {
    let slow = Arc::new(MemoryStore { delay: Some(Duration::from_millis(1500)), ..Default::default() });
    let options = ServiceOptions { request_timeout: Duration::from_millis(50), ..Default::default() };
    let app = app(state_with(support::agent(12), options, Hooks { checkpoints: Some(slow), ..Hooks::default() }));
    let r = send(&app, get("/v1/checkpoints?module=crypto")).await;
    assert_contract_error(&r, StatusCode::REQUEST_TIMEOUT, "50ms");

    let boom = Arc::new(MemoryStore { panic: true, ..Default::default() });
    let app = paramopt::service::app(state_with(
        support::agent(12),
        ServiceOptions::default(),
        Hooks { checkpoints: Some(boom), ..Hooks::default() },
    ));
    let r = send(&app, get("/v1/checkpoints?module=crypto")).await;
    assert_contract_error(&r, StatusCode::INTERNAL_SERVER_ERROR, "internal error");
    assert!(!r.text.contains("blew up"), "internals must not leak: {}", r.text);
}

#[tokio::test]
async fn health_and_metrics_are_open_and_metrics_count_requests_by_route() {
    let options = ServiceOptions { token: Some(TOKEN.into()), ..Default::default() };
    let state = state_with(support::agent(13), options, Hooks::default());
    let app = app(state.clone());
    let h = send(&app, get("/healthz")).await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.json["status"], "ok");
    let authed = |req: Request<Body>| {
        let (mut parts, body) = req.into_parts();
        parts.headers.insert(header::AUTHORIZATION, format!("Bearer {TOKEN}").parse().unwrap());
        Request::from_parts(parts, body)
    };
    let d = send(&app, authed(post("/v1/decisions", decision_body("options", "us_prime", "bearish")))).await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.text);
    let bad = send(&app, authed(post("/v1/decisions", decision_body("forex", "us_prime", "bearish")))).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    // The A/B and dashboard routes are counted under their own names.
    send(&app, authed(get("/v1/ab-tests/options"))).await;
    send(&app, authed(get("/v1/dashboard/overview"))).await;
    let m = send(&app, get("/metrics")).await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(m.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    for line in [
        "paramopt_decisions_total{module=\"options\"} 1",
        "paramopt_outcomes_total{module=\"options\"} 0",
        "paramopt_pending_decisions{module=\"options\"} 1",
        "paramopt_checkpoint_age_seconds{module=\"options\"} NaN",
        "paramopt_store_errors_total 0",
        "paramopt_http_requests_total{route=\"/v1/decisions\",status=\"200\"} 1",
        "paramopt_http_requests_total{route=\"/v1/decisions\",status=\"422\"} 1",
        "paramopt_http_request_duration_seconds_count{route=\"/v1/decisions\"} 2",
        "paramopt_http_request_duration_seconds_bucket{route=\"/v1/decisions\",le=\"+Inf\"} 2",
        "paramopt_http_request_duration_seconds_count{route=\"/v1/ab-tests/{module}\"} 1",
        "paramopt_http_request_duration_seconds_count{route=\"/v1/dashboard/overview\"} 1",
    ] {
        assert!(m.text.contains(line), "missing {line:?} in\n{}", m.text);
    }
    assert!(!m.text.contains("route=\"unmatched\",status"), "{}", m.text);
    assert!(m.text.contains("# TYPE paramopt_http_request_duration_seconds histogram"));
}

#[tokio::test]
async fn bearer_auth_guards_v1_only() {
    let options = ServiceOptions { token: Some(TOKEN.into()), ..Default::default() };
    let app = app(state_with(support::agent(14), options, Hooks::default()));
    let r = send(&app, get("/v1/modules")).await;
    assert_contract_error(&r, StatusCode::UNAUTHORIZED, "Authorization");
    assert_eq!(r.headers[header::WWW_AUTHENTICATE], "Bearer");
    let mut req = get("/v1/modules");
    req.headers_mut().insert(header::AUTHORIZATION, format!("Bearer {TOKEN}").parse().unwrap());
    assert_eq!(send(&app, req).await.status, StatusCode::OK);
    let mut req = get("/v1/modules");
    req.headers_mut().insert(header::AUTHORIZATION, "Bearer guess".parse().unwrap());
    let r = send(&app, req).await;
    assert_contract_error(&r, StatusCode::UNAUTHORIZED, "wrong");
    assert!(!r.text.contains("guess"), "a presented token is never echoed");
    assert_eq!(send(&app, get("/healthz")).await.status, StatusCode::OK);
    assert_eq!(send(&app, get("/metrics")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn request_ids_are_set_or_propagated() {
    let app = app(plain_state(15));
    let a = send(&app, get("/healthz")).await;
    let b = send(&app, get("/healthz")).await;
    assert_ne!(a.headers["x-request-id"], b.headers["x-request-id"]);
    let mut req = get("/healthz");
    req.headers_mut().insert("x-request-id", "caller-42".parse().unwrap());
    assert_eq!(send(&app, req).await.headers["x-request-id"], "caller-42");
}

// ---------------------------------------------------------------- bad input

/// Everything a bad request must not change, per module.
#[derive(Debug, PartialEq)]
struct ModuleState {
    module: String,
    pending: usize,
    decisions: u64,
    outcomes: u64,
    generation: u64,
    learned: u64,
    /// Greedy values in every context.
    greedy: Vec<Vec<f64>>,
}

#[derive(Debug, PartialEq)]
struct Snapshot {
    modules: Vec<ModuleState>,
}

fn snapshot(agent: &Agent) -> Snapshot {
    agent.flush();
    let modules = agent
        .modules()
        .map(|s| {
            let c = agent.counters(&s.name).unwrap();
            let view = agent.view(&s.name).unwrap();
            let greedy = Context::all().map(|ctx| agent.greedy(&s.name, ctx).unwrap().0).collect();
            ModuleState {
                module: s.name.clone(),
                pending: agent.pending_count(&s.name).unwrap(),
                decisions: c.decisions.load(std::sync::atomic::Ordering::SeqCst),
                outcomes: c.outcomes.load(std::sync::atomic::Ordering::SeqCst),
                generation: view.generation,
                learned: view.outcomes,
                greedy,
            }
        })
        .collect();
    Snapshot { modules }
}

struct Case {
    what: &'static str,
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    auth: Option<String>,
    body: String,
    status: StatusCode,
    names: String,
}

fn case(what: &'static str, method: Method, path: &str, body: impl Into<String>, status: u16, names: &str) -> Case {
    Case {
        what,
        method,
        path: path.into(),
        content_type: Some("application/json"),
        auth: Some(format!("Bearer {TOKEN}")),
        body: body.into(),
        status: StatusCode::from_u16(status).unwrap(),
        names: names.into(),
    }
}

fn decide_case(what: &'static str, body: Value, status: u16, names: &str) -> Case {
    case(what, Method::POST, "/v1/decisions", body.to_string(), status, names)
}

fn outcome_case(what: &'static str, body: Value, status: u16, names: &str) -> Case {
    case(what, Method::POST, "/v1/outcomes", body.to_string(), status, names)
}

#[tokio::test]
async fn bad_input_table_each_gets_its_4xx_naming_the_value_and_changes_nothing() {
    let options = ServiceOptions { token: Some(TOKEN.into()), ..Default::default() };
    let state = state_with(support::agent(16), options, Hooks::default());
    let app = app(state.clone());
    let auth = |mut req: Request<Body>| {
        req.headers_mut().insert(header::AUTHORIZATION, format!("Bearer {TOKEN}").parse().unwrap());
        req
    };
    // One decision left open, one already settled.
    let open = send(&app, auth(post("/v1/decisions", decision_body("crypto", "asia_prime", "bullish")))).await.json;
    let open = open["decision_id"].as_str().unwrap().to_string();
    let settled = send(&app, auth(post("/v1/decisions", decision_body("stocks", "us_prime", "volatile")))).await.json;
    let settled = settled["decision_id"].as_str().unwrap().to_string();
    let r = send(&app, auth(post("/v1/outcomes", json!({"decision_id": settled, "reward": 0.02}).to_string()))).await;
    assert_eq!(r.status, StatusCode::OK);

    let ctx = json!({"session": "asia_prime", "regime": "bullish"});
    let unknown_id = format!("{}ff", &open[..30]);
    let huge = format!(r#"{{"module": "crypto", "context": {ctx}, "pad": "{}"}}"#, "x".repeat(100_000));
    // `depth` arrays inside one another around a 1.
    let nested = |depth: usize| (0..depth).fold(json!(1), |inner, _| json!([inner]));
    let deep = format!(
        r#"{{"decision_id": "{open}", "reward": 0.1, "trade": {{"exit_analysis": {{"x": {}{}}}}}}}"#,
        "[".repeat(300),
        "]".repeat(300)
    );
    let mut cases = vec![
        // Not JSON.
        case("truncated JSON", Method::POST, "/v1/decisions", r#"{"module": "crypto", "#, 400, "EOF"),
        case("not JSON", Method::POST, "/v1/decisions", "hello there", 400, "hello"),
        case("empty body", Method::POST, "/v1/outcomes", "", 400, "empty"),
        case("trailing bytes", Method::POST, "/v1/outcomes", format!(r#"{{"decision_id": "{open}"}} xyz"#), 400, "xyz"),
        case("single quotes", Method::POST, "/v1/decisions", "{'module': 'crypto'}", 400, "'module'"),
        case("nesting too deep for the parser", Method::POST, "/v1/outcomes", deep, 422, "128"),
        // Non-finite numbers.
        case(
            "feature 1e999",
            Method::POST,
            "/v1/decisions",
            format!(r#"{{"module": "crypto", "context": {ctx}, "features": {{"momentum_score": 1e999}}}}"#),
            422,
            "1e999",
        ),
        case(
            "reward -1e400",
            Method::POST,
            "/v1/outcomes",
            format!(r#"{{"decision_id": "{open}", "reward": -1e400}}"#),
            422,
            "-1e400",
        ),
        case(
            "return_pct 1e309",
            Method::POST,
            "/v1/outcomes",
            format!(r#"{{"decision_id": "{open}", "trade": {{"return_pct": 1e309}}}}"#),
            422,
            "1e309",
        ),
        case(
            "NaN literal",
            Method::POST,
            "/v1/outcomes",
            format!(r#"{{"decision_id": "{open}", "reward": NaN}}"#),
            422,
            "NaN",
        ),
        case(
            "Infinity literal",
            Method::POST,
            "/v1/decisions",
            format!(r#"{{"module": "crypto", "context": {ctx}, "features": {{"volume_score": Infinity}}}}"#),
            422,
            "Infinity",
        ),
        // Wrong shapes and types.
        decide_case("array body", json!([1, 2]), 422, "an array"),
        decide_case("array body in field order", json!(["crypto", ctx]), 422, "an array"),
        outcome_case("string body", json!("hello"), 422, "a string"),
        decide_case("module is a number", json!({"module": 5, "context": ctx}), 422, "`5`"),
        decide_case(
            "explore is a string",
            json!({"module": "crypto", "context": ctx, "explore": "yes"}),
            422,
            "explore",
        ),
        decide_case(
            "feature is a string",
            json!({"module": "crypto", "context": ctx, "features": {"momentum_score": "high"}}),
            422,
            "features.momentum_score",
        ),
        decide_case(
            "features is a list",
            json!({"module": "crypto", "context": ctx, "features": [0.1]}),
            422,
            "features",
        ),
        decide_case("context is a string", json!({"module": "crypto", "context": "asia_prime"}), 422, "context"),
        outcome_case("reward is a string", json!({"decision_id": open, "reward": "0.1"}), 422, "\"0.1\""),
        outcome_case("traded is a number", json!({"decision_id": open, "reward": 0.1, "traded": 1}), 422, "traded"),
        outcome_case("decision_id is a number", json!({"decision_id": 17, "reward": 0.1}), 422, "decision_id"),
        outcome_case("trade is a list", json!({"decision_id": open, "trade": [1]}), 422, "trade"),
        outcome_case(
            "exit_analysis is a string",
            json!({"decision_id": open, "reward": 0.1, "trade": {"exit_analysis": "quick"}}),
            422,
            "trade.exit_analysis",
        ),
        // Unknown fields.
        decide_case("unknown top-level field", json!({"module": "crypto", "context": ctx, "colour": 1}), 422, "colour"),
        decide_case(
            "unknown context field",
            json!({"module": "crypto", "context": {"session": "asia_prime", "regime": "bullish", "tz": "UTC"}}),
            422,
            "tz",
        ),
        outcome_case("unknown outcome field", json!({"decision_id": open, "reward": 0.1, "rewrd": 0.2}), 422, "rewrd"),
        outcome_case(
            "trade nests too deep",
            json!({"decision_id": open, "reward": 0.1, "trade": {"x": nested(40)}}),
            422,
            "nests objects and arrays 41, over the limit of 32",
        ),
        outcome_case(
            "trade holds too many values",
            json!({"decision_id": open, "reward": 0.1, "trade": {"fills": vec![0; 2100]}}),
            422,
            "holds values 2101, over the limit of 2000",
        ),
        outcome_case(
            "trade quantity is a string",
            json!({"decision_id": open, "reward": 0.1, "trade": {"quantity": "lots", "venue": "x"}}),
            422,
            "trade.quantity: expected f64, got \"lots\"",
        ),
        outcome_case(
            "exit path holds a string",
            json!({"decision_id": open, "reward": 0.1, "trade": {"exit_analysis": {"path": [0.01, "x"]}}}),
            422,
            "trade.exit_analysis.path",
        ),
        // Unknown vocabulary.
        decide_case("unknown module", json!({"module": "forex", "context": ctx}), 422, "forex"),
        decide_case(
            "unknown session",
            json!({"module": "crypto", "context": {"session": "tokyo", "regime": "bullish"}}),
            422,
            "tokyo",
        ),
        decide_case(
            "unknown regime",
            json!({"module": "crypto", "context": {"session": "asia_prime", "regime": "crashing"}}),
            422,
            "crashing",
        ),
        decide_case("missing context", json!({"module": "crypto"}), 422, "context"),
        decide_case("missing session", json!({"module": "crypto", "context": {"regime": "bullish"}}), 422, "session"),
        decide_case("missing module", json!({"context": ctx}), 422, "module"),
        decide_case(
            "undeclared feature that is not a number",
            json!({"module": "crypto", "context": ctx, "features": {"rsi": "high"}}),
            422,
            "features.rsi",
        ),
        // Decision ids and outcomes.
        outcome_case("malformed decision id", json!({"decision_id": "not-an-id", "reward": 0.1}), 404, "not-an-id"),
        outcome_case("unknown decision id", json!({"decision_id": unknown_id, "reward": 0.1}), 404, &unknown_id),
        outcome_case("missing decision id", json!({"reward": 0.1}), 422, "decision_id"),
        outcome_case("duplicate outcome", json!({"decision_id": settled, "reward": 0.1}), 409, &settled),
        outcome_case("no reward, no trade", json!({"decision_id": open}), 422, "return_pct"),
        outcome_case(
            "no reward, trade without return_pct",
            json!({"decision_id": open, "trade": {"symbol": "BTCUSD", "profit_loss": 3.0}}),
            422,
            &open,
        ),
        outcome_case("null reward, no trade", json!({"decision_id": open, "reward": null}), 422, "return_pct"),
        outcome_case(
            "trade side HOLD",
            json!({"decision_id": open, "reward": 0.1, "trade": {"side": "HOLD"}}),
            422,
            "HOLD",
        ),
        outcome_case(
            "negative quantity",
            json!({"decision_id": open, "reward": 0.1, "trade": {"quantity": -1.5}}),
            422,
            "-1.5",
        ),
        outcome_case(
            "confidence above 1",
            json!({"decision_id": open, "reward": 0.1, "trade": {"confidence": 1.5}}),
            422,
            "1.5",
        ),
        outcome_case(
            "empty symbol",
            json!({"decision_id": open, "reward": 0.1, "trade": {"symbol": " "}}),
            422,
            "symbol",
        ),
        // Size, method, path, media type.
        case("huge body", Method::POST, "/v1/decisions", huge, 413, "65536"),
        case("DELETE decisions", Method::DELETE, "/v1/decisions", "", 405, "DELETE"),
        case("GET outcomes", Method::GET, "/v1/outcomes", "", 405, "GET"),
        case("PUT modules", Method::PUT, "/v1/modules", "", 405, "PUT"),
        case(
            "unknown path",
            Method::POST,
            "/v1/decision",
            decision_body("crypto", "asia_prime", "bullish"),
            404,
            "/v1/decision",
        ),
        case("unknown root path", Method::GET, "/admin", "", 404, "/admin"),
        Case {
            content_type: Some("text/plain"),
            ..decide_case("text/plain", json!({"module": "crypto", "context": ctx}), 415, "text/plain")
        },
        Case {
            content_type: None,
            ..decide_case("no content type", json!({"module": "crypto", "context": ctx}), 415, "Content-Type")
        },
        // Auth.
        Case {
            auth: None,
            ..decide_case("no token", json!({"module": "crypto", "context": ctx}), 401, "Authorization")
        },
        Case {
            auth: Some("Bearer nope".into()),
            ..decide_case("wrong token", json!({"module": "crypto", "context": ctx}), 401, "wrong")
        },
        Case {
            auth: Some(format!("Basic {TOKEN}")),
            ..decide_case("not Bearer", json!({"module": "crypto", "context": ctx}), 401, "Bearer")
        },
        Case {
            auth: None,
            ..case("no token on an unknown /v1 path", Method::GET, "/v1/secret", "", 401, "Authorization")
        },
        // Query and path parameters.
        case(
            "parameters: unknown module",
            Method::GET,
            "/v1/parameters/forex?session=asia_prime&regime=bullish",
            "",
            422,
            "forex",
        ),
        case(
            "parameters: unknown session",
            Method::GET,
            "/v1/parameters/crypto?session=asia&regime=bullish",
            "",
            422,
            "\"asia\"",
        ),
        case("parameters: missing regime", Method::GET, "/v1/parameters/crypto?session=asia_prime", "", 422, "regime"),
        case(
            "parameters: unknown query",
            Method::GET,
            "/v1/parameters/crypto?session=asia_prime&regime=bullish&foo=1",
            "",
            422,
            "foo",
        ),
        case(
            "parameters: repeated query",
            Method::GET,
            "/v1/parameters/crypto?session=asia_prime&session=us_prime&regime=bullish",
            "",
            422,
            "session",
        ),
        case("checkpoints: no module", Method::GET, "/v1/checkpoints", "", 422, "module"),
        case("checkpoint: bad generation", Method::GET, "/v1/checkpoints/crypto/latest", "", 422, "latest"),
        case("checkpoint: negative generation", Method::GET, "/v1/checkpoints/crypto/-1", "", 422, "-1"),
        case("create checkpoint: unknown module", Method::POST, "/v1/checkpoints/forex", "", 422, "forex"),
        case(
            "rollback: bad target",
            Method::POST,
            "/v1/rollback",
            r#"{"module": "crypto", "to": "yesterday"}"#,
            422,
            "yesterday",
        ),
        case("rollback: negative target", Method::POST, "/v1/rollback", r#"{"module": "crypto", "to": -3}"#, 422, "-3"),
        case("rollback: unknown module", Method::POST, "/v1/rollback", r#"{"module": "forex", "to": 1}"#, 422, "forex"),
        case("rollback: missing target", Method::POST, "/v1/rollback", r#"{"module": "crypto"}"#, 422, "to"),
        case(
            "A/B test: outcomes past the bound",
            Method::POST,
            "/v1/ab-tests",
            r#"{"module": "crypto", "challenger": "defaults", "min_outcomes": 18446744073709551615, "max_outcomes": 18446744073709551615}"#,
            422,
            "at most 100000000",
        ),
        case(
            "A/B test: a vanishing split",
            Method::POST,
            "/v1/ab-tests",
            r#"{"module": "crypto", "challenger": "defaults", "split": 1e-300}"#,
            422,
            "1e-300",
        ),
        case(
            "module name of 60 KB",
            Method::POST,
            "/v1/decisions",
            json!({"module": "m".repeat(60_000), "context": ctx}).to_string(),
            422,
            "bytes in all",
        ),
        decide_case(
            "context of the wrong type names no Rust type",
            json!({"module": "crypto", "context": ["asia_prime"]}),
            422,
            "expected a JSON object",
        ),
    ];
    assert!(cases.len() >= 30, "{}", cases.len());

    let before = snapshot(state.agent());
    for c in cases.drain(..) {
        let mut req = Request::builder().method(c.method.clone()).uri(&c.path);
        if let Some(ct) = c.content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        if let Some(a) = &c.auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let r = send(&app, req.body(Body::from(c.body.clone())).unwrap()).await;
        assert_eq!(r.status, c.status, "{}: {} {} -> {}", c.what, c.method, c.path, r.text);
        let msg = r.json.get("error").and_then(Value::as_str).unwrap_or_else(|| panic!("{}: {}", c.what, r.text));
        assert_eq!(r.json.as_object().unwrap().len(), 1, "{}: {}", c.what, r.text);
        assert!(msg.contains(&c.names), "{}: error {msg:?} should name {:?}", c.what, c.names);
        assert_eq!(snapshot(state.agent()), before, "{} changed the agent's state", c.what);
    }
    // The open decision is still open and can still be reported.
    let r = send(&app, auth(post("/v1/outcomes", json!({"decision_id": open, "reward": 0.01}).to_string()))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

// ---------------------------------------------------------------- config

#[test]
fn settings_come_from_flags_then_env_then_file_then_defaults() {
    let file = ServeFile::parse(
        "[serve]\naddr = \"127.0.0.1:9000\"\ntoken = \"from-file\"\nrequest_timeout_secs = 2.5\n[store]\npath = \"x\"\n",
        std::path::Path::new("paramopt.toml"),
    )
    .unwrap();
    let s = ServeSettings::resolve(ServeArgs::default(), file.clone()).unwrap();
    assert_eq!(s.addr.to_string(), "127.0.0.1:9000");
    assert_eq!(s.options.token.as_deref(), Some("from-file"));
    assert_eq!(s.options.request_timeout, Duration::from_millis(2500));
    assert_eq!(s.options.body_limit, 64 * 1024);
    let s = ServeSettings::resolve(
        ServeArgs { addr: Some("127.0.0.1:9100".into()), token: Some("from-flag".into()), ..Default::default() },
        file,
    )
    .unwrap();
    assert_eq!(s.addr.to_string(), "127.0.0.1:9100");
    assert_eq!(s.options.token.as_deref(), Some("from-flag"));
    let d = ServeSettings::resolve(ServeArgs::default(), ServeFile::default()).unwrap();
    assert_eq!(d.addr.to_string(), "127.0.0.1:8700");
    assert_eq!(d.options.token, None);
    assert_eq!(d.options.header_read_timeout, Duration::from_secs(10));
    assert_eq!(d.options.max_connections, 4096);

    // A token from a file: its first line, trimmed; never both a token and a file.
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "from-a-file\n").unwrap();
    let s = ServeSettings::resolve(
        ServeArgs { token_file: Some(token_file.clone()), ..Default::default() },
        ServeFile::default(),
    )
    .unwrap();
    assert_eq!(s.options.token.as_deref(), Some("from-a-file"));
    let err = ServeSettings::resolve(
        ServeArgs { token: Some("t".into()), token_file: Some(token_file), ..Default::default() },
        ServeFile::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("token_file"), "{err}");
    let err =
        ServeSettings::resolve(ServeArgs { max_connections: Some(0), ..Default::default() }, ServeFile::default())
            .unwrap_err()
            .to_string();
    assert!(err.contains("max_connections") && err.contains("\"0\""), "{err}");

    let err = ServeSettings::resolve(
        ServeArgs { addr: Some("localhost".into()), ..Default::default() },
        ServeFile::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("\"localhost\""), "{err}");
    let err = ServeSettings::resolve(ServeArgs { token: Some("".into()), ..Default::default() }, ServeFile::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("token"), "{err}");
    let err = ServeFile::parse("[serve]\nadress = \"x\"\n", std::path::Path::new("p.toml")).unwrap_err().to_string();
    assert!(err.contains("adress") && err.contains("p.toml"), "{err}");
}

// ---------------------------------------------------------------- real sockets

/// The server's end of the connection whose client end is `client`, found
/// among this process's open sockets: the server runs in this process.
#[cfg(target_os = "linux")]
fn server_side_nodelay(client: std::net::SocketAddr) -> Option<bool> {
    use std::mem::ManuallyDrop;
    use std::os::fd::FromRawFd;
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let is_socket = std::fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // Borrowed, never closed: the server owns it.
        let stream = ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
        if stream.peer_addr().ok() == Some(client) {
            return stream.nodelay().ok();
        }
    }
    None
}

async fn http1(addr: std::net::SocketAddr) -> Client {
    Client::connect(addr).await.unwrap()
}

/// One POST over a real connection: the answer's status and JSON body.
async fn over(client: &mut Client, path: &str, body: String) -> (StatusCode, Value) {
    let reply = client.request(Method::POST, path, body).await.unwrap();
    (StatusCode::from_u16(reply.status).unwrap(), serde_json::from_slice(&reply.body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_socket_sets_tcp_nodelay_reuses_one_keep_alive_connection_and_shuts_down_gracefully() {
    let state = plain_state(17);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(listener, state.clone(), async {
        let _ = stop_rx.await;
    }));

    let mut conn = http1(addr).await;
    let local = conn.local_addr();
    for i in 0..50 {
        let (status, d) = over(&mut conn, "/v1/decisions", decision_body("crypto", "us_prime", "bullish")).await;
        assert_eq!(status, StatusCode::OK, "{d}");
        let body = json!({"decision_id": d["decision_id"], "reward": 0.001 * i as f64}).to_string();
        let (status, o) = over(&mut conn, "/v1/outcomes", body).await;
        assert_eq!(status, StatusCode::OK, "{o}");
        assert_eq!(o["accepted"], true);
    }
    // 100 requests, one connection: keep-alive.
    assert_eq!(state.metrics().connections_accepted(), 1);
    #[cfg(target_os = "linux")]
    assert_eq!(server_side_nodelay(local), Some(true), "TCP_NODELAY on the accepted socket");
    let _ = local;

    // A request in flight when shutdown starts still gets its answer.
    let mut slow = http1(addr).await;
    slow.ready().await.unwrap();
    let in_flight = tokio::spawn(
        slow.send(Method::POST, "/v1/decisions", decision_body("stocks", "asia_prime", "bearish")).unwrap(),
    );
    // Shutdown must start only once the server holds the request: hyper
    // closes a connection it has accepted but read nothing from yet.
    while state.metrics().connections_accepted() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop_tx.send(()).unwrap();
    let res = in_flight.await.unwrap().unwrap();
    assert_eq!(res.status, 200);
    tokio::time::timeout(Duration::from_secs(30), server).await.unwrap().unwrap().unwrap();
    let errors = tokio::task::spawn_blocking(move || server::finish(&state)).await.unwrap();
    assert!(errors.is_empty());
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer listening");
}

// ---------------------------------------------------------------- the binary

#[test]
fn the_serve_binary_reads_its_config_and_env_and_stops_cleanly_on_sigterm() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("paramopt.toml");
    std::fs::write(
        &config,
        format!(
            "[serve]\naddr = \"127.0.0.1:0\"\nlog_json = true\nstore = \"{0}/store\"\ndata_dir = \"{0}\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut child = crate::support::Process(
        Command::new(env!("CARGO_BIN_EXE_paramopt"))
            .args(["serve", "--models", concat!(env!("CARGO_MANIFEST_DIR"), "/models"), "--config"])
            .arg(&config)
            .env("PARAMOPT_TOKEN", TOKEN)
            .env_remove("PARAMOPT_ADDR")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().rsplit("http://").next().unwrap().to_string();
    assert!(addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"), "{line}");
    // The token came from the environment, so `ps` (the process's command line) does not show it.
    #[cfg(target_os = "linux")]
    {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
        assert!(!String::from_utf8_lossy(&cmdline).contains(TOKEN), "the token shows in ps");
    }

    let exchange = |request: String| {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let unauthorised = exchange(format!("GET /v1/modules HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"));
    assert!(unauthorised.starts_with("HTTP/1.1 401"), "{unauthorised}");
    let ok = exchange(format!(
        "GET /v1/modules HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    ));
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let mut logs = String::new();
    child.stderr.take().unwrap().read_to_string(&mut logs).unwrap();
    assert!(status.success(), "exit {status}: {logs}");
    // JSON logs, from the config file; request lines carry the request id.
    let lines: Vec<Value> = logs.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("{l}"))).collect();
    assert!(lines.iter().any(|l| l["fields"]["message"] == "listening"), "{logs}");
    assert!(lines.iter().any(|l| l["fields"]["signal"] == "SIGTERM"), "{logs}");
    assert!(
        lines.iter().any(|l| l["span"]["request_id"].is_string()
            && l["fields"]["message"].as_str().is_some_and(|m| m.starts_with("unauthorised request"))),
        "{logs}"
    );
    assert!(!logs.contains(TOKEN), "the token is never logged");
}
/// docs/api.md is the contract: it begins with the shared contract word for
/// word (when the shared folder is beside the checkout), and it documents
/// every route the router serves, read from the router's own source.
#[test]
fn docs_api_md_holds_the_shared_contract_and_every_route() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/api.md")).unwrap();
    if let Ok(shared) = std::fs::read_to_string(root.join("../shared/API.md")) {
        assert!(doc.starts_with(&shared), "docs/api.md must begin with ../shared/API.md unchanged");
    }
    let routes = router_routes();
    for (method, path) in &routes {
        assert!(
            doc.contains(&format!("{method} {path}")) || doc.contains(&format!("`{method} {path}")),
            "docs/api.md does not document {method} {path}"
        );
    }
}

/// Every (method, path) the router serves, read from the router's own source
/// (`.route("path", get(…).delete(…))`), upper-case methods.
fn router_routes() -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut routes = Vec::new();
    for file in ["src/service/mod.rs", "src/service/dashboard/mod.rs"] {
        let source = std::fs::read_to_string(root.join(file)).unwrap();
        for part in source.split(".route(\"").skip(1) {
            let (path, rest) = part.split_once('"').unwrap();
            let handlers = rest.split(".route(").next().unwrap();
            for method in ["get", "post", "delete", "put"] {
                if handlers.contains(&format!("{method}(")) {
                    routes.push((method.to_uppercase(), path.to_string()));
                }
            }
        }
    }
    assert!(routes.len() >= 20, "{routes:?}");
    routes
}

/// Every route of the router is counted under its own label, the path it
/// matched: the labels come from the router's table, not a hand-kept list
/// (which once missed the moves and OpenAPI routes, counting them `unmatched`).
#[tokio::test]
async fn metrics_label_every_route_of_the_router_by_its_matched_path() {
    let app = app(state_with(support::agent(31), ServiceOptions::default(), Hooks::default()));
    let gets = ["/v1/openapi.json", "/v1/dashboard/modules/crypto/moves", "/v1/modules", "/healthz"];
    for path in gets {
        send(&app, get(path)).await;
    }
    send(&app, get("/no/such/route")).await;
    let m = send(&app, get("/metrics")).await.text;
    for label in ["/v1/openapi.json", "/v1/dashboard/modules/{module}/moves", "/v1/modules", "/healthz"] {
        assert!(
            m.contains(&format!("paramopt_http_request_duration_seconds_count{{route=\"{label}\"}} 1")),
            "{label}: {m}"
        );
    }
    assert!(m.contains("paramopt_http_request_duration_seconds_count{route=\"unmatched\"} 1"), "{m}");
    for (method, path) in router_routes() {
        let op = paramopt::service::openapi::OPERATIONS.iter().find(|o| o.path == path && o.method == method);
        assert!(op.is_some(), "{method} {path} has a label");
    }
}

// ---------------------------------------------------------------- the OpenAPI document

/// No route is missing from the OpenAPI document, and it has no operation the
/// router does not serve.
#[test]
fn the_openapi_document_has_every_route_of_the_router_with_its_methods() {
    let doc = support::openapi();
    let mut routes = router_routes();
    for (method, path) in &routes {
        let item = doc["paths"].get(path).unwrap_or_else(|| panic!("docs/openapi.json has no path {path}"));
        assert!(item.get(method.to_lowercase()).is_some(), "docs/openapi.json has no {method} {path}");
    }
    let mut documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| item.as_object().unwrap().keys().map(|m| (m.to_uppercase(), path.clone())))
        .collect();
    routes.sort();
    documented.sort();
    assert_eq!(documented, routes, "the document's operations are the router's routes");
    // Every operation documents its success, the contract's error body for
    // the errors, and, on `/v1`, the token's 401.
    for (method, path) in &documented {
        let responses = &doc["paths"][path][method.to_lowercase()]["responses"];
        assert!(responses.get("200").is_some(), "{method} {path}");
        assert_eq!(path.starts_with("/v1/"), responses.get("401").is_some(), "{method} {path}");
        for (status, response) in responses.as_object().unwrap() {
            if status != "200" {
                let schema = &response["content"]["application/json"]["schema"];
                assert_eq!(schema["$ref"], "#/components/schemas/ErrorBody", "{method} {path} {status}");
            }
        }
    }
}

/// docs/openapi.json is what the code generates; the message says how to regenerate it.
#[test]
fn docs_openapi_json_is_what_the_code_generates() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = paramopt::service::openapi::text();
    assert!(
        checked_in == generated,
        "docs/openapi.json differs from the document the code generates; regenerate it with\n    \
         cargo run --release --locked -- openapi > docs/openapi.json"
    );
    // And the binary prints the same document.
    let out = std::process::Command::new(support::BIN).arg("openapi").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == generated.as_bytes(), "paramopt openapi prints another document");
}

#[tokio::test]
async fn get_v1_openapi_json_serves_the_document_behind_the_token() {
    let options = ServiceOptions { token: Some(TOKEN.into()), ..Default::default() };
    let app = app(state_with(support::agent(31), options, Hooks::default()));
    let r = send(&app, get("/v1/openapi.json")).await;
    assert_contract_error(&r, StatusCode::UNAUTHORIZED, "Authorization");
    let mut req = get("/v1/openapi.json");
    req.headers_mut().insert(header::AUTHORIZATION, format!("Bearer {TOKEN}").parse().unwrap());
    let r = send(&app, req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(&r.json, support::openapi());
    assert_eq!(r.json["openapi"], "3.1.0");
    let r = send(&app, post("/v1/openapi.json", "{}")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "auth comes before routing's 405: {}", r.text);
}

/// The check every answer above goes through refuses what it must: a status
/// the route does not document, a body off its schema, a wrong media type,
/// and a 404 that is not the router's.
#[test]
fn the_openapi_check_refuses_an_undocumented_status_a_body_off_its_schema_and_a_wrong_media_type() {
    let json = Some("application/json");
    let refused =
        |method: &'static str, uri: &'static str, status: u16, media: Option<&'static str>, body: &'static str| {
            std::panic::catch_unwind(|| support::check_openapi(method, uri, status, media, body.as_bytes())).is_err()
        };
    let outcome = r#"{"accepted": true, "decision_id": "d", "reward": 0.5}"#;
    assert!(!refused("POST", "/v1/outcomes", 200, json, outcome), "a documented answer passes");
    assert!(refused("POST", "/v1/outcomes", 200, json, r#"{"accepted": "yes", "decision_id": "d", "reward": 0.5}"#));
    assert!(refused("POST", "/v1/outcomes", 200, json, r#"{"accepted": true}"#), "a required field is missing");
    assert!(refused("POST", "/v1/outcomes", 200, Some("text/plain"), outcome));
    assert!(refused("GET", "/v1/modules", 409, json, r#"{"error": "conflict"}"#), "409 is not documented there");
    assert!(refused("POST", "/v1/outcomes", 404, json, r#"{"error": "x", "detail": 1}"#), "only `error`");
    assert!(!refused("GET", "/v1/parameters/crypto?session=x", 422, json, r#"{"error": "unknown session"}"#));
    assert!(!refused("GET", "/v1/nowhere", 404, json, r#"{"error": "no route"}"#));
    assert!(refused("GET", "/v1/nowhere", 200, json, "{}"), "an unknown path only answers 404");
    assert!(!refused("PUT", "/v1/outcomes", 405, json, r#"{"error": "method"}"#));
}

/// A server on a real socket with `options`, stopped when the sender is dropped.
async fn serve_with(options: ServiceOptions) -> (std::net::SocketAddr, AppState, tokio::sync::oneshot::Sender<()>) {
    let state = state_with(support::agent(18), options, Hooks::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve(listener, state.clone(), async {
        let _ = stop_rx.await;
    }));
    (addr, state, stop_tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_is_cut_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let options = ServiceOptions { header_read_timeout: Duration::from_millis(300), ..Default::default() };
    let (addr, _state, _stop) = serve_with(options).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"POST /v1/decisions HTTP/1.1\r\nHost: x\r\nContent-Type: app").await.unwrap();
    // The server closes it (perhaps after a 408): the read ends. The outer
    // timeout only keeps a broken server from hanging the suite.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
    let read = read.expect("the server never closed the half-sent request");
    assert!(read.is_ok() || answer.is_empty(), "{read:?}");
    let text = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_wait_until_one_closes() {
    let options = ServiceOptions { max_connections: 2, ..Default::default() };
    let (addr, state, _stop) = serve_with(options).await;
    let decide = || decision_body("crypto", "us_prime", "bullish");
    let mut first = http1(addr).await;
    let mut second = http1(addr).await;
    assert_eq!(over(&mut first, "/v1/decisions", decide()).await.0, StatusCode::OK);
    assert_eq!(over(&mut second, "/v1/decisions", decide()).await.0, StatusCode::OK);
    // The third connects (the kernel's backlog) but is not served while both stay open.
    let mut third = http1(addr).await;
    let waiting = tokio::spawn(async move { over(&mut third, "/v1/decisions", decide()).await.0 });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "a third connection was served past the limit of 2");
    assert_eq!(state.metrics().connections_accepted(), 2);
    drop(first);
    let status = tokio::time::timeout(Duration::from_secs(30), waiting).await.expect("never served").unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(state.metrics().connections_accepted(), 3);
    drop(second);
}

#[tokio::test]
async fn the_dashboard_sends_security_headers_on_the_page_and_its_assets() {
    let app = app(plain_state(19));
    for path in ["/", "/dashboard/app.js", "/dashboard/style.css"] {
        let r = send(&app, get(path)).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        let header = |name: &str| r.headers.get(name).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(header("referrer-policy").as_deref(), Some("no-referrer"), "{path}");
        assert_eq!(header("x-frame-options").as_deref(), Some("DENY"), "{path}");
        assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"), "{path}");
        let csp = header("content-security-policy").unwrap_or_default();
        assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
    }
}

/// A rollback that outlasts the request's timeout still finishes once, and
/// its retry with the same Idempotency-Key gets that answer: one generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_rollback_with_the_same_key_makes_one_generation() {
    let store = Arc::new(MemoryStore { rollback_delay: Some(Duration::from_millis(400)), ..Default::default() });
    let options = ServiceOptions { request_timeout: Duration::from_millis(100), ..Default::default() };
    let hooks = Hooks { checkpoints: Some(store.clone()), ..Hooks::default() };
    let app = app(state_with(support::agent(20), options, hooks));
    let rollback = |key: &str| {
        Request::post("/v1/rollback")
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", key)
            .body(Body::from(r#"{"module": "crypto", "to": "defaults"}"#))
            .unwrap()
    };
    let first = send(&app, rollback("retry-me")).await;
    assert_contract_error(&first, StatusCode::REQUEST_TIMEOUT, "100ms");
    // The retry waits for the first one's work instead of starting another.
    let mut retry = send(&app, rollback("retry-me")).await;
    while retry.status == StatusCode::REQUEST_TIMEOUT {
        retry = send(&app, rollback("retry-me")).await;
    }
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.text);
    assert_eq!(retry.json["checkpoint"]["generation"], 1);
    let again = send(&app, rollback("retry-me")).await;
    assert_eq!(again.json, retry.json, "the same answer every time");
    assert_eq!(store.generations.lock().len(), 1, "one generation for one key");
    // Another key is another rollback.
    let mut other = send(&app, rollback("another")).await;
    while other.status == StatusCode::REQUEST_TIMEOUT {
        other = send(&app, rollback("another")).await;
    }
    assert_eq!(other.json["checkpoint"]["generation"], 2, "{}", other.text);
    let bad = send(&app, rollback(&"k".repeat(300))).await;
    assert_contract_error(&bad, StatusCode::UNPROCESSABLE_ENTITY, "Idempotency-Key");
}

/// A stocks decision names its strategy; its outcome carries the trade's
/// strategy, confidence and the module's own fields. The answer says what
/// was explored; the stored trade lists what every arm of the strategy's
/// threshold and multiplier would have done; another strategy's parameters
/// are left out, and an unknown strategy is refused by name.
#[tokio::test]
async fn a_strategys_trade_reports_its_evidence_and_stores_its_alternatives() {
    let sink = Arc::new(KeepingSink::default());
    let hooks = Hooks { checkpoints: None, outcomes: sink.clone() };
    let app = app(state_with(support::agent(22), ServiceOptions::default(), hooks));
    let features = json!({"technical_confidence": 0.8, "regime_confidence": 0.7, "pattern_confidence": 0.6});
    let body = json!({"module": "stocks", "context": {"session": "us_prime", "regime": "bullish"},
                      "features": features, "strategy": "leveraged_etfs"});
    let d = send(&app, post("/v1/decisions", body.to_string())).await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.text);
    assert_eq!(d.json["strategy"], "leveraged_etfs");
    assert!(d.json["exploration"]["epsilon"].is_f64(), "{}", d.text);
    let p = &d.json["parameters"];
    let w = |n: &str| p[format!("intelligence_weights.{n}")].as_f64().unwrap();
    let confidence =
        (0.8 * w("technical") + 0.7 * w("regime") + 0.6 * w("pattern")) / (w("technical") + w("regime") + w("pattern"));
    let traded = confidence >= p["strategy_thresholds.leveraged_etfs"].as_f64().unwrap();
    let ret = if traded { 0.004 * p["position_multipliers.leveraged_etfs"].as_f64().unwrap() } else { 0.0 };
    let outcome = json!({"decision_id": d.json["decision_id"], "traded": traded,
        "trade": {"symbol": "TQQQ", "strategy": "leveraged_etfs", "confidence": confidence, "return_pct": ret,
                  "instrument": "TQQQ-ETF"}});
    let r = send(&app, post("/v1/outcomes", outcome.to_string())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let trade = serde_json::to_value(sink.0.lock()[0].trade.as_ref().unwrap().flat()).unwrap();
    let alternatives = trade["parameter_performance"]["alternative_outcomes"].as_object().unwrap();
    let thresholds = alternatives["strategy_thresholds.leveraged_etfs"].as_array().unwrap();
    assert_eq!(thresholds.len(), 5, "{trade}");
    for arm in thresholds {
        let fires = confidence >= arm["value"].as_f64().unwrap();
        let label = arm["outcome"].as_str().unwrap();
        assert_eq!(label != "would_have_skipped", fires, "{arm}");
    }
    assert!(!alternatives.contains_key("strategy_thresholds.core_equity"), "another strategy's gate: {trade}");
    assert_eq!(trade["instrument"], "TQQQ-ETF");

    let body = json!({"module": "stocks", "context": {"session": "us_prime", "regime": "bullish"}, "strategy": "yolo"});
    let r = send(&app, post("/v1/decisions", body.to_string())).await;
    assert_contract_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "yolo");
}

/// `/healthz` carries every module's loss budget: the shipped 0.02, and a
/// cold module with nothing spent whose worst trade does not fit in it.
fn assert_healthz_safety(h: &Value) {
    for module in ["crypto", "options", "stocks"] {
        let b = &h["safety"][module];
        assert_eq!(b["budget"], 0.02, "{h}");
        assert_eq!(b["shortfall_lower"], 0.0, "{h}");
        assert_eq!(b["open_exploring"], 0, "{h}");
        assert!(b["reserve_per_open_trade"].as_f64().unwrap() > 0.02, "{h}");
        assert_eq!(b["exploring"], false, "{h}");
    }
}
