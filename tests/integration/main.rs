//! The one integration-test binary: public API only.

mod cli;
mod conservative;
mod counterfactual;
mod dashboard;
mod demo;
mod e2e;
mod eval;
mod invariants;
mod layering;
mod learning;
mod outage;
mod policy;
mod real_data;
mod rollout;
mod runtime;
mod service;
mod store;
mod support;
