//! Persistence: checkpoints of learned state, the trading plan's collections
//! (`trades`, `parameter_effectiveness`, `ml_learning_events`,
//! `ml_optimization_data`), the decision log for off-policy evaluation, and the
//! shared "live stats" that replicas merge their posterior increments into.
//!
//! [`Store`] is the one interface; [`open_store`] picks a backend from a URL:
//! - [`LocalStore`] (`data/`, `local:///path`): the embedded default. No
//!   server; atomic file writes, append-only JSON lines.
//! - [`FirestoreStore`] (`firestore://PROJECT_ID`): production. Honours
//!   `FIRESTORE_EMULATOR_HOST`, else Google's standard credentials.
//!
//! The store is a layer the agent calls from its background writer; nothing
//! here runs on the decision path. Every operation is async (tokio) so a slow
//! Firestore never blocks a thread the caller needs; the local backend runs its
//! file IO on tokio's blocking pool.

pub mod checkpoint;
pub mod firestore;
pub mod journal;
pub mod local;
mod logged_index;
pub mod records;
pub mod retention;
pub mod trade;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::bandit::ModuleStats;

pub use self::checkpoint::{Checkpoint, CheckpointKind, CheckpointMeta, HistoryPoint, FORMAT_VERSION};
pub use self::firestore::{FirestoreOptions, FirestoreStore};
pub use self::journal::{DecisionLimits, FileJournal};
pub use self::local::LocalStore;
pub use self::records::{
    DecisionLogRecord, LearningEvent, LearningEventKind, MoveEvidence, OptimizationData, ParameterEffectiveness,
    PerformancePoint, TradeRecord,
};

pub type StoreResult<T> = Result<T, StoreError>;

/// What went wrong in a store operation, naming the value, path or document
/// at fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid store URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid { what: &'static str, value: String, reason: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is corrupt: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{what} has format version {found}, newer than this build's {supported}")]
    UnsupportedVersion { what: String, found: u32, supported: u32 },
    #[error("stats of module {module:?} do not fit the stored live stats: {detail}")]
    ShapeMismatch { module: String, detail: String },
    #[error("{what} is {size} bytes, over the {limit}-byte limit")]
    TooLarge { what: String, size: usize, limit: usize },
    #[error("firestore {op}: {source}")]
    Firestore {
        op: String,
        #[source]
        source: Box<::firestore::errors::FirestoreError>,
    },
    #[error("encoding {what}: {source}")]
    Encode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("store task failed: {0}")]
    Task(String),
}

impl StoreError {
    /// Whether retrying the same operation later may succeed: the backend was
    /// unreachable or slow, rather than the request or the data being wrong.
    /// The agent's writer retries these with backoff.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Firestore { source, .. } => match source.as_ref() {
                ::firestore::errors::FirestoreError::DatabaseError(e) => e.retry_possible,
                ::firestore::errors::FirestoreError::NetworkError(_) => true,
                _ => false,
            },
            StoreError::Io { .. } | StoreError::Task(_) => true,
            _ => false,
        }
    }
}

/// The answer to a health probe, for `/healthz` and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreHealth {
    pub kind: String,
    pub healthy: bool,
    /// What failed, when unhealthy.
    pub detail: Option<String>,
    /// How long the probe took.
    pub latency_ms: f64,
}

