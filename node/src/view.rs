//! What a node publishes about its membership: [`MembershipView`], and the rule that
//! decides whether the node may serve ([`serving`]).
//!
//! A node **serves** (is Ready, owns actors) only while
//! 1. it is Up in the latest member table it has seen, and
//! 2. its knowledge is fresh: it heard from the store within `isolation_timeout` (directly,
//!    or through a peer that did), **or** it reaches a strict majority of the Up members
//!    (itself counted) including at least one peer.
//!
//! (2) keeps the cluster serving while the API server is down for everybody (peers still
//! answer), and makes a node cut off from both the store and its peers stop serving before
//! the coordinator may down it (see [`crate::timing`]). A lone member has no peer to
//! confirm anything: without the store it stops serving.
//!
//! Serving is granted **until a deadline** ([`serving_until`]): the last store contact or
//! the last majority of answers plus `isolation_timeout`. [`crate::health::Health`] checks
//! the deadline on every `/ready`, so readiness lapses on time even if the membership loop
//! is stuck in a slow call to the API server.

use std::time::{Duration, Instant};

use troupe_contract::{Member, MemberStatus, MemberTable};

use crate::failure_detector::FailureDetector;
use crate::member_key::MemberKey;

/// Where a node is in its life as a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BootstrapState {
    /// Has not yet read the member store.
    Starting,
    /// In the table as Joining, or trying to get in.
    Joining,
    /// Up and serving.
    Up,
    /// Up in its last table, but cut off from the store and a majority: not serving.
    Isolated,
    /// Leaving gracefully.
    Leaving,
    /// Out of the table after a graceful leave.
    Left,
}

impl BootstrapState {
    /// Every state, for the metric.
    pub const ALL: [Self; 6] = [
        Self::Starting,
        Self::Joining,
        Self::Up,
        Self::Isolated,
        Self::Leaving,
        Self::Left,
    ];

    /// Metric label and JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "Starting",
            Self::Joining => "Joining",
            Self::Up => "Up",
            Self::Isolated => "Isolated",
            Self::Leaving => "Leaving",
            Self::Left => "Left",
        }
    }
}

/// A node's view of its membership, published on a `tokio::sync::watch` channel.
#[derive(Clone, Debug, PartialEq)]
pub struct MembershipView {
    /// This node's current incarnation.
    pub me: MemberKey,
    /// The latest member table this node has seen.
    pub table: MemberTable,
    /// This node's status in that table, if it is in it.
    pub status: Option<MemberStatus>,
    /// Whether the node may serve: Up and fresh (see [`serving`]), as of publication.
    /// Draining is separate ([`crate::health::Health`]).
    pub serving: bool,
    /// Until when serving holds without news ([`serving_until`]); use
    /// [`MembershipView::serving_at`] for a decision at a later instant.
    pub serving_until: Option<Instant>,
    /// Whether this node holds the coordinator lease.
    pub coordinator: bool,
    /// The bootstrap state.
    pub state: BootstrapState,
    /// When this node last heard from the store, directly or through a peer.
    pub store_contact: Option<Instant>,
    /// Wall-clock start of membership, in milliseconds since the Unix epoch (for
    /// end-to-end measurements against Kubernetes timestamps on the same host).
    pub started_at_ms: i64,
    /// How long this node took from the start of membership (right after process start)
    /// to its first Up.
    pub up_after: Option<Duration>,
}

impl MembershipView {
    /// The view of a node that has not read anything yet, started at `started_at_ms` on
    /// the wall clock.
    pub fn starting(me: MemberKey, started_at_ms: i64) -> Self {
        Self {
            me,
            table: MemberTable::default(),
            status: None,
            serving: false,
            serving_until: None,
            coordinator: false,
            state: BootstrapState::Starting,
            store_contact: None,
            up_after: None,
            started_at_ms,
        }
    }

    /// Whether the node may serve at `now`: it was serving when published and the
    /// deadline has not passed.
    pub fn serving_at(&self, now: Instant) -> bool {
        self.serving && self.serving_until.is_some_and(|u| now <= u)
    }

    /// Milliseconds since the last store contact at `now`, if any.
    pub fn store_age_ms(&self, now: Instant) -> Option<u64> {
        self.store_contact.map(|t| {
            u64::try_from(now.saturating_duration_since(t).as_millis()).unwrap_or(u64::MAX)
        })
    }
}

