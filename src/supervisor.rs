//! Background tasks that nobody awaits, watched: a task that panics or
//! returns while the service is meant to be running is recorded with its
//! reason, and `/healthz` answers 503 with it instead of a stale "ok".

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

/// The process's long-running tasks (checkpointer, replica syncer, decision
/// log writer) and how any of them ended.
#[derive(Debug, Default)]
pub struct Supervisor {
    failures: Mutex<Vec<String>>,
    stopping: AtomicBool,
}

impl Supervisor {
    /// Runs `task` on `handle` and watches it: if it panics, or returns
    /// before [`Supervisor::stop`] was called, the failure is kept and logged.
    pub fn spawn<F>(self: &std::sync::Arc<Self>, handle: &tokio::runtime::Handle, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let inner = handle.spawn(task);
        let me = self.clone();
        handle.spawn(async move {
            let reason = match inner.await {
                Ok(()) if me.stopping.load(Ordering::Relaxed) => return,
                Ok(()) => format!("the {name} task ended"),
                Err(e) if e.is_cancelled() => return,
                Err(e) => format!("the {name} task panicked: {}", panic_text(e.into_panic())),
            };
            tracing::error!(task = name, %reason, "a background task died");
            me.failures.lock().push(reason);
        });
    }

    /// Records a failure found some other way (the agent's writer thread, say).
    pub fn record(&self, reason: String) {
        tracing::error!(%reason, "a background task died");
        self.failures.lock().push(reason);
    }

    /// From now on a task that returns is shutting down, not failing.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Why tasks died, oldest first; empty while all is well.
    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().clone()
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    async fn settle(s: &Supervisor, n: usize) {
        for _ in 0..400 {
            if s.failures().len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_panicking_or_returning_task_is_recorded_and_a_stopped_one_is_not() {
        let s = Arc::new(Supervisor::default());
        let handle = tokio::runtime::Handle::current();
        s.spawn(&handle, "checkpointer", async { panic!("disk on fire") });
        s.spawn(&handle, "syncer", async {});
        settle(&s, 2).await;
        let mut failures = s.failures();
        failures.sort();
        assert_eq!(failures, ["the checkpointer task panicked: disk on fire", "the syncer task ended"]);
        s.stop();
        s.spawn(&handle, "late", async {});
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(s.failures().len(), 2, "a task that returns after stop() is not a failure");
    }
}
