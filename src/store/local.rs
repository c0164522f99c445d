//! The embedded store: plain files under a data directory, no server.
//!
//! Layout (one directory per collection, one file per module):
//! ```text
//! DIR/.lock                                   flock'd around every change
//! DIR/checkpoints/MODULE/GGGGGGGGGGGGGGGGGGGG.json       a whole checkpoint
//! DIR/checkpoints/MODULE/GGGGGGGGGGGGGGGGGGGG.meta.json  its header, for listings
//! DIR/live_stats/MODULE.json                  replicas' merged statistics
//! DIR/parameter_effectiveness/MODULE.json     rows, replaced as a whole
//! DIR/ml_optimization_data/MODULE.json
//! DIR/trades/MODULE.jsonl                     append-only
//! DIR/ml_learning_events/MODULE.jsonl         append-only
//! DIR/decisions/MODULE.jsonl                  append-only
//! DIR/decisions/MODULE.settled.jsonl          append-only rewards of logged decisions
//! ```
//! Whole files are replaced atomically: written to a temporary file, fsync'd,
//! renamed over the target, and the directory fsync'd, so a crash leaves the
//! old file or the new one, never a mix. A checkpoint's file is its commit
//! point: a generation exists once its `.json` does. Appends write whole
//! lines and fsync; a crash can tear only the last line, which reads skip and
//! the next append cuts off.
//!
//! Changes take an exclusive `flock` on `DIR/.lock`, so several stores (threads
//! or processes on one machine) can share a directory without losing updates.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, Checkpoint, CheckpointMeta};
use super::logged_index::LoggedIndex;
use super::records::{DecisionLogRecord, LearningEvent, OptimizationData, ParameterEffectiveness, TradeRecord};
use super::trade::StoredTrade;
use super::{validate_module, Store, StoreError, StoreHealth, StoreResult};
use crate::bandit::ModuleStats;

/// A store in a local directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    /// Per module: which decisions its log holds (see `logged_index`).
    logged: Mutex<HashMap<String, LoggedIndex>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Settlement {
    decision_id: String,
    reward: f64,
    settled_at: f64,
}

const CHECKPOINTS: &str = "checkpoints";

const TMP_MARK: &str = ".tmp-";

impl LocalStore {
    /// Opens (creating if needed) a store in `dir`, and removes temporary
    /// files a crashed writer left behind.
    pub fn open(dir: impl AsRef<Path>) -> StoreResult<LocalStore> {
        let root = dir.as_ref().to_path_buf();
        fs::create_dir_all(&root).map_err(|source| io("create directory", &root, source))?;
        let store = LocalStore { inner: Arc::new(Inner { root, logged: Mutex::new(HashMap::new()) }) };
        store.inner.sweep_temporaries()?;
        tracing::debug!(dir = %store.inner.root.display(), "opened local store");
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The file holding `module`'s checkpoint `generation`.
    pub fn checkpoint_path(&self, module: &str, generation: u64) -> PathBuf {
        self.inner.root.join(CHECKPOINTS).join(module).join(format!("{generation:020}.json"))
    }

    /// Runs `f` on tokio's blocking pool: file IO and fsync must not stall the
    /// async workers.
    async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> StoreResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner)).await.map_err(|e| StoreError::Task(e.to_string()))?
    }
}

fn io(op: &'static str, path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io { op, path: path.to_path_buf(), source }
}

/// An exclusive advisory lock on the data directory, released on drop.
struct DirLock(File);

