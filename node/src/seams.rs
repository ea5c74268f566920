//! The determinism seams of membership: where its randomness and its clocks come from.
//!
//! Everything the membership code draws from outside its inputs goes through here, so that
//! a simulation can run the production driver under one seeded scheduler and replay it
//! exactly:
//!
//! * **ids** — a new incarnation for every start and every rejoin, and the random id of a
//!   cluster at formation: [`Sources::new_id`];
//! * **the wall clock** written into the Lease (`renew_ms`) and into
//!   [`crate::MembershipView::started_at_ms`]: [`Sources::wall_ms`];
//! * **the monotonic clock**: [`now`], which is tokio's clock (so a runtime with paused
//!   time drives every timeout, deadline and freshness decision), returned as a
//!   `std::time::Instant` so that the public types stay plain.
//!
//! [`Sources::default`] is real randomness and the system clock (production);
//! [`Sources::seeded`] is a deterministic generator and a wall clock derived from tokio's
//! clock (simulation). Pass them to [`crate::Node::start_with`].

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Makes a fresh random id (16 hex digits by default).
pub type IdSource = Arc<dyn Fn() -> String + Send + Sync>;

/// Reads the wall clock, in milliseconds since the Unix epoch.
pub type WallClock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Where one node's ids and wall-clock readings come from.
#[derive(Clone)]
pub struct Sources {
    /// A new incarnation or cluster id.
    pub new_id: IdSource,
    /// The wall clock written into the Lease.
    pub wall_ms: WallClock,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

impl Default for Sources {
    /// Real randomness and the system clock.
    fn default() -> Self {
        Self {
            new_id: Arc::new(random_id),
            wall_ms: Arc::new(system_ms),
        }
    }
}

impl Sources {
    /// Deterministic sources for a simulation: ids from a generator seeded with `seed`
    /// (share one `Sources` between the nodes of a run, or give each node its own seed, so
    /// that no two nodes draw the same ids), and a wall clock that starts at `base_ms` and
    /// advances with tokio's clock ([`now`]), so that a replay writes identical records.
    pub fn seeded(seed: u64, base_ms: i64) -> Self {
        let counter = Arc::new(AtomicU64::new(seed));
        let origin = now();
        Self {
            new_id: Arc::new(move || {
                let n = counter.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::SeqCst);
                format!("{:016x}", splitmix64(n))
            }),
            wall_ms: Arc::new(move || {
                let since = now().saturating_duration_since(origin).as_millis();
                base_ms.saturating_add(i64::try_from(since).unwrap_or(i64::MAX))
            }),
        }
    }

    /// A new id from this source.
    pub fn id(&self) -> String {
        (self.new_id)()
    }

    /// The wall clock of this source.
    pub fn wall(&self) -> i64 {
        (self.wall_ms)()
    }
}

/// The monotonic clock of membership: tokio's clock as a `std::time::Instant`. Under a
/// runtime with paused time it is virtual; otherwise it is `Instant::now()`.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// A fresh random id (16 hex digits) from the process's hash seed and the system clock.
pub fn random_id() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// The system clock in milliseconds since the Unix epoch.
pub fn system_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_ids_replay_and_differ_from_each_other() {
        let a = Sources::seeded(7, 0);
        let b = Sources::seeded(7, 0);
        let first: Vec<String> = (0..3).map(|_| a.id()).collect();
        let again: Vec<String> = (0..3).map(|_| b.id()).collect();
        assert_eq!(first, again);
        assert_ne!(first[0], first[1]);
        assert_ne!(Sources::seeded(8, 0).id(), first[0]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_seeded_wall_clock_follows_tokio_time() {
        let s = Sources::seeded(1, 1_000);
        assert_eq!(s.wall(), 1_000);
        tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
        assert_eq!(s.wall(), 2_500);
    }
}
