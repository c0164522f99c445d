//! Running the service on a socket: TCP_NODELAY, keep-alive, a header-read
//! deadline, a bound on connections, graceful shutdown.
//!
//! API.md requires TCP_NODELAY on every accepted connection: a keep-alive
//! client that writes a request in two segments (headers, then body, as
//! Python's http.client does) otherwise waits for the server's delayed ACK,
//! about 40 ms per request. hyper keeps HTTP/1.1 connections alive by default.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::store::StoreError;
use super::{app, AppState};

/// Serves `state` on `listener` until `shutdown` resolves, then stops
/// accepting, lets in-flight requests finish and closes idle connections.
/// Call [`finish`] afterwards to flush learning and run the shutdown hooks.
///
/// Each connection is HTTP/1.1 with keep-alive, TCP_NODELAY and a deadline
/// for its request headers ([`ServiceOptions::header_read_timeout`]); at most
/// [`ServiceOptions::max_connections`] are served at once, and the rest wait
/// in the kernel's listen backlog, so half-open floods cost a bounded number
/// of sockets.
///
/// [`ServiceOptions::header_read_timeout`]: super::ServiceOptions::header_read_timeout
/// [`ServiceOptions::max_connections`]: super::ServiceOptions::max_connections
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let options = state.options().clone();
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let graceful = GracefulShutdown::new();
    let router = app(state.clone());
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(options.header_read_timeout).keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.map_err(io::Error::other)?,
            () = &mut shutdown => break,
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    // Out of file descriptors and the like: wait, do not spin or die.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::warn!(%error, "cannot set TCP_NODELAY on an accepted connection");
        }
        state.metrics().connection_accepted();
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(tcp), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(slot);
        });
    }
    // In-flight requests finish; idle keep-alive connections close now.
    graceful.shutdown().await;
    Ok(())
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
