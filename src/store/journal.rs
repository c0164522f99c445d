//! The durable outcome journal: every outcome is on disk before it is
//! acknowledged, and outcomes no checkpoint holds yet are replayed on start.
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

use crate::agent::{Journal, Settled};

const FILE_NAME: &str = "outcomes.jsonl";

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    seq: u64,
    settled: Settled,
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
    flusher: Option<JoinHandle<()>>,
}

impl FileJournal {
    /// Opens (creating) the journal in `dir` and starts its flusher thread.
    pub fn open(dir: &Path) -> std::io::Result<FileJournal> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        drop_torn_tail(&path)?;
        let last = read_entries(&path, u64::MAX)?.last().map(|e| e.seq).unwrap_or(0);
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
        Ok(FileJournal { dir: dir.to_path_buf(), shared, floors: Mutex::default(), flusher: Some(flusher) })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The durable outcomes of `module` after sequence number `after`, in order.
    pub fn replay(&self, module: &str, after: u64) -> std::io::Result<Vec<(u64, Settled)>> {
        let durable = self.shared.state.lock().progress.durable_through;
        Ok(read_entries(&self.shared.path, durable)?
            .into_iter()
            .filter(|e| e.seq > after && e.settled.decision.module == module)
            .map(|e| (e.seq, e.settled))
            .collect())
    }

    /// Drops the entries of `module` up to `through`, which a stored checkpoint
    /// now holds, and those of other modules at or below the points given them
    /// earlier. The kept entries are copied beside the journal and renamed
    /// over it, so a crash leaves the old journal or the new one. Appends go
    /// on meanwhile: the file is held only to copy what was appended during
    /// the copy and to swap the files.
    pub fn compact(&self, module: &str, through: u64) -> std::io::Result<()> {
        // Held throughout: two compactions would share the temporary file.
        let mut floors = self.floors.lock();
        let floor = floors.entry(module.to_string()).or_insert(0);
        *floor = (*floor).max(through);
        let path = &self.shared.path;
        let copied_len = self.shared.file.lock().metadata()?.len();
        let tmp = path.with_extension("jsonl.tmp");
        let mut out = File::create(&tmp)?;
        {
            let mut reader = BufReader::new(File::open(path)?.take(copied_len));
            let mut line = Vec::new();
            loop {
                line.clear();
                if reader.read_until(b'\n', &mut line)? == 0 {
                    break;
                }
                // Only whole lines reach the file before the length was read.
                if let Ok(e) = serde_json::from_slice::<Entry>(&line) {
                    if e.seq > floors.get(&e.settled.decision.module).copied().unwrap_or(0) {
                        out.write_all(&line)?;
                    }
                }
            }
        }
        let mut file = self.shared.file.lock();
        let mut tail = File::open(path)?;
        tail.seek(SeekFrom::Start(copied_len))?;
        std::io::copy(&mut tail, &mut out)?;
        out.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(&self.dir)?.sync_all()?;
        *file = OpenOptions::new().append(true).open(path)?;
        Ok(())
    }
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

impl Journal for FileJournal {
    fn append(&self, settled: &Settled, then: &mut dyn FnMut(u64)) -> std::io::Result<u64> {
        let shared = &*self.shared;
        let mut st = shared.state.lock();
        if let Some(e) = &st.progress.failed {
            return Err(failed_error(&shared.path, e));
        }
        let seq = st.next_seq + 1;
        let mark = st.buf.len();
        if let Err(e) = serde_json::to_writer(&mut st.buf, &Entry { seq, settled: settled.clone() }) {
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

/// The whole entries in the file with sequence numbers up to `through`. A line
/// that does not parse (a write torn by a crash) is skipped: its outcome was
/// never acknowledged.
fn read_entries(path: &Path, through: u64) -> std::io::Result<Vec<Entry>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for (n, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Entry>(&line) {
            Ok(e) if e.seq <= through => out.push(e),
            Ok(_) => {}
            Err(e) => tracing::warn!(path = %path.display(), line = n + 1, error = %e, "skipping a torn journal line"),
        }
    }
    Ok(out)
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
        let mut seqs: Vec<u64> = ["crypto", "stocks", "options"]
            .iter()
            .flat_map(|m| journal.replay(m, 0).unwrap().into_iter().map(|(seq, _)| seq))
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=600).collect::<Vec<_>>());
        assert_eq!(journal.replay("crypto", 0).unwrap().len(), 300);
        drop(journal);

        let journal = Arc::new(FileJournal::open(dir.path()).unwrap());
        let agent = agent_with(&journal);
        report_some(&agent, "stocks", 1);
        agent.shutdown();
        let last = journal.replay("stocks", 600).unwrap();
        assert_eq!(last.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), vec![601]);
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
        file.write_all(br#"{"seq":6,"settled":{"decis"#).unwrap();
        drop(file);

        let journal = Arc::new(FileJournal::open(dir.path()).unwrap());
        let agent = agent_with(&journal);
        report_some(&agent, "crypto", 2);
        agent.shutdown();
        let seqs: Vec<u64> = journal.replay("crypto", 0).unwrap().into_iter().map(|(seq, _)| seq).collect();
        assert_eq!(seqs, (1..=7).collect::<Vec<_>>(), "the torn 6th line is gone, the new ones are whole");
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
            for through in [50, 120, 200] {
                journal.compact("crypto", through).unwrap();
            }
        });
        agent.shutdown();
        let crypto: Vec<u64> = journal.replay("crypto", 0).unwrap().into_iter().map(|(seq, _)| seq).collect();
        // Sequence numbers are shared: stocks took 201..=250.
        assert_eq!(crypto.first(), Some(&251), "entries through 200 are dropped");
        let stocks = journal.replay("stocks", 0).unwrap();
        assert_eq!(stocks.len(), 50, "another module's entries are kept until its own checkpoint");
        assert_eq!(crypto.len(), 300, "none appended during the compactions is lost");
        assert!(crypto.windows(2).all(|w| w[0] < w[1]));
    }
}
