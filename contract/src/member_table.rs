//! The member table: who is in a cluster, in which state, at which version.
//!
//! One table exists per ActorCluster. The nodes keep it in the annotation
//! [`crate::coordination::MEMBER_TABLE_ANNOTATION`] of the cluster's Lease and change it
//! only with a compare-and-swap on the Lease's `resourceVersion`, so the Kubernetes API
//! server is the single arbiter of membership: there is exactly one table, hence exactly
//! one cluster. The operator only reads it.
//!
//! ```text
//!            join            promote             leave              remove
//!  (absent) ──────► Joining ─────────► Up ──────────────► Leaving ──────────► (absent)
//!                      │                │                     │
//!                      └──── down ──────┴──────── down ───────┴──► Down ──► (absent)
//! ```
//!
//! Every change bumps [`MemberTable::version`]. Transitions are pure functions here so that
//! both programs and the tests agree on them.
//!
//! **Epochs.** A table belongs to one *life* of the Lease. [`MemberTable::cluster`] is a
//! random id chosen when a cluster first forms; [`MemberTable::epoch`] starts at the
//! wall-clock millisecond the cluster formed ([`MemberTable::first_epoch_at`], kept as
//! [`MemberTable::first_epoch`]) and is bumped
//! when the table is restored into a Lease that was deleted or stripped of its annotation.
//! Starting from the formation time orders the lives of one ActorCluster by when they
//! formed: a life that forms after every pod of an earlier one died (or after the
//! ActorCluster was deleted and created again) runs on epochs above the earlier life's, so
//! the owners a durable store keeps from it are older than any activation of the new one
//! (`actors::write_through::generation`). Versions
//! are only comparable within one cluster id, and there ordered by `(epoch, version)`
//! ([`MemberTable::order`]); tables of different cluster ids are never compared at all
//! ([`MemberTable::compare`] answers `None`). Tables written before epochs existed read as
//! cluster `""`, epoch 0.

use serde::{Deserialize, Serialize};

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The state of one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MemberStatus {
    /// Admitted to the table, not yet serving.
    Joining,
    /// A full member: owns actors and may be Ready.
    Up,
    /// Leaving gracefully: hands its actors over, then removes itself.
    Leaving,
    /// Declared dead by the coordinator; removed from the table shortly after.
    Down,
}

impl std::fmt::Display for MemberStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Self::Joining => "Joining",
            Self::Up => "Up",
            Self::Leaving => "Leaving",
            Self::Down => "Down",
        };
        f.write_str(s)
    }
}

/// One member of the table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// The pod's name.
    pub pod: String,
    /// A random id chosen by the node process at start. A restarted container is a new
    /// incarnation and must join again; the old one is downed.
    pub incarnation: String,
    /// The pod's IP address.
    pub address: String,
    /// The member's state.
    pub status: MemberStatus,
    /// The table version at which the member was admitted; lower means older.
    pub since_version: u64,
}

/// The versioned member table of one cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberTable {
    /// The cluster's id: random, chosen when the cluster first formed, never changed.
    /// Empty only in the default (never stored) table and in tables from before epochs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    /// The cluster's first epoch: the wall-clock millisecond it formed
    /// ([`Self::first_epoch_at`]); 0 in tables from before formation times.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub first_epoch: u64,
    /// [`Self::first_epoch`], bumped each time the table is restored into a deleted or
    /// stripped Lease.
    #[serde(default)]
    pub epoch: u64,
    /// Bumped by one on every change.
    pub version: u64,
    /// Members, ordered by pod name.
    pub members: Vec<Member>,
}

/// Why a transition of the member table was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemberTableError {
    /// The pod is not in the table (or has another incarnation).
    #[error("pod {pod} (incarnation {incarnation}) is not a member")]
    NotAMember {
        /// The pod's name.
        pod: String,
        /// The incarnation that was asked for.
        incarnation: String,
    },
    /// The transition is not allowed from the member's current state.
    #[error("member {pod} cannot go from {from} to {to}")]
    InvalidTransition {
        /// The pod's name.
        pod: String,
        /// Its current state.
        from: MemberStatus,
        /// The state that was asked for.
        to: MemberStatus,
    },
    /// The stored table could not be parsed.
    #[error("member table is not valid JSON: {0}")]
    Malformed(String),
}

impl MemberTable {
    /// Parses a table from the Lease annotation.
    pub fn from_json(s: &str) -> Result<Self, MemberTableError> {
        serde_json::from_str(s).map_err(|e| MemberTableError::Malformed(e.to_string()))
    }

