//! Shared drivers for the integration tests.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};

use paramopt::agent::{Agent, AgentOptions, Outcome};
use paramopt::eval::synthetic::SyntheticEnv;
use paramopt::space::{Context, ModuleSpace, Spaces};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

pub fn agent(seed: u64) -> Agent {
    Agent::new(&Spaces::builtin(), AgentOptions { seed: Some(seed), ..Default::default() })
}

/// The shipped spaces with the policy network on or off (it ships off),
/// every parameter opaque: the tests of the bandit and the network drive
/// rewards that depend on the arms, not trades a declared rule makes
/// (tests/integration/counterfactual.rs tests the declared roles).
pub fn spaces(policy: bool) -> Spaces {
    spaces_with(policy, &[])
}

/// The built-in spaces with each `(from, to)` text replaced in every model file, every parameter opaque.
pub fn spaces_with(policy: bool, edits: &[(&str, &str)]) -> Spaces {
    let mut spaces = Spaces::default();
    for (origin, text) in [
        ("models/crypto.toml", include_str!("../../models/crypto.toml")),
        ("models/options.toml", include_str!("../../models/options.toml")),
        ("models/stocks.toml", include_str!("../../models/stocks.toml")),
    ] {
        let mut text = if policy { policy_enabled(text, origin) } else { text.to_string() };
        for (from, to) in edits {
            assert!(text.contains(from), "{origin} has no {from:?}");
            text = text.replace(from, to);
        }
        let mut space = ModuleSpace::from_toml_str(&text, origin).unwrap();
        space.counterfactual = None;
        spaces.insert(space).unwrap();
    }
    spaces
}

/// A model file's text with its `[policy]` section switched on (other
/// sections have `enabled` keys of their own).
pub fn policy_enabled(text: &str, origin: &str) -> String {
    let section = text.find("[policy]").unwrap_or_else(|| panic!("{origin} has no [policy]"));
    let mut text = text.to_string();
    let rest = text[section..].replacen("enabled = false", "enabled = true", 1);
    text.replace_range(section.., &rest);
    text
}

/// The shipped spaces with `loss_budget` set: room to explore from the
/// start, for tests of what exploring teaches rather than of the budget
/// (the shipped 0.02 cannot hold one cold module's exploring trade).
pub fn builtin_with_budget(budget: f64) -> Spaces {
    Spaces::builtin_with(|space| space.safety.loss_budget = budget)
}

pub fn bandit_agent(seed: u64) -> Agent {
    Agent::new(&spaces(false), AgentOptions { seed: Some(seed), ..Default::default() })
}

pub fn agent_for(space: ModuleSpace, seed: u64) -> Agent {
    let mut spaces = Spaces::default();
    spaces.insert(space).unwrap();
    Agent::new(&spaces, AgentOptions { seed: Some(seed), ..Default::default() })
}

pub fn reward(r: f64) -> Outcome {
    Outcome { reward: Some(r), traded: true, return_pct: None, evidence: Default::default() }
}

/// Runs `n` decisions against `env` in the contexts `contexts` picks, with up
/// to `open` outcomes outstanding, reported in random order. The writer is
/// flushed after each report, as it keeps up when decisions come at trading
/// speed rather than in a tight loop; that also makes the run deterministic.
pub fn drive(
    agent: &Agent,
    space: &ModuleSpace,
    env: &SyntheticEnv,
    n: usize,
    open: usize,
    rng: &mut Pcg64Mcg,
    mut contexts: impl FnMut(&mut Pcg64Mcg) -> Context,
) {
    let mut outstanding: VecDeque<(String, f64)> = VecDeque::new();
    for _ in 0..n {
        let ctx = contexts(rng);
        let d = agent.decide(&space.name, ctx, &[], true).unwrap();
        let r = env.sample(space, ctx, &d.values, &d.features, rng);
        outstanding.push_back((d.id.to_string(), r));
        while outstanding.len() > open {
            let i = rng.random_range(0..outstanding.len());
            let (id, r) = outstanding.swap_remove_back(i).unwrap();
            agent.report(&id, reward(r)).unwrap();
            agent.flush();
        }
    }
    for (id, r) in outstanding {
        agent.report(&id, reward(r)).unwrap();
    }
    agent.flush();
}

pub fn rng(seed: u64) -> Pcg64Mcg {
    Pcg64Mcg::seed_from_u64(seed)
}

pub const BIN: &str = env!("CARGO_BIN_EXE_paramopt");
pub const MODELS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models");

