//! Which member-Lease events are worth a reconcile.
//!
//! The operator watches only the member Leases (labelled `app.kubernetes.io/name=troupe-node`
//! by the nodes that write them, [`SELECTOR`]), not every Lease of the cluster (kubelets
//! renew one per node every 10 s, leader elections one per controller every 2 s). And a
//! cluster's coordinator renews its member Lease every 2 s: only the member table in
//! its annotation is what the status reports, so a renewal that leaves the table as it was
//! is dropped, while a changed table, a Lease created anew (another uid) and a deletion
//! go through ([`LeaseChanges`]).
//!
//! Pure: the caller says whether the Lease is still in the reflector store.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use k8s_openapi::api::coordination::v1::Lease;
use troupe_contract::{coordination, labels};

/// Label selector of the member Leases.
pub fn selector() -> String {
    format!("{}={}", labels::NAME, labels::NAME_VALUE)
}

/// Most Leases remembered; past it the memory is cleared (the next event of each Lease
/// then goes through once: a spare reconcile, never a missed one).
const MAX_REMEMBERED: usize = 65_536;

/// What the operator last saw of each member Lease: its uid and a hash of its table.
#[derive(Debug, Default)]
pub struct LeaseChanges {
    seen: HashMap<(String, String), (Option<String>, u64)>,
}

impl LeaseChanges {
    /// Whether this event of `lease` may change what the status reports. `present`:
    /// whether the reflector store still has it (`false`: it was deleted).
    pub fn worth_a_reconcile(&mut self, lease: &Lease, present: bool) -> bool {
        let key = (
            lease.metadata.namespace.clone().unwrap_or_default(),
            lease.metadata.name.clone().unwrap_or_default(),
        );
        if !present {
            self.seen.remove(&key);
            return true;
        }
        let table = lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(coordination::MEMBER_TABLE_ANNOTATION));
        let mut h = DefaultHasher::new();
        table.hash(&mut h);
        let now = (lease.metadata.uid.clone(), h.finish());
        if self.seen.get(&key) == Some(&now) {
            return false;
        }
        if self.seen.len() >= MAX_REMEMBERED && !self.seen.contains_key(&key) {
            self.seen.clear();
        }
        self.seen.insert(key, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn lease(uid: &str, table: Option<&str>, renewed: i32) -> Lease {
        let mut l = Lease::default();
        l.metadata.name = Some("orders-members".into());
        l.metadata.namespace = Some("shop".into());
        l.metadata.uid = Some(uid.into());
        l.metadata.resource_version = Some(renewed.to_string());
        l.metadata.annotations = table.map(|t| {
            BTreeMap::from([(
                coordination::MEMBER_TABLE_ANNOTATION.to_owned(),
                t.to_owned(),
            )])
        });
        l
    }

    #[test]
    fn a_renewal_that_leaves_the_table_as_it_was_is_dropped() {
        let mut c = LeaseChanges::default();
        assert!(c.worth_a_reconcile(&lease("u1", Some("{\"v\":1}"), 1), true));
        assert!(!c.worth_a_reconcile(&lease("u1", Some("{\"v\":1}"), 2), true));
        assert!(!c.worth_a_reconcile(&lease("u1", Some("{\"v\":1}"), 3), true));
    }

    #[test]
    fn a_changed_table_a_stripped_one_a_new_lease_and_a_deletion_go_through() {
        let mut c = LeaseChanges::default();
        assert!(c.worth_a_reconcile(&lease("u1", Some("{\"v\":1}"), 1), true));
        assert!(c.worth_a_reconcile(&lease("u1", Some("{\"v\":2}"), 2), true));
        assert!(c.worth_a_reconcile(&lease("u1", None, 3), true), "stripped");
        assert!(c.worth_a_reconcile(&lease("u1", None, 3), false), "deleted");
        // Recreated with the same table: another uid, and the memory was cleared.
        assert!(c.worth_a_reconcile(&lease("u2", None, 4), true));
    }

    #[test]
    fn the_memory_is_bounded() {
        let mut c = LeaseChanges::default();
        for i in 0..MAX_REMEMBERED + 10 {
            let mut l = lease("u", Some("t"), 1);
            l.metadata.name = Some(format!("c{i}-members"));
            assert!(c.worth_a_reconcile(&l, true));
        }
        assert!(c.seen.len() <= MAX_REMEMBERED);
    }
}
