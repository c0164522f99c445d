//! The composition root: the runtime (store, journal, restored agent) with
//! its background tasks, and the service's state over it, persistence
//! hooked in. `paramopt serve`, `paramopt demo` and the integration tests
//! all assemble a served runtime here, so the wiring (which tasks run,
//! which hooks the routes get, how it shuts down) is written once.

use std::sync::Arc;

use tokio::runtime::Handle;

use crate::runtime::{Runtime, RuntimeError, RuntimeOptions};
use crate::space::Spaces;

use super::persist::RuntimeHooks;
use super::store::StoreError;
use super::{server, AppState, Hooks, ServiceOptions};

/// A runtime and the service's state over it.
pub struct Served {
    pub runtime: Arc<Runtime>,
    /// What [`super::app`] and [`server::serve`] take.
    pub state: AppState,
}

impl Served {
    /// Starts the runtime (restoring every module and replaying the journal)
    /// and its background tasks on the current tokio runtime, then the
    /// service's state over it: what `paramopt serve` and `paramopt demo` run.
    pub async fn start(
        spaces: Spaces,
        options: RuntimeOptions,
        service: ServiceOptions,
    ) -> Result<Served, RuntimeError> {
        let runtime = Runtime::start(spaces, options).await?;
        let handle = Handle::current();
        runtime.spawn_background(&handle);
        Ok(Served::over(runtime, service, handle))
    }

    /// The service's state over a started runtime, without its background
    /// tasks (tests decide when generations are made): checkpoints, rollbacks
    /// and trades go through the runtime, whose blocking hooks wait on `handle`.
    pub fn over(runtime: Arc<Runtime>, service: ServiceOptions, handle: Handle) -> Served {
        let hooks = Arc::new(RuntimeHooks::new(runtime.clone(), handle));
        let hooks = Hooks { checkpoints: Some(hooks.clone()), outcomes: hooks };
        let state = AppState::new(runtime.agent.clone(), service, hooks);
        Served { runtime, state }
    }

    /// Once [`server::serve`] has returned: the background tasks are told
    /// that ending now is no failure, then [`server::finish`] learns every
    /// accepted outcome and writes the final checkpoints. Call it from
    /// outside the tokio runtime, which must still be running: the final
    /// checkpoint waits on the store through its handle (from a thread of
    /// its own here, never one of the runtime's). Returns the hooks' errors.
    pub fn stop(&self) -> Vec<StoreError> {
        self.runtime.status.tasks.stop();
        std::thread::scope(|s| s.spawn(|| server::finish(&self.state)).join().expect("shutdown thread"))
    }
}