    /// Serialises the table for the Lease annotation.
    pub fn to_json(&self) -> String {
        // A struct of strings and integers always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The first epoch of a cluster formed at wall-clock `formed_at_ms` (milliseconds since
    /// the Unix epoch): that millisecond, so that a later life of the same ActorCluster
    /// starts above every epoch an earlier one reached (each restore adds one; a life
    /// restored more often than once per millisecond it lived is not a thing). Clocks set
    /// back by more than an earlier life's lifetime would break the order; then activations
    /// of actors that life stored are refused (never a state silently overwritten) until the
    /// clock catches up.
    pub fn first_epoch_at(formed_at_ms: i64) -> u64 {
        u64::try_from(formed_at_ms).unwrap_or_default().max(1)
    }

    /// Whether this table's epoch came from a restore (a previous epoch of the cluster
    /// may still be served by a member that has not read the loss yet).
    pub fn is_restored(&self) -> bool {
        self.epoch > self.first_epoch
    }

    /// The position of this table in its cluster's history: `(epoch, version)`.
    pub fn order(&self) -> (u64, u64) {
        (self.epoch, self.version)
    }

    /// How this table's place in history compares with `other`'s: `None` when they belong
    /// to different clusters (different [`cluster`](Self::cluster) ids), which must never be
    /// compared by version.
    pub fn compare(&self, other: &MemberTable) -> Option<std::cmp::Ordering> {
        (self.cluster == other.cluster).then(|| self.order().cmp(&other.order()))
    }

    /// Whether this table is strictly later than `other` in the same cluster.
    pub fn is_newer_than(&self, other: &MemberTable) -> bool {
        self.compare(other) == Some(std::cmp::Ordering::Greater)
    }

    /// The member for `pod`, whatever its incarnation.
    pub fn get(&self, pod: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.pod == pod)
    }

