//! The durable journal: every outcome is on disk before it is acknowledged,
//! and every decision before it is answered. On start, outcomes no checkpoint
//! holds yet are replayed, and decisions still open are put back among the
//! open ones, so a trade open across a restart still reports its outcome.
//!
//! It is always local (`DIR/outcomes.jsonl`, one file for every module),
//! whatever the checkpoint store: acknowledging must not wait on a network.
//! Appends only buffer; a flusher thread of the journal's own writes whatever
//! has gathered and calls `fdatasync` once for all of it (group commit), so
//! durability costs one disk flush per batch, not per outcome, and one file
//! makes the batches of all modules one. Waiters block ([`Journal::wait_durable`])
//! or await ([`Journal::durable`]) the flush that covers them. After a failed
//! write the journal refuses every later append: accepting outcomes it cannot
//! keep would break the promise the acknowledgement makes.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::agent::{Decision, DecisionId, Journal, Settled};
use crate::util::now_secs;

const FILE_NAME: &str = "outcomes.jsonl";
/// The sequence number through which the decision log has stored entries.
const LOGGED_FILE: &str = "logged_through";
/// How long a decision of a module whose TTL is not known is kept open.
const DEFAULT_DECISION_TTL_SECS: f64 = 7.0 * 86_400.0;
/// The journal is rewritten once it has grown this much past its last
/// compacted size, even when no checkpoint asks (decisions alone grow it).
const REGROW_BYTES: u64 = 64 << 20;

/// One line of the journal. Lines older than the kinds beside `settled`
/// read as they always did: `{"seq": n, "settled": {...}}`.
#[derive(Debug)]
struct Entry {
    seq: u64,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// An accepted outcome, to learn from.
    Settled(Settled),
    /// A decision answered, open until an outcome or its TTL settles it.
    Decided(Arc<Decision>),
    /// What compaction keeps of a settled decision whose outcome a
    /// checkpoint holds: enough to call a retried report a duplicate.
    Gone(GoneId),
}

/// An entry's JSON, read and written without `#[serde(flatten)]`, which
/// cannot carry the raw JSON an outcome's attachment holds.
#[derive(Serialize, Deserialize)]
struct Line<S, D, G> {
    seq: u64,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    settled: Option<S>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    decided: Option<D>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    gone: Option<G>,
}

fn none<T>() -> Option<T> {
    None
}

type LineIn = Line<Settled, Arc<Decision>, GoneId>;
type LineOut<'a> = Line<&'a Settled, &'a Decision, &'a GoneId>;

impl Entry {
    fn parse(line: &[u8]) -> serde_json::Result<Entry> {
        let l: LineIn = serde_json::from_slice(line)?;
        let kind = match (l.settled, l.decided, l.gone) {
            (Some(s), None, None) => Kind::Settled(s),
            (None, Some(d), None) => Kind::Decided(d),
            (None, None, Some(g)) => Kind::Gone(g),
            _ => return Err(serde::de::Error::custom("a journal line holds exactly one of settled, decided, gone")),
        };
        Ok(Entry { seq: l.seq, kind })
    }

    fn write(&self, out: &mut impl Write) -> serde_json::Result<()> {
        let mut line = LineOut { seq: self.seq, settled: None, decided: None, gone: None };
        match &self.kind {
            Kind::Settled(s) => line.settled = Some(s),
            Kind::Decided(d) => line.decided = Some(d),
            Kind::Gone(g) => line.gone = Some(g),
        }
        serde_json::to_writer(out, &line)
    }
}

