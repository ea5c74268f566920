//! Who coordinates: the lease half of the [`LeaseRecord`], decided without I/O.
//!
//! The holder renews by writing a new `renew_ms` every [`crate::Timing::renew_interval`].
//! Followers never compare that timestamp with their own clock (clocks of pods differ);
//! like client-go's leader election they remember **when they saw it change** on their
//! own monotonic clock, and consider the lease expired once it has not changed for the
//! lease duration. Taking over is a compare-and-swap like every other write, so at most
//! one node ever succeeds.
//!
//! Who may take over an expired lease ([`decide`]): an Up member that reaches a majority
//! of the Up members, or anybody when the table has no Up member; anybody else only after
//! the lease has been expired for a second lease duration (so that a cluster whose members
//! were all killed recovers, while a cut-off node does not grab the lease first).

use std::time::{Duration, Instant};

use crate::store::LeaseRecord;

/// The lease identity of one node incarnation.
pub fn identity(pod: &str, incarnation: &str) -> String {
    format!("{pod}_{incarnation}")
}

/// What this node saw of the lease, on its own clock.
#[derive(Clone, Debug)]
pub struct LeaseObserver {
    seen: Option<(Option<String>, i64)>,
    changed_at: Instant,
}

impl LeaseObserver {
    /// A fresh observer; the lease counts as just changed at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            seen: None,
            changed_at: now,
        }
    }

    /// Records the lease half of `record` as seen at `now`.
    pub fn observe(&mut self, record: &LeaseRecord, now: Instant) {
        let key = (record.holder.clone(), record.renew_ms);
        if self.seen.as_ref() != Some(&key) {
            self.seen = Some(key);
            self.changed_at = now;
        }
    }

    /// How long the lease has been expired at `now`, or `None` while it is valid.
    /// A lease without holder counts as expired since it was seen.
    pub fn expired_for(&self, record: &LeaseRecord, now: Instant) -> Option<Duration> {
        let since = now.saturating_duration_since(self.changed_at);
        if record.holder.is_none() {
            return Some(since);
        }
        let lease = lease_duration(record);
        since.checked_sub(lease)
    }
}

/// The lease duration a record asks for (at least one second).
pub fn lease_duration(record: &LeaseRecord) -> Duration {
    Duration::from_secs(u64::try_from(record.lease_duration_s.max(1)).unwrap_or(1))
}

/// What this node may do about the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The store names this node as holder: it coordinates (every write still a CAS).
    Coordinator,
    /// The lease is expired and this node may take it over.
    Candidate,
    /// Somebody else coordinates, or this node must wait.
    Follower,
}

/// Facts about this node that decide whether it may take over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Eligibility {
    /// This node is Up and reaches a majority of the Up members.
    pub up_with_quorum: bool,
    /// The table has no Up member whose pod still exists (a new or wholly dead cluster).
    pub table_has_no_up: bool,
}

/// Decides the role of `me` for `record` whose lease has been expired for `expired_for`.
pub fn decide(
    record: &LeaseRecord,
    me: &str,
    expired_for: Option<Duration>,
    eligibility: Eligibility,
) -> Role {
    if record.holder.as_deref() == Some(me) {
        return Role::Coordinator;
    }
    let Some(expired_for) = expired_for else {
        return Role::Follower;
    };
    let late = record.holder.is_some() && expired_for >= lease_duration(record);
    if eligibility.up_with_quorum || eligibility.table_has_no_up || late {
        Role::Candidate
    } else {
        Role::Follower
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: Option<&str>, renew_ms: i64) -> LeaseRecord {
        LeaseRecord {
            holder: holder.map(str::to_owned),
            renew_ms,
            lease_duration_s: 3,
            table: Default::default(),
        }
    }

    const NOT_ELIGIBLE: Eligibility = Eligibility {
        up_with_quorum: false,
        table_has_no_up: false,
    };

    #[test]
    fn expiry_is_measured_on_the_local_clock() {
        let t0 = Instant::now();
        let mut o = LeaseObserver::new(t0);
        let r = record(Some("a_1"), 1_000);
        o.observe(&r, t0);
        assert_eq!(o.expired_for(&r, t0 + Duration::from_secs(2)), None);
        assert_eq!(
            o.expired_for(&r, t0 + Duration::from_secs(4)),
            Some(Duration::from_secs(1))
        );
        // A renewal (any change of renew_ms, whatever its value) restarts the clock.
        let renewed = record(Some("a_1"), -5);
        o.observe(&renewed, t0 + Duration::from_secs(4));
        assert_eq!(o.expired_for(&renewed, t0 + Duration::from_secs(5)), None);
    }

    #[test]
    fn a_lease_without_holder_is_free() {
        let t0 = Instant::now();
        let mut o = LeaseObserver::new(t0);
        let r = record(None, 0);
        o.observe(&r, t0);
        assert_eq!(o.expired_for(&r, t0), Some(Duration::ZERO));
        assert_eq!(
            decide(&r, "b_1", o.expired_for(&r, t0), NOT_ELIGIBLE),
            Role::Follower
        );
        let eligible = Eligibility {
            table_has_no_up: true,
            ..NOT_ELIGIBLE
        };
        assert_eq!(
            decide(&r, "b_1", o.expired_for(&r, t0), eligible),
            Role::Candidate
        );
    }

    #[test]
    fn roles() {
        let r = record(Some("a_1"), 1);
        assert_eq!(decide(&r, "a_1", None, NOT_ELIGIBLE), Role::Coordinator);
        assert_eq!(decide(&r, "b_1", None, NOT_ELIGIBLE), Role::Follower);
        let quorum = Eligibility {
            up_with_quorum: true,
            ..NOT_ELIGIBLE
        };
        assert_eq!(decide(&r, "b_1", None, quorum), Role::Follower);
        assert_eq!(
            decide(&r, "b_1", Some(Duration::ZERO), quorum),
            Role::Candidate
        );
        // A node without quorum waits a second lease duration.
        assert_eq!(
            decide(&r, "b_1", Some(Duration::from_secs(1)), NOT_ELIGIBLE),
            Role::Follower
        );
        assert_eq!(
            decide(&r, "b_1", Some(Duration::from_secs(3)), NOT_ELIGIBLE),
            Role::Candidate
        );
    }
}