    /// Members that are Up, ordered by pod name: the set that owns actors.
    pub fn up_members(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.status == MemberStatus::Up)
    }

    /// Number of members in `status`.
    pub fn count(&self, status: MemberStatus) -> usize {
        self.members.iter().filter(|m| m.status == status).count()
    }

    /// Admits `pod` as Joining. A previous incarnation of the same pod is replaced (it is
    /// dead: a pod runs one node process at a time). Joining again with the same incarnation
    /// changes nothing and returns `false`.
    pub fn join(&mut self, pod: &str, incarnation: &str, address: &str) -> bool {
        if let Some(m) = self.get(pod)
            && m.incarnation == incarnation
        {
            return false;
        }
        self.members.retain(|m| m.pod != pod);
        self.version += 1;
        self.members.push(Member {
            pod: pod.to_owned(),
            incarnation: incarnation.to_owned(),
            address: address.to_owned(),
            status: MemberStatus::Joining,
            since_version: self.version,
        });
        self.members.sort_by(|a, b| a.pod.cmp(&b.pod));
        true
    }

    /// Moves a member to `to`, checking the state machine in the module docs.
    /// Returns `Ok(false)` when the member already is in `to`.
    pub fn transition(
        &mut self,
        pod: &str,
        incarnation: &str,
        to: MemberStatus,
    ) -> Result<bool, MemberTableError> {
        use MemberStatus::*;
        let m = self
            .members
            .iter_mut()
            .find(|m| m.pod == pod && m.incarnation == incarnation)
            .ok_or_else(|| MemberTableError::NotAMember {
                pod: pod.to_owned(),
                incarnation: incarnation.to_owned(),
            })?;
        if m.status == to {
            return Ok(false);
        }
        let allowed = matches!(
            (m.status, to),
            (Joining, Up) | (Up, Leaving) | (Joining, Leaving) | (Joining | Up | Leaving, Down)
        );
        if !allowed {
            return Err(MemberTableError::InvalidTransition {
                pod: pod.to_owned(),
                from: m.status,
                to,
            });
        }
        m.status = to;
        self.version += 1;
        Ok(true)
    }

    /// Removes a member (after it left, or after it was downed). Returns whether it was there.
    pub fn remove(&mut self, pod: &str, incarnation: &str) -> bool {
        let before = self.members.len();
        self.members
            .retain(|m| !(m.pod == pod && m.incarnation == incarnation));
        let removed = self.members.len() != before;
        if removed {
            self.version += 1;
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_promote_leave_remove() {
        let mut t = MemberTable::default();
        assert!(t.join("a", "i1", "10.0.0.1"));
        assert!(!t.join("a", "i1", "10.0.0.1"));
        assert_eq!(t.version, 1);
        assert_eq!(t.transition("a", "i1", MemberStatus::Up), Ok(true));
        assert_eq!(t.up_members().count(), 1);
        assert_eq!(t.transition("a", "i1", MemberStatus::Leaving), Ok(true));
        assert!(t.remove("a", "i1"));
        assert!(t.members.is_empty());
        assert_eq!(t.version, 4);
    }

    #[test]
    fn a_new_incarnation_replaces_the_old() {
        let mut t = MemberTable::default();
        t.join("a", "i1", "10.0.0.1");
        t.transition("a", "i1", MemberStatus::Up).ok();
        assert!(t.join("a", "i2", "10.0.0.1"));
        assert_eq!(t.members.len(), 1);
        assert_eq!(t.members[0].incarnation, "i2");
        assert_eq!(t.members[0].status, MemberStatus::Joining);
    }

    #[test]
    fn invalid_transitions_are_refused() {
        let mut t = MemberTable::default();
        t.join("a", "i1", "10.0.0.1");
        t.transition("a", "i1", MemberStatus::Down).ok();
        assert!(matches!(
            t.transition("a", "i1", MemberStatus::Up),
            Err(MemberTableError::InvalidTransition { .. })
        ));
        assert!(matches!(
            t.transition("b", "i1", MemberStatus::Up),
            Err(MemberTableError::NotAMember { .. })
        ));
    }

    #[test]
    fn tables_of_different_clusters_are_never_compared() {
        let a = MemberTable {
            cluster: "c1".into(),
            first_epoch: 0,
            epoch: 0,
            version: 40,
            members: Vec::new(),
        };
        let restored = MemberTable {
            epoch: 1,
            version: 3,
            ..a.clone()
        };
        let other = MemberTable {
            cluster: "c2".into(),
            version: 100,
            ..a.clone()
        };
        assert!(
            restored.is_newer_than(&a),
            "a restore outranks any version before it"
        );
        assert!(!a.is_newer_than(&restored));
        assert_eq!(other.compare(&a), None);
        assert!(!other.is_newer_than(&a) && !a.is_newer_than(&other));
    }

    #[test]
    fn a_cluster_starts_at_its_formation_time_and_restores_count_from_there() {
        let formed = MemberTable::first_epoch_at(1_700_000_000_000);
        let t = MemberTable {
            cluster: "c1".into(),
            first_epoch: formed,
            epoch: formed,
            version: 1,
            members: Vec::new(),
        };
        assert!(!t.is_restored());
        let back = MemberTable::from_json(&t.to_json()).ok();
        assert_eq!(
            back.as_ref(),
            Some(&t),
            "the first epoch is kept in the Lease"
        );
        let restored = MemberTable {
            epoch: formed + 1,
            ..t.clone()
        };
        assert!(restored.is_restored());
        // A later life (all pods gone with the Lease, or the ActorCluster created anew)
        // starts above every epoch of an earlier one.
        assert!(MemberTable::first_epoch_at(1_700_000_060_000) > restored.epoch);
        // Tables from before formation times: epoch 0 is a first epoch, above it restored;
        // a clock before 1970 gives the lowest first epoch, 1.
        let old = MemberTable::from_json(r#"{"cluster":"c","epoch":2,"version":7,"members":[]}"#);
        assert!(old.is_ok_and(|t| t.first_epoch == 0 && t.is_restored()));
        assert_eq!(MemberTable::first_epoch_at(-5), 1);
    }

    #[test]
    fn tables_from_before_epochs_still_parse() {
        let t = MemberTable::from_json(r#"{"version":7,"members":[]}"#).ok();
        assert_eq!(
            t.map(|t| (t.cluster, t.epoch, t.version)),
            Some((String::new(), 0, 7))
        );
    }

    #[test]
    fn json_round_trip_and_malformed_input() {
        let mut t = MemberTable::default();
        t.join("b", "i", "10.0.0.2");
        t.join("a", "i", "10.0.0.1");
        let back = MemberTable::from_json(&t.to_json()).ok();
        assert_eq!(back.as_ref(), Some(&t));
        assert_eq!(t.members[0].pod, "a");
        assert!(MemberTable::from_json("{not json").is_err());
    }
}
