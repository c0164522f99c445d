//! The decision log: every decision with its propensities, seed and policy
//! generation, and later its reward, kept in the store for off-policy
//! evaluation; and the trade records that outcomes carry (the plan's
//! `trades` collection).
//!
//! It is written from the journal, not from a queue beside it. Every decision
//! is in the journal before it is answered and every outcome, with the trade
//! its module sent, before it is acknowledged; a task of its own reads the
//! journal in order, writes what it read in batches (a settlement read in the
//! same batch as its decision is folded into the decision's record, so the
//! common case is one write) and notes how far it got. So whatever was
//! acknowledged reaches the store after any crash: a restart reads on from
//! the last note, and the journal keeps every line the log has not stored
//! (`FileJournal::track_log`). Decisions never wait on it. When the store is
//! down the log waits and retries, and the journal holds what it has not
//! written; a write the store refuses for good (not a transient error) is
//! dropped, counted and logged, so one bad record cannot stop the log.
//! Re-read entries (after a crash between a write and its note) are written
//! again: the stores keep one record per decision id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::agent::{Decision, DecisionId, Settled};
use crate::space::Spaces;
use crate::store::journal::{Cursor, Logged};
use crate::store::trade::{StoredTrade, TradeRecord};
use crate::store::{DecisionLogRecord, FileJournal, Store, StoreError};

/// Entries read per batch.
const BATCH: usize = 5_000;
/// How long the log lets entries gather between batches.
const GATHER: Duration = Duration::from_millis(100);
/// The longest wait between retries while the store is down.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long shutdown waits for the log to catch up; what is left is in the
/// journal and written after the next start.
const FLUSH_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct DecisionLogCounters {
    pub written: AtomicU64,
    pub settled: AtomicU64,
    pub trades: AtomicU64,
    pub dropped: AtomicU64,
    pub store_errors: AtomicU64,
}

pub struct DecisionLog {
    journal: Arc<FileJournal>,
    logged: watch::Receiver<u64>,
    counters: Arc<DecisionLogCounters>,
}

impl DecisionLog {
    /// Starts the reader task on the current tokio runtime, watched by
    /// `tasks`, from where the log stopped last time.
    pub fn start(
        store: Arc<dyn Store>,
        spaces: Spaces,
        journal: Arc<FileJournal>,
        tasks: &Arc<crate::supervisor::Supervisor>,
    ) -> std::io::Result<DecisionLog> {
        let from = journal.track_log()?;
        let (tx, logged) = watch::channel(from);
        let counters = Arc::new(DecisionLogCounters::default());
        let cursor = journal.cursor(from);
        tasks.spawn(
            &tokio::runtime::Handle::current(),
            "decision log",
            read_loop(cursor, journal.clone(), store, spaces, counters.clone(), tx),
        );
        Ok(DecisionLog { journal, logged, counters })
    }

    /// Waits until everything durable in the journal now is in the store, or
    /// [`FLUSH_LIMIT`] has passed (the store is down, say): at shutdown and
    /// before an evaluation reads the log.
    pub async fn flush(&self) {
        let target = self.journal.durable_through();
        let mut logged = self.logged.clone();
        let _ = tokio::time::timeout(FLUSH_LIMIT, logged.wait_for(|&l| l >= target)).await;
    }

    pub fn counters(&self) -> &DecisionLogCounters {
        &self.counters
    }
}

async fn read_loop(
    mut cursor: Cursor,
    journal: Arc<FileJournal>,
    store: Arc<dyn Store>,
    spaces: Spaces,
    counters: Arc<DecisionLogCounters>,
    logged: watch::Sender<u64>,
) {
    loop {
        let reading = journal.clone();
        let read = tokio::task::spawn_blocking(move || {
            let entries = reading.tail(&mut cursor, BATCH);
            (cursor, entries)
        })
        .await;
        let entries = match read {
            Ok((back, entries)) => {
                cursor = back;
                entries
            }
            Err(e) => {
                tracing::error!(error = %e, "decision log: the journal reader died");
                return;
            }
        };
        let entries = match entries {
            Ok(entries) => entries,
            Err(e) => {
                counters.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "decision log: could not read the journal; retrying");
                tokio::time::sleep(GATHER).await;
                continue;
            }
        };
        let full = entries.len() == BATCH;
        if !entries.is_empty() {
            write_batch(&*store, &spaces, &counters, entries).await;
        }
        // Noted only once written: a crash before it re-reads the batch.
        let through = cursor.seq().max(*logged.borrow());
        if through > *logged.borrow() {
            if let Err(e) = journal.set_logged_through(through) {
                tracing::warn!(error = %e, "decision log: could not note its place; it re-reads from the last note");
            }
            logged.send_replace(through);
        }
        if !full {
            tokio::time::sleep(GATHER).await;
        }
    }
}

