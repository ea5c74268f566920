//! The NetworkPolicy `<name>`: who may reach an ActorCluster's node pods.
//!
//! ```text
//!  same cluster's pods ──► 25520 transport, 8558 management
//!  the operator        ──► 8558 (depth scrape of /metrics)
//!  spec.network.metricsFrom ► 8558
//!  spec.network.clientFrom  ► 8080 client API (absent: anyone)
//!  anything else       ──✗  (including the sidecar app's port)
//! ```
//!
//! Ingress only; the policy is defence in depth behind mutual TLS and the management token
//! (SECURITY.md), and only as strong as the network plugin that enforces it.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;
use troupe_contract::ports;

use super::Owner;
use crate::crd::NetworkSpec;

/// The label every namespace carries with its own name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// The operator pods' name label (charts/troupe `troupe.selectorLabels`).
pub const OPERATOR_NAME_LABEL: (&str, &str) = ("app.kubernetes.io/name", "troupe-operator");

fn port(p: u16) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(p))),
        protocol: Some("TCP".to_owned()),
        ..NetworkPolicyPort::default()
    }
}

fn selector(labels: BTreeMap<String, String>) -> Option<LabelSelector> {
    Some(LabelSelector {
        match_labels: Some(labels),
        ..LabelSelector::default()
    })
}

/// The policy of `owner` when `network.policy` is on (`None`: delete it if it exists);
/// `operator_namespace` is where the operator runs.
pub fn desired_network_policy(
    owner: &Owner,
    network: &NetworkSpec,
    operator_namespace: &str,
) -> Option<NetworkPolicy> {
    if !network.policy {
        return None;
    }
    let members = NetworkPolicyPeer {
        pod_selector: selector(owner.selector()),
        ..NetworkPolicyPeer::default()
    };
    let operator = NetworkPolicyPeer {
        namespace_selector: selector(BTreeMap::from([(
            NAMESPACE_NAME_LABEL.to_owned(),
            operator_namespace.to_owned(),
        )])),
        pod_selector: selector(BTreeMap::from([(
            OPERATOR_NAME_LABEL.0.to_owned(),
            OPERATOR_NAME_LABEL.1.to_owned(),
        )])),
        ..NetworkPolicyPeer::default()
    };
    let mut management_from = vec![operator];
    management_from.extend(network.metrics_from.iter().flatten().cloned());
    Some(NetworkPolicy {
        metadata: owner.meta(owner.name.clone()),
        spec: Some(NetworkPolicySpec {
            pod_selector: selector(owner.selector()),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![members]),
                    ports: Some(vec![port(ports::TRANSPORT), port(ports::MANAGEMENT)]),
                },
                NetworkPolicyIngressRule {
                    from: Some(management_from),
                    ports: Some(vec![port(ports::MANAGEMENT)]),
                },
                NetworkPolicyIngressRule {
                    // No `from`: every source.
                    from: network.client_from.clone(),
                    ports: Some(vec![port(ports::CLIENT)]),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::owner;
    use super::*;

    fn rules(p: &NetworkPolicy) -> Vec<NetworkPolicyIngressRule> {
        p.spec
            .as_ref()
            .and_then(|s| s.ingress.clone())
            .unwrap_or_default()
    }

    fn ports_of(r: &NetworkPolicyIngressRule) -> Vec<i32> {
        r.ports
            .iter()
            .flatten()
            .filter_map(|p| match p.port {
                Some(IntOrString::Int(n)) => Some(n),
                _ => None,
            })
            .collect()
    }

    /// Every rule that lets `port` in.
    fn admitting(p: &NetworkPolicy, port: u16) -> Vec<NetworkPolicyIngressRule> {
        rules(p)
            .into_iter()
            .filter(|r| ports_of(r).contains(&i32::from(port)))
            .collect()
    }

    #[test]
    fn transport_only_from_the_clusters_own_pods() {
        let p = desired_network_policy(&owner(), &NetworkSpec::default(), "troupe-system")
            .expect("on by default");
        let spec = p.spec.as_ref().expect("spec");
        assert_eq!(spec.pod_selector, selector(owner().selector()));
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_owned()]));
        let transport = admitting(&p, ports::TRANSPORT);
        assert_eq!(transport.len(), 1);
        let from = transport[0].from.clone().expect("restricted");
        assert_eq!(from.len(), 1);
        assert_eq!(from[0].pod_selector, selector(owner().selector()));
        assert!(from[0].namespace_selector.is_none(), "same namespace only");
    }

    #[test]
    fn management_from_members_and_the_operator_client_from_anyone() {
        let p = desired_network_policy(&owner(), &NetworkSpec::default(), "ops").expect("on");
        let management: Vec<NetworkPolicyPeer> = admitting(&p, ports::MANAGEMENT)
            .into_iter()
            .flat_map(|r| r.from.expect("restricted"))
            .collect();
        assert_eq!(management.len(), 2);
        let op = &management[1];
        assert_eq!(
            op.namespace_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                .and_then(|l| l.get(NAMESPACE_NAME_LABEL))
                .map(String::as_str),
            Some("ops")
        );
        let client = admitting(&p, ports::CLIENT);
        assert_eq!(client.len(), 1);
        assert!(
            client[0].from.is_none(),
            "the client port is open by default"
        );
        // Nothing else is admitted (e.g. the sidecar app's port).
        let all: Vec<i32> = rules(&p).iter().flat_map(ports_of).collect();
        assert!(
            all.iter().all(|p| [8080, 8558, 25520].contains(p)),
            "{all:?}"
        );
    }

    #[test]
    fn the_spec_narrows_clients_widens_metrics_or_turns_it_off() {
        let prometheus = NetworkPolicyPeer {
            namespace_selector: selector(BTreeMap::from([(
                NAMESPACE_NAME_LABEL.to_owned(),
                "monitoring".to_owned(),
            )])),
            ..NetworkPolicyPeer::default()
        };
        let spec = NetworkSpec {
            policy: true,
            client_from: Some(vec![prometheus.clone()]),
            metrics_from: Some(vec![prometheus.clone()]),
        };
        let p = desired_network_policy(&owner(), &spec, "ops").expect("on");
        assert_eq!(
            admitting(&p, ports::CLIENT)[0].from,
            Some(vec![prometheus.clone()])
        );
        let management: Vec<NetworkPolicyPeer> = admitting(&p, ports::MANAGEMENT)
            .into_iter()
            .flat_map(|r| r.from.unwrap_or_default())
            .collect();
        assert!(management.contains(&prometheus));
        assert!(
            !admitting(&p, ports::TRANSPORT)[0]
                .from
                .iter()
                .flatten()
                .any(|f| *f == prometheus)
        );
        let off = NetworkSpec {
            policy: false,
            ..NetworkSpec::default()
        };
        assert!(desired_network_policy(&owner(), &off, "ops").is_none());
    }
}