impl Drop for DirLock {
    fn drop(&mut self) {
        // SAFETY: the descriptor is open for as long as `self.0` lives.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl Inner {
    fn lock(&self) -> StoreResult<DirLock> {
        let path = self.root.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io("open lock", &path, e))?;
        loop {
            // SAFETY: a valid open descriptor; flock has no memory effects.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(DirLock(file));
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(io("lock", &path, err));
            }
        }
    }

    fn dir(&self, collection: &str) -> StoreResult<PathBuf> {
        let dir = self.root.join(collection);
        fs::create_dir_all(&dir).map_err(|e| io("create directory", &dir, e))?;
        Ok(dir)
    }

    fn file(&self, collection: &str, module: &str, ext: &str) -> StoreResult<PathBuf> {
        validate_module(module)?;
        Ok(self.dir(collection)?.join(format!("{module}.{ext}")))
    }

    /// Deletes what crashed writers left: only safe under the lock, when no
    /// writer of this directory is mid-write.
    fn sweep_temporaries(&self) -> StoreResult<()> {
        let _lock = self.lock()?;
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            let entries = fs::read_dir(&dir).map_err(|e| io("list", &dir, e))?;
            for entry in entries.flatten() {
                let path = entry.path();
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(path);
                } else if entry.file_name().to_string_lossy().contains(TMP_MARK) {
                    tracing::warn!(path = %path.display(), "removing a temporary file left by an interrupted write");
                    fs::remove_file(&path).map_err(|e| io("remove", &path, e))?;
                }
            }
        }
        Ok(())
    }

    // ----- checkpoints -----

    fn checkpoint_dir(&self, module: &str) -> StoreResult<PathBuf> {
        validate_module(module)?;
        let dir = self.root.join(CHECKPOINTS).join(module);
        fs::create_dir_all(&dir).map_err(|e| io("create directory", &dir, e))?;
        Ok(dir)
    }

    /// Committed generations, ascending. Temporaries and sidecars don't count.
    fn generations(&self, module: &str) -> StoreResult<Vec<u64>> {
        let dir = self.checkpoint_dir(module)?;
        let mut out: Vec<u64> = fs::read_dir(&dir)
            .map_err(|e| io("list", &dir, e))?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let stem = name.to_str()?.strip_suffix(".json")?;
                (stem.len() == 20).then(|| stem.parse().ok()).flatten()
            })
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    fn put_checkpoint(&self, mut cp: Checkpoint) -> StoreResult<u64> {
        let dir = self.checkpoint_dir(&cp.module)?;
        let _lock = self.lock()?;
        let generation = self.generations(&cp.module)?.last().map_or(1, |g| g + 1);
        cp.generation = generation;
        let started = Instant::now();
        let bytes = checkpoint::encode(&cp)?;
        let meta = serde_json::to_vec(&cp.meta())
            .map_err(|source| StoreError::Encode { what: format!("checkpoint {}/{generation}", cp.module), source })?;
        // The sidecar first: the checkpoint's own rename is the commit point.
        write_atomic(&dir.join(format!("{generation:020}.meta.json")), &meta)?;
        write_atomic(&dir.join(format!("{generation:020}.json")), &bytes)?;
        tracing::info!(module = %cp.module, generation, bytes = bytes.len(), ms = started.elapsed().as_secs_f64() * 1e3, "checkpoint written");
        Ok(generation)
    }

    fn get_checkpoint(&self, module: &str, generation: u64) -> StoreResult<Option<Checkpoint>> {
        let path = self.checkpoint_dir(module)?.join(format!("{generation:020}.json"));
        let Some(bytes) = read_optional(&path)? else { return Ok(None) };
        let cp = checkpoint::decode(&bytes, &path.display().to_string())?;
        if cp.module != module || cp.generation != generation {
            return Err(StoreError::Corrupt {
                what: path.display().to_string(),
                detail: format!("holds {}/{} instead", cp.module, cp.generation),
            });
        }
        Ok(Some(cp))
    }

    fn list_checkpoints(&self, module: &str) -> StoreResult<Vec<CheckpointMeta>> {
        let dir = self.checkpoint_dir(module)?;
        let mut out = Vec::new();
        for generation in self.generations(module)?.into_iter().rev() {
            let sidecar = dir.join(format!("{generation:020}.meta.json"));
            let meta = read_optional(&sidecar)?
                .and_then(|b| serde_json::from_slice::<CheckpointMeta>(&b).ok())
                .filter(|m| m.generation == generation);
            match meta {
                Some(m) => out.push(m),
                // No usable sidecar (written by hand, or lost): read the checkpoint itself.
                None => out.extend(self.get_checkpoint(module, generation)?.map(|c| c.meta())),
            }
        }
        Ok(out)
    }

    /// Deletes one generation's files; never the newest, whose number the
    /// next checkpoint's is counted from.
    fn delete_checkpoint(&self, module: &str, generation: u64) -> StoreResult<bool> {
        let dir = self.checkpoint_dir(module)?;
        let _lock = self.lock()?;
        if self.generations(module)?.last() == Some(&generation) {
            return Err(StoreError::Invalid {
                what: "generation",
                value: generation.to_string(),
                reason: "the newest generation is never deleted".into(),
            });
        }
        let mut found = false;
        for name in [format!("{generation:020}.json"), format!("{generation:020}.meta.json")] {
            match fs::remove_file(dir.join(&name)) {
                Ok(()) => found = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("delete", &dir.join(name), e)),
            }
        }
        Ok(found)
    }

    /// Rewrites an append-only file keeping the lines whose `field` (a time)
    /// is at or after `before`, under the lock appends take; returns how many
    /// went. Lines it cannot read are kept.
    fn prune_lines(&self, path: &Path, field: &str, before: f64) -> StoreResult<u64> {
        use std::io::BufRead;
        let _lock = self.lock()?;
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io("open", path, e)),
        };
        let tmp = path.with_extension(format!("jsonl{TMP_MARK}prune"));
        let mut out = std::io::BufWriter::new(File::create(&tmp).map_err(|e| io("create", &tmp, e))?);
        let mut dropped = 0;
        let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).map_err(|e| io("read", path, e))? == 0 {
                break;
            }
            let time = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&line)
                .ok()
                .and_then(|m| m.get(field).and_then(serde_json::Value::as_f64));
            if time.is_some_and(|t| t < before) {
                dropped += 1;
                continue;
            }
            out.write_all(&line).map_err(|e| io("write", &tmp, e))?;
        }
        let out = out.into_inner().map_err(|e| io("write", &tmp, e.into_error()))?;
        out.sync_all().map_err(|e| io("fsync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| io("rename", path, e))?;
        Ok(dropped)
    }

    // ----- append-only logs -----

    fn append<T: Serialize>(&self, path: &Path, records: &[T]) -> StoreResult<()> {
        self.append_with(path, records, Sync::Yes)
    }

    /// Appends records of several modules to `collection`, one append per
    /// module's file; every module name is checked before anything is written.
    fn append_by_module<'a, T: Serialize>(
        &self,
        collection: &str,
        records: &'a [T],
        module_of: impl Fn(&'a T) -> &'a str,
        sync: Sync,
    ) -> StoreResult<()> {
        let mut by_module: HashMap<&str, Vec<&T>> = HashMap::new();
        for r in records {
            by_module.entry(module_of(r)).or_default().push(r);
        }
        let files: Vec<(PathBuf, Vec<&T>)> = by_module
            .into_iter()
            .map(|(module, rows)| Ok((self.file(collection, module, "jsonl")?, rows)))
            .collect::<StoreResult<_>>()?;
        for (file, rows) in files {
            self.append_with(&file, &rows, sync)?;
        }
        Ok(())
    }

    fn append_with<T: Serialize>(&self, path: &Path, records: &[T], sync: Sync) -> StoreResult<()> {
        let mut buf = Vec::new();
        for r in records {
            serde_json::to_writer(&mut buf, r)
                .map_err(|source| StoreError::Encode { what: path.display().to_string(), source })?;
            buf.push(b'\n');
        }
        let _lock = self.lock()?;
        append_lines(path, &buf, sync)
    }

    // ----- decisions -----

    /// Whether each of `ids` is in `module`'s log.
    fn are_logged(&self, module: &str, ids: &[&str]) -> StoreResult<Vec<bool>> {
        let path = self.file("decisions", module, "jsonl")?;
        let mut logged = self.logged.lock();
        let index = logged.entry(module.to_string()).or_default();
        index.contains_all(&path, ids).map_err(|e| io("read", &path, e))
    }

    /// The newest `limit` decisions made at or after `since`, oldest first,
    /// with their rewards. Both files are streamed, so memory stays in
    /// proportion to `limit`, not to the log's size.
    fn list_decisions(&self, module: &str, since: f64, limit: usize) -> StoreResult<Vec<DecisionLogRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // A min-heap on (created_at, append order) of the newest `limit` seen so far.
        let mut newest: BinaryHeap<Reverse<Newest>> = BinaryHeap::with_capacity(limit + 1);
        let mut order = 0u64;
        for_each_line(&self.file("decisions", module, "jsonl")?, |r: DecisionLogRecord| {
            if r.created_at >= since {
                order += 1;
                newest.push(Reverse(Newest { created_at: r.created_at, order, record: r }));
                if newest.len() > limit {
                    newest.pop();
                }
            }
        })?;
        let mut records: Vec<DecisionLogRecord> =
            newest.into_sorted_vec().into_iter().rev().map(|n| n.0.record).collect();
        // A record written again (the decision log re-reads the journal from
        // its last note after a crash) is the same decision: keep one, the
        // settled one when there is one.
        let mut first: HashMap<String, usize> = HashMap::new();
        let mut keep = vec![true; records.len()];
        for i in 0..records.len() {
            match first.get(&records[i].decision_id) {
                Some(&j) => {
                    let later_is_settled = records[i].reward.is_some() && records[j].reward.is_none();
                    keep[if later_is_settled { j } else { i }] = false;
                    if later_is_settled {
                        first.insert(records[i].decision_id.clone(), i);
                    }
                }
                None => {
                    first.insert(records[i].decision_id.clone(), i);
                }
            }
        }
        let mut keep = keep.into_iter();
        records.retain(|_| keep.next().unwrap_or(true));
        let index: HashMap<String, usize> =
            records.iter().enumerate().map(|(i, r)| (r.decision_id.clone(), i)).collect();
        for_each_line(&self.file("decisions", module, "settled.jsonl")?, |s: Settlement| {
            if let Some(&i) = index.get(&s.decision_id) {
                records[i].reward = Some(s.reward);
                records[i].settled_at = Some(s.settled_at);
            }
        })?;
        Ok(records)
    }

    // ----- whole-file documents -----

    fn read_doc<T: DeserializeOwned>(&self, path: &Path) -> StoreResult<Option<T>> {
        read_optional(path)?
            .map(|b| {
                serde_json::from_slice(&b)
                    .map_err(|e| StoreError::Corrupt { what: path.display().to_string(), detail: e.to_string() })
            })
            .transpose()
    }

    fn write_doc<T: Serialize>(&self, path: &Path, doc: &T) -> StoreResult<()> {
        let bytes = serde_json::to_vec(doc)
            .map_err(|source| StoreError::Encode { what: path.display().to_string(), source })?;
        write_atomic(path, &bytes)
    }

    fn merge_increment(&self, module: &str, increment: &ModuleStats) -> StoreResult<ModuleStats> {
        let path = self.file("live_stats", module, "json")?;
        let _lock = self.lock()?;
        let merged = match self.read_doc::<ModuleStats>(&path)? {
            Some(mut total) => {
                check_shape(module, &total, increment)?;
                total.merge(increment);
                total
            }
            None => increment.clone(),
        };
        self.write_doc(&path, &merged)?;
        Ok(merged)
    }

    fn put_parameter_effectiveness(&self, rows: &[ParameterEffectiveness]) -> StoreResult<()> {
        let mut by_module: HashMap<&str, Vec<&ParameterEffectiveness>> = HashMap::new();
        for r in rows {
            by_module.entry(&r.module_name).or_default().push(r);
        }
        let _lock = self.lock()?;
        for (module, rows) in by_module {
            let path = self.file("parameter_effectiveness", module, "json")?;
            let mut all: Vec<ParameterEffectiveness> = self.read_doc(&path)?.unwrap_or_default();
            for row in rows {
                let key = row.key();
                match all.iter_mut().find(|r| r.key() == key) {
                    Some(old) => *old = row.clone(),
                    None => all.push(row.clone()),
                }
            }
            self.write_doc(&path, &all)?;
        }
        Ok(())
    }
}

