//! The runtime's monotonic clock: tokio's, so that a runtime with paused time (the
//! deterministic simulation, tests) drives every deadline, grace period and timeout the
//! runtime measures; returned as a `std::time::Instant` so that the public types stay
//! plain. Without paused time it reads the same clock as `std::time::Instant::now()`.

use std::time::{Duration, Instant};

/// Now, on tokio's clock.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Time since `t`, on tokio's clock (zero if `t` is later).
pub fn since(t: Instant) -> Duration {
    now().saturating_duration_since(t)
}
