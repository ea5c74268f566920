//! Drift detection: does an observed object already hold everything we would apply?
//!
//! A resync of a converged ActorCluster must make zero write calls, so before every
//! server-side apply the controller asks [`converged`]: is the desired object (as JSON) a
//! *subset* of the observed one? The API server adds defaults (extra fields) and other
//! controllers add status, so only the fields we set are compared:
//!
//! * objects: every key we set must be present and converged; a key we set to an empty
//!   value (`null`, `{}`, `[]`) may be absent;
//! * arrays: same length, element by element (a hand-added container or port is drift);
//! * scalars: equal, with two normalisations the API server performs: numbers compare by
//!   value, and Kubernetes quantities compare by value (`1000` and `1k`).
//!
//! A hand-edited field (say the image) breaks the subset and is put back by the next apply.
//! What this cannot normalise is caught by the controller's apply memo (see
//! [`crate::controller`]).

use serde::Serialize;
use serde_json::Value;

/// Whether `observed` already holds every field of `desired`.
pub fn converged<K: Serialize>(desired: &K, observed: &K) -> bool {
    match (
        serde_json::to_value(desired),
        serde_json::to_value(observed),
    ) {
        (Ok(d), Ok(o)) => is_subset(&d, &o),
        // Unserialisable objects cannot be compared: apply them.
        _ => false,
    }
}

/// Whether `observed` holds every field of `desired` (see the module docs).
pub fn is_subset(desired: &Value, observed: &Value) -> bool {
    match (desired, observed) {
        (Value::Null, _) => true,
        (Value::Object(d), Value::Object(o)) => d.iter().all(|(k, dv)| match o.get(k) {
            Some(ov) => is_subset(dv, ov),
            None => is_empty(dv),
        }),
        (Value::Array(d), Value::Array(o)) => {
            d.len() == o.len() && d.iter().zip(o).all(|(dv, ov)| is_subset(dv, ov))
        }
        (Value::Object(d), Value::Null) => d.values().all(is_empty),
        (Value::Array(d), Value::Null) => d.is_empty(),
        (Value::Number(d), Value::Number(o)) => d.as_f64() == o.as_f64(),
        (Value::String(d), Value::String(o)) => d == o || same_quantity(d, o),
        (d, o) => d == o,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.values().all(is_empty),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Whether two strings are the same Kubernetes quantity written differently.
fn same_quantity(a: &str, b: &str) -> bool {
    match (quantity_value(a), quantity_value(b)) {
        (Some(x), Some(y)) => (x - y).abs() <= f64::EPSILON * x.abs().max(y.abs()).max(1.0),
        _ => false,
    }
}

/// The value of a quantity such as `500m`, `1.5`, `1k`, `64Mi`, `1e3`; `None` if it is not one.
fn quantity_value(s: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 14] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
    ];
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    for (suffix, factor) in SUFFIXES {
        if let Some(number) = s.strip_suffix(suffix) {
            return plain_number(number).map(|n| n * factor);
        }
    }
    if let Some(number) = s.strip_suffix('E') {
        return plain_number(number).map(|n| n * 1e18);
    }
    plain_number(s)
}

fn plain_number(s: &str) -> Option<f64> {
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '+' | '-' | 'e' | 'E'));
    if ok { s.parse().ok() } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_defaults_are_not_drift() {
        let desired =
            json!({"spec": {"replicas": 3, "template": {"containers": [{"name": "node"}]}}});
        let observed = json!({"spec": {"replicas": 3, "progressDeadlineSeconds": 600,
            "template": {"containers": [{"name": "node", "terminationMessagePath": "/dev/termination-log"}]}},
            "status": {"readyReplicas": 3}});
        assert!(is_subset(&desired, &observed));
    }

    #[test]
    fn a_changed_scalar_is_drift() {
        let desired = json!({"spec": {"template": {"containers": [{"image": "node:1"}]}}});
        let observed = json!({"spec": {"template": {"containers": [{"image": "evil:2"}]}}});
        assert!(!is_subset(&desired, &observed));
    }

    #[test]
    fn a_missing_field_is_drift_unless_empty() {
        assert!(!is_subset(&json!({"a": 1}), &json!({})));
        assert!(is_subset(
            &json!({"a": {}, "b": [], "c": null, "d": {"e": []}}),
            &json!({})
        ));
    }

    #[test]
    fn a_different_list_length_is_drift() {
        assert!(!is_subset(&json!({"p": [1, 2]}), &json!({"p": [1, 2, 3]})));
        assert!(!is_subset(&json!({"p": [1, 2]}), &json!({"p": [1]})));
    }

    #[test]
    fn quantities_compare_by_value() {
        assert!(is_subset(&json!("1000"), &json!("1k")));
        assert!(is_subset(&json!("0.5"), &json!("500m")));
        assert!(is_subset(&json!("1024Mi"), &json!("1Gi")));
        assert!(!is_subset(&json!("100"), &json!("1k")));
        assert!(!is_subset(&json!("node:1"), &json!("node:2")));
        assert!(!is_subset(&json!("Ki"), &json!("1Ki")));
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(is_subset(&json!(1), &json!(1.0)));
        assert!(!is_subset(&json!(1), &json!("1x")));
    }

    #[test]
    fn typed_objects_compare_through_json() {
        use k8s_openapi::api::core::v1::Service;
        let desired: Service = serde_json::from_value(json!({
            "metadata": {"name": "s", "labels": {"a": "b"}},
            "spec": {"clusterIP": "None", "ports": [{"port": 80, "name": "http"}]}
        }))
        .expect("service");
        let mut observed = desired.clone();
        observed.metadata.resource_version = Some("42".into());
        assert!(converged(&desired, &observed));
        observed.metadata.labels = None;
        assert!(!converged(&desired, &observed));
    }
}