pub(crate) fn check_shape(module: &str, total: &ModuleStats, increment: &ModuleStats) -> StoreResult<()> {
    if total.same_shape(increment) && total.cell_outcomes.len() == increment.cell_outcomes.len() {
        return Ok(());
    }
    Err(StoreError::ShapeMismatch {
        module: module.to_string(),
        detail: format!(
            "stored {} contexts x {:?} arms, increment {} contexts x {:?} arms",
            total.cells.len(),
            total.pool.iter().map(Vec::len).collect::<Vec<_>>(),
            increment.cells.len(),
            increment.pool.iter().map(Vec::len).collect::<Vec<_>>()
        ),
    })
}

pub(crate) fn sort_effectiveness(rows: &mut [ParameterEffectiveness]) {
    rows.sort_by(|a, b| {
        (&a.parameter_type, a.session, a.regime)
            .cmp(&(&b.parameter_type, b.session, b.regime))
            .then(a.parameter_value.total_cmp(&b.parameter_value))
    });
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `bytes` so that a crash at any point leaves either
/// the old content or the new, never a torn file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> StoreResult<()> {
    let dir = path.parent().ok_or_else(|| io("write", path, std::io::ErrorKind::InvalidInput.into()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp =
        dir.join(format!(".{name}{TMP_MARK}{}-{}", std::process::id(), TMP_COUNTER.fetch_add(1, Ordering::Relaxed)));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(|e| io("create", &tmp, e))?;
        f.write_all(bytes).map_err(|e| io("write", &tmp, e))?;
        f.sync_all().map_err(|e| io("fsync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| io("rename into place", path, e))?;
        // The rename itself is durable only once the directory is.
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("fsync directory", dir, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn read_optional(path: &Path) -> StoreResult<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", path, e)),
    }
}

/// Appends whole lines and fsyncs. A torn last line (a crash mid-append) is
/// cut off first, so the new lines start clean.
/// Whether an append waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sync {
    Yes,
    No,
}

fn append_lines(path: &Path, buf: &[u8], sync: Sync) -> StoreResult<()> {
    let mut f = OpenOptions::new().create(true).read(true).append(true).open(path).map_err(|e| io("open", path, e))?;
    let len = f.metadata().map_err(|e| io("stat", path, e))?.len();
    if len > 0 {
        let mut content = Vec::new();
        let mut last = [0u8];
        f.seek(SeekFrom::Start(len - 1)).map_err(|e| io("seek", path, e))?;
        f.read_exact(&mut last).map_err(|e| io("read", path, e))?;
        if last[0] != b'\n' {
            f.seek(SeekFrom::Start(0)).map_err(|e| io("seek", path, e))?;
            f.read_to_end(&mut content).map_err(|e| io("read", path, e))?;
            let keep = content.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            tracing::warn!(path = %path.display(), dropped_bytes = len as usize - keep, "cutting off a torn last line");
            f.set_len(keep as u64).map_err(|e| io("truncate", path, e))?;
        }
    }
    f.write_all(buf).map_err(|e| io("append", path, e))?;
    match sync {
        Sync::Yes => f.sync_data().map_err(|e| io("fsync", path, e)),
        Sync::No => Ok(()),
    }
}

/// Every complete line of a JSON-lines file; a torn last line is skipped.
fn read_lines<T: DeserializeOwned>(path: &Path) -> StoreResult<Vec<T>> {
    let Some(bytes) = read_optional(path)? else { return Ok(Vec::new()) };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        tracing::warn!(path = %path.display(), bytes = bytes.len() - complete, "skipping a torn last line");
    }
    bytes[..complete]
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, line)| {
            serde_json::from_slice(line).map_err(|e| StoreError::Corrupt {
                what: format!("{} line {}", path.display(), i + 1),
                detail: e.to_string(),
            })
        })
        .collect()
}

