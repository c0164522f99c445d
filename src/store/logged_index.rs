//! Which decisions a module's local decision log holds, in bounded memory.
//!
//! Settling a decision first checks that its decision was logged. Keeping
//! every id ever logged would grow with traffic for as long as the process
//! runs, so the index keeps the newest [`WINDOW`] ids exactly and, for older
//! ones, a sparse map from creation time to file offset (one mark per
//! [`MARK_EVERY`] lines). A service id carries its creation time, so a miss
//! reads only the stretch of the log written around then; an id of another
//! form (written by hand or by an older client) is looked for in the whole
//! log. Misses are rare: the decision log settles most decisions soon after
//! logging them, and a trade open for days meets a scan of minutes of log.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;

use serde::Deserialize;

use crate::agent::DecisionId;

/// Ids remembered exactly, per module: about 5 MB at most.
pub const WINDOW: usize = 1 << 16;
/// Lines between two time marks.
const MARK_EVERY: u64 = 4096;
/// How far out of creation order the log's lines may be, in seconds. Lines
/// are appended in journal order, which is creation order give or take the
/// few milliseconds between stamping a decision and journaling it.
const DISORDER_SECS: f64 = 60.0;

/// A logged decision id: the service's are 32 hex digits, kept as a number
/// (a third of their text's memory); anything else as its text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum LoggedId {
    Hex(u128),
    Text(String),
}

impl LoggedId {
    fn of(id: &str) -> LoggedId {
        match u128::from_str_radix(id, 16) {
            Ok(n) if id.len() == 32 => LoggedId::Hex(n),
            _ => LoggedId::Text(id.to_string()),
        }
    }
}

/// The fields of a log line the index reads.
#[derive(Deserialize)]
struct Line {
    decision_id: String,
    #[serde(default)]
    created_at: f64,
}

#[derive(Debug)]
pub struct LoggedIndex {
    window: usize,
    /// Bytes of the log read so far: whole lines only.
    read: u64,
    lines: u64,
    recent: HashSet<LoggedId>,
    order: VecDeque<LoggedId>,
    /// Whether ids have left the window, so that a miss must look in the file.
    forgot: bool,
    /// (creation time of a line, the line's offset), every `MARK_EVERY` lines.
    marks: Vec<(f64, u64)>,
}

impl Default for LoggedIndex {
    fn default() -> LoggedIndex {
        LoggedIndex::with_window(WINDOW)
    }
}

impl LoggedIndex {
    pub fn with_window(window: usize) -> LoggedIndex {
        LoggedIndex {
            window: window.max(1),
            read: 0,
            lines: 0,
            recent: HashSet::new(),
            order: VecDeque::new(),
            forgot: false,
            marks: Vec::new(),
        }
    }

    /// Whether the log at `path` holds each of `ids`, reading first what was
    /// appended since the last look.
    pub fn contains_all(&mut self, path: &Path, ids: &[&str]) -> std::io::Result<Vec<bool>> {
        let Some(file) = open(path)? else { return Ok(vec![false; ids.len()]) };
        self.catch_up(&file)?;
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            let hit = self.recent.contains(&LoggedId::of(id)) || (self.forgot && self.scan_for(&file, id)?);
            found.push(hit);
        }
        Ok(found)
    }

    /// Streams the lines appended since the last look into the window.
    fn catch_up(&mut self, mut file: &File) -> std::io::Result<()> {
        file.seek(SeekFrom::Start(self.read))?;
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            // A torn last line is read again, whole, next time.
            if n == 0 || line.last() != Some(&b'\n') {
                return Ok(());
            }
            if let Ok(parsed) = serde_json::from_slice::<Line>(&line) {
                if self.lines % MARK_EVERY == 0 {
                    self.marks.push((parsed.created_at, self.read));
                }
                self.lines += 1;
                self.remember(LoggedId::of(&parsed.decision_id));
            }
            self.read += n as u64;
        }
    }

    fn remember(&mut self, id: LoggedId) {
        if self.recent.insert(id.clone()) {
            self.order.push_back(id);
        }
        while self.order.len() > self.window {
            if let Some(old) = self.order.pop_front() {
                self.recent.remove(&old);
                self.forgot = true;
            }
        }
    }

    /// Looks for `id` in the part of the log already read: around its
    /// creation time if it carries one, else all of it.
    fn scan_for(&self, mut file: &File, id: &str) -> std::io::Result<bool> {
        let created = id.parse::<DecisionId>().ok().map(DecisionId::unix_secs);
        let start = match created {
            Some(t) => {
                let before = self.marks.partition_point(|&(at, _)| at < t - DISORDER_SECS);
                before.checked_sub(1).map_or(0, |i| self.marks[i].1)
            }
            None => 0,
        };
        file.seek(SeekFrom::Start(start))?;
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let (mut at, mut line) = (start, Vec::new());
        while at < self.read {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            at += n as u64;
            let Ok(parsed) = serde_json::from_slice::<Line>(&line) else { continue };
            if parsed.decision_id == id {
                return Ok(true);
            }
            if created.is_some_and(|t| parsed.created_at > t + DISORDER_SECS) {
                break;
            }
        }
        Ok(false)
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.recent.len()
    }
}

fn open(path: &Path) -> std::io::Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn write_log(path: &Path, ids: &[(String, f64)]) {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        for (id, at) in ids {
            writeln!(f, "{}", serde_json::json!({"decision_id": id, "created_at": at, "module": "crypto"})).unwrap();
        }
    }

    #[test]
    fn ids_beyond_the_window_are_found_in_the_file_and_memory_stays_at_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crypto.jsonl");
        // 20,000 decisions, 10 a second, the service's id form.
        let ids: Vec<(String, f64)> = (0..20_000)
            .map(|i| {
                let at = 1.7e9 + i as f64 / 10.0;
                (DecisionId::generate(3, at).to_string(), at)
            })
            .collect();
        write_log(&path, &ids[..10_000]);
        let mut index = LoggedIndex::with_window(1000);
        let oldest = ids[0].0.as_str();
        assert_eq!(index.contains_all(&path, &[oldest]).unwrap(), vec![true]);
        write_log(&path, &ids[10_000..]);
        let probes: Vec<&str> = [0, 1, 4095, 4096, 9_999, 15_000, 19_999].iter().map(|&i| ids[i].0.as_str()).collect();
        assert!(index.contains_all(&path, &probes).unwrap().iter().all(|&hit| hit));
        assert_eq!(index.remembered(), 1000, "the window bounds what is held in memory");

        let never = DecisionId::generate(3, 1.7e9 + 500.0).to_string();
        let text = "hand-written-id".to_string();
        assert_eq!(index.contains_all(&path, &[&never, &text]).unwrap(), vec![false, false]);
        write_log(&path, &[(text.clone(), 0.0)]);
        assert_eq!(index.contains_all(&path, &[&text]).unwrap(), vec![true]);
    }

    #[test]
    fn a_torn_last_line_is_read_once_it_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crypto.jsonl");
        let id = DecisionId::generate(0, 1.7e9).to_string();
        let line = serde_json::json!({"decision_id": id, "created_at": 1.7e9}).to_string();
        let (head, tail) = line.split_at(20);
        std::fs::write(&path, head).unwrap();
        let mut index = LoggedIndex::default();
        assert_eq!(index.contains_all(&path, &[&id]).unwrap(), vec![false]);
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        writeln!(f, "{tail}").unwrap();
        assert_eq!(index.contains_all(&path, &[&id]).unwrap(), vec![true]);
        assert_eq!(index.contains_all(&dir.path().join("none.jsonl"), &[&id]).unwrap(), vec![false]);
    }
}
