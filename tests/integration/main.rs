//! The one integration-test binary: public API only.

mod cli;
mod invariants;
mod learning;
mod service;
mod support;