/// A decision ordered by when it was made, then by where it stands in the file.
struct Newest {
    created_at: f64,
    order: u64,
    record: DecisionLogRecord,
}

impl PartialEq for Newest {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for Newest {}
impl PartialOrd for Newest {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Newest {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.created_at.total_cmp(&other.created_at).then(self.order.cmp(&other.order))
    }
}

/// Calls `f` with each complete line of `path` (a torn last line is skipped
/// with a warning, as [`read_lines`] does), reading a buffer at a time.
fn for_each_line<T: DeserializeOwned>(path: &Path, mut f: impl FnMut(T)) -> StoreResult<()> {
    use std::io::BufRead;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(StoreError::Io { op: "open", path: path.to_path_buf(), source }),
    };
    let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(|source| StoreError::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        })?;
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            tracing::warn!(path = %path.display(), bytes = line.len(), "skipping a torn last line");
            break;
        }
        if line.len() == 1 {
            continue;
        }
        let value = serde_json::from_slice(&line[..line.len() - 1]).map_err(|e| StoreError::Corrupt {
            what: format!("{} line {number}", path.display()),
            detail: e.to_string(),
        })?;
        f(value);
    }
    Ok(())
}

fn newest_first<T>(mut records: Vec<T>, limit: usize, created_at: impl Fn(&T) -> f64) -> Vec<T> {
    // Stable: equal times keep append order, reversed.
    records.reverse();
    records.sort_by(|a, b| created_at(b).total_cmp(&created_at(a)));
    records.truncate(limit);
    records
}

