//! The Firestore store, for production and for several replicas sharing what
//! they learn.
//!
//! Collections:
//! - `trades`, `parameter_effectiveness`, `ml_learning_events`,
//!   `ml_optimization_data`: the plan's, with the plan's field names.
//! - `paramopt_checkpoints/MODULE`: the module's generation counter; its
//!   subcollection `generations/GGGGGGGGGGGGGGGGGGGG` holds one manifest per
//!   checkpoint (header, payload length and SHA-256, chunk count).
//! - `paramopt_checkpoint_chunks/MODULE__GENERATION__INDEX`: the encoded
//!   checkpoint in pieces of at most [`CHUNK_BYTES`]. Firestore refuses any
//!   document over 1 MiB (the emulator too), and a checkpoint with policy
//!   weights is easily larger.
//! - `paramopt_decisions/MODULE/log/DECISION_ID`: the decision log.
//! - `paramopt_live_stats/MODULE`: the replicas' merged statistics.
//!
//! A checkpoint is written as: allocate the generation (a transaction on the
//! counter, so two writers never get the same one), write the chunks, then
//! create the manifest. A reader finds checkpoints only through manifests, so
//! it never sees a partial one; it verifies length and hash on reassembly.
//! A writer that dies before its manifest leaves a gap in the generations and
//! orphan chunks, never a visible broken checkpoint.
//!
//! Listing trades and learning events of one module newest first needs the
//! composite indexes in `scripts/firestore.indexes.json` on real Firestore;
//! the emulator needs none.

use std::time::{Duration, Instant};

use ::firestore::errors::{BackoffError, FirestoreError};
use ::firestore::gcloud_sdk::google_cloud_auth::credentials::{
    CacheableResource, Credentials, CredentialsProvider, EntityTag,
};
use ::firestore::gcloud_sdk::google_cloud_auth::errors::CredentialsError;
use ::firestore::gcloud_sdk::{GoogleAuthHeaders, HeaderMap};
use ::firestore::{FirestoreDb, FirestoreDbOptions, FirestoreResult, FirestoreWritePrecondition};
use async_trait::async_trait;
use futures::future::try_join_all;
use futures::FutureExt;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::checkpoint::{self, Checkpoint, CheckpointMeta};
use super::local::{check_shape, sort_effectiveness};
use super::records::{DecisionLogRecord, LearningEvent, OptimizationData, ParameterEffectiveness, TradeRecord};
use super::trade::FirestoreTrade;
use super::{validate_module, Store, StoreError, StoreHealth, StoreResult};
use crate::bandit::ModuleStats;

/// The largest piece of a checkpoint in one document: half of Firestore's
/// 1 MiB document limit, leaving room for the fields beside it.
pub const CHUNK_BYTES: usize = 512 * 1024;
/// The largest live-stats payload one document takes.
const LIVE_STATS_LIMIT: usize = 1_000_000;
/// Writes per commit; Firestore allows 500.
const WRITES_PER_COMMIT: usize = 400;
/// Chunks per commit, keeping a commit well under Firestore's 10 MiB request limit.
const CHUNKS_PER_COMMIT: usize = 8;

const TRADES: &str = "trades";
const EFFECTIVENESS: &str = "parameter_effectiveness";
const EVENTS: &str = "ml_learning_events";
const OPTIMIZATION: &str = "ml_optimization_data";
const CHECKPOINTS: &str = "paramopt_checkpoints";
const GENERATIONS: &str = "generations";
const CHUNKS: &str = "paramopt_checkpoint_chunks";
const DECISIONS: &str = "paramopt_decisions";
const DECISION_LOG: &str = "log";
const LIVE_STATS: &str = "paramopt_live_stats";

