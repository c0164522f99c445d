//! The time: one reading of the system clock for the whole crate.

/// Seconds since the Unix epoch, now (0 before the epoch, which no clock
/// here reads).
pub fn now_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