#[async_trait]
impl Store for LocalStore {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn location(&self) -> String {
        self.inner.root.display().to_string()
    }

    async fn health(&self) -> StoreHealth {
        let started = Instant::now();
        // Create, write, fsync and remove a file of its own: proves the
        // directory takes durable writes without touching any data.
        let probe = self
            .run(|inner| {
                let path = inner.root.join(format!(".health-probe-{}", std::process::id()));
                let result = File::create(&path)
                    .and_then(|mut f| f.write_all(b"ok").and_then(|_| f.sync_all()))
                    .map_err(|e| io("write", &path, e));
                let _ = fs::remove_file(&path);
                result
            })
            .await;
        StoreHealth {
            kind: "local".into(),
            healthy: probe.is_ok(),
            detail: probe.err().map(|e| e.to_string()),
            latency_ms: started.elapsed().as_secs_f64() * 1e3,
        }
    }

    async fn put_checkpoint(&self, checkpoint: &Checkpoint) -> StoreResult<u64> {
        let cp = checkpoint.clone();
        self.run(move |inner| inner.put_checkpoint(cp)).await
    }

    async fn get_checkpoint(&self, module: &str, generation: u64) -> StoreResult<Option<Checkpoint>> {
        let module = module.to_string();
        self.run(move |inner| inner.get_checkpoint(&module, generation)).await
    }