/// Storage of everything paramopt learns and records. Object safe: callers
/// hold an `Arc<dyn Store>`.
///
/// Generations are per module, allocated by the store, strictly increasing
/// and never reused or deleted (a crashed writer may leave a gap). Lists of
/// history are newest first unless said otherwise.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// `"local"` or `"firestore"`.
    fn kind(&self) -> &'static str;
    /// Where the data lives, for logs: a directory or a project.
    fn location(&self) -> String;
    /// Probes the backend; never fails, reports the fault instead.
    async fn health(&self) -> StoreHealth;

    /// Stores `checkpoint` as its module's next generation and returns that
    /// generation. `checkpoint.generation` is ignored: the store allocates it,
    /// safely against concurrent writers. Readers never see a partial checkpoint.
    async fn put_checkpoint(&self, checkpoint: &Checkpoint) -> StoreResult<u64>;
    async fn get_checkpoint(&self, module: &str, generation: u64) -> StoreResult<Option<Checkpoint>>;
    async fn latest_checkpoint(&self, module: &str) -> StoreResult<Option<Checkpoint>>;
    /// Every generation of `module`, newest first, without the bulky state.
    async fn list_checkpoints(&self, module: &str) -> StoreResult<Vec<CheckpointMeta>>;
    /// One page of that list: at most `limit` generations older than
    /// `before` (all when `None`), newest first.
    async fn list_checkpoints_page(
        &self,
        module: &str,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<CheckpointMeta>> {
        let mut metas = self.list_checkpoints(module).await?;
        metas.retain(|m| before.is_none_or(|b| m.generation < b));
        metas.truncate(limit);
        Ok(metas)
    }
    /// Deletes one generation, state and header: true if it was there. The
    /// newest generation is never deleted (generation numbers are never
    /// reused). Only retention calls it ([`retention`]), which keeps every
    /// generation a rollback or promotion made or pointed at.
    async fn delete_checkpoint(&self, module: &str, generation: u64) -> StoreResult<bool>;
    /// Deletes the decision-log records of `module` created before `before`
    /// (epoch seconds), and the settlements made before it; returns how many
    /// records went.
    async fn prune_decisions(&self, module: &str, before: f64) -> StoreResult<u64>;
    /// Deletes the trades of `module` created before `before`; returns how many.
    async fn prune_trades(&self, module: &str, before: f64) -> StoreResult<u64>;

    /// Stores one trade. With a `decision_id` the write is idempotent (a retry
    /// replaces rather than duplicates).
    async fn put_trade(&self, trade: &TradeRecord) -> StoreResult<()>;
    /// Stores many trades, of any modules: all of them or an error. A retried
    /// batch is as idempotent as each trade's own write. Backends that can
    /// write them together override it.
    async fn put_trades(&self, trades: &[TradeRecord]) -> StoreResult<()> {
        for chunk in trades.chunks(32) {
            for result in futures::future::join_all(chunk.iter().map(|t| self.put_trade(t))).await {
                result?;
            }
        }
        Ok(())
    }
    /// The newest `limit` trades of `module`, newest first.
    async fn list_trades(&self, module: &str, limit: usize) -> StoreResult<Vec<TradeRecord>>;

    /// Inserts or replaces rows, keyed by module, parameter, value and context.
    async fn put_parameter_effectiveness(&self, rows: &[ParameterEffectiveness]) -> StoreResult<()>;
    /// Every row of `module`, ordered by parameter, context and value.
    async fn list_parameter_effectiveness(&self, module: &str) -> StoreResult<Vec<ParameterEffectiveness>>;

    async fn put_learning_event(&self, event: &LearningEvent) -> StoreResult<()>;
    /// The newest `limit` learning events of `module`, newest first.
    async fn list_learning_events(&self, module: &str, limit: usize) -> StoreResult<Vec<LearningEvent>>;

    /// Replaces the module's optimization document.
    async fn put_optimization_data(&self, data: &OptimizationData) -> StoreResult<()>;
    async fn get_optimization_data(&self, module: &str) -> StoreResult<Option<OptimizationData>>;

    /// Appends decisions to the log; idempotent per decision id on Firestore.
    async fn append_decisions(&self, records: &[DecisionLogRecord]) -> StoreResult<()>;
    /// Records the reward of a logged decision. `NotFound` if it was never logged.
    async fn settle_decision(&self, module: &str, decision_id: &str, reward: f64, settled_at: f64) -> StoreResult<()>;
    /// Records many rewards of `module`'s logged decisions, `(decision_id,
    /// reward, settled_at)`: an error for the whole batch, or one result per
    /// settlement, in order. Backends that can write them together override it.
    async fn settle_decisions(
        &self,
        module: &str,
        settlements: &[(String, f64, f64)],
    ) -> StoreResult<Vec<StoreResult<()>>> {
        let mut results = Vec::with_capacity(settlements.len());
        for chunk in settlements.chunks(32) {
            let writes = chunk.iter().map(|(id, reward, at)| self.settle_decision(module, id, *reward, *at));
            results.extend(futures::future::join_all(writes).await);
        }
        Ok(results)
    }
    /// The newest `limit` decisions of `module` created at or after `since`
    /// (epoch seconds), handed back oldest first, each with its reward once
    /// settled. Analytics read the newest window, never the oldest.
    async fn list_decisions(&self, module: &str, since: f64, limit: usize) -> StoreResult<Vec<DecisionLogRecord>>;

    /// Atomically adds a replica's posterior increment (see
    /// [`ModuleStats::since`]) to the module's shared live stats and returns
    /// the merged total. No concurrent increment is lost.
    async fn merge_increment(&self, module: &str, increment: &ModuleStats) -> StoreResult<ModuleStats>;
    /// The module's shared live stats, if any replica has merged into them.
    async fn live_stats(&self, module: &str) -> StoreResult<Option<ModuleStats>>;
}

/// Opens the store a URL names:
/// - `firestore://PROJECT_ID`, optionally `?emulator=HOST:PORT`;
/// - `local:///abs/path`, `local://rel/path`, or a bare path such as `data/`.
pub async fn open_store(url: &str) -> StoreResult<Arc<dyn Store>> {
    let url = url.trim();
    if let Some(rest) = url.strip_prefix("firestore://") {
        let options = FirestoreOptions::from_url_tail(url, rest)?;
        return Ok(Arc::new(FirestoreStore::connect(options).await?));
    }
    let path = url.strip_prefix("local://").or_else(|| url.strip_prefix("file://")).unwrap_or(url);
    if path.is_empty() {
        return Err(StoreError::InvalidUrl { url: url.to_string(), reason: "no directory given".into() });
    }
    if path.contains("://") {
        return Err(StoreError::InvalidUrl {
            url: url.to_string(),
            reason: "unknown scheme; use firestore://PROJECT or local:///path".into(),
        });
    }
    Ok(Arc::new(LocalStore::open(path)?))
}

/// Module names become file names and document ids, so they are restricted
/// to what is safe in both.
pub fn validate_module(module: &str) -> StoreResult<()> {
    let ok = !module.is_empty()
        && module.len() <= 64
        && module.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            what: "module name",
            value: module.to_string(),
            reason: "use 1-64 of [A-Za-z0-9_-]".into(),
        })
    }
}

pub use crate::util::now_secs;

/// `secs` since the epoch as an RFC 3339 UTC timestamp with milliseconds,
/// the plan's format (`2025-05-31T10:30:00Z`).
pub fn rfc3339(secs: f64) -> String {
    let ms = (secs * 1000.0).round() as i64;
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => t.to_string(),
        Err(_) => format!("{secs}"),
    }
}
