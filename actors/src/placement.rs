//! Placement: which Up member owns an actor, by rendezvous (highest-random-weight) hashing.
//!
//! Every member scores every actor key with a deterministic hash; the highest score owns
//! it. When a member joins or leaves only the keys it wins or held move (≈ 1/n of them),
//! and every node computes the same owner from the same member table with no coordination.
//!
//! [`PlacementHistory`] keeps the last few placements a node has seen, so that a new owner
//! knows whom to ask for an actor before activating it (see `runtime` for the protocol).
//! Placements are ordered like their tables ([`MemberTable::compare`]): by `(epoch,
//! version)` within one cluster id; a table of another cluster id starts a new history.
//! Pure data and functions: no I/O, no clock.

use std::{collections::VecDeque, sync::Arc};

use std::cmp::Ordering;

use troupe_contract::{MemberStatus, MemberTable};

/// One member that can own actors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacedMember {
    /// Pod name.
    pub pod: Arc<str>,
    /// Incarnation.
    pub incarnation: Arc<str>,
    /// `ip:port` of its transport.
    pub transport_addr: Arc<str>,
    seed: u64,
}

impl PlacedMember {
    /// A member; `transport_addr` is where its transport listens.
    pub fn new(pod: &str, incarnation: &str, transport_addr: &str) -> Self {
        Self {
            pod: pod.into(),
            incarnation: incarnation.into(),
            transport_addr: transport_addr.into(),
            // The pod name only: a restarted pod keeps its place (its state is gone anyway).
            seed: fnv1a(pod.as_bytes(), FNV_OFFSET),
        }
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// splitmix64's finaliser: turns a combined hash into a well-spread score.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hash of an actor key, the same on every node.
pub fn key_hash(actor_type: &str, id: &str) -> u64 {
    let h = fnv1a(actor_type.as_bytes(), FNV_OFFSET);
    fnv1a(id.as_bytes(), fnv1a(&[0xff], h))
}

/// The position of a member table in its cluster's history: `(epoch, version)`
/// ([`MemberTable::order`]). Only comparable between tables of one cluster id.
pub type TableOrder = (u64, u64);

/// The owners of actors under one member table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// The cluster id of the table ([`MemberTable::cluster`]).
    pub cluster: Arc<str>,
    /// The table's `(epoch, version)`.
    pub order: TableOrder,
    /// Members that own actors (Up), by pod name.
    pub owners: Vec<PlacedMember>,
    /// Every member that is alive (Joining, Up, Leaving): may hold actors or state.
    pub alive: Vec<PlacedMember>,
    /// Every member of the table, Down ones included, with its status.
    pub members: Vec<(PlacedMember, MemberStatus)>,
}

impl Placement {
    /// The placement of `table`; `transport_addr` maps a member's address to `ip:port`.
    pub fn from_table(table: &MemberTable, transport_addr: impl Fn(&str) -> String) -> Self {
        let placed = |m: &troupe_contract::Member| {
            PlacedMember::new(&m.pod, &m.incarnation, &transport_addr(&m.address))
        };
        Self {
            cluster: table.cluster.as_str().into(),
            order: table.order(),
            owners: table.up_members().map(placed).collect(),
            alive: table
                .members
                .iter()
                .filter(|m| m.status != MemberStatus::Down)
                .map(placed)
                .collect(),
            members: table
                .members
                .iter()
                .map(|m| (placed(m), m.status))
                .collect(),
        }
    }

    /// The table version (within its epoch).
    pub fn version(&self) -> u64 {
        self.order.1
    }

    /// How this placement's table compares with `other`'s: `None` across cluster ids.
    pub fn compare(&self, other: &Placement) -> Option<Ordering> {
        (self.cluster == other.cluster).then(|| self.order.cmp(&other.order))
    }

    /// The status of `pod` with `incarnation` in this table: `None` when it is not in it
    /// (removed, or replaced by another incarnation).
    pub fn status_of(&self, pod: &str, incarnation: &str) -> Option<MemberStatus> {
        self.members
            .iter()
            .find(|(m, _)| &*m.pod == pod && &*m.incarnation == incarnation)
            .map(|(_, s)| *s)
    }

