//! Supervision policy: how long to wait before restarting an actor whose handler panicked.
//!
//! Exponential backoff from `min_backoff`, doubling per consecutive failure, capped at
//! `max_backoff`; a quiet period of `reset_after` forgets earlier failures. Pure: the caller
//! passes the clock. Catching the panic and restarting is the activation's job.

use std::time::{Duration, Instant};

use crate::config::SupervisionConfig;

/// The restart state of one actor.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: SupervisionConfig,
    failures: u32,
    last_failure: Option<Instant>,
}

impl Backoff {
    /// No failure yet.
    pub fn new(config: SupervisionConfig) -> Self {
        Self {
            config,
            failures: 0,
            last_failure: None,
        }
    }

    /// Records a failure at `now`; returns how long to wait before restarting.
    pub fn on_failure(&mut self, now: Instant) -> Duration {
        if self
            .last_failure
            .is_some_and(|t| now.saturating_duration_since(t) >= self.config.reset_after)
        {
            self.failures = 0;
        }
        self.last_failure = Some(now);
        let delay = self
            .config
            .min_backoff
            .saturating_mul(1u32 << self.failures.min(20));
        self.failures = self.failures.saturating_add(1);
        delay.min(self.config.max_backoff)
    }

    /// Consecutive failures counted so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let c = SupervisionConfig {
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            reset_after: Duration::from_secs(1),
        };
        let mut b = Backoff::new(c);
        let t = Instant::now();
        let delays: Vec<_> = (0..5)
            .map(|i| b.on_failure(t + Duration::from_millis(i)))
            .collect();
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![10, 20, 40, 50, 50]);
        assert_eq!(
            b.on_failure(t + Duration::from_secs(5)),
            Duration::from_millis(10)
        );
    }
}
