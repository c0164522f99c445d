//! The dashboard in a real browser: `paramopt serve` on a temporary store,
//! driven with decisions, outcomes, checkpoints and a rollback over HTTP; then
//! the page opened in headless Chromium through chromedriver (WebDriver, a few
//! JSON calls over HTTP, written by hand here), its DOM read and checked
//! against what the API reports, and a screenshot saved.
//!
//! Chromium and chromedriver are Debian's (`.ci/run` installs them). Without
//! them the test fails and says so: a dashboard nobody looked at is not tested.
//! `PARAMOPT_UPDATE_SCREENSHOT=1` writes the screenshot to `docs/dashboard.png`;
//! otherwise it goes to a temporary directory, so tests leave the tree clean.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::Process;
use base64::Engine as _;
use paramopt::space::{Context, Spaces};
use paramopt::store::{open_store, Checkpoint, CheckpointKind, LearningEvent, LearningEventKind};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long to wait for a process or the page to come up; generous, since CI machines are shared.
const PATIENCE: Duration = Duration::from_secs(60);

/// `paramopt serve` on a free port, its store under `dir`. Checkpoints happen
/// only when the test asks, so it knows every generation.
fn serve(dir: &Path, token: Option<&str>) -> (Process, String) {
    let mut args: Vec<std::ffi::OsString> = ["--seed", "7", "--checkpoint-every-outcomes", "1000000000"]
        .into_iter()
        .chain(["--checkpoint-every-secs", "1000000000", "--store"])
        .map(Into::into)
        .collect();
    args.push(dir.join("store").into());
    args.push("--data-dir".into());
    args.push(dir.into());
    if let Some(t) = token {
        args.extend(["--token".into(), t.into()]);
    }
    crate::support::serve(args, &[])
}

/// One HTTP/1.1 exchange over std's TcpStream (`Connection: close`, so the
/// body ends at EOF; chunked bodies are decoded). Returns status and body.
fn http(method: &str, url: &str, body: Option<&Value>, headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
    let (status, _, body) = exchange(method, url, body, headers);
    (status, body)
}

/// [`http`], with the answer's Content-Type.
fn exchange(method: &str, url: &str, body: Option<&Value>, headers: &[(&str, &str)]) -> (u16, Option<String>, Vec<u8>) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut s = TcpStream::connect(host).unwrap_or_else(|e| panic!("connecting to {host}: {e}"));
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let payload = body.map(|b| serde_json::to_vec(b).unwrap()).unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n",
        payload.len()
    );
    if body.is_some() {
        request.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    s.write_all(request.as_bytes()).unwrap();
    s.write_all(&payload).unwrap();
    // chromedriver keeps the connection open whatever the request says, so
    // the body is read by its length (or to the last chunk), not to EOF.
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let complete = |raw: &[u8]| -> bool {
        let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
        let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
        let body = &raw[split + 4..];
        if let Some(len) = head.lines().find_map(|l| l.strip_prefix("content-length:")) {
            return body.len() >= len.trim().parse::<usize>().unwrap();
        }
        head.contains("transfer-encoding: chunked") && body.ends_with(b"0\r\n\r\n")
    };
    while !complete(&raw) {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP answer has a head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status code");
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    let content_type = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-type").then(|| value.trim().to_string())
    });
    (status, content_type, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).split(';').next().unwrap().trim(), 16)
            .expect("a chunk size");
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
    out
}

/// A JSON call to the served binary that must answer 200, held to the
/// OpenAPI document like the service tests' answers.
fn call(method: &str, url: &str, body: Option<Value>) -> Value {
    let (status, content_type, bytes) = exchange(method, url, body.as_ref(), &[]);
    let path = url.strip_prefix("http://").and_then(|rest| rest.find('/').map(|i| &rest[i..])).unwrap_or("/");
    crate::support::check_openapi(method, path, status, content_type.as_deref(), &bytes);
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(status, 200, "{method} {url}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {url}: {e}: {text}"))
}

