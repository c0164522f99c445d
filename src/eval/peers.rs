//! The Python peers: Vowpal Wabbit (`--cb_explore_adf`) and MABWiser,
//! driven on the same stream as the agent, with the same delayed outcomes,
//! through a [`Driver`] that speaks JSON lines with `scripts/peers/peer.py`
//! (compiled in, run with the peers' venv's Python; its docstring has the
//! protocol and how each learner is factorised).
//!
//! They need a venv with `scripts/peers/requirements.txt` installed
//! (`scripts/peers/setup` makes `target/peers-venv`). Without one,
//! [`find_python`] says why and how to make it, and the backtest goes on
//! without those two columns and says so in its report.
//!
//! Decisions of one clock tick (the nine stocks of one date) are asked for
//! in one request: no outcome can arrive between them (every trade is held
//! at least one tick), so this is what deciding them one by one would see,
//! at a ninth of the round trips. MABWiser is asked for the next 32
//! decisions at once (whole ticks): its LinTS predict costs about 0.25 ms a
//! call per parameter whatever the batch, and its `partial_fit` about 1 ms,
//! so it refits every 32 outcomes (see peer.py) and decides 32 at a time.
//! Its decisions therefore use a model up to 32 decisions staler than
//! Vowpal Wabbit's, which learns every outcome as it arrives; no decision
//! ever uses an outcome reported after it.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::json;

use super::backtest::Driver;
use super::baselines::arm_values;
use super::stream::Stream;
use super::trading::Opportunity;

const SCRIPT: &str = include_str!("../../scripts/peers/peer.py");

/// The peers, by the names their columns get.
pub const PEERS: [&str; 2] = ["vw", "mabwiser"];

/// Decisions asked for in one request (rounded up to whole ticks).
fn lookahead(peer: &str) -> usize {
    if peer == "mabwiser" {
        32
    } else {
        1
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {peer}: cannot start {python}: {source}")]
    Spawn {
        peer: String,
        python: String,
        #[source]
        source: std::io::Error,
    },
    #[error("peer {peer}: the pipe broke: {source}")]
    Io {
        peer: String,
        #[source]
        source: std::io::Error,
    },
    #[error("peer {peer}: {message}")]
    Peer { peer: String, message: String },
}

/// Where the peers' venv is looked for: `PARAMOPT_PEERS_VENV`, else the
/// source tree's `target/peers-venv`.
pub fn default_venv() -> PathBuf {
    std::env::var_os("PARAMOPT_PEERS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/peers-venv"))
}

/// The venv's Python if it can import both peers; otherwise a sentence
/// saying what is missing and how to make the venv.
pub fn find_python(venv: &Path) -> Result<PathBuf, String> {
    let python = venv.join("bin/python");
    let how = format!(
        "make it with `scripts/peers/setup` (installs scripts/peers/requirements.txt into {}), or point \
         PARAMOPT_PEERS_VENV or --peers-venv at such a venv",
        venv.display()
    );
    if !python.exists() {
        return Err(format!("no Python venv at {}: {how}", venv.display()));
    }
    match Command::new(&python).args(["-c", "import vowpalwabbit, mabwiser"]).output() {
        Ok(out) if out.status.success() => Ok(python),
        Ok(out) => Err(format!(
            "{} cannot import vowpalwabbit and mabwiser ({}): {how}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("").trim()
        )),
        Err(e) => Err(format!("cannot run {}: {e}: {how}", python.display())),
    }
}

/// One peer process on one stream.
pub struct PeerDriver<'a> {
    peer: String,
    stream: &'a Stream,
    child: Child,
    input: BufWriter<ChildStdin>,
    output: BufReader<ChildStdout>,
    /// Index of the next decision, and the arms already answered for the
    /// rest of its tick.
    next: usize,
    ready: std::collections::VecDeque<Vec<usize>>,
}