/// What an append writes, borrowed.
enum KindRef<'a> {
    Settled(&'a Settled),
    Decided(&'a Decision),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct GoneId {
    module: String,
    id: DecisionId,
    created_at: f64,
}

impl Entry {
    fn module(&self) -> &str {
        match &self.kind {
            Kind::Settled(s) => &s.decision.module,
            Kind::Decided(d) => &d.module,
            Kind::Gone(g) => &g.module,
        }
    }
}

/// What the decision log reads from the journal, in sequence order.
#[derive(Debug)]
pub enum Logged {
    Decided(Arc<Decision>),
    Settled(Settled),
}

/// A reader's place in the journal: the last sequence number it read, and
/// the file it reads (reopened when a compaction replaces the file).
#[derive(Debug)]
pub struct Cursor {
    seq: u64,
    generation: u64,
    reader: Option<BufReader<File>>,
}

impl Cursor {
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// What a restart puts back: the decisions still open, oldest first, and the
/// ids (with their modules) settled while the journal has held them.
#[derive(Debug, Default)]
pub struct OpenDecisions {
    pub open: Vec<Decision>,
    pub settled: Vec<(String, DecisionId)>,
}

/// What compaction keeps of a module's decisions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecisionLimits {
    /// A decision line is kept this long unless its outcome settles it, and
    /// a settled id as long, for a retry to meet 409.
    pub ttl_secs: f64,
    /// Settled ids kept at most: the newest, as many as the agent's table
    /// remembers after a restart (more would be read and then dropped).
    pub settled_ids: usize,
}

impl Default for DecisionLimits {
    fn default() -> DecisionLimits {
        DecisionLimits { ttl_secs: DEFAULT_DECISION_TTL_SECS, settled_ids: usize::MAX }
    }
}

/// How far the journal is on disk; `failed` once a write has failed.
#[derive(Debug, Clone, Default, PartialEq)]
struct Progress {
    durable_through: u64,
    failed: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    next_seq: u64,
    buf: Vec<u8>,
    buffered_through: u64,
    progress: Progress,
    closing: bool,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    file: Mutex<File>,
    state: Mutex<State>,
    /// Wakes the flusher when something is buffered, and blocked waiters when a flush ends.
    changed: Condvar,
    progress: watch::Sender<Progress>,
}

#[derive(Debug)]
pub struct FileJournal {
    dir: PathBuf,
    shared: Arc<Shared>,
    /// Per module, the sequence number through which a checkpoint holds its outcomes.
    floors: Mutex<HashMap<String, u64>>,
    /// Per module, how long its decisions stay open and how many settled ids
    /// it remembers (see [`DecisionLimits`]).
    decision_limits: Mutex<HashMap<String, DecisionLimits>>,
    /// The file's size after the last compaction.
    compacted_len: Mutex<u64>,
    /// Through which sequence number the decision log has stored what the
    /// journal holds, once a decision log reads it: compaction keeps every
    /// later line whole.
    logged: Mutex<Option<u64>>,
    /// Bumped when a compaction replaces the file, so readers reopen it.
    generation: std::sync::atomic::AtomicU64,
    flusher: Option<JoinHandle<()>>,
}

impl FileJournal {
    /// Opens (creating) the journal in `dir` and starts its flusher thread.
    pub fn open(dir: &Path) -> std::io::Result<FileJournal> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        drop_torn_tail(&path)?;
        let mut last = 0;
        each_entry(&path, u64::MAX, u64::MAX, |e| last = e.seq)?;
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let progress = Progress { durable_through: last, failed: None };
        let state = State { next_seq: last, buffered_through: last, progress: progress.clone(), ..State::default() };
        let shared = Arc::new(Shared {
            path,
            file: Mutex::new(file),
            state: Mutex::new(state),
            changed: Condvar::new(),
            progress: watch::Sender::new(progress),
        });
        let flusher = {
            let shared = shared.clone();
            std::thread::Builder::new().name("paramopt-journal".into()).spawn(move || flush_loop(&shared))?
        };
        Ok(FileJournal {
            dir: dir.to_path_buf(),
            shared,
            floors: Mutex::default(),
            decision_limits: Mutex::default(),
            compacted_len: Mutex::default(),
            logged: Mutex::default(),
            generation: Default::default(),
            flusher: Some(flusher),
        })
    }

    /// How far the journal is on disk.
    pub fn durable_through(&self) -> u64 {
        self.shared.state.lock().progress.durable_through
    }

    /// Makes the journal keep what the decision log has not stored yet, and
    /// returns how far it had stored before (0 the first time).
    pub fn track_log(&self) -> std::io::Result<u64> {
        let through = match std::fs::read_to_string(self.dir.join(LOGGED_FILE)) {
            Ok(text) => text.trim().parse().unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        *self.logged.lock() = Some(through);
        Ok(through)
    }

    /// Records that the decision log has stored everything through `seq`.
    /// Written without fsync: a stale number after a crash re-logs a few
    /// entries, which the stores take as the retries they are.
    pub fn set_logged_through(&self, seq: u64) -> std::io::Result<()> {
        let tmp = self.dir.join(format!("{LOGGED_FILE}.tmp"));
        std::fs::write(&tmp, seq.to_string())?;
        std::fs::rename(&tmp, self.dir.join(LOGGED_FILE))?;
        let mut logged = self.logged.lock();
        *logged = Some(logged.unwrap_or(0).max(seq));
        Ok(())
    }

    /// A reader of the entries after `after`.
    pub fn cursor(&self, after: u64) -> Cursor {
        Cursor { seq: after, generation: u64::MAX, reader: None }
    }

    /// Up to `max` durable decisions and outcomes after the cursor, in order.
    pub fn tail(&self, cursor: &mut Cursor, max: usize) -> std::io::Result<Vec<(u64, Logged)>> {
        use std::sync::atomic::Ordering;
        let durable = self.durable_through();
        let generation = self.generation.load(Ordering::Acquire);
        if cursor.generation != generation || cursor.reader.is_none() {
            cursor.reader = match File::open(&self.shared.path) {
                Ok(f) => Some(BufReader::new(f)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            cursor.generation = generation;
        }
        let Some(reader) = cursor.reader.as_mut() else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        let mut line = Vec::new();
        while out.len() < max {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            // A line still being written, or written but not yet durable, is
            // read again next time.
            let whole = line.last() == Some(&b'\n');
            let entry = if whole { Entry::parse(&line).ok() } else { None };
            match entry {
                None if !whole => {
                    reader.seek_relative(-(n as i64))?;
                    break;
                }
                // Torn by an earlier crash: its outcome was never acknowledged.
                None => continue,
                Some(e) if e.seq > durable => {
                    reader.seek_relative(-(n as i64))?;
                    break;
                }
                Some(e) if e.seq <= cursor.seq => continue,
                Some(e) => {
                    cursor.seq = e.seq;
                    match e.kind {
                        Kind::Decided(d) => out.push((e.seq, Logged::Decided(d))),
                        Kind::Settled(s) => out.push((e.seq, Logged::Settled(s))),
                        Kind::Gone(_) => {}
                    }
                }
            }
        }
        Ok(out)
    }

    /// How long each module's decisions stay open (its `pending.ttl_secs`).
    pub fn set_decision_limits(&self, limits: impl IntoIterator<Item = (String, DecisionLimits)>) {
        self.decision_limits.lock().extend(limits);
    }

    fn limits_of(&self, module: &str) -> DecisionLimits {
        self.decision_limits.lock().get(module).copied().unwrap_or_default()
    }

    fn ttl_of(&self, module: &str) -> f64 {
        self.limits_of(module).ttl_secs
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The durable outcomes of `module` after sequence number `after`, in order.
    pub fn replay(&self, module: &str, after: u64) -> std::io::Result<Vec<(u64, Settled)>> {
        let durable = self.durable_through();
        let mut out = Vec::new();
        each_entry(&self.shared.path, u64::MAX, durable, |e| {
            if let (true, Kind::Settled(s)) = (e.seq > after && e.module() == module, e.kind) {
                out.push((e.seq, s));
            }
        })?;
        Ok(out)
    }

    /// The durable decisions with no outcome yet, younger than their TTL at
    /// `now`, and the ids settled meanwhile: what a restart puts back.
    pub fn open_decisions(&self, now: f64) -> std::io::Result<OpenDecisions> {
        let durable = self.durable_through();
        let mut open: Vec<Arc<Decision>> = Vec::new();
        let mut settled = Vec::new();
        let mut done = std::collections::HashSet::new();
        each_entry(&self.shared.path, u64::MAX, durable, |e| match e.kind {
            Kind::Decided(d) => open.push(d),
            Kind::Settled(s) => {
                done.insert(s.decision.id);
                settled.push((s.decision.module.clone(), s.decision.id));
            }
            Kind::Gone(g) => {
                done.insert(g.id);
                settled.push((g.module, g.id));
            }
        })?;
        let open = open
            .into_iter()
            .filter(|d| !done.contains(&d.id) && now - d.created_at <= self.ttl_of(&d.module))
            .map(|d| Arc::try_unwrap(d).unwrap_or_else(|d| (*d).clone()))
            .collect();
        Ok(OpenDecisions { open, settled })
    }

    /// Compacts with the floors already given, when decisions alone have
    /// grown the file well past its last compacted size.
    pub fn compact_if_grown(&self) -> std::io::Result<bool> {
        let len = self.shared.file.lock().metadata()?.len();
        if len < *self.compacted_len.lock() + REGROW_BYTES {
            return Ok(false);
        }
        self.rewrite(None)?;
        Ok(true)
    }

    /// Drops the entries of `module` up to `through`, which a stored checkpoint
    /// now holds, and those of other modules at or below the points given them
    /// earlier. The kept entries are copied beside the journal and renamed
    /// over it, so a crash leaves the old journal or the new one. Appends go
    /// on meanwhile: the file is held only to copy what was appended during
    /// the copy and to swap the files.
    pub fn compact(&self, module: &str, through: u64) -> std::io::Result<()> {
        self.rewrite(Some((module, through)))
    }

    /// What compaction keeps of each line: an outcome above its module's
    /// floor; below it, a [`Kind::Gone`] id while a retry could still come;
    /// a decision while it is open and younger than its TTL.
    fn rewrite(&self, raise: Option<(&str, u64)>) -> std::io::Result<()> {
        // Held throughout: two compactions would share the temporary file.
        let mut floors = self.floors.lock();
        if let Some((module, through)) = raise {
            let floor = floors.entry(module.to_string()).or_insert(0);
            *floor = (*floor).max(through);
        }
        let now = now_secs();
        let path = &self.shared.path;
        let copied_len = self.shared.file.lock().metadata()?.len();
        // Decisions settled anywhere in the copied part are not open. Only
        // `Settled` lines count: a `Gone` line is written by the same rewrite
        // that drops its decision's line (the settlement is then in the copied
        // part), so no decision line outlives it. Leaving the `Gone` ids out
        // keeps this set to the outcomes since the last checkpoint, where the
        // `Gone` ids number every outcome of the TTL.
        let logged = *self.logged.lock();
        let mut settled = std::collections::HashSet::new();
        // Per module, the settled ids this rewrite would keep, to keep only
        // the newest `settled_ids` of them.
        let mut gone: HashMap<String, usize> = HashMap::new();
        each_entry(path, copied_len, u64::MAX, |e| {
            if let Kind::Settled(s) = &e.kind {
                settled.insert(s.decision.id);
            }
            if keeps_as_gone(&e, logged, &floors, now, |m| self.ttl_of(m)) {
                *gone.entry(e.module().to_string()).or_default() += 1;
            }
        })?;
        let mut too_many: HashMap<String, usize> = gone
            .into_iter()
            .map(|(module, n)| {
                let extra = n.saturating_sub(self.limits_of(&module).settled_ids);
                (module, extra)
            })
            .collect();
        let tmp = path.with_extension("jsonl.tmp");
        let mut out = std::io::BufWriter::new(File::create(&tmp)?);
        let mut failed = None;
        each_entry(path, copied_len, u64::MAX, |e| {
            // Not yet in the decision log: kept as it is.
            let unlogged = logged.is_some_and(|l| e.seq > l);
            let floor = floors.get(e.module()).copied().unwrap_or(0);
            let young = |created_at: f64| now - created_at <= self.ttl_of(e.module());
            let as_gone = keeps_as_gone(&e, logged, &floors, now, |m| self.ttl_of(m));
            if as_gone {
                if let Some(extra) = too_many.get_mut(e.module()).filter(|n| **n > 0) {
                    *extra -= 1;
                    return;
                }
            }
            let kept = match &e.kind {
                Kind::Settled(_) if unlogged || e.seq > floor => Some(e),
                Kind::Settled(s) if as_gone => Some(Entry {
                    seq: e.seq,
                    kind: Kind::Gone(GoneId {
                        module: s.decision.module.clone(),
                        id: s.decision.id,
                        created_at: s.decision.created_at,
                    }),
                }),
                Kind::Gone(_) if as_gone => Some(e),
                Kind::Decided(d) if unlogged || (!settled.contains(&d.id) && young(d.created_at)) => Some(e),
                _ => None,
            };
            if let Some(e) = kept {
                let written = e.write(&mut out).map_err(std::io::Error::from);
                if let Err(err) = written.and_then(|()| out.write_all(b"\n")) {
                    failed.get_or_insert(err);
                }
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        let mut out = out.into_inner().map_err(|e| e.into_error())?;
        let mut file = self.shared.file.lock();
        let mut tail = File::open(path)?;
        tail.seek(SeekFrom::Start(copied_len))?;
        std::io::copy(&mut tail, &mut out)?;
        out.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(&self.dir)?.sync_all()?;
        *file = OpenOptions::new().append(true).open(path)?;
        self.generation.fetch_add(1, std::sync::atomic::Ordering::Release);
        *self.compacted_len.lock() = file.metadata()?.len();
        Ok(())
    }
}

/// Whether `rewrite` keeps `e` as a settled id: a `Gone` line within its
/// TTL, or a settled outcome below its floor, already logged, within it.
fn keeps_as_gone(
    e: &Entry,
    logged: Option<u64>,
    floors: &HashMap<String, u64>,
    now: f64,
    ttl_of: impl Fn(&str) -> f64,
) -> bool {
    let young = |created_at: f64| now - created_at <= ttl_of(e.module());
    match &e.kind {
        Kind::Gone(g) => young(g.created_at),
        Kind::Settled(s) => {
            let unlogged = logged.is_some_and(|l| e.seq > l);
            let floor = floors.get(e.module()).copied().unwrap_or(0);
            !unlogged && e.seq <= floor && young(s.decision.created_at)
        }
        Kind::Decided(_) => false,
    }
}

/// Calls `f` with every entry numbered up to `through` in the first `len`
/// bytes of the file (`u64::MAX` for all of it), in file order, streaming;
/// nothing when there is no file. Only whole lines reach the file before its
/// length is read. A line that does not parse (a write torn by a crash) is
/// skipped with a warning: its outcome was never acknowledged.
fn each_entry(path: &Path, len: u64, through: u64, mut f: impl FnMut(Entry)) -> std::io::Result<()> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::new(file.take(len));
    let mut line = Vec::new();
    for n in 1.. {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line == b"\n" {
            continue;
        }
        match Entry::parse(&line) {
            Ok(e) if e.seq <= through => f(e),
            Ok(_) => {}
            Err(e) => tracing::warn!(path = %path.display(), line = n, error = %e, "skipping a torn journal line"),
        }
    }
    Ok(())
}

impl Drop for FileJournal {
    fn drop(&mut self) {
        self.shared.state.lock().closing = true;
        self.shared.changed.notify_all();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

fn failed_error(path: &Path, error: &str) -> std::io::Error {
    std::io::Error::other(format!("journal {} failed: {error}", path.display()))
}

impl FileJournal {
    /// Buffers one entry under the next sequence number; see [`Journal::append`].
    fn push(&self, kind: KindRef<'_>, then: &mut dyn FnMut(u64)) -> std::io::Result<u64> {
        let shared = &*self.shared;
        let mut st = shared.state.lock();
        if let Some(e) = &st.progress.failed {
            return Err(failed_error(&shared.path, e));
        }
        let seq = st.next_seq + 1;
        let mark = st.buf.len();
        let mut line = LineOut { seq, settled: None, decided: None, gone: None };
        match kind {
            KindRef::Settled(s) => line.settled = Some(s),
            KindRef::Decided(d) => line.decided = Some(d),
        }
        if let Err(e) = serde_json::to_writer(&mut st.buf, &line) {
            st.buf.truncate(mark);
            return Err(e.into());
        }
        st.buf.push(b'\n');
        st.next_seq = seq;
        st.buffered_through = seq;
        then(seq);
        drop(st);
        // The flusher sleeps only on an empty buffer.
        if mark == 0 {
            shared.changed.notify_all();
        }
        Ok(seq)
    }
}

impl Journal for FileJournal {
    fn append(&self, settled: &Settled, then: &mut dyn FnMut(u64)) -> std::io::Result<u64> {
        self.push(KindRef::Settled(settled), then)
    }

    fn append_decision(&self, decision: &Decision) -> std::io::Result<u64> {
        self.push(KindRef::Decided(decision), &mut |_| {})
    }

    fn wait_durable(&self, seq: u64) -> std::io::Result<()> {
        let shared = &*self.shared;
        let mut st = shared.state.lock();
        loop {
            if st.progress.durable_through >= seq {
                return Ok(());
            }
            if let Some(e) = &st.progress.failed {
                return Err(failed_error(&shared.path, e));
            }
            shared.changed.wait(&mut st);
        }
    }

    fn durable(&self, seq: u64) -> Pin<Box<dyn Future<Output = std::io::Result<()>> + Send + '_>> {
        let mut rx = self.shared.progress.subscribe();
        Box::pin(async move {
            let progress = rx
                .wait_for(|p| p.durable_through >= seq || p.failed.is_some())
                .await
                .map_err(|_| std::io::Error::other("the journal closed"))?
                .clone();
            match progress.failed {
                Some(e) if progress.durable_through < seq => Err(failed_error(&self.shared.path, &e)),
                _ => Ok(()),
            }
        })
    }
}

/// Writes and syncs whatever has been buffered, batch after batch, until the
/// journal is dropped with nothing left to write.
fn flush_loop(shared: &Shared) {
    let mut st = shared.state.lock();
    loop {
        if st.buf.is_empty() {
            if st.closing {
                return;
            }
            shared.changed.wait(&mut st);
            continue;
        }
        let batch = std::mem::take(&mut st.buf);
        let through = st.buffered_through;
        drop(st);
        let written = {
            let mut file = shared.file.lock();
            file.write_all(&batch).and_then(|()| file.sync_data())
        };
        st = shared.state.lock();
        match written {
            Ok(()) => st.progress.durable_through = through,
            Err(e) => {
                tracing::error!(path = %shared.path.display(), error = %e, "journal write failed; refusing outcomes");
                st.progress.failed = Some(e.to_string());
                st.buf.clear();
            }
        }
        shared.progress.send_replace(st.progress.clone());
        shared.changed.notify_all();
        if st.progress.failed.is_some() {
            // Nothing more can be made durable; appends are refused from now on.
            while !st.closing {
                shared.changed.wait(&mut st);
            }
            return;
        }
    }
}

/// Cuts a line torn by a crash off the end of the file, so that the next
/// append starts a line of its own instead of finishing the torn one.
fn drop_torn_tail(path: &Path) -> std::io::Result<()> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let mut whole = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while whole > 0 {
        let start = whole.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(whole - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(part)?;
        match part.iter().rposition(|&b| b == b'\n') {
            Some(i) => {
                whole = start + i as u64 + 1;
                break;
            }
            None => whole = start,
        }
    }
    if whole < len {
        tracing::warn!(path = %path.display(), bytes = len - whole, "cutting a torn journal line");
        file.set_len(whole)?;
        file.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{Agent, AgentOptions, Outcome};
    use crate::space::{Context, Spaces};

    fn agent_with(journal: &Arc<FileJournal>) -> Agent {
        let journal = Some(journal.clone() as Arc<dyn Journal>);
        Agent::new(&Spaces::builtin(), AgentOptions { seed: Some(3), journal, ..Default::default() })
    }

    fn report_some(agent: &Agent, module: &str, n: usize) {
        for i in 0..n {
            let d = agent.decide(module, Context::from_index(i % Context::COUNT).unwrap(), &[], true).unwrap();
            let outcome = Outcome {
                reward: Some(0.001 * i as f64),
                traded: true,
                return_pct: None,
                evidence: Default::default(),
            };
            agent.report(&d.id.to_string(), outcome).unwrap();
        }
    }

    #[test]
    fn concurrent_reports_get_gapless_sequence_numbers_that_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(FileJournal::open(dir.path()).unwrap());
        let agent = agent_with(&journal);
        std::thread::scope(|s| {
            for module in ["crypto", "stocks", "options", "crypto"] {
                let agent = agent.clone();
                s.spawn(move || report_some(&agent, module, 150));
            }
        });
        agent.shutdown();
        drop(agent);
        // Each decision and each outcome takes a number.
        let mut seqs: Vec<u64> = Vec::new();
        each_entry(&dir.path().join(FILE_NAME), u64::MAX, u64::MAX, |e| seqs.push(e.seq)).unwrap();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=1200).collect::<Vec<_>>());
        assert_eq!(journal.replay("crypto", 0).unwrap().len(), 300);
        drop(journal);

        let journal = Arc::new(FileJournal::open(dir.path()).unwrap());
        let agent = agent_with(&journal);
        report_some(&agent, "stocks", 1);
        agent.shutdown();
        let last = journal.replay("stocks", 1200).unwrap();
        assert_eq!(last.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), vec![1202]);
    }

    #[test]
    fn a_line_torn_by_a_crash_is_cut_and_the_next_append_starts_clean() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(FileJournal::open(dir.path()).unwrap());
        let agent = agent_with(&journal);
        report_some(&agent, "crypto", 5);
        agent.shutdown();
        drop((agent, journal));
        let path = dir.path().join(FILE_NAME);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"seq":11,"settled":{"decis"#).unwrap();
        drop(file);

        let journal = Arc::new(FileJournal::open(dir.path()).unwrap());
        let agent = agent_with(&journal);
        report_some(&agent, "crypto", 2);
        agent.shutdown();
        let seqs: Vec<u64> = journal.replay("crypto", 0).unwrap().into_iter().map(|(seq, _)| seq).collect();
        // Outcomes take the even numbers (each follows its decision).
        let expected: Vec<u64> = (1..=7).map(|i| 2 * i).collect();
        assert_eq!(seqs, expected, "the torn 11th line is gone, the new ones are whole");
    }

    #[test]
    fn compaction_keeps_every_later_entry_while_appends_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(FileJournal::open(dir.path()).unwrap());
        let agent = agent_with(&journal);
        report_some(&agent, "crypto", 200);
        report_some(&agent, "stocks", 50);
        std::thread::scope(|s| {
            let appender = agent.clone();
            s.spawn(move || report_some(&appender, "crypto", 300));
            for through in [100, 240, 400] {
                journal.compact("crypto", through).unwrap();
            }
        });
        agent.shutdown();
        let crypto: Vec<u64> = journal.replay("crypto", 0).unwrap().into_iter().map(|(seq, _)| seq).collect();
        // Sequence numbers are shared: stocks took 401..=500.
        assert_eq!(crypto.first(), Some(&502), "outcomes through 400 are dropped");
        let stocks = journal.replay("stocks", 0).unwrap();
        assert_eq!(stocks.len(), 50, "another module's entries are kept until its own checkpoint");
        assert_eq!(crypto.len(), 300, "none appended during the compactions is lost");
        assert!(crypto.windows(2).all(|w| w[0] < w[1]));
    }

    fn decide_some(agent: &Agent, module: &str, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                let ctx = Context::from_index(i % Context::COUNT).unwrap();
                agent.decide(module, ctx, &[], true).unwrap().id.to_string()
            })
            .collect()
    }

    #[test]
    fn open_decisions_come_back_after_a_reopen_and_settled_ones_stay_settled() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(FileJournal::open(dir.path()).unwrap());
        let agent = agent_with(&journal);
        let ids = decide_some(&agent, "crypto", 10);
        for id in &ids[..4] {
            agent.report(id, Outcome::reward(0.01)).unwrap();
        }
        agent.shutdown();
        drop((agent, journal));

        let journal = Arc::new(FileJournal::open(dir.path()).unwrap());
        let found = journal.open_decisions(now_secs()).unwrap();
        assert_eq!(found.open.iter().map(|d| d.id.to_string()).collect::<Vec<_>>(), ids[4..].to_vec());
        let agent = agent_with(&journal);
        assert_eq!(agent.restore_pending(found.open, &found.settled), 0);
        assert_eq!(agent.pending_count("crypto").unwrap(), 6);
        for id in &ids[..4] {
            let e = agent.report(id, Outcome::reward(0.01)).unwrap_err();
            assert!(matches!(e, crate::agent::AgentError::DuplicateOutcome(_)), "{e}");
        }
        for id in &ids[4..] {
            agent.report(id, Outcome::reward(0.01)).unwrap();
        }
    }

    #[test]
    fn compaction_keeps_open_decisions_and_the_ids_of_settled_ones() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(FileJournal::open(dir.path()).unwrap());
        let agent = agent_with(&journal);
        let ids = decide_some(&agent, "crypto", 20);
        for id in &ids[..15] {
            agent.report(id, Outcome::reward(0.01)).unwrap();
        }
        agent.shutdown();
        let before = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len();
        journal.compact("crypto", u64::MAX).unwrap();
        let after = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len();
        assert!(after * 3 < before, "settled decisions shrink to their ids: {before} -> {after} bytes");
        assert!(journal.replay("crypto", 0).unwrap().is_empty(), "a checkpoint holds every outcome");
        let found = journal.open_decisions(now_secs()).unwrap();
        assert_eq!(found.open.len(), 5);
        let mut settled: Vec<String> = found.settled.iter().map(|(_, id)| id.to_string()).collect();
        settled.sort();
        let mut expected = ids[..15].to_vec();
        expected.sort();
        assert_eq!(settled, expected);

        // Rewrites of a file holding `Gone` ids keep them, and drop the
        // decisions settled since.
        journal.compact("crypto", u64::MAX).unwrap();
        assert_eq!(journal.open_decisions(now_secs()).unwrap().open.len(), 5);
        let agent = agent_with(&journal);
        let reopened = journal.open_decisions(now_secs()).unwrap();
        agent.restore_pending(reopened.open, &reopened.settled);
        for id in &ids[15..17] {
            agent.report(id, Outcome::reward(0.01)).unwrap();
        }
        agent.shutdown();
        journal.compact("crypto", u64::MAX).unwrap();
        let found = journal.open_decisions(now_secs()).unwrap();
        assert_eq!(found.open.len(), 3);
        assert_eq!(found.settled.len(), 17);

        // Past their TTL, decisions and settled ids both go.
        journal.set_decision_limits([("crypto".to_string(), DecisionLimits { ttl_secs: 0.0, settled_ids: 100 })]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        journal.compact("crypto", u64::MAX).unwrap();
        assert_eq!(std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len(), 0);
    }

    #[test]
    fn compaction_keeps_only_the_newest_settled_ids_a_restart_would_remember() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(FileJournal::open(dir.path()).unwrap());
        journal.set_decision_limits([("crypto".to_string(), DecisionLimits { ttl_secs: 3600.0, settled_ids: 10 })]);
        let agent = agent_with(&journal);
        let ids = decide_some(&agent, "crypto", 40);
        for id in &ids[..30] {
            agent.report(id, Outcome::reward(0.01)).unwrap();
        }
        agent.shutdown();
        journal.compact("crypto", u64::MAX).unwrap();
        let found = journal.open_decisions(now_secs()).unwrap();
        assert_eq!(found.open.len(), 10, "open decisions are never dropped for the bound");
        let kept: Vec<String> = found.settled.iter().map(|(_, id)| id.to_string()).collect();
        assert_eq!(kept, ids[20..30].to_vec(), "the newest 10 settled ids, in order");
        journal.compact("crypto", u64::MAX).unwrap();
        assert_eq!(journal.open_decisions(now_secs()).unwrap().settled.len(), 10);
    }
}