/// Until when `me` may serve: `None` if it is not Up in `table`; otherwise the later of
/// (last store contact + `within`) and (the moment its current majority of answers goes
/// stale: the answer of the last peer needed for a strict majority + `within`).
pub fn serving_until(
    table: &MemberTable,
    me: &MemberKey,
    store_contact: Option<Instant>,
    fd: &FailureDetector,
    within: Duration,
) -> Option<Instant> {
    let up: Vec<&Member> = table.up_members().collect();
    if !up.iter().any(|m| me.is(m)) {
        return None;
    }
    let by_store = store_contact.map(|t| t + within);
    // Peers needed besides itself for a strict majority of the Up members.
    let needed = up.len() / 2;
    let by_peers = if needed == 0 {
        None
    } else {
        let mut answers: Vec<Instant> = up
            .iter()
            .filter(|m| !me.is(m))
            .filter_map(|m| fd.last_ok(&MemberKey::of(m)))
            .collect();
        answers.sort_unstable_by(|a, b| b.cmp(a));
        answers.get(needed - 1).map(|t| *t + within)
    };
    by_store.max(by_peers)
}

/// Whether `me` may serve at `now` (see [`serving_until`]).
pub fn serving(
    table: &MemberTable,
    me: &MemberKey,
    store_contact: Option<Instant>,
    fd: &FailureDetector,
    now: Instant,
    within: Duration,
) -> bool {
    serving_until(table, me, store_contact, fd, within).is_some_and(|u| now <= u)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three_up() -> MemberTable {
        let mut t = MemberTable::default();
        for p in ["a", "b", "c"] {
            t.join(p, "i", "10.0.0.1");
            t.transition(p, "i", MemberStatus::Up).ok();
        }
        t
    }

    #[test]
    fn serving_needs_up_and_fresh_knowledge() {
        let t0 = Instant::now();
        let w = Duration::from_secs(2);
        let t = three_up();
        let me = MemberKey::new("a", "i");
        let mut fd = FailureDetector::default();
        fd.track(&t, t0);
        // Fresh store contact.
        assert!(serving(&t, &me, Some(t0), &fd, t0, w));
        // No store, no peers: isolated.
        assert!(!serving(
            &t,
            &me,
            Some(t0),
            &fd,
            t0 + Duration::from_secs(3),
            w
        ));
        // No store, but a majority answers: the API server is down, keep serving.
        fd.record(&MemberKey::new("b", "i"), true, t0 + Duration::from_secs(3));
        assert!(serving(
            &t,
            &me,
            Some(t0),
            &fd,
            t0 + Duration::from_secs(3),
            w
        ));
        // Not in the table, or not Up: never.
        let other = MemberKey::new("a", "other");
        assert!(!serving(&t, &other, Some(t0), &fd, t0, w));
    }

    #[test]
    fn serving_lapses_at_a_deadline_and_a_lone_member_needs_the_store() {
        let t0 = Instant::now();
        let w = Duration::from_secs(2);
        let t = three_up();
        let me = MemberKey::new("a", "i");
        let mut fd = FailureDetector::default();
        fd.track(&t, t0);
        fd.record(&MemberKey::new("b", "i"), true, t0 + Duration::from_secs(5));
        fd.record(&MemberKey::new("c", "i"), true, t0 + Duration::from_secs(4));
        // One peer is enough for 2 of 3; the freshest answer counts.
        assert_eq!(
            serving_until(&t, &me, Some(t0), &fd, w),
            Some(t0 + Duration::from_secs(7))
        );
        let mut alone = MemberTable::default();
        alone.join("a", "i", "10.0.0.1");
        alone.transition("a", "i", MemberStatus::Up).ok();
        assert_eq!(serving_until(&alone, &me, Some(t0), &fd, w), Some(t0 + w));
        assert_eq!(serving_until(&alone, &me, None, &fd, w), None);
    }

    #[test]
    fn joining_never_serves() {
        let t0 = Instant::now();
        let mut t = MemberTable::default();
        t.join("a", "i", "10.0.0.1");
        let fd = FailureDetector::default();
        assert!(!serving(
            &t,
            &MemberKey::new("a", "i"),
            Some(t0),
            &fd,
            t0,
            Duration::from_secs(2)
        ));
    }
}
