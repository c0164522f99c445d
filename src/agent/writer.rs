//! The writer thread: the only code that changes learned state. It applies
//! outcomes in journal order and republishes the touched views.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::space::Context;

use super::{Inner, Journal, ModuleCounters, ModuleLearner, Settled};

/// Work for the writer thread on the learners it owns.
pub type WriterTask = Box<dyn FnOnce(&mut [ModuleLearner]) + Send>;

pub(super) enum WriterMsg {
    Outcome {
        module: usize,
        settled: Settled,
        seq: Option<u64>,
    },
    Flush(Sender<()>),
    /// Runs on the writer; afterwards every module's view is republished.
    Run(WriterTask),
}

/// Under load the writer publishes at most this often, so rebuilding views
/// (propensities are numerical integrals) costs a bounded share of a core.
/// Views lag outcomes by at most this much; trades close hours apart.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(5);

pub(super) fn writer_loop(
    mut learners: Vec<ModuleLearner>,
    rx: Receiver<WriterMsg>,
    inner: std::sync::Weak<Inner>,
    journal: Option<Arc<dyn Journal>>,
) -> Vec<ModuleLearner> {
    let mut touched: Vec<Vec<bool>> = learners.iter().map(|_| vec![false; Context::COUNT]).collect();
    let mut refresh_all = vec![false; learners.len()];
    let mut released = vec![0u64; learners.len()];
    let mut flushes = Vec::new();
    let mut last_publish = Instant::now() - PUBLISH_INTERVAL;
    let mut open = true;
    while open {
        let Ok(first) = rx.recv() else { break };
        let mut next = Some(first);
        let deadline = last_publish + PUBLISH_INTERVAL;
        while let Some(msg) = next.take() {
            match msg {
                WriterMsg::Outcome { module, settled, seq } => {
                    let d = &settled.decision;
                    // The budget stops reserving for this trade only once a
                    // view whose ledger holds its outcome is published.
                    released[module] += u64::from(d.explored());
                    // An outcome that never reached the disk was refused to its
                    // reporter; learning it would let a retry count twice.
                    let durable = match (seq, &journal) {
                        (Some(seq), Some(journal)) => journal.wait_durable(seq).is_ok(),
                        _ => true,
                    };
                    if durable {
                        if let Some(seq) = seq {
                            learners[module].mark_journaled(seq);
                        }
                        match learners[module].apply_settled(&settled) {
                            Ok(applied) => {
                                refresh_all[module] |= applied.refresh_all || applied.policy_changed;
                                touched[module][d.context.index()] = true;
                            }
                            // The bandit has learned; only the network's step failed.
                            Err(e) => {
                                tracing::error!(module = %d.module, decision = %d.id, error = %e, "policy training step failed")
                            }
                        }
                    }
                }
                WriterMsg::Flush(done) => flushes.push(done),
                WriterMsg::Run(task) => {
                    task(&mut learners);
                    refresh_all.iter_mut().for_each(|r| *r = true);
                    // Whoever waits on the task should see its effect at once.
                    last_publish -= PUBLISH_INTERVAL;
                }
            }
            next = match rx.try_recv() {
                Ok(m) => Some(m),
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    None
                }
                Err(TryRecvError::Empty) if flushes.is_empty() => {
                    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                        Ok(m) => Some(m),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => {
                            open = false;
                            None
                        }
                    }
                }
                Err(TryRecvError::Empty) => None,
            };
        }
        if let Some(inner) = inner.upgrade() {
            for (m, learner) in learners.iter().enumerate() {
                if !refresh_all[m] && !touched[m].iter().any(|&t| t) {
                    continue;
                }
                let handle = &inner.handles[m];
                let previous = handle.view.load();
                handle.view.store(Arc::new(learner.next_view(&previous, &touched[m], refresh_all[m])));
                touched[m].iter_mut().for_each(|t| *t = false);
                refresh_all[m] = false;
            }
            for (m, n) in released.iter_mut().enumerate() {
                if *n > 0 {
                    release_exploring(&inner.handles[m].counters, *n);
                    *n = 0;
                }
            }
        }
        last_publish = Instant::now();
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
    learners
}

/// Open exploring decisions that closed (settled or evicted); never below 0.
pub(super) fn release_exploring(counters: &ModuleCounters, closed: u64) {
    let _ =
        counters.open_exploring.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(closed)));
}
