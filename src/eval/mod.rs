//! Evaluation: synthetic environments to learn against, and the runs that
//! compare the agent with fixed baselines on the same stream.

pub mod simulate;
pub mod synthetic;
