//! The decision log: every decision with its propensities, seed and policy
//! generation, and later its reward, kept in the store for off-policy
//! evaluation; and the trade records that outcomes carry (the plan's
//! `trades` collection).
//!
//! Decisions never wait on it. `decided`, `settled` and `trade` only queue; a
//! tokio task writes what gathered in batches (a settlement that arrives in
//! the same batch as its decision is folded into the decision's record, so
//! the common case is one write). One write per batch matters: a trade
//! written on its own costs the local store an fsync and a directory lock,
//! and thousands of those queued on tokio's blocking pool made every other
//! store call wait seconds behind them. The log is evidence for evaluation,
//! not for learning: the journal holds what learning needs. So when the
//! store cannot keep up or is down for long, the log drops entries rather
//! than hold decisions back, and counts them in `dropped` (and as store
//! errors); `/metrics` shows both.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::agent::{Decision, DecisionId};
use crate::space::Spaces;
use crate::store::{DecisionLogRecord, Store, StoreError, TradeRecord};

/// Entries waiting to be written; beyond this the log drops.
const QUEUE: usize = 100_000;
/// Entries taken per batch.
const BATCH: usize = 5_000;
/// How long the writer lets entries gather between batches.
const GATHER: Duration = Duration::from_millis(100);

enum Entry {
    Decided(Arc<Decision>, Vec<(String, f64)>),
    Settled {
        decision: Arc<Decision>,
        reward: f64,
        at: f64,
    },
    Trade(Box<TradeRecord>),
    /// Answered once everything queued before it is written (or dropped).
    Flush(oneshot::Sender<()>),
}

#[derive(Debug, Default)]
pub struct DecisionLogCounters {
    pub written: AtomicU64,
    pub settled: AtomicU64,
    pub trades: AtomicU64,
    pub dropped: AtomicU64,
    pub store_errors: AtomicU64,
}

pub struct DecisionLog {
    tx: mpsc::Sender<Entry>,
    counters: Arc<DecisionLogCounters>,
}

impl DecisionLog {
    /// Starts the writer task on the current tokio runtime, watched by `tasks`
    /// (it ends only when every sender is gone, at shutdown).
    pub fn start(store: Arc<dyn Store>, spaces: Spaces, tasks: &Arc<crate::supervisor::Supervisor>) -> DecisionLog {
        let (tx, rx) = mpsc::channel(QUEUE);
        let counters = Arc::new(DecisionLogCounters::default());
        tasks.spawn(
            &tokio::runtime::Handle::current(),
            "decision log",
            write_loop(rx, store, spaces, counters.clone()),
        );
        DecisionLog { tx, counters }
    }

    /// A decision served, with the features it sent that its module does
    /// not declare (kept beside it, never learned from).
    pub fn decided(&self, decision: &Arc<Decision>, ignored_features: &[(String, f64)]) {
        self.queue(Entry::Decided(decision.clone(), ignored_features.to_vec()));
    }

    pub fn settled(&self, decision: &Arc<Decision>, reward: f64, at: f64) {
        self.queue(Entry::Settled { decision: decision.clone(), reward, at });
    }

    /// A settled outcome's trade record, with its decision's context filled in.
    pub fn trade(&self, trade: TradeRecord) {
        self.queue(Entry::Trade(Box::new(trade)));
    }

    /// Waits until everything queued so far is written; at shutdown.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Entry::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    pub fn counters(&self) -> &DecisionLogCounters {
        &self.counters
    }

    fn queue(&self, entry: Entry) {
        if self.tx.try_send(entry).is_err() {
            let dropped = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, "decision log behind: dropping entries (decisions are not held back)");
            }
        }
    }
}

async fn write_loop(
    mut rx: mpsc::Receiver<Entry>,
    store: Arc<dyn Store>,
    spaces: Spaces,
    counters: Arc<DecisionLogCounters>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut records: Vec<DecisionLogRecord> = Vec::new();
        let mut index: HashMap<DecisionId, usize> = HashMap::new();
        let mut later = Vec::new();
        let mut trades = Vec::new();
        let mut flushes = Vec::new();
        for entry in batch.drain(..) {
            match entry {
                Entry::Decided(d, ignored) => {
                    let Some(space) = spaces.get(&d.module) else { continue };
                    index.insert(d.id, records.len());
                    let mut record = DecisionLogRecord::new(&d, space);
                    record.ignored_features = ignored.into_iter().collect();
                    records.push(record);
                }
                Entry::Settled { decision, reward, at } => match index.get(&decision.id) {
                    Some(&i) => {
                        records[i].reward = Some(reward);
                        records[i].settled_at = Some(at);
                        counters.settled.fetch_add(1, Ordering::Relaxed);
                    }
                    None => later.push((decision, reward, at)),
                },
                Entry::Trade(t) => trades.push(*t),
                Entry::Flush(done) => flushes.push(done),
            }
        }
        write_or_drop("trades", trades.len(), &counters.trades, &counters, || store.put_trades(&trades)).await;
        write_or_drop("decisions", records.len(), &counters.written, &counters, || store.append_decisions(&records))
            .await;
        let mut by_module: HashMap<&str, Vec<(String, f64, f64)>> = HashMap::new();
        for (d, reward, at) in &later {
            by_module.entry(&d.module).or_default().push((d.id.to_string(), *reward, *at));
        }
        for (module, settlements) in by_module {
            let results = match store.settle_decisions(module, &settlements).await {
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
                    // Its decision was dropped, or made before a restart.
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
        let flushing = !flushes.is_empty();
        for done in flushes {
            let _ = done.send(());
        }
        if !flushing {
            tokio::time::sleep(GATHER).await;
        }
    }
}

/// Writes a batch of `len` entries (nothing when empty), with retries: when
/// written they count in `written`; when the write fails for good they are
/// dropped, counted and logged.
async fn write_or_drop<F, Fut>(kind: &str, len: usize, written: &AtomicU64, counters: &DecisionLogCounters, write: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    if len == 0 {
        return;
    }
    match with_retries(write).await {
        Ok(()) => {
            written.fetch_add(len as u64, Ordering::Relaxed);
        }
        Err(e) => {
            counters.store_errors.fetch_add(1, Ordering::Relaxed);
            counters.dropped.fetch_add(len as u64, Ordering::Relaxed);
            tracing::warn!(kind, entries = len, error = %e, "decision log: dropped a batch");
        }
    }
}

/// Three tries with backoff for transient errors; others at once.
async fn with_retries<F, Fut>(mut write: F) -> Result<(), StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    let mut delay = Duration::from_millis(200);
    for attempt in 1.. {
        match write().await {
            Err(e) if e.is_transient() && attempt < 3 => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => return other,
        }
    }
    unreachable!("the loop returns")
}
