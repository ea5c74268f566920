//! What a node knows about the reachability of the other members, from its own probes.
//!
//! Pure state: the membership loop feeds it probe results and the current table; the
//! coordinator asks it who has been silent too long, and every node asks it whether it
//! still reaches a majority ([`quorum`]). Time is passed in, never read.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use troupe_contract::{Member, MemberStatus, MemberTable};

use crate::member_key::MemberKey;

#[derive(Clone, Debug)]
struct Entry {
    first_seen: Instant,
    status: MemberStatus,
    status_since: Instant,
    last_ok: Option<Instant>,
    failures_in_a_row: u32,
}

/// Probe history of every member of the current table.
#[derive(Clone, Debug, Default)]
pub struct FailureDetector {
    entries: HashMap<MemberKey, Entry>,
}

impl FailureDetector {
    /// Starts tracking the members of `table` that are new, forgets those that left it,
    /// and notes status changes.
    pub fn track(&mut self, table: &MemberTable, now: Instant) {
        self.entries
            .retain(|k, _| table.members.iter().any(|m| k.is(m)));
        for m in &table.members {
            let e = self.entries.entry(MemberKey::of(m)).or_insert(Entry {
                first_seen: now,
                status: m.status,
                status_since: now,
                last_ok: None,
                failures_in_a_row: 0,
            });
            if e.status != m.status {
                e.status = m.status;
                e.status_since = now;
            }
        }
    }

    /// Records one probe result.
    pub fn record(&mut self, key: &MemberKey, ok: bool, now: Instant) {
        if let Some(e) = self.entries.get_mut(key) {
            if ok {
                e.last_ok = Some(now);
                e.failures_in_a_row = 0;
            } else {
                e.failures_in_a_row = e.failures_in_a_row.saturating_add(1);
            }
        }
    }

    /// Whether `key` answered at least once since it was tracked.
    pub fn ever_answered(&self, key: &MemberKey) -> bool {
        self.entries.get(key).is_some_and(|e| e.last_ok.is_some())
    }

    /// When `key` last answered, if ever.
    pub fn last_ok(&self, key: &MemberKey) -> Option<Instant> {
        self.entries.get(key).and_then(|e| e.last_ok)
    }

    /// Whether `key` answered within `within` before `now`.
    pub fn reachable(&self, key: &MemberKey, now: Instant, within: Duration) -> bool {
        self.entries
            .get(key)
            .and_then(|e| e.last_ok)
            .is_some_and(|t| now.saturating_duration_since(t) <= within)
    }

    /// How long `key` has been silent: since its last answer, or since it was first
    /// tracked if it never answered.
    pub fn silent_for(&self, key: &MemberKey, now: Instant) -> Duration {
        self.entries
            .get(key)
            .map(|e| now.saturating_duration_since(e.last_ok.unwrap_or(e.first_seen)))
            .unwrap_or_default()
    }

    /// Failed probes in a row.
    pub fn failures_in_a_row(&self, key: &MemberKey) -> u32 {
        self.entries.get(key).map_or(0, |e| e.failures_in_a_row)
    }

    /// How long this node has tracked `key`.
    pub fn tracked_for(&self, key: &MemberKey, now: Instant) -> Duration {
        self.entries
            .get(key)
            .map(|e| now.saturating_duration_since(e.first_seen))
            .unwrap_or_default()
    }

    /// How long `key` has been in its current status, as seen by this node.
    pub fn status_for(&self, key: &MemberKey, now: Instant) -> Duration {
        self.entries
            .get(key)
            .map(|e| now.saturating_duration_since(e.status_since))
            .unwrap_or_default()
    }
}

/// Whether `me` reaches a strict majority of the Up members of `table` (itself counted
/// when Up), judging reachability by answers within `within`. A table without Up members
/// has nothing to protect: that counts as a majority.
pub fn quorum(
    table: &MemberTable,
    me: &MemberKey,
    fd: &FailureDetector,
    now: Instant,
    within: Duration,
) -> bool {
    let up: Vec<&Member> = table.up_members().collect();
    if up.is_empty() {
        return true;
    }
    let reached = up
        .iter()
        .filter(|m| me.is(m) || fd.reachable(&MemberKey::of(m), now, within))
        .count();
    reached * 2 > up.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(members: &[(&str, MemberStatus)]) -> MemberTable {
        let mut t = MemberTable::default();
        for (pod, status) in members {
            t.join(pod, "i", "10.0.0.1");
            if *status != MemberStatus::Joining {
                t.transition(pod, "i", MemberStatus::Up).ok();
            }
            if *status == MemberStatus::Down {
                t.transition(pod, "i", MemberStatus::Down).ok();
            }
        }
        t
    }

    #[test]
    fn silence_counts_from_the_last_answer_or_first_sight() {
        let t0 = Instant::now();
        let t = table(&[("a", MemberStatus::Up), ("b", MemberStatus::Up)]);
        let mut fd = FailureDetector::default();
        fd.track(&t, t0);
        let b = MemberKey::new("b", "i");
        assert_eq!(
            fd.silent_for(&b, t0 + Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        fd.record(&b, true, t0 + Duration::from_secs(1));
        assert!(fd.ever_answered(&b));
        assert_eq!(
            fd.silent_for(&b, t0 + Duration::from_secs(2)),
            Duration::from_secs(1)
        );
        fd.record(&b, false, t0 + Duration::from_secs(2));
        fd.record(&b, false, t0 + Duration::from_secs(2));
        assert_eq!(fd.failures_in_a_row(&b), 2);
        fd.record(&b, true, t0 + Duration::from_secs(3));
        assert_eq!(fd.failures_in_a_row(&b), 0);
    }

    #[test]
    fn members_that_leave_the_table_are_forgotten() {
        let t0 = Instant::now();
        let mut fd = FailureDetector::default();
        fd.track(
            &table(&[("a", MemberStatus::Up), ("b", MemberStatus::Up)]),
            t0,
        );
        let b = MemberKey::new("b", "i");
        fd.record(&b, true, t0);
        fd.track(&table(&[("a", MemberStatus::Up)]), t0);
        assert!(!fd.ever_answered(&b));
    }

    #[test]
    fn quorum_is_a_strict_majority_of_up_members() {
        let t0 = Instant::now();
        let w = Duration::from_secs(1);
        let t = table(&[
            ("a", MemberStatus::Up),
            ("b", MemberStatus::Up),
            ("c", MemberStatus::Up),
            ("d", MemberStatus::Up),
            ("e", MemberStatus::Joining),
        ]);
        let me = MemberKey::new("a", "i");
        let mut fd = FailureDetector::default();
        fd.track(&t, t0);
        assert!(!quorum(&t, &me, &fd, t0, w));
        fd.record(&MemberKey::new("b", "i"), true, t0);
        // 2 of 4 is not a majority.
        assert!(!quorum(&t, &me, &fd, t0, w));
        fd.record(&MemberKey::new("c", "i"), true, t0);
        assert!(quorum(&t, &me, &fd, t0, w));
        // Answers older than `within` do not count.
        assert!(!quorum(&t, &me, &fd, t0 + Duration::from_secs(2), w));
        // Nothing Up: nothing to protect.
        assert!(quorum(
            &table(&[("e", MemberStatus::Joining)]),
            &me,
            &fd,
            t0,
            w
        ));
    }
}