/// The tiny part of WebDriver the test needs.
struct Browser {
    url: String,
    session: String,
    _driver: Process,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start(width: u32, height: u32) -> Browser {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: the dashboard test drives headless Chromium. Install Debian's \
                 `chromium` and `chromium-driver` (apt-get install -y chromium chromium-driver); .ci/run does this"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Process(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        );
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            let ready = TcpStream::connect(("127.0.0.1", port)).is_ok() && {
                let (status, body) = http("GET", &format!("{url}/status"), None, &[]);
                status == 200
                    && serde_json::from_slice::<Value>(&body).is_ok_and(|v| v["value"]["ready"] == Value::Bool(true))
            };
            if ready {
                break;
            }
            assert!(started.elapsed() < PATIENCE, "chromedriver did not come up on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        // Without these, Chromium waits on the network this machine does not have.
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--hide-scrollbars".into(),
            format!("--user-data-dir={}", profile.path().display()),
            format!("--window-size={width},{height}"),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let (status, body) = http("POST", &format!("{url}/session"), Some(&caps), &[]);
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 200, "chromedriver refused the session: {answer}");
        let session = answer["value"]["sessionId"].as_str().unwrap().to_string();
        Browser { url, session, _driver: driver, _profile: profile }
    }

    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.url, self.session);
        let (status, bytes) = http(method, &url, body.as_ref(), &[]);
        let answer: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(status, 200, "WebDriver {method} {path}: {answer}");
        answer["value"].clone()
    }

    fn open(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    fn eval(&self, script: &str) -> Value {
        self.command("POST", "/execute/sync", Some(json!({ "script": script, "args": [] })))
    }

    /// Waits until `script` returns something other than null or false.
    fn wait_for(&self, what: &str, script: &str) -> Value {
        let started = Instant::now();
        loop {
            let v = self.eval(script);
            if !v.is_null() && v != Value::Bool(false) {
                return v;
            }
            let error = self.eval("return document.body.dataset.error || null");
            assert!(started.elapsed() < PATIENCE, "the page never showed {what}; its last error: {error}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Grows the window to the page's height first, so nothing is cut off.
    fn full_page_screenshot(&self, width: u32) -> Vec<u8> {
        let rect = self.command("GET", "/window/rect", None);
        let inner = self.eval("return [window.innerHeight, document.documentElement.scrollHeight]");
        let chrome = rect["height"].as_u64().unwrap() - inner[0].as_u64().unwrap();
        let height = inner[1].as_u64().unwrap() + chrome;
        self.command("POST", "/window/rect", Some(json!({ "width": width, "height": height })));
        self.screenshot()
    }

    fn screenshot(&self) -> Vec<u8> {
        let b64 = self.command("GET", "/screenshot", None);
        base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap()).unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http("DELETE", &format!("{}/session/{}", self.url, self.session), None, &[]);
    }
}

/// A decision in `ctx` and its outcome, whose reward grows with
/// `session_confidence.asia_prime` and `position_multipliers.asia_session`, so
/// the agent has something to learn.
fn trade(url: &str, session: &str, regime: &str, i: usize) {
    let d = call(
        "POST",
        &format!("{url}/v1/decisions"),
        Some(json!({"module": "crypto", "context": {"session": session, "regime": regime},
                    "features": {"volatility_score": (i % 10) as f64 / 10.0}})),
    );
    let p = &d["parameters"];
    let conf = p["session_confidence.asia_prime"].as_f64().unwrap();
    let mult = p["position_multipliers.asia_session"].as_f64().unwrap();
    let reward = 0.05 * (conf - 0.45) / 0.2 - 0.02 * (mult - 1.0) + 0.002 * ((i % 7) as f64 - 3.0);
    call(
        "POST",
        &format!("{url}/v1/outcomes"),
        Some(json!({"decision_id": d["decision_id"], "reward": reward, "traded": true})),
    );
}

const SESSIONS: [&str; 3] = ["asia_prime", "europe_prime", "us_prime"];
const REGIMES: [&str; 4] = ["bullish", "bearish", "sideways", "volatile"];

fn screenshot_path() -> (PathBuf, Option<tempfile::TempDir>) {
    if std::env::var("PARAMOPT_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        (Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png"), None)
    } else {
        let dir = tempfile::tempdir().unwrap();
        (dir.path().join("dashboard.png"), Some(dir))
    }
}