    /// The member called `pod` (any status) and its status.
    pub fn member(&self, pod: &str) -> Option<&(PlacedMember, MemberStatus)> {
        self.members.iter().find(|(m, _)| &*m.pod == pod)
    }

    /// The owner of `(actor_type, id)`, or `None` when no member is Up.
    pub fn owner(&self, actor_type: &str, id: &str) -> Option<&PlacedMember> {
        self.owner_of_hash(key_hash(actor_type, id))
    }

    /// The owner of a key by its [`key_hash`].
    pub fn owner_of_hash(&self, key: u64) -> Option<&PlacedMember> {
        self.owners
            .iter()
            .max_by_key(|m| (mix(key ^ m.seed), m.seed))
    }

    /// The *witness* of `(actor_type, id)` for `holder`: the Up member other than `holder`
    /// that scores highest for it (the owner if `holder` were gone), if any.
    pub fn witness(&self, actor_type: &str, id: &str, holder: &str) -> Option<&PlacedMember> {
        let key = key_hash(actor_type, id);
        self.owners
            .iter()
            .filter(|m| &*m.pod != holder)
            .max_by_key(|m| (mix(key ^ m.seed), m.seed))
    }

    /// Whether `pod` (with `incarnation`) is alive in this placement.
    pub fn is_alive(&self, pod: &str, incarnation: &str) -> bool {
        self.alive
            .iter()
            .any(|m| &*m.pod == pod && &*m.incarnation == incarnation)
    }

    /// The alive member called `pod`.
    pub fn alive_member(&self, pod: &str) -> Option<&PlacedMember> {
        self.alive.iter().find(|m| &*m.pod == pod)
    }
}

/// The last few placements a node has seen, newest last.
#[derive(Clone, Debug, Default)]
pub struct PlacementHistory {
    placements: VecDeque<Arc<Placement>>,
    /// Whether older placements were forgotten (more than [`HISTORY_LEN`] seen).
    truncated: bool,
}

/// How many placements a node remembers.
pub const HISTORY_LEN: usize = 16;

impl PlacementHistory {
    /// Records a new placement: ignored unless newer than the current one in the same
    /// cluster ([`Placement::compare`]); a placement of another cluster id replaces the
    /// whole history (versions of two clusters say nothing about each other).
    pub fn push(&mut self, p: Arc<Placement>) -> Pushed {
        let pushed = match self.placements.back().map(|c| p.compare(c)) {
            None => Pushed::Newer,
            Some(Some(Ordering::Greater)) => Pushed::Newer,
            Some(Some(_)) => return Pushed::Ignored,
            Some(None) => {
                self.placements.clear();
                self.truncated = false;
                Pushed::OtherCluster
            }
        };
        if self.placements.len() == HISTORY_LEN {
            self.placements.pop_front();
            self.truncated = true;
        }
        self.placements.push_back(p);
        pushed
    }

    /// The placement before the current one, if remembered.
    pub fn previous(&self) -> Option<&Arc<Placement>> {
        self.placements.iter().rev().nth(1)
    }

    /// The current placement.
    pub fn current(&self) -> Option<&Arc<Placement>> {
        self.placements.back()
    }

    /// Members other than `self_pod` that owned `(actor_type, id)` under an earlier
    /// placement and are still in the current table with the same incarnation (Down ones
    /// included: a Down member may still be running): the ones that may still hold it or
    /// its state. Members gone from the table (or replaced by a new incarnation) hold
    /// nothing any more — except across a restore: an owner under an earlier epoch
    /// rejoins the restored one as a new incarnation of the same process, keeping its
    /// states, so its pod is asked whatever its incarnation (a pod that restarted in
    /// between answers that it holds nothing).
    pub fn previous_owners(&self, actor_type: &str, id: &str, self_pod: &str) -> Vec<PlacedMember> {
        let Some(current) = self.current() else {
            return Vec::new();
        };
        let key = key_hash(actor_type, id);
        let mut out: Vec<PlacedMember> = Vec::new();
        for p in self.placements.iter().rev() {
            if let Some(o) = p.owner_of_hash(key)
                && &*o.pod != self_pod
                && (current.status_of(&o.pod, &o.incarnation).is_some()
                    || p.order.0 < current.order.0)
                && !out.iter().any(|x| x.pod == o.pod)
                && let Some((now, _)) = current.member(&o.pod)
            {
                out.push(now.clone());
            }
        }
        out
    }
}

impl PlacementHistory {
    /// Members other than `self_pod` that owned `(actor_type, id)` under an earlier
    /// placement and whose pod is gone from the current table, as they were placed then
    /// (the caller keeps those removed without a leave so recently that they may still
    /// serve).
    pub fn previous_owners_gone(
        &self,
        actor_type: &str,
        id: &str,
        self_pod: &str,
    ) -> Vec<PlacedMember> {
        let Some(current) = self.current() else {
            return Vec::new();
        };
        let key = key_hash(actor_type, id);
        let mut out: Vec<PlacedMember> = Vec::new();
        for p in self.placements.iter().rev() {
            if let Some(o) = p.owner_of_hash(key)
                && &*o.pod != self_pod
                && current.member(&o.pod).is_none()
                && !out.iter().any(|x| x.pod == o.pod)
            {
                out.push(o.clone());
            }
        }
        out
    }

