//! The documents of `custom.metrics.k8s.io/v1beta2`: discovery (`APIGroupList`, `APIGroup`,
//! `APIResourceList`), `MetricValueList` and `Status` errors. Pure builders, no I/O.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Serialize;
use serde_json::{Value, json};

use super::cache::PodDepth;
use super::quantity;
use super::{GROUP, METRIC, VERSION};

/// `custom.metrics.k8s.io/v1beta2`.
pub fn group_version() -> String {
    format!("{GROUP}/{VERSION}")
}

fn group() -> Value {
    let gv = json!({ "groupVersion": group_version(), "version": VERSION });
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": GROUP,
        "versions": [gv.clone()],
        "preferredVersion": gv,
    })
}

/// `GET /apis`.
pub fn api_group_list() -> Value {
    let mut g = group();
    if let Some(o) = g.as_object_mut() {
        o.remove("kind");
        o.remove("apiVersion");
    }
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": [g] })
}

/// `GET /apis/custom.metrics.k8s.io`.
pub fn api_group() -> Value {
    group()
}

/// `GET /apis/custom.metrics.k8s.io/v1beta2`: the one metric this server has, on pods.
pub fn api_resource_list() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version(),
        "resources": [{
            "name": format!("pods/{METRIC}"),
            "singularName": "",
            "namespaced": true,
            "kind": "MetricValueList",
            "verbs": ["get"],
        }],
    })
}

/// `describedObject` of a metric value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribedObject {
    /// Always `Pod`.
    pub kind: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// Always `/v1` (core group).
    pub api_version: String,
}

/// `metric` of a metric value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricIdentifier {
    /// The metric name.
    pub name: String,
    /// The metric's label selector; always `null` here (the metric has no labels).
    pub selector: Option<Value>,
}

/// One `MetricValue`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricValue {
    /// The pod the value describes.
    pub described_object: DescribedObject,
    /// Which metric.
    pub metric: MetricIdentifier,
    /// When the value was read.
    pub timestamp: Time,
    /// Over what window (the scrape interval).
    pub window_seconds: i64,
    /// The value as a Kubernetes quantity.
    pub value: String,
}

/// A `MetricValueList`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricValueList {
    /// `MetricValueList`.
    pub kind: &'static str,
    /// `custom.metrics.k8s.io/v1beta2`.
    pub api_version: String,
    /// Empty list metadata.
    pub metadata: Value,
    /// One value per pod.
    pub items: Vec<MetricValue>,
}

/// The `MetricValueList` for `pods`; pods whose value is not finite are left out.
pub fn metric_value_list(pods: &[PodDepth], window_seconds: i64) -> MetricValueList {
    let items = pods
        .iter()
        .filter_map(|d| {
            let value = quantity::format(d.sample.value)?;
            let timestamp = k8s_openapi::jiff::Timestamp::try_from(d.sample.at).ok()?;
            Some(MetricValue {
                described_object: DescribedObject {
                    kind: "Pod".into(),
                    namespace: d.pod.namespace.clone(),
                    name: d.pod.name.clone(),
                    api_version: "/v1".into(),
                },
                metric: MetricIdentifier {
                    name: METRIC.into(),
                    selector: None,
                },
                timestamp: Time(timestamp),
                window_seconds,
                value,
            })
        })
        .collect();
    MetricValueList {
        kind: "MetricValueList",
        api_version: group_version(),
        metadata: json!({}),
        items,
    }
}

/// A `Status` failure with HTTP `code`, `reason` (`NotFound`, `Forbidden`, ...) and a
/// message that says what to do.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::custom_metrics::cache::{DepthSample, tests::target};
    use std::time::{Duration, SystemTime};

    #[test]
    fn metric_value_list_has_the_shape_the_hpa_reads() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let pods = [
            PodDepth {
                pod: target("shop", "orders-1", "orders"),
                sample: DepthSample { value: 12.0, at },
            },
            PodDepth {
                pod: target("shop", "orders-2", "orders"),
                sample: DepthSample { value: 0.5, at },
            },
            PodDepth {
                pod: target("shop", "orders-3", "orders"),
                sample: DepthSample {
                    value: f64::NAN,
                    at,
                },
            },
        ];
        let v = serde_json::to_value(metric_value_list(&pods, 2)).expect("json");
        assert_eq!(v["kind"], "MetricValueList");
        assert_eq!(v["apiVersion"], "custom.metrics.k8s.io/v1beta2");
        let items = v["items"].as_array().expect("items");
        assert_eq!(items.len(), 2, "NaN is left out");
        assert_eq!(
            items[0]["describedObject"],
            json!({"kind": "Pod", "namespace": "shop", "name": "orders-1", "apiVersion": "/v1"})
        );
        assert_eq!(
            items[0]["metric"],
            json!({"name": "troupe_mailbox_depth", "selector": null})
        );
        assert_eq!(items[0]["value"], "12");
        assert_eq!(items[1]["value"], "500m");
        assert_eq!(items[0]["windowSeconds"], 2);
        assert_eq!(items[0]["timestamp"], "2023-11-14T22:13:20Z");
    }

    #[test]
    fn discovery_names_the_pods_metric() {
        let r = api_resource_list();
        assert_eq!(r["groupVersion"], "custom.metrics.k8s.io/v1beta2");
        assert_eq!(r["resources"][0]["name"], "pods/troupe_mailbox_depth");
        assert_eq!(r["resources"][0]["namespaced"], true);
        let g = api_group_list();
        assert_eq!(g["groups"][0]["name"], "custom.metrics.k8s.io");
        assert_eq!(g["groups"][0]["preferredVersion"]["version"], "v1beta2");
        assert!(g["groups"][0].get("kind").is_none());
        assert_eq!(api_group()["kind"], "APIGroup");
        assert_eq!(status(404, "NotFound", "x")["code"], 404);
    }
}
