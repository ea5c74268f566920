//! The HorizontalPodAutoscaler: scales the ActorCluster itself (through its `/scale`
//! subresource) on the per-pod mailbox depth. The operator then propagates
//! `spec.replicas` to the Deployment, so the Deployment has exactly one replica writer.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
    MetricIdentifier, MetricSpec, MetricTarget, PodsMetricSource,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use troupe_contract::metrics;

use super::Owner;
use crate::crd::ActorClusterSpec;

/// The HPA `<name>`, or `None` when `spec.autoscaling` is absent.
pub fn desired_hpa(owner: &Owner, spec: &ActorClusterSpec) -> Option<HorizontalPodAutoscaler> {
    let a = spec.autoscaling.as_ref()?;
    Some(HorizontalPodAutoscaler {
        metadata: owner.meta(owner.name.clone()),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some(owner.reference.api_version.clone()),
                kind: owner.reference.kind.clone(),
                name: owner.name.clone(),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Pods".to_owned(),
                pods: Some(PodsMetricSource {
                    metric: MetricIdentifier {
                        name: metrics::MAILBOX_DEPTH.to_owned(),
                        selector: None,
                    },
                    target: MetricTarget {
                        type_: "AverageValue".to_owned(),
                        average_value: Some(Quantity(a.target_mailbox_depth.to_string())),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            behavior: a.behavior.clone(),
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::owner;
    use crate::crd::AutoscalingSpec;
    use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscalerBehavior};

    fn spec(behavior: Option<HorizontalPodAutoscalerBehavior>) -> ActorClusterSpec {
        ActorClusterSpec {
            replicas: 2,
            autoscaling: Some(AutoscalingSpec {
                min_replicas: 2,
                max_replicas: 10,
                target_mailbox_depth: 100,
                behavior,
            }),
            ..ActorClusterSpec::default()
        }
    }

    #[test]
    fn targets_the_actor_cluster_scale_on_mailbox_depth() {
        let hpa = desired_hpa(&owner(), &spec(None)).expect("hpa");
        let s = hpa.spec.expect("spec");
        assert_eq!(s.scale_target_ref.kind, "ActorCluster");
        assert_eq!(
            s.scale_target_ref.api_version.as_deref(),
            Some("troupe.dev/v1alpha1")
        );
        assert_eq!(s.scale_target_ref.name, "orders");
        assert_eq!((s.min_replicas, s.max_replicas), (Some(2), 10));
        let m = &s.metrics.expect("metrics")[0];
        assert_eq!(m.type_, "Pods");
        let pods = m.pods.as_ref().expect("pods");
        assert_eq!(pods.metric.name, "troupe_mailbox_depth");
        assert_eq!(pods.target.type_, "AverageValue");
        assert_eq!(pods.target.average_value, Some(Quantity("100".into())));
        assert!(s.behavior.is_none());
    }

    #[test]
    fn behavior_is_passed_through_as_is() {
        let behavior = HorizontalPodAutoscalerBehavior {
            scale_down: Some(HPAScalingRules {
                stabilization_window_seconds: Some(30),
                ..HPAScalingRules::default()
            }),
            ..HorizontalPodAutoscalerBehavior::default()
        };
        let hpa = desired_hpa(&owner(), &spec(Some(behavior.clone()))).expect("hpa");
        assert_eq!(hpa.spec.and_then(|s| s.behavior), Some(behavior));
    }

    #[test]
    fn absent_without_autoscaling() {
        assert!(desired_hpa(&owner(), &ActorClusterSpec::default()).is_none());
    }
}
