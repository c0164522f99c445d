//! Replicas sharing what they learn through the store's shared totals.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{Runtime, RuntimeError};

impl Runtime {
    /// Merges `module`'s evidence since the last sync into the store's shared
    /// totals (a transaction, so no replica's increment is lost), and takes in
    /// what the other replicas merged meanwhile. Decisions go on throughout:
    /// the learner changes only in two short tasks on the writer thread.
    pub async fn sync(&self, module: &str) -> Result<(), RuntimeError> {
        let _guard = self.lock(module)?.lock().await;
        let index = self.agent.module_index(module)?;
        let Some(own) = self.on_writer(move |learners| learners[index].take_increment()).await? else {
            return Err(RuntimeError::NotAReplica(module.to_string()));
        };
        match self.store.merge_increment(module, &own).await {
            Ok(merged) => {
                self.status.store_healthy.store(true, Ordering::Relaxed);
                self.on_writer(move |learners| learners[index].absorb_shared(&own, merged)).await?;
                Ok(())
            }
            Err(e) => {
                self.status.store_errors.fetch_add(1, Ordering::Relaxed);
                self.status.store_healthy.store(false, Ordering::Relaxed);
                self.on_writer(move |learners| learners[index].return_increment(own)).await?;
                Err(e.into())
            }
        }
    }

    /// Syncs every module every `sync_every_secs`, forever, when this process
    /// is a replica; start it with `tokio::spawn`.
    pub async fn run_syncer(self: Arc<Self>) {
        let Some(every) = self.options.sync_every_secs else { return };
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(every.max(0.05)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            for module in self.spaces.names().map(String::from).collect::<Vec<_>>() {
                if let Err(e) = self.sync(&module).await {
                    tracing::warn!(module, error = %e, "replica sync failed; retried at the next tick");
                }
            }
        }
    }
}
