//! Shared helpers at the bottom of the layers: small pure functions that
//! several layers need and that belong to none of them.

mod clock;
mod rng;
mod simplex;

pub use clock::now_secs;
pub use rng::splitmix64;
pub use simplex::project_simplex;
