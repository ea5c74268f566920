//! The node's identity: a ServiceAccount and a Role that covers exactly what a node does in
//! its own namespace (watch its peers' pods, keep the member-table Lease), bound together.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

use super::Owner;
use troupe_contract::coordination;

/// The node ServiceAccount `<name>-node`.
pub fn desired_service_account(owner: &Owner) -> ServiceAccount {
    ServiceAccount {
        metadata: owner.meta(owner.node_account_name()),
        ..ServiceAccount::default()
    }
}

/// The node Role `<name>-node`: pods get/list/watch; its own member Lease
/// get/list/watch/update, and leases create.
pub fn desired_role(owner: &Owner) -> Role {
    let rule = |group: &str, resource: &str, verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(vec![resource.to_owned()]),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..PolicyRule::default()
    };
    Role {
        metadata: owner.meta(owner.node_account_name()),
        rules: Some(vec![
            rule("", "pods", &["get", "list", "watch"]),
            // The member Lease only: read, watch (`watch_object`: list and watch with a
            // `metadata.name` field selector, which RBAC matches against resourceNames)
            // and compare-and-swap. Kubernetes cannot limit
            // `create` by name (the name is not known when it is authorised), so creation
            // (first formation, or after a Lease deletion) is a rule of its own.
            PolicyRule {
                resource_names: Some(vec![coordination::lease_name(&owner.name)]),
                ..rule(
                    "coordination.k8s.io",
                    "leases",
                    &["get", "list", "watch", "update"],
                )
            },
            rule("coordination.k8s.io", "leases", &["create"]),
        ]),
    }
}

/// Binds the node Role to the node ServiceAccount.
pub fn desired_role_binding(owner: &Owner) -> RoleBinding {
    RoleBinding {
        metadata: owner.meta(owner.node_account_name()),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: owner.node_account_name(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: owner.node_account_name(),
            namespace: Some(owner.namespace.clone()),
            ..Subject::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::owner;

    #[test]
    fn the_node_may_write_only_its_own_lease_with_the_verbs_it_uses() {
        let rules = desired_role(&owner()).rules.expect("rules");
        let leases: Vec<_> = rules
            .iter()
            .filter(|r| r.resources == Some(vec!["leases".to_owned()]))
            .collect();
        let mut verbs: Vec<String> = leases.iter().flat_map(|r| r.verbs.clone()).collect();
        verbs.sort();
        // get and watch (read), create (formation), update (compare-and-swap); no patch.
        assert_eq!(verbs, ["create", "get", "list", "update", "watch"]);
        for r in leases {
            if r.verbs != ["create"] {
                assert_eq!(r.resource_names, Some(vec!["orders-members".to_owned()]));
            }
        }
    }

    #[test]
    fn role_grants_pods_read_and_leases_write_nothing_else() {
        let role = desired_role(&owner());
        let rules = role.rules.expect("rules");
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[0].resources, Some(vec!["pods".to_owned()]));
        assert_eq!(rules[0].verbs, ["get", "list", "watch"]);
        assert_eq!(
            rules[1].api_groups,
            Some(vec!["coordination.k8s.io".to_owned()])
        );
        assert_eq!(rules[1].resources, Some(vec!["leases".to_owned()]));
        assert!(!rules[1].verbs.iter().any(|v| v == "delete" || v == "*"));
        for r in &rules {
            assert!(!r.verbs.iter().any(|v| v == "*"));
        }
    }

    #[test]
    fn binding_ties_the_node_role_to_the_node_account() {
        let o = owner();
        let rb = desired_role_binding(&o);
        assert_eq!(rb.role_ref.kind, "Role");
        assert_eq!(rb.role_ref.name, "orders-node");
        let s = &rb.subjects.expect("subjects")[0];
        assert_eq!(s.name, "orders-node");
        assert_eq!(s.namespace.as_deref(), Some("shop"));
        assert_eq!(
            desired_service_account(&o).metadata.name.as_deref(),
            Some("orders-node")
        );
    }
}
