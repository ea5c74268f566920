//! How the operator's watches list and retry, so that they resume within seconds of an
//! API-server outage instead of minutes.
//!
//! Two rules, both learnt from a 60 s outage of a real API server (kill and restart):
//!
//! * **Lists are quorum reads** ([`list_config`]). A list with `resourceVersion=0` ("any",
//!   served from the watch cache) after an API-server restart can return a resourceVersion
//!   older than the new watch cache's window; the watch that follows answers
//!   `410 too old resource version`, the watcher lists from the cache again, gets the same
//!   stale version, and loops — for as long as no object of that kind changes. Measured
//!   before this rule: a `kubectl scale ac` made after the API server came back was applied
//!   8.5 minutes later. A quorum list returns the current resourceVersion.
//! * **Retries stay short** ([`WatchBackoff`]). kube-runtime's default backoff grows to
//!   30 s (60 s with its jitter) and resets only after 120 s without an error, so a watch
//!   that failed through an outage waits up to a minute after the API server is back. Ours
//!   grows from 250 ms to [`MAX_DELAY`] and resets on the first event that arrives.
//!
//! [`WatchHealth`] remembers, per watched kind, since when its watch has been failing, so
//! that `/readyz` can say when the operator's view of the cluster has been dead for long.
//!
//! Pure: no I/O; the clock is passed in.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::runtime::utils::Backoff;
use kube::runtime::watcher;

/// First retry delay after a watch error.
pub const MIN_DELAY: Duration = Duration::from_millis(250);
/// Longest retry delay (before jitter), reached after a few consecutive errors.
pub const MAX_DELAY: Duration = Duration::from_secs(2);

/// `config` with quorum lists (see the module docs).
pub fn list_config(config: watcher::Config) -> watcher::Config {
    watcher::Config {
        list_semantic: watcher::ListSemantic::MostRecent,
        ..config
    }
}

/// Exponential backoff from [`MIN_DELAY`] to [`MAX_DELAY`], with up to +25 % jitter so
/// that many watches do not retry in lockstep. Never gives up; reset by the stream on the
/// first successful event.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    attempt: u32,
    /// Spreads the jitter differently per watch.
    salt: u64,
}

impl WatchBackoff {
    /// A backoff whose jitter is spread by `salt` (e.g. a hash of the watched kind).
    pub fn new(salt: u64) -> Self {
        Self { attempt: 0, salt }
    }

    fn delay(&self) -> Duration {
        let base = MIN_DELAY
            .saturating_mul(2u32.saturating_pow(self.attempt.min(16)))
            .min(MAX_DELAY);
        // splitmix64 of (salt, attempt): a deterministic spread in [0, 25 %).
        let mut z = self.salt ^ u64::from(self.attempt).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let permille = u32::try_from(z % 250).unwrap_or(0);
        base + base * permille / 1000
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let d = self.delay();
        self.attempt = self.attempt.saturating_add(1);
        Some(d)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// How long a watch may fail before `/readyz` reports the operator not ready.
pub const DEAD_AFTER: Duration = Duration::from_secs(30);

/// A failing watch retries at least this often (its backoff caps at [`MAX_DELAY`] + 25 %),
/// so a watch with no error for this long has recovered even if no object changed since.
pub const QUIET_AFTER: Duration = Duration::from_secs(12);

/// Per watched kind: since when its watch has been failing, and its last error (`None`:
/// healthy). Cheap to clone; every clone is the same record.
#[derive(Debug, Clone, Default)]
pub struct WatchHealth {
    failing: Arc<Mutex<BTreeMap<&'static str, Option<Failing>>>>,
}

/// `(failing since, last error)` of one watch.
type Failing = (Instant, Instant);

impl WatchHealth {
    /// Records one outcome of the watch of `kind` (an event, or an error) at `now`.
    pub fn record(&self, kind: &'static str, ok: bool, now: Instant) {
        let mut map = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        let state = map.entry(kind).or_insert(None);
        *state = match (ok, *state) {
            (true, _) => None,
            (false, None) => Some((now, now)),
            (false, Some((since, _))) => Some((since, now)),
        };
    }

    /// The watches that have been failing without a break for at least `limit` at `now`,
    /// with for how long. A watch whose last error is older than [`QUIET_AFTER`] counts as
    /// recovered: a re-established watch yields nothing until an object changes.
    pub fn dead(&self, now: Instant, limit: Duration) -> Vec<(&'static str, Duration)> {
        self.failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|(kind, state)| {
                let (since, last) = (*state)?;
                let failing = now.saturating_duration_since(since);
                let still = now.saturating_duration_since(last) < QUIET_AFTER;
                (still && failing >= limit).then_some((*kind, failing))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_is_dead_only_after_failing_for_long_and_heals_on_one_event() {
        let h = WatchHealth::default();
        let t0 = Instant::now();
        h.record("Deployment", true, t0);
        h.record("Deployment", false, t0 + Duration::from_secs(1));
        h.record("Service", false, t0 + Duration::from_secs(25));
        for s in [20, 30, 38] {
            h.record("Deployment", false, t0 + Duration::from_secs(s));
        }
        assert!(h.dead(t0 + Duration::from_secs(30), DEAD_AFTER).is_empty());
        let dead = h.dead(t0 + Duration::from_secs(40), DEAD_AFTER);
        assert_eq!(dead, vec![("Deployment", Duration::from_secs(39))]);
        h.record("Deployment", true, t0 + Duration::from_secs(41));
        assert!(h.dead(t0 + Duration::from_secs(41), DEAD_AFTER).is_empty());
    }

    #[test]
    fn a_watch_that_stopped_failing_is_healthy_even_without_events() {
        let h = WatchHealth::default();
        let t0 = Instant::now();
        for s in 0..40 {
            h.record("Lease", false, t0 + Duration::from_secs(s));
        }
        assert_eq!(h.dead(t0 + Duration::from_secs(40), DEAD_AFTER).len(), 1);
        // Re-established from its last resourceVersion: no error, and no event either.
        assert!(
            h.dead(t0 + Duration::from_secs(39) + QUIET_AFTER, DEAD_AFTER)
                .is_empty()
        );
    }

    #[test]
    fn lists_are_quorum_reads_whatever_the_base_config() {
        let any = watcher::Config::default().any_semantic().labels("a=b");
        let c = list_config(any);
        assert_eq!(c.list_semantic, watcher::ListSemantic::MostRecent);
        assert_eq!(c.label_selector.as_deref(), Some("a=b"));
    }

    #[test]
    fn retries_grow_to_a_few_seconds_never_stop_and_reset() {
        let mut b = WatchBackoff::new(7);
        let first: Vec<Duration> = b.by_ref().take(40).collect();
        assert_eq!(first.len(), 40, "a watch is retried forever");
        assert!(first[0] >= MIN_DELAY && first[0] < MIN_DELAY * 2);
        assert!(first.windows(2).take(3).all(|w| w[1] > w[0]), "{first:?}");
        let cap = MAX_DELAY + MAX_DELAY / 4;
        assert!(first.iter().all(|d| *d <= cap), "{first:?}");
        assert!(first[39] >= MAX_DELAY);
        b.reset();
        assert!(b.next().is_some_and(|d| d < MIN_DELAY * 2));
    }

    #[test]
    fn jitter_differs_between_watches() {
        let a: Vec<Duration> = WatchBackoff::new(1).take(8).collect();
        let b: Vec<Duration> = WatchBackoff::new(2).take(8).collect();
        assert_ne!(a, b);
    }
}