    async fn latest_checkpoint(&self, module: &str) -> StoreResult<Option<Checkpoint>> {
        let module = module.to_string();
        self.run(move |inner| match inner.generations(&module)?.last() {
            Some(&g) => inner.get_checkpoint(&module, g),
            None => Ok(None),
        })
        .await
    }

    async fn list_checkpoints(&self, module: &str) -> StoreResult<Vec<CheckpointMeta>> {
        let module = module.to_string();
        self.run(move |inner| inner.list_checkpoints(&module)).await
    }

    async fn put_trade(&self, trade: &TradeRecord) -> StoreResult<()> {
        let trade = StoredTrade(trade.clone());
        self.run(move |inner| inner.append(&inner.file("trades", &trade.0.module_name, "jsonl")?, &[trade])).await
    }

    /// One append per module, so one fsync per batch instead of per trade.
    async fn put_trades(&self, trades: &[TradeRecord]) -> StoreResult<()> {
        let trades: Vec<StoredTrade> = trades.iter().cloned().map(StoredTrade).collect();
        self.run(move |inner| inner.append_by_module("trades", &trades, |t| t.0.module_name.as_str(), Sync::Yes)).await
    }

    async fn list_trades(&self, module: &str, limit: usize) -> StoreResult<Vec<TradeRecord>> {
        let module = module.to_string();
        self.run(move |inner| {
            let stored: Vec<StoredTrade> = read_lines(&inner.file("trades", &module, "jsonl")?)?;
            let mut trades: Vec<TradeRecord> = stored.into_iter().map(|t| t.0).collect();
            // A retried write of the same decision's trade replaces the earlier one.
            let mut seen = HashSet::new();
            trades.reverse();
            trades.retain(|t| t.decision_id.as_ref().is_none_or(|id| seen.insert(id.clone())));
            trades.reverse();
            Ok(newest_first(trades, limit, |t| t.created_at))
        })
        .await
    }

    async fn put_parameter_effectiveness(&self, rows: &[ParameterEffectiveness]) -> StoreResult<()> {
        let rows = rows.to_vec();
        self.run(move |inner| inner.put_parameter_effectiveness(&rows)).await
    }

    async fn list_parameter_effectiveness(&self, module: &str) -> StoreResult<Vec<ParameterEffectiveness>> {
        let module = module.to_string();
        self.run(move |inner| {
            let mut rows: Vec<ParameterEffectiveness> =
                inner.read_doc(&inner.file("parameter_effectiveness", &module, "json")?)?.unwrap_or_default();
            sort_effectiveness(&mut rows);
            Ok(rows)
        })
        .await
    }

    async fn put_learning_event(&self, event: &LearningEvent) -> StoreResult<()> {
        let event = event.clone();
        self.run(move |inner| inner.append(&inner.file("ml_learning_events", &event.module_name, "jsonl")?, &[event]))
            .await
    }

    async fn list_learning_events(&self, module: &str, limit: usize) -> StoreResult<Vec<LearningEvent>> {
        let module = module.to_string();
        self.run(move |inner| {
            let events = read_lines(&inner.file("ml_learning_events", &module, "jsonl")?)?;
            Ok(newest_first(events, limit, |e: &LearningEvent| e.created_at))
        })
        .await
    }