#[test]
fn the_dashboard_shows_live_values_history_and_operations_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, url) = serve(dir.path(), None);

    // Batches of outcomes, a checkpoint after each, and a rollback to
    // generation 3 after the sixth: generations 1-6, 7 (the rollback), 8-13.
    const BATCHES: usize = 12;
    const BATCH: usize = 60;
    let mut i = 0;
    for batch in 1..=BATCHES {
        for _ in 0..BATCH {
            // Asia first and most: the charted cell learns fastest.
            let session = if i % 2 == 0 { "asia_prime" } else { SESSIONS[i % 3] };
            trade(&url, session, REGIMES[(i / 2) % 4], i);
            i += 1;
        }
        call("POST", &format!("{url}/v1/checkpoints/crypto"), None);
        if batch == 6 {
            let rolled = call("POST", &format!("{url}/v1/rollback"), Some(json!({"module": "crypto", "to": 3})));
            assert_eq!(rolled["checkpoint"]["generation"], 7, "{rolled}");
        }
    }
    // The other modules learn a little too, without checkpoints.
    for module in ["options", "stocks"] {
        for j in 0..40 {
            let d = call(
                "POST",
                &format!("{url}/v1/decisions"),
                Some(json!({"module": module, "context": {"session": SESSIONS[j % 3], "regime": REGIMES[j % 4]}})),
            );
            let reward = 0.001 * (j % 5) as f64;
            call(
                "POST",
                &format!("{url}/v1/outcomes"),
                Some(json!({"decision_id": d["decision_id"], "reward": reward})),
            );
        }
    }
    // An A/B test of generation 3 against the live policy, just started.
    let started =
        call("POST", &format!("{url}/v1/ab-tests"), Some(json!({"module": "crypto", "challenger": 3, "split": 0.25})));
    assert_eq!(started["ab_test"]["challenger"], "generation 3", "{started}");
    // Three decisions left open: operations must count them as pending.
    for _ in 0..3 {
        call(
            "POST",
            &format!("{url}/v1/decisions"),
            Some(json!({"module": "crypto", "context": {"session": "us_prime", "regime": "volatile"}})),
        );
    }

    // What the API says, to compare the page with.
    let (session, regime) = ("asia_prime", "bullish");
    let greedy = call("GET", &format!("{url}/v1/parameters/crypto?session={session}&regime={regime}"), None);
    let modules = call("GET", &format!("{url}/v1/modules"), None);
    let crypto = modules["modules"].as_array().unwrap().iter().find(|m| m["module"] == "crypto").unwrap().clone();
    let names: Vec<String> =
        crypto["parameters"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    let defaults: Vec<f64> =
        crypto["parameters"].as_array().unwrap().iter().map(|p| p["default"].as_f64().unwrap()).collect();
    let moved =
        names.iter().zip(&defaults).filter(|(n, d)| greedy["parameters"][n.as_str()].as_f64() != Some(**d)).count();
    assert!(moved > 0, "the outcomes moved no incumbent in {session}/{regime}: {greedy}");
    let listed = call("GET", &format!("{url}/v1/checkpoints?module=crypto"), None);
    let mut generations: Vec<u64> =
        listed["checkpoints"].as_array().unwrap().iter().map(|c| c["generation"].as_u64().unwrap()).collect();
    generations.reverse();
    assert_eq!(generations, (1..=BATCHES as u64 + 1).collect::<Vec<u64>>());
    // Not in the reward, so it wanders: a chart with something to see.
    let charted = "analysis_weights.momentum";
    let p = names.iter().position(|n| n == charted).unwrap();
    let c =
        SESSIONS.iter().position(|s| *s == session).unwrap() * 4 + REGIMES.iter().position(|r| *r == regime).unwrap();
    let stored: Vec<f64> = generations
        .iter()
        .map(|g| call("GET", &format!("{url}/v1/checkpoints/crypto/{g}"), None)["incumbents"][c][p].as_f64().unwrap())
        .collect();

    let browser = Browser::start(1440, 900);
    browser.open(&format!("{url}/#crypto/{charted}/{session}/{regime}"));
    browser.wait_for("its first refresh", "return document.body.dataset.refreshes || null");
    let page = browser.eval(
        r#"
        const all = (q) => Array.from(document.querySelectorAll(q));
        const text = (q) => (document.querySelector(q) || {}).textContent || null;
        return {
          cells: all('#grid-body td.cell').length,
          context: all('#grid-body td.cell[data-context="asia_prime/bullish"]')
            .map((td) => [td.dataset.param, td.dataset.value, td.textContent]),
          points: all('#history-chart circle.point')
            .map((c) => [Number(c.dataset.generation), c.dataset.value, c.getAttribute('class')]),
          rollbacks: all('#history-chart g.marker.rollback').map((g) => Number(g.dataset.generation)),
          live: document.getElementById('history-live').dataset.value,
          rewardPoints: all('#reward-chart circle.point').length,
          outcomes: text('#progress-outcomes'),
          store: text('#ops-store'),
          pending: text('#ops-modules tr[data-module="crypto"] td.pending'),
          checkpointAge: text('#ops-modules tr[data-module="crypto"] td.checkpoint-age'),
          ab: text('#ab-status'),
          defaults: text('#progress-defaults'),
          attribution: text('#attribution-body'),
          moves: text('#moves-body'),
          tabs: all('#modules button').map((b) => b.textContent),
          error: document.body.dataset.error || null,
        };
        "#,
    );
    assert_eq!(page["error"], Value::Null, "{page}");

    // The grid: every parameter in every context, and in the charted context
    // exactly what `GET /v1/parameters` serves.
    assert_eq!(page["cells"], names.len() * 12, "{page}");
    let shown = page["context"].as_array().unwrap();
    assert_eq!(shown.len(), names.len());
    for cell in shown {
        let name = cell[0].as_str().unwrap();
        let value: f64 = cell[1].as_str().unwrap().parse().unwrap();
        assert_eq!(Some(value), greedy["parameters"][name].as_f64(), "grid cell {name} in {session}/{regime}");
        assert!(!cell[2].as_str().unwrap().is_empty());
    }

    // The history: one point per generation, each at the stored incumbent, the rollback marked.
    let points = page["points"].as_array().unwrap();
    assert_eq!(points.len(), generations.len(), "{page}");
    for ((point, g), want) in points.iter().zip(&generations).zip(&stored) {
        assert_eq!(point[0].as_u64(), Some(*g));
        assert_eq!(point[1].as_str().unwrap().parse::<f64>().unwrap(), *want, "generation {g}");
    }
    assert!(points[6][2].as_str().unwrap().contains("rollback"), "{page}");
    assert_eq!(page["rollbacks"], json!([7]));
    assert_eq!(page["live"].as_str().unwrap().parse::<f64>().unwrap(), greedy["parameters"][charted].as_f64().unwrap());

    // Learning progress: a reward point per checkpoint that learned something
    // new (not the rollback), the count, and the empty states.
    assert_eq!(page["rewardPoints"], BATCHES, "{page}");
    // The rollback to generation 3 took the count back to its three batches; six followed.
    assert_eq!(page["outcomes"], (9 * BATCH).to_string());
    let ab = page["ab"].as_str().unwrap();
    assert!(ab.starts_with("running: challenger generation 3 on 25% of decisions"), "{ab}");
    assert!(ab.contains("next look at 200 outcomes per arm"), "{ab}");
    assert_eq!(page["defaults"], "no off-policy estimate yet");
    assert!(page["attribution"].as_str().unwrap().contains("No effectiveness rows yet"), "{page}");
    assert!(page["moves"].as_str().unwrap().contains("No moves on evidence yet"), "{page}");

    // Operations.
    let store = page["store"].as_str().unwrap();
    assert!(store.contains("local") && store.contains("healthy") && !store.contains("unhealthy"), "{store}");
    assert_eq!(page["pending"], "3");
    assert!(page["checkpointAge"].as_str().unwrap().ends_with(" s"), "{page}");
    assert_eq!(page["tabs"], json!(["crypto", "options", "stocks"]));

    // The whole page, 1440 pixels wide, for the README.
    let png = browser.full_page_screenshot(1440);
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG screenshot");
    let (path, _keep) = screenshot_path();
    std::fs::write(&path, &png).unwrap();
    eprintln!("dashboard screenshot: {}", path.display());
}

