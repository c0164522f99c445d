//! The durable outcome journal: every outcome is on disk before `report`
//! acknowledges it, and outcomes no checkpoint holds yet are replayed on start.
//!
//! It is always local (a file per module under the data directory), whatever
//! the checkpoint store: acknowledging must not wait on a network. Appends are
//! group-committed: concurrent reporters share one `fdatasync`, so durability
//! costs one disk flush per batch, not per outcome. After a failed write the
//! journal refuses every later append: accepting outcomes it cannot keep would
//! break the promise the acknowledgement makes.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use crate::agent::{Journal, Settled};

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    seq: u64,
    settled: Settled,
}

#[derive(Debug, Default)]
struct State {
    next_seq: u64,
    buf: Vec<u8>,
    buffered_through: u64,
    durable_through: u64,
    flushing: bool,
    failed: Option<String>,
}

#[derive(Debug)]
struct ModuleJournal {
    path: PathBuf,
    file: Mutex<File>,
    state: Mutex<State>,
    flushed: Condvar,
}

#[derive(Debug)]
pub struct FileJournal {
    dir: PathBuf,
    modules: HashMap<String, ModuleJournal>,
}

impl FileJournal {
    /// Opens (creating) `dir/<module>.jsonl` for each module.
    pub fn open(dir: &Path, modules: impl IntoIterator<Item = String>) -> std::io::Result<FileJournal> {
        std::fs::create_dir_all(dir)?;
        let mut map = HashMap::new();
        for module in modules {
            let path = dir.join(format!("{module}.jsonl"));
            let last = read_entries(&path)?.last().map(|e| e.seq).unwrap_or(0);
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            let state = State { next_seq: last, buffered_through: last, durable_through: last, ..State::default() };
            map.insert(
                module,
                ModuleJournal { path, file: Mutex::new(file), state: Mutex::new(state), flushed: Condvar::new() },
            );
        }
        Ok(FileJournal { dir: dir.to_path_buf(), modules: map })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The outcomes of `module` after sequence number `after`, in order.
    pub fn replay(&self, module: &str, after: u64) -> std::io::Result<Vec<(u64, Settled)>> {
        let Some(j) = self.modules.get(module) else { return Ok(Vec::new()) };
        let _file = j.file.lock();
        Ok(read_entries(&j.path)?.into_iter().filter(|e| e.seq > after).map(|e| (e.seq, e.settled)).collect())
    }

    /// Drops the entries up to `through`, which a stored checkpoint now holds.
    /// The file is rewritten beside and renamed over, so a crash leaves either
    /// the old journal or the new one.
    pub fn compact(&self, module: &str, through: u64) -> std::io::Result<()> {
        let Some(j) = self.modules.get(module) else { return Ok(()) };
        let mut file = j.file.lock();
        let keep: Vec<Entry> = read_entries(&j.path)?.into_iter().filter(|e| e.seq > through).collect();
        let tmp = j.path.with_extension("jsonl.tmp");
        {
            let mut out = File::create(&tmp)?;
            for e in &keep {
                serde_json::to_writer(&mut out, e)?;
                out.write_all(b"\n")?;
            }
            out.sync_all()?;
        }
        std::fs::rename(&tmp, &j.path)?;
        File::open(&self.dir)?.sync_all()?;
        *file = OpenOptions::new().append(true).open(&j.path)?;
        Ok(())
    }
}

impl Journal for FileJournal {
    fn append(&self, module: &str, settled: &Settled) -> std::io::Result<u64> {
        let j = self
            .modules
            .get(module)
            .ok_or_else(|| std::io::Error::other(format!("no journal for module {module:?}")))?;
        let mut st = j.state.lock();
        if let Some(e) = &st.failed {
            return Err(std::io::Error::other(format!("journal {} failed earlier: {e}", j.path.display())));
        }
        st.next_seq += 1;
        let seq = st.next_seq;
        serde_json::to_writer(&mut st.buf, &Entry { seq, settled: settled.clone() })?;
        st.buf.push(b'\n');
        st.buffered_through = seq;
        loop {
            if st.durable_through >= seq {
                return Ok(seq);
            }
            if let Some(e) = &st.failed {
                return Err(std::io::Error::other(format!("journal {}: {e}", j.path.display())));
            }
            if st.flushing {
                j.flushed.wait(&mut st);
                continue;
            }
            // Lead this batch: everything buffered so far goes in one flush.
            st.flushing = true;
            let batch = std::mem::take(&mut st.buf);
            let through = st.buffered_through;
            drop(st);
            let written = {
                let mut file = j.file.lock();
                file.write_all(&batch).and_then(|()| file.sync_data())
            };
            st = j.state.lock();
            st.flushing = false;
            match written {
                Ok(()) => st.durable_through = through,
                Err(e) => {
                    tracing::error!(path = %j.path.display(), error = %e, "journal write failed; refusing outcomes");
                    st.failed = Some(e.to_string());
                }
            }
            j.flushed.notify_all();
        }
    }
}

/// Every whole entry in the file. A line that does not parse (a write torn by
/// a crash) is skipped: its outcome was never acknowledged.
fn read_entries(path: &Path) -> std::io::Result<Vec<Entry>> {
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
            Ok(e) => out.push(e),
            Err(e) => tracing::warn!(path = %path.display(), line = n + 1, error = %e, "skipping a torn journal line"),
        }
    }
    Ok(out)
}