/// One batch: the decisions' records (with the rewards settled in the same
/// batch), the trades, and the settlements of decisions written before.
async fn write_batch(store: &dyn Store, spaces: &Spaces, counters: &DecisionLogCounters, entries: Vec<(u64, Logged)>) {
    let mut records: Vec<DecisionLogRecord> = Vec::new();
    let mut index: HashMap<DecisionId, usize> = HashMap::new();
    let mut later: HashMap<String, Vec<(String, f64, f64)>> = HashMap::new();
    let mut trades = Vec::new();
    for (_, entry) in entries {
        match entry {
            Logged::Decided(d) => {
                let Some(space) = spaces.get(&d.module) else { continue };
                index.insert(d.id, records.len());
                records.push(record_of(&d, space));
            }
            Logged::Settled(s) => {
                if let Some(trade) = trade_of(spaces, &s) {
                    trades.push(trade);
                }
                match index.get(&s.decision.id) {
                    Some(&i) => {
                        records[i].reward = Some(s.reward);
                        records[i].settled_at = Some(s.settled_at);
                    }
                    None => later.entry(s.decision.module.clone()).or_default().push((
                        s.decision.id.to_string(),
                        s.reward,
                        s.settled_at,
                    )),
                }
            }
        }
    }
    let folded = records.iter().filter(|r| r.reward.is_some()).count() as u64;
    if write_or_drop("trades", trades.len(), &counters.trades, counters, || store.put_trades(&trades)).await
        && write_or_drop("decisions", records.len(), &counters.written, counters, || store.append_decisions(&records))
            .await
    {
        counters.settled.fetch_add(folded, Ordering::Relaxed);
    }
    for (module, settlements) in later {
        let results = match with_retries(&counters.store_errors, || store.settle_decisions(&module, &settlements)).await
        {
            Ok(results) => results,
            Err(e) => {
                counters.store_errors.fetch_add(1, Ordering::Relaxed);
                counters.dropped.fetch_add(settlements.len() as u64, Ordering::Relaxed);
                tracing::warn!(module, settlements = settlements.len(), error = %e, "decision log: dropped settlements");
                continue;
            }
        };
        for result in results {
            match result {
                Ok(()) => {
                    counters.settled.fetch_add(1, Ordering::Relaxed);
                }
                // Its decision was made before the journal held decisions.
                Err(StoreError::NotFound { .. }) => {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    counters.store_errors.fetch_add(1, Ordering::Relaxed);
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(module, error = %e, "decision log: dropped a settlement");
                }
            }
        }
    }
}

fn record_of(d: &Decision, space: &crate::space::ModuleSpace) -> DecisionLogRecord {
    let mut record = DecisionLogRecord::new(d, space);
    record.ignored_features = d.ignored_features.iter().cloned().collect();
    record
}

/// The trade an outcome carried, completed from its decision as the service
/// answered it.
fn trade_of(spaces: &Spaces, s: &Settled) -> Option<TradeRecord> {
    let raw = s.attachment.as_ref()?;
    let space = spaces.get(&s.decision.module)?;
    match serde_json::from_str::<StoredTrade>(raw.0.get()) {
        Ok(StoredTrade(mut trade)) => {
            trade.complete(space, s);
            Some(trade)
        }
        Err(e) => {
            tracing::warn!(decision = %s.decision.id, error = %e, "decision log: an outcome's trade does not parse; skipped");
            None
        }
    }
}

/// Writes a batch of `len` entries (nothing when empty): retried while the
/// store's errors are transient, however long that takes (the journal holds
/// the entries meanwhile); dropped, counted and logged when the store refuses
/// them for good. Returns whether they were written.
async fn write_or_drop<F, Fut>(
    kind: &str,
    len: usize,
    written: &AtomicU64,
    counters: &DecisionLogCounters,
    write: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    if len == 0 {
        return true;
    }
    match with_retries(&counters.store_errors, write).await {
        Ok(()) => {
            written.fetch_add(len as u64, Ordering::Relaxed);
            true
        }
        Err(e) => {
            counters.store_errors.fetch_add(1, Ordering::Relaxed);
            counters.dropped.fetch_add(len as u64, Ordering::Relaxed);
            tracing::warn!(kind, entries = len, error = %e, "decision log: the store refused a batch; dropped");
            false
        }
    }
}

/// Retries transient errors with backoff, without end, counting each in
/// `errors`; others return at once.
async fn with_retries<T, F, Fut>(errors: &AtomicU64, mut write: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(200);
    for attempt in 1u64.. {
        match write().await {
            Err(e) if e.is_transient() => {
                errors.fetch_add(1, Ordering::Relaxed);
                if attempt.is_power_of_two() {
                    tracing::warn!(attempt, error = %e, "decision log: the store is failing; retrying (the journal keeps the entries)");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_BACKOFF);
            }
            other => return other,
        }
    }
    unreachable!("the loop returns")
}