/// The page is public; its data routes are `/v1` routes and want the token,
/// which the page takes from `?token=` once.
#[test]
fn with_a_token_the_page_loads_and_its_data_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, url) = serve(dir.path(), Some("s3cret"));
    let (status, page) = http("GET", &format!("{url}/"), None, &[]);
    assert_eq!(status, 200);
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains("/dashboard/app.js") && !page.contains("http://") && !page.contains("https://"), "{page}");
    for asset in ["/dashboard/app.js", "/dashboard/style.css"] {
        let (status, body) = http("GET", &format!("{url}{asset}"), None, &[]);
        assert_eq!(status, 200, "{asset}");
        // Offline: nothing is fetched from anywhere but this server.
        assert!(!String::from_utf8_lossy(&body).contains("https://"), "{asset} refers to another host");
    }
    let overview = format!("{url}/v1/dashboard/overview");
    let (status, _) = http("GET", &overview, None, &[]);
    assert_eq!(status, 401);
    let (status, body) = http("GET", &overview, None, &[("Authorization", "Bearer s3cret")]);
    assert_eq!(status, 200);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["store"]["kind"], "local");
    assert_eq!(body["modules"].as_array().unwrap().len(), 3);

    // In a browser: refused without the token, then `?token=` once and it is
    // kept (out of the address bar) for every later load.
    let browser = Browser::start(1440, 900);
    browser.open(&format!("{url}/"));
    let error = browser.wait_for("the refusal", "return document.body.dataset.error || null");
    assert!(error.as_str().unwrap().contains("?token="), "{error}");
    browser.open(&format!("{url}/?token=s3cret"));
    browser.wait_for("a refresh with the token", "return document.body.dataset.refreshes || null");
    let href = browser.eval("return location.href");
    assert!(!href.as_str().unwrap().contains("s3cret"), "the token stays in the address bar: {href}");
    browser.open(&format!("{url}/"));
    browser.wait_for("a refresh with the kept token", "return document.body.dataset.refreshes || null");
    assert_eq!(browser.eval("return document.body.dataset.error || null"), Value::Null);
    // Logging out forgets the token: the page is refused again until `?token=`.
    assert_eq!(browser.eval("return document.getElementById('logout').hidden"), Value::Bool(false));
    browser.eval("document.getElementById('logout').click(); return true");
    let error = browser.wait_for("the refusal after logging out", "return document.body.dataset.error || null");
    assert!(error.as_str().unwrap().contains("?token="), "{error}");
    assert_eq!(browser.eval("return localStorage.getItem('paramopt.token')"), Value::Null);
}