/// How to reach Firestore.
#[derive(Debug, Clone, PartialEq)]
pub struct FirestoreOptions {
    pub project_id: String,
    /// `None` for `(default)`.
    pub database_id: Option<String>,
    /// `HOST:PORT` of an emulator to use regardless of the environment;
    /// `None` honours `FIRESTORE_EMULATOR_HOST`, else Google's credentials.
    pub emulator_host: Option<String>,
    /// The longest one request may take before it fails (and is retried).
    pub request_timeout: Duration,
}

impl FirestoreOptions {
    pub fn new(project_id: impl Into<String>) -> FirestoreOptions {
        FirestoreOptions {
            project_id: project_id.into(),
            database_id: None,
            emulator_host: None,
            request_timeout: Duration::from_secs(30),
        }
    }

    /// Parses what follows `firestore://`: `PROJECT[?emulator=HOST:PORT][&database=ID][&timeout_ms=N]`.
    pub(crate) fn from_url_tail(url: &str, tail: &str) -> StoreResult<FirestoreOptions> {
        let bad = |reason: String| StoreError::InvalidUrl { url: url.to_string(), reason };
        let (project, query) = tail.split_once('?').unwrap_or((tail, ""));
        let project = project.trim_end_matches('/');
        if project.is_empty() || !project.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(bad(format!("{project:?} is not a project id")));
        }
        let mut options = FirestoreOptions::new(project);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("emulator", v)) if !v.is_empty() => options.emulator_host = Some(v.to_string()),
                Some(("database", v)) if !v.is_empty() => options.database_id = Some(v.to_string()),
                Some(("timeout_ms", v)) => {
                    let ms: u64 = v.parse().map_err(|_| bad(format!("timeout_ms {v:?} is not a number")))?;
                    options.request_timeout = Duration::from_millis(ms);
                }
                _ => return Err(bad(format!("unknown parameter {pair:?}"))),
            }
        }
        Ok(options)
    }
}

/// A store in one Firestore database. Cheap to clone.
#[derive(Clone)]
pub struct FirestoreStore {
    db: FirestoreDb,
    options: FirestoreOptions,
}

impl std::fmt::Debug for FirestoreStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirestoreStore").field("options", &self.options).finish()
    }
}

fn fs_err(op: impl Into<String>) -> impl FnOnce(FirestoreError) -> StoreError {
    let op = op.into();
    move |e| StoreError::Firestore { op, source: Box::new(e) }
}

/// The emulator's credentials: its conventional stub token, so that tests and
/// local runs need no Google account.
#[derive(Debug)]
struct EmulatorCredentials(EntityTag);

impl CredentialsProvider for EmulatorCredentials {
    async fn headers(&self, extensions: http::Extensions) -> Result<CacheableResource<HeaderMap>, CredentialsError> {
        if extensions.get::<EntityTag>() == Some(&self.0) {
            return Ok(CacheableResource::NotModified);
        }
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, http::HeaderValue::from_static("Bearer owner"));
        Ok(CacheableResource::New { entity_tag: self.0.clone(), data: headers })
    }

    async fn universe_domain(&self) -> Option<String> {
        None
    }
}

