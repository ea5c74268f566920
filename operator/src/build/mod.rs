//! Desired children of an `ActorCluster`: pure functions from a validated spec to
//! Kubernetes objects, one submodule per concern.
//!
//! ```text
//!  ValidSpec + Owner ──► rbac        ServiceAccount, RoleBinding         (<name>-node)
//!                   ├──► services    headless peer Service (<name>-peers), client Service (<name>)
//!                   ├──► deployment  Deployment (<name>)
//!                   ├──► disruption  PodDisruptionBudget (<name>)
//!                   ├──► autoscaling HorizontalPodAutoscaler (<name>), only with spec.autoscaling
//!                   ├──► network     NetworkPolicy (<name>), unless spec.network.policy is false
//!                   └──► credential  transport CA and node credential Secrets (not pure:
//!                                    made from the stored ones, see credential::plan)
//! ```
//!
//! Every child carries the cluster's labels and a controller owner reference, so deleting
//! the ActorCluster lets the garbage collector remove it. Nothing here talks to the API
//! server; [`crate::controller`] applies what these functions return.

pub mod autoscaling;
pub mod credential;
pub mod deployment;
pub mod disruption;
pub mod network;
pub mod rbac;
pub mod services;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use troupe_contract::labels;

use crate::crd::ActorCluster;
use crate::validate::ValidSpec;

/// Why the children of an ActorCluster cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The object lacks the name, namespace or uid an owner reference needs; only objects
    /// read from the API server can own children.
    #[error("ActorCluster lacks metadata.{0}; only stored objects can be reconciled")]
    MissingMetadata(&'static str),
}

/// Who owns the children: name, namespace and owner reference of the ActorCluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    /// The ActorCluster's name; also the name of most children.
    pub name: String,
    /// The namespace of the ActorCluster and of every child.
    pub namespace: String,
    /// A controller owner reference to the ActorCluster.
    pub reference: OwnerReference,
}

impl Owner {
    /// Takes name, namespace and uid from a stored ActorCluster.
    pub fn of(ac: &ActorCluster) -> Result<Self, BuildError> {
        let name = ac
            .metadata
            .name
            .clone()
            .ok_or(BuildError::MissingMetadata("name"))?;
        let namespace = ac
            .metadata
            .namespace
            .clone()
            .ok_or(BuildError::MissingMetadata("namespace"))?;
        let reference = ac
            .controller_owner_ref(&())
            .ok_or(BuildError::MissingMetadata("uid"))?;
        Ok(Self {
            name,
            namespace,
            reference,
        })
    }

    /// Labels of every child: the node selector plus `managed-by`.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut l = self.selector();
        l.insert(
            labels::MANAGED_BY.to_owned(),
            labels::MANAGED_BY_VALUE.to_owned(),
        );
        l
    }

    /// The selector labels of the node pods.
    pub fn selector(&self) -> BTreeMap<String, String> {
        labels::node_selector_pairs(&self.name)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    }

    /// Metadata of a child called `name`: namespace, labels and owner reference.
    pub fn meta(&self, name: impl Into<String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            owner_references: Some(vec![self.reference.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// Name of the node ServiceAccount and its RoleBinding.
    pub fn node_account_name(&self) -> String {
        format!("{}-node", self.name)
    }

    /// Name of the headless peer Service.
    pub fn peer_service_name(&self) -> String {
        format!("{}-peers", self.name)
    }
}

/// Everything one ActorCluster consists of.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    /// The node ServiceAccount.
    pub service_account: ServiceAccount,
    /// Binds the chart's node ClusterRole to [`Children::service_account`] in the namespace.
    pub role_binding: RoleBinding,
    /// The headless peer Service.
    pub peer_service: Service,
    /// The client Service.
    pub client_service: Service,
    /// The node Deployment.
    pub deployment: Deployment,
    /// The PodDisruptionBudget.
    pub pdb: PodDisruptionBudget,
    /// The HPA, when autoscaling is on; `None` means "delete it if it exists".
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// The NetworkPolicy, unless turned off; `None` means "delete it if it exists".
    pub network_policy: Option<NetworkPolicy>,
}

/// Where the operator runs, as far as the children need to know.
#[derive(Debug, Clone, Copy)]
pub struct Site<'a> {
    /// The operator's namespace (its pods may scrape the nodes' management port).
    pub operator_namespace: &'a str,
    /// The chart's node ClusterRole, bound to each cluster's node ServiceAccount.
    pub node_cluster_role: &'a str,
}

