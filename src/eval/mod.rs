//! Evaluation: synthetic environments to learn against, and the runs that
//! compare the agent with fixed baselines on the same stream.
//!
//! `simulate` + `synthetic`: a toy reward environment (`paramopt simulate`).
//! `market`, `csv`, `real`, `trading`, `stream`, `baselines`, `peers`,
//! `metrics`, `backtest`: `paramopt backtest`, the modules' trading rules on
//! the shipped real data, the synthetic market or a CSV, against baselines
//! and the Python peers.

pub mod backtest;
pub mod baselines;
pub mod csv;
pub mod market;
pub mod metrics;
pub mod peers;
pub mod real;
pub mod seeds;
pub mod simulate;
pub mod stream;
pub mod synthetic;
pub mod trading;