    /// When the first placement this node ever saw (of this cluster) already made
    /// `self_pod` the owner of `(actor_type, id)`, the history cannot say who had it
    /// before (the tables in between were never fed here): the member that would own it in
    /// that placement without `self_pod`, among its members that may have owned actors
    /// (all but Joining), if it is still in the current table with the same incarnation.
    pub fn owner_before_history(
        &self,
        actor_type: &str,
        id: &str,
        self_pod: &str,
    ) -> Option<PlacedMember> {
        if self.truncated {
            return None;
        }
        let oldest = self.placements.front()?;
        let current = self.current()?;
        let key = key_hash(actor_type, id);
        if oldest.owner_of_hash(key).map(|o| &*o.pod) != Some(self_pod) {
            return None;
        }
        let (m, _) = oldest
            .members
            .iter()
            .filter(|(m, s)| *s != MemberStatus::Joining && &*m.pod != self_pod)
            .max_by_key(|(m, _)| (mix(key ^ m.seed), m.seed))?;
        current.status_of(&m.pod, &m.incarnation)?;
        current.member(&m.pod).map(|(now, _)| now.clone())
    }
}

/// What [`PlacementHistory::push`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// The placement was not newer than the current one: ignored.
    Ignored,
    /// A newer placement of the same cluster (or the first one).
    Newer,
    /// A placement of another cluster id: the history was replaced by it.
    OtherCluster,
}