/// Builds every child of `owner` from `spec`, for an operator at `site`.
pub fn desired_children(owner: &Owner, spec: &ValidSpec<'_>, site: Site<'_>) -> Children {
    let operator_namespace = site.operator_namespace;
    Children {
        service_account: rbac::desired_service_account(owner, spec.spec),
        role_binding: rbac::desired_role_binding(owner, site.node_cluster_role),
        peer_service: services::desired_peer_service(owner),
        client_service: services::desired_client_service(owner),
        deployment: deployment::desired_deployment(owner, spec),
        pdb: disruption::desired_pdb(owner),
        hpa: autoscaling::desired_hpa(owner, spec.spec),
        network_policy: network::desired_network_policy(
            owner,
            &spec.spec.network,
            operator_namespace,
        ),
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! A stored-looking ActorCluster for the builder tests.

    use super::*;
    use crate::crd::ActorClusterSpec;

    pub fn cluster(spec: ActorClusterSpec) -> ActorCluster {
        let mut ac = ActorCluster::new("orders", spec);
        ac.metadata.namespace = Some("shop".into());
        ac.metadata.uid = Some("uid-1".into());
        ac.metadata.generation = Some(1);
        ac
    }

    pub fn owner() -> Owner {
        Owner::of(&cluster(ActorClusterSpec::default())).expect("owner")
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use crate::crd::{ActorClusterSpec, AutoscalingSpec};
    use crate::validate::validate;

    const SITE: Site<'static> = Site {
        operator_namespace: "troupe-system",
        node_cluster_role: "troupe-node",
    };

    #[test]
    fn owner_needs_name_namespace_and_uid() {
        let mut ac = cluster(ActorClusterSpec::default());
        ac.metadata.uid = None;
        assert_eq!(Owner::of(&ac), Err(BuildError::MissingMetadata("uid")));
        let mut ac = cluster(ActorClusterSpec::default());
        ac.metadata.namespace = None;
        assert_eq!(
            Owner::of(&ac),
            Err(BuildError::MissingMetadata("namespace"))
        );
    }

    #[test]
    fn owner_reference_is_a_blocking_controller_reference() {
        let o = owner();
        assert_eq!(o.reference.kind, "ActorCluster");
        assert_eq!(o.reference.api_version, "troupe.dev/v1alpha1");
        assert_eq!(o.reference.uid, "uid-1");
        assert_eq!(o.reference.controller, Some(true));
    }

    #[test]
    fn every_child_is_owned_labelled_and_in_the_namespace() {
        let spec = ActorClusterSpec {
            autoscaling: Some(AutoscalingSpec {
                min_replicas: 1,
                max_replicas: 3,
                target_mailbox_depth: 10,
                behavior: None,
            }),
            ..Default::default()
        };
        let valid = validate(&spec, "img:1").expect("valid");
        let c = desired_children(&owner(), &valid, SITE);
        let metas = [
            &c.service_account.metadata,
            &c.role_binding.metadata,
            &c.peer_service.metadata,
            &c.client_service.metadata,
            &c.deployment.metadata,
            &c.pdb.metadata,
            &c.hpa.as_ref().expect("hpa").metadata,
        ];
        for m in metas {
            assert_eq!(m.namespace.as_deref(), Some("shop"));
            assert_eq!(m.owner_references.as_ref().map(Vec::len), Some(1));
            let labels = m.labels.as_ref().expect("labels");
            assert_eq!(
                labels.get(labels::INSTANCE).map(String::as_str),
                Some("orders")
            );
            assert_eq!(
                labels.get(labels::MANAGED_BY).map(String::as_str),
                Some("troupe-operator")
            );
        }
    }

    #[test]
    fn no_hpa_without_autoscaling() {
        let spec = ActorClusterSpec::default();
        let valid = validate(&spec, "img:1").expect("valid");
        assert!(desired_children(&owner(), &valid, SITE).hpa.is_none());
    }
}