/// The shipped models without their `[counterfactual]` declarations, as a
/// directory for `--models`: for the tests of a served binary that report
/// rewards alone (bandit feedback), as the tests before declared roles did.
pub fn opaque_models() -> &'static str {
    static DIR: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("opaque-models");
        std::fs::create_dir_all(&dir).unwrap();
        for (origin, text) in Spaces::builtin_files() {
            let cut = text.find("\n[counterfactual]").map_or(text.len(), |i| i + 1);
            let name = std::path::Path::new(origin).file_name().unwrap();
            // Written beside and renamed, so parallel tests never read half a file.
            let tmp = dir.join(format!("{}.{}.tmp", name.to_string_lossy(), std::process::id()));
            std::fs::write(&tmp, &text[..cut]).unwrap();
            std::fs::rename(&tmp, dir.join(name)).unwrap();
        }
        dir.to_string_lossy().into_owned()
    })
}

/// A child process that is killed when the test ends, however it ends. A
/// test that fails must not leave a server running: it would hold the test
/// run's output open, and whatever reads that output would wait forever.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    /// Reads its stdout to the end and waits for it to exit (its stderr is
    /// the test's).
    pub fn wait_with_output(mut self) -> std::io::Result<std::process::Output> {
        let mut stdout = Vec::new();
        if let Some(mut out) = self.0.stdout.take() {
            out.read_to_end(&mut stdout)?;
        }
        let status = self.0.wait()?;
        Ok(std::process::Output { status, stdout, stderr: Vec::new() })
    }
}

impl std::ops::Deref for Process {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// Starts `paramopt serve` on a free port with `args` after `serve` and `env`
/// on top of this process's environment; returns it and its base URL.
pub fn serve<I, S>(args: I, env: &[(&str, &str)]) -> (Process, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut child = Process(
        Command::new(BIN)
            .args(["--models", opaque_models(), "serve", "--addr", "127.0.0.1:0"])
            .args(args)
            .env_remove("PARAMOPT_TOKEN")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    let url = line.split_whitespace().last().unwrap_or_default().to_string();
    assert!(url.starts_with("http://"), "serve printed {line:?}");
    (child, url)
}

/// SIGTERM, then the graceful shutdown must exit 0.
pub fn sigterm(mut child: Process) {
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert!(child.wait().unwrap().success(), "graceful shutdown exits 0");
}

/// A one-shot HTTP/1.1 exchange over std's TcpStream (no client library
/// needed): the status and the body, which must match the OpenAPI document
/// ([`check_openapi`]).
pub fn http(method: &str, url: &str, body: &str) -> (u16, String) {
    try_http(method, url, body).unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// [`http`] that returns the error when the server is gone (or goes mid-answer).
pub fn try_http(method: &str, url: &str, body: &str) -> std::io::Result<(u16, String)> {
    try_http_as(None, method, url, body)
}

/// [`try_http`] with a bearer token.
pub fn try_http_as(token: Option<&str>, method: &str, url: &str, body: &str) -> std::io::Result<(u16, String)> {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap();
    let mut s = std::net::TcpStream::connect(host)?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{auth}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").ok_or_else(|| std::io::Error::other("a torn answer"))?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let content_type = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-type").then(|| value.trim())
    });
    check_openapi(method, &path, status, content_type, body.as_bytes());
    Ok((status, body.to_string()))
}

/// [`http`] that must answer 200 with JSON.
pub fn http_json(method: &str, url: &str, body: &str) -> serde_json::Value {
    let (status, text) = http(method, url, body);
    assert_eq!(status, 200, "{method} {url}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {url}: {e}: {text}"))
}

/// A runtime on an embedded store under `dir` that checkpoints only when told
/// to, so tests decide when generations are made.
pub fn explicit_checkpoints(dir: &std::path::Path, seed: u64) -> paramopt::runtime::RuntimeOptions {
    paramopt::runtime::RuntimeOptions {
        store: format!("local://{}", dir.join("store").display()),
        data_dir: dir.to_path_buf(),
        seed: Some(seed),
        checkpoint_every_outcomes: u64::MAX,
        checkpoint_every_secs: f64::INFINITY,
        ..Default::default()
    }
}

/// The whole service on `rt`, as `paramopt serve` wires it
/// (`service::compose`): outcomes and checkpoints go through the runtime.
pub fn served(rt: &std::sync::Arc<paramopt::runtime::Runtime>) -> axum::Router {
    use paramopt::service::{app, compose::Served, ServiceOptions};
    app(Served::over(rt.clone(), ServiceOptions::default(), tokio::runtime::Handle::current()).state)
}