impl<'a> PeerDriver<'a> {
    /// Starts `peer` (one of [`PEERS`]) with `python`, seeded.
    pub fn start(python: &Path, peer: &str, seed: u64, stream: &'a Stream) -> Result<PeerDriver<'a>, PeerError> {
        let mut child = Command::new(python)
            .args(["-u", "-c", SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| PeerError::Spawn { peer: peer.into(), python: python.display().to_string(), source })?;
        let input = BufWriter::new(child.stdin.take().expect("piped"));
        let output = BufReader::new(child.stdout.take().expect("piped"));
        let mut driver =
            PeerDriver { peer: peer.into(), stream, child, input, output, next: 0, ready: Default::default() };
        let space = &stream.space;
        let arms: Vec<usize> = space.params.iter().map(|p| p.arms.len()).collect();
        driver.ask(&json!({
            "op": "init",
            "learner": peer,
            "seed": seed,
            "arms": arms,
            "features": space.features.len(),
            "noise_sd": space.learning.prior_noise_sd,
        }))?;
        Ok(driver)
    }

    fn send(&mut self, msg: &serde_json::Value) -> Result<(), PeerError> {
        let peer = self.peer.clone();
        serde_json::to_writer(&mut self.input, msg)
            .map_err(|e| PeerError::Io { peer: peer.clone(), source: e.into() })?;
        self.input.write_all(b"\n").map_err(|source| PeerError::Io { peer, source })
    }

    fn ask(&mut self, msg: &serde_json::Value) -> Result<serde_json::Value, PeerError> {
        // A peer that failed on an earlier report has exited with its error
        // line waiting in the pipe: read it even when this write fails.
        let sent = self
            .send(msg)
            .and_then(|()| self.input.flush().map_err(|source| PeerError::Io { peer: self.peer.clone(), source }));
        let mut line = String::new();
        let n = self.output.read_line(&mut line).map_err(|source| PeerError::Io { peer: self.peer.clone(), source })?;
        let fail = |message: String| PeerError::Peer { peer: self.peer.clone(), message };
        if n == 0 {
            return Err(sent.err().unwrap_or_else(|| fail("exited without answering (see its standard error)".into())));
        }
        let answer: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| fail(format!("answered {line:?}: {e}")))?;
        if let Some(e) = answer.get("error") {
            return Err(fail(e.as_str().unwrap_or("unknown error").to_string()));
        }
        sent?;
        Ok(answer)
    }

    fn item(&self, i: usize, o: &Opportunity) -> serde_json::Value {
        let x: Vec<f64> = self.stream.space.features.iter().zip(&o.features).map(|(f, &v)| f.normalise(v)).collect();
        json!({"id": i, "session": o.context.session.as_str(), "regime": o.context.regime.as_str(), "x": x})
    }

    /// Ends the process: every report learned, then it exits.
    pub fn finish(mut self) -> Result<usize, PeerError> {
        let answer = self.ask(&json!({"op": "end"}))?;
        let _ = self.child.wait();
        Ok(answer["learned"].as_u64().unwrap_or(0) as usize)
    }
}

impl Drop for PeerDriver<'_> {
    fn drop(&mut self) {
        // Only reached without `finish` on an error: do not leave it running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Driver for PeerDriver<'_> {
    type Ticket = usize;
    type Error = PeerError;
    fn decide(&mut self, _: &Opportunity) -> Result<(Vec<f64>, usize), PeerError> {
        let i = self.next;
        self.next += 1;
        if self.ready.is_empty() {
            let opps = &self.stream.opportunities;
            let last_tick = opps[(i + lookahead(&self.peer)).min(opps.len()) - 1].bar;
            let items: Vec<serde_json::Value> =
                (i..opps.len()).take_while(|&j| opps[j].bar <= last_tick).map(|j| self.item(j, &opps[j])).collect();
            let want = items.len();
            let answer = self.ask(&json!({"op": "decide", "items": items}))?;
            let arms: Vec<Vec<usize>> = serde_json::from_value(answer["arms"].clone()).map_err(|e| {
                PeerError::Peer { peer: self.peer.clone(), message: format!("bad arms {}: {e}", answer["arms"]) }
            })?;
            let space = &self.stream.space;
            let valid = arms.len() == want
                && arms.iter().all(|a| {
                    a.len() == space.params.len() && a.iter().zip(&space.params).all(|(&k, p)| k < p.arms.len())
                });
            if !valid {
                return Err(PeerError::Peer {
                    peer: self.peer.clone(),
                    message: format!("arms out of range: {arms:?}"),
                });
            }
            self.ready.extend(arms);
        }
        let arms = self.ready.pop_front().expect("answered for the whole batch");
        Ok((arm_values(&self.stream.space, &arms), i))
    }
    fn report(&mut self, _: &Opportunity, id: usize, _: f64, _: bool, reward: f64) -> Result<(), PeerError> {
        self.send(&json!({"op": "report", "id": id, "reward": reward}))
    }
}
