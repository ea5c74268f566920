//! What the coordinator changes in the member table, decided without I/O.
//!
//! ```text
//!   MemberTable ─┐
//!   PodSet ──────┼──► plan() ──► [Change] ──► apply() ──► new MemberTable ──► CAS write
//!   FailureDetector┘
//! ```
//!
//! Rules, per member other than the coordinator itself:
//! * **Promote** a Joining member once it answered a probe — only while the coordinator
//!   reaches a majority of the Up members (any change of the Up set needs a majority, so
//!   that a minority-side coordinator never changes placement behind the majority's back).
//! * **Down (pod gone)** a member whose pod the watch no longer shows (deleted or finished)
//!   and which does not answer: the API server says it is dead; no majority needed.
//! * **Down (unreachable)** a member silent for `detect_timeout` and `min_failures` probes
//!   in a row, only with a majority. The silent node itself stopped serving after
//!   `isolation_timeout` (see [`crate::timing`]), before this can happen.
//! * **Remove** a Down member after `down_linger`, so every follower saw it Down.
//!
//! Members whose pod is gone count neither for nor against the majority, so that a
//! cluster whose pods were all force-deleted recovers. The coordinator promotes itself
//! when Joining (with a majority); it never downs itself.

use std::time::Instant;

use troupe_contract::{Member, MemberStatus, MemberTable};

use crate::discovery::PodSet;
use crate::failure_detector::{FailureDetector, quorum};
use crate::member_key::MemberKey;
use crate::timing::Timing;

/// Why the coordinator downed a member (the `reason` label of the failures metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DownReason {
    /// Silent for the detection timeout.
    Unreachable,
    /// Its pod is gone from the pod watch and it does not answer.
    PodGone,
}

impl DownReason {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::PodGone => "pod_gone",
        }
    }
}

/// One change the coordinator wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Joining → Up.
    Promote(MemberKey),
    /// → Down.
    Down(MemberKey, DownReason),
    /// Out of the table.
    Remove(MemberKey),
}

/// What [`plan`] looks at.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// The latest table.
    pub table: &'a MemberTable,
    /// The coordinator.
    pub me: &'a MemberKey,
    /// The coordinator's probe history.
    pub fd: &'a FailureDetector,
    /// The pod watch.
    pub pods: &'a PodSet,
    /// Now.
    pub now: Instant,
    /// Timeouts.
    pub timing: &'a Timing,
}

/// Whether the pod of `m` is gone by the pod watch, for a member this node has tracked
/// long enough that the watch cannot merely be lagging behind its join.
pub fn pod_gone(
    m: &Member,
    pods: &PodSet,
    fd: &FailureDetector,
    now: Instant,
    timing: &Timing,
) -> bool {
    pods.is_gone(&m.pod) && fd.tracked_for(&MemberKey::of(m), now) >= timing.discovery_grace
}

/// `table` without the members whose pod is gone: the API server says they are dead, so
/// they count neither for nor against a majority.
pub fn live_members(
    table: &MemberTable,
    pods: &PodSet,
    fd: &FailureDetector,
    now: Instant,
    timing: &Timing,
) -> MemberTable {
    MemberTable {
        cluster: table.cluster.clone(),
        first_epoch: table.first_epoch,
        epoch: table.epoch,
        version: table.version,
        members: table
            .members
            .iter()
            .filter(|m| !pod_gone(m, pods, fd, now, timing))
            .cloned()
            .collect(),
    }
}