impl Pushed {
    /// Whether the placement was recorded.
    pub fn recorded(self) -> bool {
        self != Pushed::Ignored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(version: u64, pods: &[&str]) -> Placement {
        in_cluster("c", (0, version), pods)
    }

    fn in_cluster(cluster: &str, order: TableOrder, pods: &[&str]) -> Placement {
        let owners: Vec<PlacedMember> = pods
            .iter()
            .map(|p| PlacedMember::new(p, "i", &format!("{p}:1")))
            .collect();
        Placement {
            cluster: cluster.into(),
            order,
            alive: owners.clone(),
            members: owners
                .iter()
                .map(|m| (m.clone(), MemberStatus::Up))
                .collect(),
            owners,
        }
    }

    fn owners(p: &Placement, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                p.owner("counter", &format!("id-{i}"))
                    .map(|m| m.pod.to_string())
                    .unwrap_or_default()
            })
            .collect()
    }

    #[test]
    fn every_node_computes_the_same_owner_and_spreads_keys() {
        let a = placement(1, &["a", "b", "c"]);
        let b = placement(1, &["c", "a", "b"]);
        assert_eq!(owners(&a, 1000), owners(&b, 1000));
        for pod in ["a", "b", "c"] {
            let n = owners(&a, 3000).iter().filter(|o| *o == pod).count();
            assert!((800..1200).contains(&n), "{pod} owns {n} of 3000");
        }
        assert!(placement(1, &[]).owner("counter", "x").is_none());
    }

    #[test]
    fn adding_a_member_moves_about_one_in_n_keys_and_only_to_it() {
        let n = 4000;
        let before = owners(&placement(1, &["a", "b", "c", "d"]), n);
        let after = owners(&placement(2, &["a", "b", "c", "d", "e"]), n);
        let moved: Vec<_> = before.iter().zip(&after).filter(|(x, y)| x != y).collect();
        assert!(
            moved.iter().all(|(_, to)| *to == "e"),
            "keys move only to the new member"
        );
        let share = moved.len() as f64 / n as f64;
        assert!(
            (0.15..0.25).contains(&share),
            "moved {share}, expected ≈ 1/5"
        );
    }

    #[test]
    fn removing_a_member_moves_only_its_keys() {
        let n = 4000;
        let before = owners(&placement(1, &["a", "b", "c", "d"]), n);
        let after = owners(&placement(2, &["a", "b", "d"]), n);
        for (x, y) in before.iter().zip(&after) {
            if x != "c" {
                assert_eq!(x, y);
            }
        }
        let share = before.iter().filter(|o| *o == "c").count() as f64 / n as f64;
        assert!((0.2..0.3).contains(&share), "moved {share}, expected ≈ 1/4");
    }

    #[test]
    fn history_names_alive_previous_owners() {
        let mut h = PlacementHistory::default();
        h.push(Arc::new(placement(1, &["a"])));
        h.push(Arc::new(placement(2, &["a", "b"])));
        assert_eq!(
            h.push(Arc::new(placement(2, &["z"]))),
            Pushed::Ignored,
            "older or equal versions are ignored"
        );
        // Find a key that moved from a to b.
        let id = (0..1000)
            .map(|i| format!("k{i}"))
            .find(|id| {
                h.current()
                    .and_then(|p| p.owner("t", id))
                    .is_some_and(|o| &*o.pod == "b")
            })
            .unwrap_or_default();
        let prev = h.previous_owners("t", &id, "b");
        assert_eq!(prev.iter().map(|m| &*m.pod).collect::<Vec<_>>(), vec!["a"]);
        // a is gone: nobody to ask.
        h.push(Arc::new(placement(3, &["b"])));
        assert!(h.previous_owners("t", &id, "b").is_empty());
    }

    #[test]
    fn epochs_order_placements_and_another_cluster_replaces_the_history() {
        let mut h = PlacementHistory::default();
        assert_eq!(
            h.push(Arc::new(in_cluster("c", (0, 40), &["a", "b"]))),
            Pushed::Newer
        );
        // A restored table (epoch + 1) is newer than every version of the epoch before.
        assert_eq!(
            h.push(Arc::new(in_cluster("c", (1, 3), &["a"]))),
            Pushed::Newer
        );
        assert_eq!(
            h.push(Arc::new(in_cluster("c", (0, 41), &["a", "b"]))),
            Pushed::Ignored,
            "a higher version of an older epoch is older"
        );
        assert_eq!(h.current().map(|p| p.order), Some((1, 3)));
        // Another cluster id: never compared by version; it replaces the history, so no
        // claim is ever sent to an owner under the other cluster's tables.
        assert_eq!(
            h.push(Arc::new(in_cluster("other", (0, 1), &["b"]))),
            Pushed::OtherCluster
        );
        assert_eq!(h.previous().map(|p| p.order), None);
        let id = (0..1000)
            .map(|i| format!("k{i}"))
            .find(|id| {
                in_cluster("c", (0, 1), &["a", "b"])
                    .owner("t", id)
                    .is_some_and(|o| &*o.pod == "a")
            })
            .unwrap_or_default();
        assert!(h.previous_owners("t", &id, "b").is_empty());
    }

    #[test]
    fn a_node_whose_first_table_made_it_the_owner_asks_the_member_before_it() {
        let mut h = PlacementHistory::default();
        h.push(Arc::new(placement(5, &["a", "c"])));
        let id = (0..1000)
            .map(|i| format!("k{i}"))
            .find(|id| {
                placement(1, &["a", "c"])
                    .owner("t", id)
                    .is_some_and(|o| &*o.pod == "c")
            })
            .unwrap_or_default();
        assert!(h.previous_owners("t", &id, "c").is_empty());
        let before = h.owner_before_history("t", &id, "c");
        assert_eq!(before.map(|m| m.pod.to_string()).as_deref(), Some("a"));
        // Once more than HISTORY_LEN tables were seen, the history itself covers it.
        for v in 6..6 + HISTORY_LEN as u64 {
            h.push(Arc::new(placement(v, &["a", "c"])));
        }
        assert!(h.owner_before_history("t", &id, "c").is_none());
    }
}
