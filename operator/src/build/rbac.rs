//! The node's identity: a ServiceAccount, bound in its own namespace to the chart's node
//! ClusterRole (watch its peers' pods, keep the member-table Lease).
//!
//! The operator grants that ClusterRole with the `bind` verb (RBAC's escalation check):
//! it does not hold the node's Lease write itself, so it holds no write on the Leases of
//! other namespaces (`kube-system`'s leader Leases among them). The price is that a
//! ClusterRole cannot name each cluster's Lease (`resourceNames` has no patterns), so the
//! chart's ValidatingAdmissionPolicy (`charts/troupe/templates/node-lease-policy.yaml`)
//! is what keeps one cluster's nodes off another cluster's member table. SECURITY.md has
//! the trust model.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};

use super::Owner;
use crate::crd::ActorClusterSpec;

/// The node ServiceAccount `<name>-node`, annotated with
/// `spec.podTemplate.serviceAccountAnnotations` (a cloud IAM role, say).
pub fn desired_service_account(owner: &Owner, spec: &ActorClusterSpec) -> ServiceAccount {
    let mut metadata = owner.meta(owner.node_account_name());
    metadata.annotations = spec
        .pod_template
        .as_ref()
        .and_then(|t| t.service_account_annotations.clone())
        .filter(|a| !a.is_empty());
    ServiceAccount {
        metadata,
        ..ServiceAccount::default()
    }
}

/// Binds the chart's node ClusterRole `cluster_role` to the node ServiceAccount, in the
/// cluster's namespace only (a RoleBinding).
pub fn desired_role_binding(owner: &Owner, cluster_role: &str) -> RoleBinding {
    RoleBinding {
        metadata: owner.meta(owner.node_account_name()),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "ClusterRole".to_owned(),
            name: cluster_role.to_owned(),
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
    fn binding_ties_the_node_cluster_role_to_the_node_account_in_its_namespace() {
        let o = owner();
        let rb = desired_role_binding(&o, "troupe-node");
        assert_eq!(rb.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(rb.role_ref.kind, "ClusterRole");
        assert_eq!(rb.role_ref.name, "troupe-node");
        let s = &rb.subjects.expect("subjects")[0];
        assert_eq!(s.kind, "ServiceAccount");
        assert_eq!(s.name, "orders-node");
        assert_eq!(s.namespace.as_deref(), Some("shop"));
        assert_eq!(
            desired_service_account(&o, &ActorClusterSpec::default())
                .metadata
                .name
                .as_deref(),
            Some("orders-node")
        );
    }

    #[test]
    fn service_account_carries_the_users_annotations_and_no_empty_map() {
        use crate::crd::PodTemplateOverrides;
        use std::collections::BTreeMap;
        let o = owner();
        let with = |annotations: Option<BTreeMap<String, String>>| ActorClusterSpec {
            pod_template: Some(PodTemplateOverrides {
                service_account_annotations: annotations,
                ..Default::default()
            }),
            ..Default::default()
        };
        let role = BTreeMap::from([(
            "eks.amazonaws.com/role-arn".to_owned(),
            "arn:aws:iam::1:role/orders".to_owned(),
        )]);
        let sa = desired_service_account(&o, &with(Some(role.clone())));
        assert_eq!(sa.metadata.annotations, Some(role));
        // The owner's labels and reference stay.
        assert_eq!(sa.metadata.owner_references.map(|r| r.len()), Some(1));
        for spec in [
            with(None),
            with(Some(BTreeMap::new())),
            ActorClusterSpec::default(),
        ] {
            assert_eq!(
                desired_service_account(&o, &spec).metadata.annotations,
                None
            );
        }
    }
}