/// Thousands of generations: the history answer shows a power-of-two stride
/// of them (plus the newest and the rollback), each at its stored incumbent,
/// whether that came from the generation's learning event or (for the ones
/// without) from the checkpoint; a second refresh answers the same from the
/// cache. The store is written through the `Store` API before `serve`
/// starts, which is the same data at a fraction of the disk writes.
#[test]
fn history_with_thousands_of_generations_is_downsampled_and_exact() {
    const GENERATIONS: u64 = 1_200;
    const ROLLBACK: u64 = 1_001;
    let dir = tempfile::tempdir().unwrap();
    let space = Spaces::builtin().get("crypto").unwrap().clone();
    let p = space.param_index("session_confidence.asia_prime").unwrap();
    let arms = space.params[p].arms.clone();
    let tokio_rt = tokio::runtime::Runtime::new().unwrap();
    tokio_rt.block_on(async {
        let store = open_store(dir.path().join("store").to_str().unwrap()).await.unwrap();
        for g in 1..=GENERATIONS {
            let mut cp = Checkpoint::defaults(space.clone(), (g > 1).then_some(g - 1), 1.7e9 + g as f64);
            cp.kind = if g == ROLLBACK { CheckpointKind::Rollback } else { CheckpointKind::Checkpoint };
            cp.outcome_count = 3 * g;
            cp.reward_sum = 0.01 * g as f64;
            cp.mean_reward = cp.reward_sum / cp.outcome_count as f64;
            cp.incumbents[0][p] = arms[(g as usize * 7 / 5) % arms.len()];
            assert_eq!(store.put_checkpoint(&cp).await.unwrap(), g);
            // Every tenth generation has no event: its incumbents come from the checkpoint.
            if g % 10 == 0 {
                continue;
            }
            let after: serde_json::Map<String, Value> = Context::all()
                .zip(&cp.incumbents)
                .map(|(c, row)| (c.to_string(), json!(cp.parameter_names.iter().zip(row).collect::<BTreeMap<_, _>>())))
                .collect();
            let event = LearningEvent {
                model_name: "crypto.bandit".into(),
                module_name: "crypto".into(),
                learning_event: if g == ROLLBACK { LearningEventKind::Rollback } else { LearningEventKind::Checkpoint },
                parameters_before: Value::Null,
                parameters_after: Value::Object(after),
                performance_impact: 0.0,
                confidence_change: 0.0,
                timestamp: String::new(),
                created_at: cp.created_at,
                generation: Some(g),
                reason: None,
                evidence: None,
            };
            store.put_learning_event(&event).await.unwrap();
        }
    });
    drop(tokio_rt);

    let (_server, url) = serve(dir.path(), None);
    let query = "parameter=session_confidence.asia_prime&session=asia_prime&regime=bullish";
    let history = call("GET", &format!("{url}/v1/dashboard/modules/crypto/history?{query}"), None);
    assert_eq!(history["generations"], GENERATIONS);
    // 1,200 generations at 400 points or fewer: every 4th.
    assert_eq!(history["stride"], 4);
    let points = history["points"].as_array().unwrap();
    let shown: Vec<u64> = points.iter().map(|p| p["generation"].as_u64().unwrap()).collect();
    let want: Vec<u64> =
        (1..=GENERATIONS).filter(|g| (g - 1) % 4 == 0 || *g == ROLLBACK || *g == GENERATIONS).collect();
    assert_eq!(shown, want);
    assert_eq!(points[shown.iter().position(|&g| g == ROLLBACK).unwrap()]["kind"], "rollback");
    assert_eq!(history["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "rollback").count(), 1);
    // 1,001 has an event, 1,200 and 1,181 do not; 997 and 1,005 do.
    for g in [1, 997, ROLLBACK, 1_005, 1_181, GENERATIONS] {
        let stored = call("GET", &format!("{url}/v1/checkpoints/crypto/{g}"), None);
        let point = points.iter().find(|p| p["generation"] == g).unwrap();
        assert_eq!(point["incumbent"], stored["incumbents"][0][p], "generation {g}");
        assert_eq!(point["outcomes"], stored["outcome_count"], "generation {g}");
    }
    assert_eq!(history["live"]["incumbent"], points.last().unwrap()["incumbent"]);
    let again = call("GET", &format!("{url}/v1/dashboard/modules/crypto/history?{query}"), None);
    assert_eq!(again, history, "a refresh with nothing new answers the same");
    let progress = call("GET", &format!("{url}/v1/dashboard/modules/crypto/progress?points=100"), None);
    assert_eq!(progress["stride"], 16);
    assert!(progress["reward"].as_array().unwrap().len() <= 100 + 2, "{}", progress["reward"]);
}

/// Moves on evidence have no generation, so the history chart cannot mark
/// them; the moves route lists them, newest first, with what changed.
#[test]
fn moves_on_evidence_are_listed_newest_first_with_what_changed_and_their_test() {
    let dir = tempfile::tempdir().unwrap();
    let tokio_rt = tokio::runtime::Runtime::new().unwrap();
    tokio_rt.block_on(async {
        let store = open_store(dir.path().join("store").to_str().unwrap()).await.unwrap();
        let side = |m: f64| json!({"context": "asia_prime/bullish", "values": {"position_multipliers.asia_session": m, "session_confidence.asia_prime": 0.6}});
        let rows = [
            ("crypto.counterfactual", "counterfactual_promotion", side(1.0), side(1.5), 1.7e9),
            ("crypto.bandit", "checkpoint", Value::Null, Value::Null, 1.7e9 + 1.0),
            ("crypto.counterfactual", "change_detected", side(1.5), side(1.0), 1.7e9 + 2.0),
        ];
        for (i, (model, kind, before, after, at)) in rows.into_iter().enumerate() {
            let learning_event = match kind {
                "checkpoint" => LearningEventKind::Checkpoint,
                other => LearningEventKind::Other(other.into()),
            };
            let event = LearningEvent {
                model_name: model.into(),
                module_name: "crypto".into(),
                learning_event,
                parameters_before: before,
                parameters_after: after,
                performance_impact: 0.004,
                confidence_change: 0.001,
                timestamp: String::new(),
                created_at: at,
                generation: (kind == "checkpoint").then_some(1),
                reason: Some(format!("{kind}: the test in words")),
                evidence: (model != "crypto.bandit").then(|| paramopt::store::MoveEvidence {
                    context: "asia_prime/bullish".into(),
                    paired: if i == 0 { "table - defaults" } else { "defaults - served" }.into(),
                    estimate: 0.004,
                    lower_bound: 0.001,
                    n: 300.0 + i as f64,
                    alpha: 0.2,
                    margin: 0.0,
                }),
            };
            store.put_learning_event(&event).await.unwrap();
        }
    });
    drop(tokio_rt);

    let (_server, url) = serve(dir.path(), None);
    let all = call("GET", &format!("{url}/v1/dashboard/modules/crypto/moves"), None);
    assert_eq!(all["total"], 2, "{all}");
    let kinds: Vec<&str> = all["moves"].as_array().unwrap().iter().map(|m| m["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["change_detected", "counterfactual_promotion"], "newest first; the checkpoint is no move");
    let promotion = &all["moves"][1];
    assert_eq!(
        promotion["changes"],
        json!([{"parameter": "position_multipliers.asia_session", "before": 1.0, "after": 1.5}])
    );
    assert_eq!(promotion["context"], "asia_prime/bullish");
    assert_eq!(promotion["n"], 300.0);
    assert_eq!(promotion["paired"], "table - defaults");
    let newest = call("GET", &format!("{url}/v1/dashboard/modules/crypto/moves?limit=1"), None);
    assert_eq!(newest["moves"].as_array().unwrap().len(), 1);
    assert_eq!(newest["moves"][0]["kind"], "change_detected");
    let (status, body) = http("GET", &format!("{url}/v1/dashboard/modules/crypto/moves?limit=0"), None, &[]);
    assert_eq!(status, 422);
    assert!(String::from_utf8_lossy(&body).contains("limit \\\"0\\\""), "{}", String::from_utf8_lossy(&body));
    let none = call("GET", &format!("{url}/v1/dashboard/modules/stocks/moves"), None);
    assert_eq!(none["moves"], json!([]));
}