    async fn put_optimization_data(&self, data: &OptimizationData) -> StoreResult<()> {
        let data = data.clone();
        self.run(move |inner| {
            let path = inner.file("ml_optimization_data", &data.module_name, "json")?;
            let _lock = inner.lock()?;
            inner.write_doc(&path, &data)
        })
        .await
    }

    async fn get_optimization_data(&self, module: &str) -> StoreResult<Option<OptimizationData>> {
        let module = module.to_string();
        self.run(move |inner| inner.read_doc(&inner.file("ml_optimization_data", &module, "json")?)).await
    }

    async fn append_decisions(&self, records: &[DecisionLogRecord]) -> StoreResult<()> {
        let records = records.to_vec();
        // Without fdatasync: the log is evidence for evaluation, written in
        // batches behind decisions, and must not compete with the outcome
        // journal for the disk. A crash loses at most its last batches.
        self.run(move |inner| inner.append_by_module("decisions", &records, |r| r.module.as_str(), Sync::No)).await
    }

    async fn settle_decision(&self, module: &str, decision_id: &str, reward: f64, settled_at: f64) -> StoreResult<()> {
        let (module, decision_id) = (module.to_string(), decision_id.to_string());
        self.run(move |inner| {
            if !inner.are_logged(&module, &[&decision_id])?[0] {
                return Err(StoreError::NotFound { what: format!("decision {decision_id:?} of module {module:?}") });
            }
            let path = inner.file("decisions", &module, "settled.jsonl")?;
            inner.append(&path, &[Settlement { decision_id, reward, settled_at }])
        })
        .await
    }

    /// One append for all of them, without fdatasync, like the decisions.
    async fn settle_decisions(
        &self,
        module: &str,
        settlements: &[(String, f64, f64)],
    ) -> StoreResult<Vec<StoreResult<()>>> {
        let (module, settlements) = (module.to_string(), settlements.to_vec());
        self.run(move |inner| {
            let ids: Vec<&str> = settlements.iter().map(|(id, _, _)| id.as_str()).collect();
            let logged = inner.are_logged(&module, &ids)?;
            let mut results = Vec::with_capacity(settlements.len());
            let mut rows = Vec::with_capacity(settlements.len());
            for ((decision_id, reward, settled_at), logged) in settlements.into_iter().zip(logged) {
                if logged {
                    rows.push(Settlement { decision_id, reward, settled_at });
                    results.push(Ok(()));
                } else {
                    let what = format!("decision {decision_id:?} of module {module:?}");
                    results.push(Err(StoreError::NotFound { what }));
                }
            }
            inner.append_with(&inner.file("decisions", &module, "settled.jsonl")?, &rows, Sync::No)?;
            Ok(results)
        })
        .await
    }

    async fn list_decisions(&self, module: &str, since: f64, limit: usize) -> StoreResult<Vec<DecisionLogRecord>> {
        let module = module.to_string();
        self.run(move |inner| inner.list_decisions(&module, since, limit)).await
    }

    async fn delete_checkpoint(&self, module: &str, generation: u64) -> StoreResult<bool> {
        let module = module.to_string();
        self.run(move |inner| inner.delete_checkpoint(&module, generation)).await
    }

    async fn prune_decisions(&self, module: &str, before: f64) -> StoreResult<u64> {
        let module = module.to_string();
        self.run(move |inner| {
            let dropped = inner.prune_lines(&inner.file("decisions", &module, "jsonl")?, "created_at", before)?;
            inner.prune_lines(&inner.file("decisions", &module, "settled.jsonl")?, "settled_at", before)?;
            // What the logged index has read is at other offsets now.
            inner.logged.lock().remove(&module);
            Ok(dropped)
        })
        .await
    }

    async fn prune_trades(&self, module: &str, before: f64) -> StoreResult<u64> {
        let module = module.to_string();
        self.run(move |inner| inner.prune_lines(&inner.file("trades", &module, "jsonl")?, "created_at", before)).await
    }

    async fn merge_increment(&self, module: &str, increment: &ModuleStats) -> StoreResult<ModuleStats> {
        let (module, increment) = (module.to_string(), increment.clone());
        self.run(move |inner| inner.merge_increment(&module, &increment)).await
    }

    async fn live_stats(&self, module: &str) -> StoreResult<Option<ModuleStats>> {
        let module = module.to_string();
        self.run(move |inner| inner.read_doc(&inner.file("live_stats", &module, "json")?)).await
    }
}