/// The changes the coordinator should make now, in table order.
pub fn plan(i: Inputs<'_>) -> Vec<Change> {
    let t = i.timing;
    let live = live_members(i.table, i.pods, i.fd, i.now, t);
    let majority = quorum(&live, i.me, i.fd, i.now, t.isolation_timeout);
    let mut changes = Vec::new();
    for m in &i.table.members {
        let key = MemberKey::of(m);
        if i.me.is(m) {
            if m.status == MemberStatus::Joining && majority {
                changes.push(Change::Promote(key));
            }
            continue;
        }
        if m.status == MemberStatus::Down {
            if i.fd.status_for(&key, i.now) >= t.down_linger {
                changes.push(Change::Remove(key));
            }
            continue;
        }
        let answering =
            i.fd.failures_in_a_row(&key) == 0 && i.fd.reachable(&key, i.now, t.probe_interval * 2);
        let gone = pod_gone(m, i.pods, i.fd, i.now, t);
        if gone && !answering {
            changes.push(Change::Down(key, DownReason::PodGone));
        } else if majority
            && i.fd.silent_for(&key, i.now) >= t.detect_timeout
            && i.fd.failures_in_a_row(&key) >= t.min_failures
        {
            changes.push(Change::Down(key, DownReason::Unreachable));
        } else if majority
            && m.status == MemberStatus::Joining
            && i.fd.reachable(&key, i.now, t.isolation_timeout)
        {
            changes.push(Change::Promote(key));
        }
    }
    changes
}

