//! `Idempotency-Key` for the routes that make a generation (`POST
//! /v1/rollback`): a retried request with the key it was first sent with gets
//! the first request's answer, and the work happens once.
//!
//! The work runs in a task of its own, so a first request that timed out
//! (408) or whose client went away still finishes, and its retry waits for
//! that result instead of starting a second rollback.

use std::collections::{HashMap, VecDeque};
use std::future::Future;

use axum::http::StatusCode;
use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;

/// Keys remembered at once; the oldest is forgotten first.
pub const MAX_KEYS: usize = 10_000;
/// Longest key accepted (a UUID is 36).
pub const MAX_KEY_LEN: usize = 200;

/// A finished answer: its status and JSON body.
pub type Answer = (StatusCode, bytes::Bytes);

#[derive(Default)]
pub struct IdempotencyKeys {
    inner: Mutex<Keys>,
}

#[derive(Default)]
struct Keys {
    answers: HashMap<String, Shared<BoxFuture<'static, Answer>>>,
    order: VecDeque<String>,
}

impl IdempotencyKeys {
    /// The answer of `work` under `key`: `work` runs (in a task of its own)
    /// only the first time the key is seen; every later call gets its answer.
    pub async fn once<F>(&self, key: String, work: F) -> Answer
    where
        F: Future<Output = Answer> + Send + 'static,
    {
        let shared = {
            let mut keys = self.inner.lock();
            match keys.answers.get(&key) {
                Some(answer) => answer.clone(),
                None => {
                    let task = tokio::spawn(work);
                    let answer = async move {
                        task.await.unwrap_or_else(|e| {
                            tracing::error!(error = %e, "an idempotent request's task failed");
                            (
                                StatusCode::INTERNAL_SERVER_ERROR,
                                bytes::Bytes::from_static(
                                    br#"{"error":"internal error; the server log has the details"}"#,
                                ),
                            )
                        })
                    }
                    .boxed()
                    .shared();
                    keys.answers.insert(key.clone(), answer.clone());
                    keys.order.push_back(key);
                    while keys.order.len() > MAX_KEYS {
                        if let Some(old) = keys.order.pop_front() {
                            keys.answers.remove(&old);
                        }
                    }
                    answer
                }
            }
        };
        shared.await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn the_work_runs_once_per_key_even_when_the_first_caller_goes_away() {
        let keys = Arc::new(IdempotencyKeys::default());
        let runs = Arc::new(AtomicU32::new(0));
        let work = |runs: Arc<AtomicU32>| async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
            (StatusCode::OK, bytes::Bytes::from(format!("{{\"generation\": {n}}}")))
        };
        // The first caller gives up at once, as a request that timed out does.
        let first =
            tokio::time::timeout(std::time::Duration::from_millis(1), keys.once("k".into(), work(runs.clone())));
        assert!(first.await.is_err());
        let retry = keys.once("k".into(), work(runs.clone())).await;
        assert_eq!(retry.1, bytes::Bytes::from_static(b"{\"generation\": 1}"));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let other = keys.once("other".into(), work(runs.clone())).await;
        assert_eq!(other.1, bytes::Bytes::from_static(b"{\"generation\": 2}"));
    }
}
