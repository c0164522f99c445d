//! Evaluation: synthetic environments to learn against, and the runs that
//! compare the agent with fixed baselines on the same stream.
//!
//! `simulate` + `synthetic`: a toy reward environment (`paramopt simulate`).
//! `market`, `csv`, `trading`, `baselines`, `backtest`: `paramopt backtest`,
//! the modules' trading rules on a synthetic or CSV market against baselines.
//! `ope`: off-policy estimates of other policies from logged decisions.
//! `effectiveness`: per-parameter-value performance rows.
//! `ab`: the verdicts of A/B tests and of the automatic rollback watch.

pub mod ab;
pub mod backtest;
pub mod baselines;
pub mod csv;
pub mod effectiveness;
pub mod market;
pub mod ope;
pub mod simulate;
pub mod synthetic;
pub mod trading;