/// One JSON request through `router`; the reply's status and JSON body
/// (`Null` when it has none). The reply must match docs/openapi.json ([`check_openapi`]).
pub async fn send(
    router: &axum::Router,
    method: &str,
    path: &str,
    body: serde_json::Value,
) -> (axum::http::StatusCode, serde_json::Value) {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let req = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(if body.is_null() { Body::empty() } else { Body::from(body.to_string()) })
        .unwrap();
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let content_type = res.headers().get(axum::http::header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string());
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    check_openapi(method, path, status.as_u16(), content_type.as_deref(), &bytes);
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

/// The service's OpenAPI document, built once.
pub fn openapi() -> &'static serde_json::Value {
    static DOC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    DOC.get_or_init(paramopt::service::openapi::document)
}

/// The document's path template that `path` (no query) matches: `{name}` is
/// one non-empty segment, as in the router.
pub fn openapi_path(path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.split('/').collect();
    openapi()["paths"].as_object().unwrap().keys().map(String::as_str).find(|template| {
        let parts: Vec<&str> = template.split('/').collect();
        parts.len() == segments.len()
            && parts.iter().zip(&segments).all(|(p, s)| p == s || (p.starts_with('{') && !s.is_empty()))
    })
}

/// Holds one answer of the service to the OpenAPI document: its status must
/// be documented for the route's method (an unknown path answers 404, a
/// known path with another method 405), its media type must be the
/// documented one, and a JSON body must be valid against the documented
/// schema. Panics naming the route, the status and every violation.
pub fn check_openapi(method: &str, uri: &str, status: u16, content_type: Option<&str>, body: &[u8]) {
    let path = uri.split('?').next().unwrap_or(uri);
    let doc = openapi();
    let route = openapi_path(path);
    let operation = route.and_then(|r| doc["paths"][r].get(method.to_ascii_lowercase()));
    let (what, schema, media) = match (route, operation) {
        (Some(route), Some(op)) => {
            let response = op["responses"].get(status.to_string()).unwrap_or_else(|| {
                panic!(
                    "{method} {route} answered {status}, which docs/openapi.json does not document for it \
                     (documented: {:?}); body: {}",
                    op["responses"].as_object().unwrap().keys().collect::<Vec<_>>(),
                    String::from_utf8_lossy(body)
                )
            });
            let (media, content) = response["content"].as_object().unwrap().iter().next().unwrap();
            (format!("{method} {route} {status}"), content["schema"].clone(), media.as_str())
        }
        // Not a route: the router's 404 and 405 answers (after the token's
        // 401 on `/v1`), in the contract's error body.
        (None, _) | (Some(_), None) => {
            let routed = if route.is_none() { 404 } else { 405 };
            assert!(
                status == routed || (status == 401 && path.starts_with("/v1/")),
                "{method} {path} is not in docs/openapi.json and answered {status}: {}",
                String::from_utf8_lossy(body)
            );
            (
                format!("{method} {path} {status}"),
                serde_json::json!({"$ref": "#/components/schemas/ErrorBody"}),
                "application/json",
            )
        }
    };
    let sent = content_type.unwrap_or("");
    assert!(sent.starts_with(media), "{what}: Content-Type {sent:?}, documented {media}");
    if media != "application/json" {
        return;
    }
    let instance: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{what}: the body is not JSON ({e}): {}", String::from_utf8_lossy(body)));
    let validator = openapi_validator(&schema);
    let errors: Vec<String> =
        validator.iter_errors(&instance).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(
        errors.is_empty(),
        "{what}: the body does not match docs/openapi.json:\n{}\nbody: {instance}",
        errors.join("\n")
    );
}

/// A compiled validator of `schema` (a response's schema from the document,
/// usually a `$ref` into its components), cached: the document's components
/// go with it so its references resolve.
fn openapi_validator(schema: &serde_json::Value) -> std::sync::Arc<jsonschema::Validator> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<jsonschema::Validator>>>> = OnceLock::new();
    let key = schema.to_string();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap();
    cache
        .entry(key)
        .or_insert_with(|| {
            let root = serde_json::json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "components": openapi()["components"],
                "allOf": [schema],
            });
            Arc::new(jsonschema::draft202012::new(&root).unwrap_or_else(|e| panic!("{schema}: {e}")))
        })
        .clone()
}