/// Bytes as Firestore's native bytes value rather than an array of integers.
#[derive(Debug, Clone, PartialEq)]
struct Blob(Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Blob, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Blob;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct CounterDoc {
    module: String,
    last_generation: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct ManifestDoc {
    generation: u64,
    meta: CheckpointMeta,
    payload_bytes: u64,
    payload_sha256: String,
    chunks: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct ChunkDoc {
    module: String,
    generation: u64,
    index: u32,
    data: Blob,
}

#[derive(Debug, Serialize, Deserialize)]
struct LiveStatsDoc {
    module: String,
    /// The merged `ModuleStats` as JSON: Firestore arrays cannot nest.
    stats: Blob,
    merges: u64,
    updated_at: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct SettlementPatch {
    reward: f64,
    settled_at: f64,
}

fn chunk_id(module: &str, generation: u64, index: u32) -> String {
    format!("{module}__{generation:020}__{index:05}")
}

fn generation_id(generation: u64) -> String {
    format!("{generation:020}")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl FirestoreStore {
    /// Connects; with `options.emulator_host` to that emulator, else as the
    /// `firestore` crate does (`FIRESTORE_EMULATOR_HOST`, else Google's
    /// Application Default Credentials).
    pub async fn connect(options: FirestoreOptions) -> StoreResult<FirestoreStore> {
        let mut db_options = FirestoreDbOptions::new(options.project_id.clone());
        if let Some(id) = &options.database_id {
            db_options.database_id = id.clone();
        }
        db_options.request_timeout = Some(options.request_timeout);
        let what = format!("connect to project {:?}", options.project_id);
        let db = match &options.emulator_host {
            Some(host) => {
                db_options.firebase_api_url = Some(format!("http://{host}"));
                let auth = GoogleAuthHeaders::from(Credentials::from(EmulatorCredentials(EntityTag::new())));
                FirestoreDb::with_options_auth(db_options, auth).await
            }
            None => FirestoreDb::with_options(db_options).await,
        }
        .map_err(fs_err(what))?;
        tracing::info!(project = %options.project_id, emulator = ?options.emulator_host, "connected to firestore");
        Ok(FirestoreStore { db, options })
    }

    pub fn options(&self) -> &FirestoreOptions {
        &self.options
    }

    /// The client underneath, for tools and tests that need more than [`Store`].
    pub fn db(&self) -> &FirestoreDb {
        &self.db
    }

    fn parent(&self, collection: &str, module: &str) -> StoreResult<::firestore::ParentPathBuilder> {
        self.db.parent_path(collection, module).map_err(fs_err(format!("path {collection}/{module}")))
    }

    /// Allocates `module`'s next generation in a transaction on its counter.
    async fn allocate_generation(&self, module: &str) -> StoreResult<u64> {
        let module = module.to_string();
        let m = module.clone();
        self.db
            .run_transaction(move |db, tx| {
                let module = m.clone();
                async move {
                    let counter: Option<CounterDoc> =
                        db.fluent().select().by_id_in(CHECKPOINTS).obj().one(&module).await?;
                    let generation = counter.map_or(0, |c| c.last_generation) + 1;
                    let doc = CounterDoc { module: module.clone(), last_generation: generation };
                    db.fluent()
                        .update()
                        .in_col(CHECKPOINTS)
                        .document_id(&module)
                        .object(&doc)
                        .add_to_transaction(tx)?;
                    Ok::<u64, BackoffError<FirestoreError>>(generation)
                }
                .boxed()
            })
            .await
            .map_err(fs_err(format!("allocate a generation of {module:?}")))
    }

    async fn read_manifest(&self, module: &str, generation: u64) -> StoreResult<Option<ManifestDoc>> {
        let parent = self.parent(CHECKPOINTS, module)?;
        self.db
            .fluent()
            .select()
            .by_id_in(GENERATIONS)
            .parent(&parent)
            .obj()
            .one(generation_id(generation))
            .await
            .map_err(fs_err(format!("read checkpoint manifest {module}/{generation}")))
    }

    async fn read_checkpoint(&self, module: &str, manifest: ManifestDoc) -> StoreResult<Checkpoint> {
        let generation = manifest.generation;
        let what = format!("firestore checkpoint {module}/{generation}");
        let reads = (0..manifest.chunks).map(|i| {
            let id = chunk_id(module, generation, i);
            async move {
                let chunk: Option<ChunkDoc> = self
                    .db
                    .fluent()
                    .select()
                    .by_id_in(CHUNKS)
                    .obj()
                    .one(&id)
                    .await
                    .map_err(fs_err(format!("read chunk {id}")))?;
                chunk.ok_or_else(|| StoreError::Corrupt { what: format!("chunk {id}"), detail: "missing".into() })
            }
        });
        let chunks = try_join_all(reads).await?;
        let mut payload = Vec::with_capacity(manifest.payload_bytes as usize);
        for c in chunks {
            payload.extend_from_slice(&c.data.0);
        }
        if payload.len() as u64 != manifest.payload_bytes {
            return Err(StoreError::Corrupt {
                what,
                detail: format!("reassembled {} bytes, the manifest says {}", payload.len(), manifest.payload_bytes),
            });
        }
        let hash = sha256_hex(&payload);
        if hash != manifest.payload_sha256 {
            return Err(StoreError::Corrupt {
                what,
                detail: format!("SHA-256 {hash}, the manifest says {}", manifest.payload_sha256),
            });
        }
        let cp = checkpoint::decode(&payload, &what)?;
        if cp.module != module || cp.generation != generation {
            return Err(StoreError::Corrupt { what, detail: format!("holds {}/{} instead", cp.module, cp.generation) });
        }
        Ok(cp)
    }

    async fn manifests(&self, module: &str, limit: Option<u32>) -> StoreResult<Vec<ManifestDoc>> {
        let parent = self.parent(CHECKPOINTS, module)?;
        let query = self
            .db
            .fluent()
            .select()
            .from(GENERATIONS)
            .parent(&parent)
            .order(|o| o.fields([o.field("generation").desc()]));
        let query = match limit {
            Some(n) => query.limit(n),
            None => query,
        };
        query.obj().query().await.map_err(fs_err(format!("list checkpoints of {module:?}")))
    }

    /// Commits `writes` (each adds itself to a transaction) in groups, without
    /// reading back the written documents.
    async fn commit_in_groups<T, F>(&self, what: &str, items: &[T], per_commit: usize, add: F) -> StoreResult<()>
    where
        F: Fn(&FirestoreDb, &T, &mut ::firestore::FirestoreTransaction<'_>) -> FirestoreResult<()>,
    {
        for group in items.chunks(per_commit.max(1)) {
            let mut tx = self.db.begin_transaction().await.map_err(fs_err(format!("begin {what}")))?;
            for item in group {
                add(&self.db, item, &mut tx).map_err(fs_err(format!("queue {what}")))?;
            }
            tx.commit().await.map_err(fs_err(format!("commit {what}")))?;
        }
        Ok(())
    }

    /// Deletes, a page at a time, the documents `page` finds (it is called
    /// until it finds none), and returns how many went.
    async fn delete_pages<F, Fut>(
        &self,
        what: &str,
        collection: &str,
        parent: Option<&str>,
        mut page: F,
    ) -> StoreResult<u64>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<
            Output = FirestoreResult<Vec<::firestore::gcloud_sdk::google::firestore::v1::Document>>,
        >,
    {
        let mut deleted = 0;
        loop {
            let docs = page().await.map_err(fs_err(format!("find {what}")))?;
            if docs.is_empty() {
                return Ok(deleted);
            }
            let ids: Vec<String> = docs.iter().filter_map(|d| d.name.rsplit('/').next().map(str::to_string)).collect();
            self.commit_in_groups(&format!("delete {what}"), &ids, WRITES_PER_COMMIT, |db, id, tx| {
                let delete = db.fluent().delete().from(collection);
                match parent {
                    Some(p) => delete.parent(p).document_id(id).add_to_transaction(tx).map(|_| ()),
                    None => delete.document_id(id).add_to_transaction(tx).map(|_| ()),
                }
            })
            .await?;
            deleted += ids.len() as u64;
        }
    }

    /// Filters by `module_name`, orders by `created_at` descending.
    async fn newest<T>(&self, collection: &str, module: &str, limit: usize) -> StoreResult<Vec<T>>
    where
        for<'de> T: Deserialize<'de> + Send,
    {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let module = module.to_string();
        self.db
            .fluent()
            .select()
            .from(collection)
            .filter(|q| q.for_all([q.field("module_name").eq(module.clone())]))
            .order(|o| o.fields([o.field("created_at").desc()]))
            .limit(limit.min(u32::MAX as usize) as u32)
            .obj()
            .query()
            .await
            .map_err(fs_err(format!("list {collection} of {module:?}")))
    }
}

#[async_trait]
impl Store for FirestoreStore {
    fn kind(&self) -> &'static str {
        "firestore"
    }

    fn location(&self) -> String {
        match &self.options.emulator_host {
            Some(host) => format!("firestore://{} (emulator {host})", self.options.project_id),
            None => format!("firestore://{}", self.options.project_id),
        }
    }

    async fn health(&self) -> StoreHealth {
        let started = Instant::now();
        let probe = self.db.ping().await;
        StoreHealth {
            kind: "firestore".into(),
            healthy: probe.is_ok(),
            detail: probe.err().map(|e| e.to_string()),
            latency_ms: started.elapsed().as_secs_f64() * 1e3,
        }
    }

    async fn put_checkpoint(&self, checkpoint: &Checkpoint) -> StoreResult<u64> {
        let module = checkpoint.module.as_str();
        validate_module(module)?;
        let started = Instant::now();
        let generation = self.allocate_generation(module).await?;
        let mut cp = checkpoint.clone();
        cp.generation = generation;
        let payload = checkpoint::encode(&cp)?;
        let chunks: Vec<ChunkDoc> = payload
            .chunks(CHUNK_BYTES)
            .enumerate()
            .map(|(i, data)| ChunkDoc {
                module: module.to_string(),
                generation,
                index: i as u32,
                data: Blob(data.to_vec()),
            })
            .collect();
        self.commit_in_groups(
            &format!("chunks of checkpoint {module}/{generation}"),
            &chunks,
            CHUNKS_PER_COMMIT,
            |db, c, tx| {
                db.fluent()
                    .update()
                    .in_col(CHUNKS)
                    .document_id(chunk_id(module, generation, c.index))
                    .object(c)
                    .add_to_transaction(tx)
                    .map(|_| ())
            },
        )
        .await?;
        // The manifest last: from now on readers see the whole checkpoint.
        let manifest = ManifestDoc {
            generation,
            meta: cp.meta(),
            payload_bytes: payload.len() as u64,
            payload_sha256: sha256_hex(&payload),
            chunks: chunks.len() as u32,
        };
        let parent = self.parent(CHECKPOINTS, module)?;
        self.db
            .fluent()
            .update()
            .in_col(GENERATIONS)
            .precondition(FirestoreWritePrecondition::Exists(false))
            .return_only_fields(["generation"])
            .document_id(generation_id(generation))
            .parent(&parent)
            .object(&manifest)
            .execute::<IgnoredAny>()
            .await
            .map_err(fs_err(format!("create checkpoint manifest {module}/{generation}")))?;
        tracing::info!(
            module,
            generation,
            bytes = payload.len(),
            chunks = chunks.len(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "checkpoint written"
        );
        Ok(generation)
    }

    async fn get_checkpoint(&self, module: &str, generation: u64) -> StoreResult<Option<Checkpoint>> {
        validate_module(module)?;
        match self.read_manifest(module, generation).await? {
            Some(m) => Ok(Some(self.read_checkpoint(module, m).await?)),
            None => Ok(None),
        }
    }

    async fn latest_checkpoint(&self, module: &str) -> StoreResult<Option<Checkpoint>> {
        validate_module(module)?;
        match self.manifests(module, Some(1)).await?.pop() {
            Some(m) => Ok(Some(self.read_checkpoint(module, m).await?)),
            None => Ok(None),
        }
    }

    async fn list_checkpoints(&self, module: &str) -> StoreResult<Vec<CheckpointMeta>> {
        validate_module(module)?;
        Ok(self.manifests(module, None).await?.into_iter().map(|m| m.meta).collect())
    }

    async fn put_trade(&self, trade: &TradeRecord) -> StoreResult<()> {
        validate_module(&trade.module_name)?;
        let what = format!("write a trade of {:?}", trade.module_name);
        let doc = FirestoreTrade::new(trade).map_err(|e| StoreError::Encode { what: what.clone(), source: e })?;
        match &trade.decision_id {
            // Keyed by its decision, a retried write replaces instead of duplicating.
            Some(id) => self
                .db
                .fluent()
                .update()
                .in_col(TRADES)
                .return_only_fields(["module_name"])
                .document_id(id)
                .object(&doc)
                .execute::<IgnoredAny>()
                .await
                .map(|_| ()),
            None => self
                .db
                .fluent()
                .insert()
                .into(TRADES)
                .generate_document_id()
                .object(&doc)
                .execute::<IgnoredAny>()
                .await
                .map(|_| ()),
        }
        .map_err(fs_err(what))
    }

    async fn list_trades(&self, module: &str, limit: usize) -> StoreResult<Vec<TradeRecord>> {
        validate_module(module)?;
        let docs: Vec<FirestoreTrade> = self.newest(TRADES, module, limit).await?;
        docs.into_iter()
            .map(|d| {
                let id = d.trade.decision_id.clone().unwrap_or_default();
                d.into_trade().map_err(|e| StoreError::Corrupt {
                    what: format!("trade {id:?} of module {module:?}"),
                    detail: e.to_string(),
                })
            })
            .collect()
    }

    async fn put_parameter_effectiveness(&self, rows: &[ParameterEffectiveness]) -> StoreResult<()> {
        for r in rows {
            validate_module(&r.module_name)?;
        }
        self.commit_in_groups("parameter_effectiveness rows", rows, WRITES_PER_COMMIT, |db, r, tx| {
            db.fluent().update().in_col(EFFECTIVENESS).document_id(r.key()).object(r).add_to_transaction(tx).map(|_| ())
        })
        .await
    }

    async fn list_parameter_effectiveness(&self, module: &str) -> StoreResult<Vec<ParameterEffectiveness>> {
        validate_module(module)?;
        let m = module.to_string();
        let mut rows: Vec<ParameterEffectiveness> = self
            .db
            .fluent()
            .select()
            .from(EFFECTIVENESS)
            .filter(|q| q.for_all([q.field("module_name").eq(m.clone())]))
            .obj()
            .query()
            .await
            .map_err(fs_err(format!("list parameter_effectiveness of {module:?}")))?;
        sort_effectiveness(&mut rows);
        Ok(rows)
    }

    async fn put_learning_event(&self, event: &LearningEvent) -> StoreResult<()> {
        validate_module(&event.module_name)?;
        self.db
            .fluent()
            .insert()
            .into(EVENTS)
            .generate_document_id()
            .object(event)
            .execute::<IgnoredAny>()
            .await
            .map(|_| ())
            .map_err(fs_err(format!("write a learning event of {:?}", event.module_name)))
    }

    async fn list_learning_events(&self, module: &str, limit: usize) -> StoreResult<Vec<LearningEvent>> {
        validate_module(module)?;
        self.newest(EVENTS, module, limit).await
    }

    async fn put_optimization_data(&self, data: &OptimizationData) -> StoreResult<()> {
        validate_module(&data.module_name)?;
        self.db
            .fluent()
            .update()
            .in_col(OPTIMIZATION)
            .return_only_fields(["module_name"])
            .document_id(&data.module_name)
            .object(data)
            .execute::<IgnoredAny>()
            .await
            .map(|_| ())
            .map_err(fs_err(format!("write ml_optimization_data/{}", data.module_name)))
    }

    async fn get_optimization_data(&self, module: &str) -> StoreResult<Option<OptimizationData>> {
        validate_module(module)?;
        self.db
            .fluent()
            .select()
            .by_id_in(OPTIMIZATION)
            .obj()
            .one(module)
            .await
            .map_err(fs_err(format!("read ml_optimization_data/{module}")))
    }

    async fn append_decisions(&self, records: &[DecisionLogRecord]) -> StoreResult<()> {
        let mut parents = std::collections::HashMap::new();
        for r in records {
            validate_module(&r.module)?;
            if !parents.contains_key(&r.module) {
                parents.insert(r.module.clone(), self.parent(DECISIONS, &r.module)?);
            }
        }
        self.commit_in_groups("decision log records", records, WRITES_PER_COMMIT, |db, r, tx| {
            db.fluent()
                .update()
                .in_col(DECISION_LOG)
                .document_id(&r.decision_id)
                .parent(&parents[&r.module])
                .object(r)
                .add_to_transaction(tx)
                .map(|_| ())
        })
        .await
    }

    async fn settle_decision(&self, module: &str, decision_id: &str, reward: f64, settled_at: f64) -> StoreResult<()> {
        validate_module(module)?;
        let parent = self.parent(DECISIONS, module)?;
        let patch = SettlementPatch { reward, settled_at };
        let result = self
            .db
            .fluent()
            .update()
            .fields(["reward", "settled_at"])
            .in_col(DECISION_LOG)
            .precondition(FirestoreWritePrecondition::Exists(true))
            .return_only_fields(["reward"])
            .document_id(decision_id)
            .parent(&parent)
            .object(&patch)
            .execute::<IgnoredAny>()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(FirestoreError::DataNotFoundError(_)) => {
                Err(StoreError::NotFound { what: format!("decision {decision_id:?} of module {module:?}") })
            }
            Err(e) => Err(fs_err(format!("settle decision {decision_id:?} of {module:?}"))(e)),
        }
    }

    async fn list_decisions(&self, module: &str, since: f64, limit: usize) -> StoreResult<Vec<DecisionLogRecord>> {
        validate_module(module)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let parent = self.parent(DECISIONS, module)?;
        self.db
            .fluent()
            .select()
            .from(DECISION_LOG)
            .parent(&parent)
            .filter(|q| q.for_all([q.field("created_at").greater_than_or_equal(since)]))
            // The newest `limit`, handed back oldest first.
            .order(|o| o.fields([o.field("created_at").descending()]))
            .limit(limit.min(u32::MAX as usize) as u32)
            .obj()
            .query()
            .await
            .map(|mut records: Vec<DecisionLogRecord>| {
                records.reverse();
                records
            })
            .map_err(fs_err(format!("list decisions of {module:?}")))
    }

    async fn delete_checkpoint(&self, module: &str, generation: u64) -> StoreResult<bool> {
        validate_module(module)?;
        if self.manifests(module, Some(1)).await?.first().is_some_and(|m| m.generation == generation) {
            return Err(StoreError::Invalid {
                what: "generation",
                value: generation.to_string(),
                reason: "the newest generation is never deleted".into(),
            });
        }
        let Some(manifest) = self.read_manifest(module, generation).await? else { return Ok(false) };
        // The manifest first: from then on no reader looks for the chunks.
        let parent = self.parent(CHECKPOINTS, module)?;
        self.db
            .fluent()
            .delete()
            .from(GENERATIONS)
            .parent(&parent)
            .document_id(generation_id(generation))
            .execute()
            .await
            .map_err(fs_err(format!("delete checkpoint manifest {module}/{generation}")))?;
        let chunks: Vec<String> = (0..manifest.chunks).map(|i| chunk_id(module, generation, i)).collect();
        self.commit_in_groups(
            &format!("delete chunks of {module}/{generation}"),
            &chunks,
            WRITES_PER_COMMIT,
            |db, id, tx| db.fluent().delete().from(CHUNKS).document_id(id).add_to_transaction(tx).map(|_| ()),
        )
        .await?;
        Ok(true)
    }

    /// Settlements live in their decisions' documents and go with them.
    async fn prune_decisions(&self, module: &str, before: f64) -> StoreResult<u64> {
        validate_module(module)?;
        let parent = self.parent(DECISIONS, module)?;
        let parent_path = parent.to_string();
        let what = format!("decisions of {module:?} before {before}");
        self.delete_pages(&what, DECISION_LOG, Some(&parent_path), || {
            self.db
                .fluent()
                .select()
                .from(DECISION_LOG)
                .parent(&parent)
                .filter(|q| q.for_all([q.field("created_at").less_than(before)]))
                .limit(WRITES_PER_COMMIT as u32)
                .query()
        })
        .await
    }

    async fn prune_trades(&self, module: &str, before: f64) -> StoreResult<u64> {
        validate_module(module)?;
        let what = format!("trades of {module:?} before {before}");
        self.delete_pages(&what, TRADES, None, || {
            self.db
                .fluent()
                .select()
                .from(TRADES)
                .filter(|q| {
                    q.for_all([q.field("module_name").eq(module.to_string()), q.field("created_at").less_than(before)])
                })
                .limit(WRITES_PER_COMMIT as u32)
                .query()
        })
        .await
    }

    async fn merge_increment(&self, module: &str, increment: &ModuleStats) -> StoreResult<ModuleStats> {
        validate_module(module)?;
        let (m, inc) = (module.to_string(), increment.clone());
        // The closure may run several times (Firestore retries a transaction
        // that lost a race), so it recomputes from what it reads each time.
        let outcome = self
            .db
            .run_transaction(move |db, tx| {
                let (module, increment) = (m.clone(), inc.clone());
                async move {
                    let doc: Option<LiveStatsDoc> =
                        db.fluent().select().by_id_in(LIVE_STATS).obj().one(&module).await?;
                    let (merged, merges) = match doc {
                        Some(doc) => {
                            let mut total: ModuleStats = match serde_json::from_slice(&doc.stats.0) {
                                Ok(t) => t,
                                Err(e) => {
                                    let what = format!("{LIVE_STATS}/{module}");
                                    return Ok(Err(StoreError::Corrupt { what, detail: e.to_string() }));
                                }
                            };
                            if let Err(e) = check_shape(&module, &total, &increment) {
                                return Ok(Err(e));
                            }
                            total.merge(&increment);
                            (total, doc.merges + 1)
                        }
                        None => (increment, 1),
                    };
                    let bytes = match serde_json::to_vec(&merged) {
                        Ok(b) if b.len() > LIVE_STATS_LIMIT => {
                            let what = format!("live stats of {module:?}");
                            return Ok(Err(StoreError::TooLarge { what, size: b.len(), limit: LIVE_STATS_LIMIT }));
                        }
                        Ok(b) => b,
                        Err(source) => {
                            return Ok(Err(StoreError::Encode { what: format!("live stats of {module:?}"), source }))
                        }
                    };
                    let doc = LiveStatsDoc {
                        module: module.clone(),
                        stats: Blob(bytes),
                        merges,
                        updated_at: super::now_secs(),
                    };
                    db.fluent().update().in_col(LIVE_STATS).document_id(&module).object(&doc).add_to_transaction(tx)?;
                    Ok::<_, BackoffError<FirestoreError>>(Ok(merged))
                }
                .boxed()
            })
            .await
            .map_err(fs_err(format!("merge an increment into the live stats of {module:?}")))?;
        outcome
    }

    async fn live_stats(&self, module: &str) -> StoreResult<Option<ModuleStats>> {
        validate_module(module)?;
        let doc: Option<LiveStatsDoc> = self
            .db
            .fluent()
            .select()
            .by_id_in(LIVE_STATS)
            .obj()
            .one(module)
            .await
            .map_err(fs_err(format!("read {LIVE_STATS}/{module}")))?;
        doc.map(|d| {
            serde_json::from_slice(&d.stats.0)
                .map_err(|e| StoreError::Corrupt { what: format!("{LIVE_STATS}/{module}"), detail: e.to_string() })
        })
        .transpose()
    }
}