/// Applies `changes` to `table`; returns the changes that took effect (a change may no
/// longer apply if the table moved on).
pub fn apply(table: &mut MemberTable, changes: &[Change]) -> Vec<Change> {
    let mut applied = Vec::new();
    for c in changes {
        let done = match c {
            Change::Promote(k) => table
                .transition(&k.pod, &k.incarnation, MemberStatus::Up)
                .unwrap_or(false),
            Change::Down(k, _) => table
                .transition(&k.pod, &k.incarnation, MemberStatus::Down)
                .unwrap_or(false),
            Change::Remove(k) => table.remove(&k.pod, &k.incarnation),
        };
        if done {
            applied.push(c.clone());
        }
    }
    applied
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct World {
        table: MemberTable,
        fd: FailureDetector,
        pods: PodSet,
        t0: Instant,
        timing: Timing,
    }

    impl World {
        fn new(members: &[(&str, MemberStatus)]) -> Self {
            let mut table = MemberTable::default();
            for (pod, status) in members {
                table.join(pod, "i", "10.0.0.1");
                if *status != MemberStatus::Joining {
                    table.transition(pod, "i", MemberStatus::Up).ok();
                }
                if *status == MemberStatus::Down {
                    table.transition(pod, "i", MemberStatus::Down).ok();
                }
            }
            let pods = PodSet::from_list(members.iter().map(|(p, _)| (*p, "10.0.0.1")));
            let t0 = Instant::now();
            let mut fd = FailureDetector::default();
            fd.track(&table, t0);
            Self {
                table,
                fd,
                pods,
                t0,
                timing: Timing::default(),
            }
        }

        fn at(&self, secs: f64) -> Instant {
            self.t0 + Duration::from_secs_f64(secs)
        }

        fn answer(&mut self, pod: &str, ok: bool, secs: f64) {
            let at = self.at(secs);
            self.fd.record(&MemberKey::new(pod, "i"), ok, at);
        }

        fn plan(&self, secs: f64) -> Vec<Change> {
            plan(Inputs {
                table: &self.table,
                me: &MemberKey::new("a", "i"),
                fd: &self.fd,
                pods: &self.pods,
                now: self.at(secs),
                timing: &self.timing,
            })
        }
    }

    fn key(pod: &str) -> MemberKey {
        MemberKey::new(pod, "i")
    }

    #[test]
    fn joiners_are_promoted_once_they_answer() {
        let mut w = World::new(&[("a", MemberStatus::Up), ("b", MemberStatus::Joining)]);
        assert_eq!(w.plan(0.1), vec![]);
        w.answer("b", true, 0.1);
        assert_eq!(w.plan(0.1), vec![Change::Promote(key("b"))]);
    }

    #[test]
    fn a_joining_coordinator_promotes_itself() {
        let w = World::new(&[("a", MemberStatus::Joining)]);
        assert_eq!(w.plan(0.0), vec![Change::Promote(key("a"))]);
    }

    #[test]
    fn a_silent_member_is_downed_after_the_timeout_with_a_majority() {
        let mut w = World::new(&[
            ("a", MemberStatus::Up),
            ("b", MemberStatus::Up),
            ("c", MemberStatus::Up),
        ]);
        w.answer("b", true, 0.0);
        w.answer("c", true, 0.0);
        for s in [0.5, 1.0, 1.5, 2.0, 2.5, 3.0] {
            w.answer("b", true, s);
            w.answer("c", false, s);
        }
        assert_eq!(w.plan(2.9), vec![]);
        assert_eq!(
            w.plan(3.0),
            vec![Change::Down(key("c"), DownReason::Unreachable)]
        );
    }

    #[test]
    fn a_minority_coordinator_downs_nobody_and_promotes_nobody() {
        let mut w = World::new(&[
            ("a", MemberStatus::Up),
            ("b", MemberStatus::Up),
            ("c", MemberStatus::Up),
            ("d", MemberStatus::Joining),
        ]);
        w.answer("d", true, 4.0);
        for s in [1.0, 2.0, 3.0, 4.0] {
            w.answer("b", false, s);
            w.answer("c", false, s);
        }
        assert_eq!(w.plan(4.0), vec![]);
    }

    #[test]
    fn a_deleted_pod_is_downed_as_soon_as_it_stops_answering_even_without_majority() {
        let mut w = World::new(&[
            ("a", MemberStatus::Up),
            ("b", MemberStatus::Up),
            ("c", MemberStatus::Up),
        ]);
        w.pods = PodSet::from_list([("a", "10.0.0.1")]);
        w.answer("b", true, 5.0);
        // Still answering: its container is still stopping.
        assert_eq!(
            w.plan(5.0),
            vec![Change::Down(key("c"), DownReason::PodGone)]
        );
        w.answer("b", false, 5.5);
        assert_eq!(
            w.plan(5.5),
            vec![
                Change::Down(key("b"), DownReason::PodGone),
                Change::Down(key("c"), DownReason::PodGone)
            ]
        );
    }

    #[test]
    fn members_whose_pods_are_gone_do_not_count_for_the_majority() {
        let mut w = World::new(&[
            ("a", MemberStatus::Joining),
            ("b", MemberStatus::Up),
            ("c", MemberStatus::Up),
        ]);
        w.pods = PodSet::from_list([("a", "10.0.0.1")]);
        w.answer("b", false, 5.0);
        w.answer("c", false, 5.0);
        assert_eq!(
            w.plan(5.0),
            vec![
                Change::Promote(key("a")),
                Change::Down(key("b"), DownReason::PodGone),
                Change::Down(key("c"), DownReason::PodGone)
            ]
        );
    }

    #[test]
    fn a_new_member_is_not_downed_because_the_pod_watch_lags() {
        let mut w = World::new(&[("a", MemberStatus::Up), ("b", MemberStatus::Joining)]);
        w.pods = PodSet::from_list([("a", "10.0.0.1")]);
        w.answer("b", false, 0.5);
        assert_eq!(w.plan(0.5), vec![]);
        // Unsynced watch: nothing is gone.
        w.pods.synced = false;
        assert_eq!(w.plan(6.0), vec![]);
    }

    #[test]
    fn a_terminating_pod_is_left_to_leave() {
        let mut w = World::new(&[("a", MemberStatus::Up), ("b", MemberStatus::Leaving)]);
        if let Some(p) = w.pods.pods.get_mut("b") {
            p.terminating = true;
        }
        w.answer("b", false, 5.0);
        assert_eq!(w.plan(5.0), vec![]);
    }

    #[test]
    fn down_members_are_removed_after_the_linger() {
        let w = World::new(&[("a", MemberStatus::Up), ("b", MemberStatus::Down)]);
        assert_eq!(w.plan(0.5), vec![]);
        assert_eq!(w.plan(1.0), vec![Change::Remove(key("b"))]);
    }

    #[test]
    fn apply_reports_what_took_effect() {
        let mut w = World::new(&[("a", MemberStatus::Up), ("b", MemberStatus::Joining)]);
        let changes = vec![
            Change::Promote(key("b")),
            Change::Promote(key("zz")),
            Change::Remove(key("a")),
        ];
        let v = w.table.version;
        let applied = apply(&mut w.table, &changes);
        assert_eq!(
            applied,
            vec![Change::Promote(key("b")), Change::Remove(key("a"))]
        );
        assert_eq!(w.table.version, v + 2);
    }
}
