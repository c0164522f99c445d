//! Running the service on a socket: TCP_NODELAY, keep-alive, graceful shutdown.
//!
//! API.md requires TCP_NODELAY on every accepted connection: a keep-alive
//! client that writes a request in two segments (headers, then body, as
//! Python's http.client does) otherwise waits for the server's delayed ACK,
//! about 40 ms per request. hyper keeps HTTP/1.1 connections alive by default.

use std::future::Future;
use std::io;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use super::store::StoreError;
use super::{app, AppState};

/// Serves `state` on `listener` until `shutdown` resolves, then stops
/// accepting, lets in-flight requests finish and closes idle connections.
/// Call [`finish`] afterwards to flush learning and run the shutdown hooks.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let counting = state.clone();
    let listener = listener.tap_io(move |tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::warn!(%error, "cannot set TCP_NODELAY on an accepted connection");
        }
        counting.metrics().connection_accepted();
    });
    axum::serve(listener, app(state)).with_graceful_shutdown(shutdown).await
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!(signal = "SIGINT", "shutting down"),
        _ = term => tracing::info!(signal = "SIGTERM", "shutting down"),
    }
}

/// After [`serve`] returned: waits until the agent has learned every accepted
/// outcome, runs the outcome sink's and the checkpoint store's shutdown hooks
/// (the store writes its final checkpoint there) and stops the agent's writer.
/// Returns the hooks' errors, already logged.
pub fn finish(state: &AppState) -> Vec<StoreError> {
    let agent = state.agent();
    agent.flush();
    let mut errors = Vec::new();
    if let Err(e) = state.hooks().outcomes.on_shutdown() {
        tracing::error!(error = %e, "outcome sink shutdown failed");
        errors.push(e);
    }
    if let Some(store) = &state.hooks().checkpoints {
        if let Err(e) = store.on_shutdown() {
            tracing::error!(error = %e, "final checkpoint failed");
            errors.push(e);
        }
    }
    agent.shutdown();
    tracing::info!("stopped");
    errors
}
