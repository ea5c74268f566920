//! The ActorCluster reference, `docs/reference/actorcluster.md`: the CRD rendered to
//! Markdown, so that the document can never say something the API server does not enforce.
//!
//! ```text
//!  crd::ActorCluster ──crd()──► CustomResourceDefinition ──► reference_markdown ──► crddoc ──► docs/reference/actorcluster.md
//!                                 (names, scale, columns,       (pure)                (bin)     (`make crds`; `make lint` diffs it)
//!                                  openAPIV3Schema)
//! ```
//!
//! Every field path of the `openAPIV3Schema` is listed with its type, bounds, default,
//! whether it is required, its description and its validation rules (CEL rule, message,
//! field path). An embedded Kubernetes type (a `Volume`, a `Probe`, ...) is named and linked
//! to the Kubernetes API reference instead of being unrolled: its fields are Kubernetes'.
//! It is recognised by its property names, which this module takes from k8s-openapi's own
//! schema of each type Troupe embeds ([`kubernetes_types`]). Owns no I/O.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use schemars::JsonSchema;
use serde_json::Value;

/// The Kubernetes API reference the embedded types link to.
pub const KUBERNETES_API_REFERENCE: &str =
    "https://kubernetes.io/docs/reference/generated/kubernetes-api/v1.34/";

/// Why the reference cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The CRD has no version with an `openAPIV3Schema`.
    #[error("the CRD has no version with an openAPIV3Schema")]
    NoSchema,
    /// The schema could not be turned into JSON.
    #[error("the CRD's schema cannot be read as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// A Kubernetes type embedded in the ActorCluster schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesType {
    /// The kind of the type, `Volume`.
    pub name: &'static str,
    /// Its API group as the API reference's anchors spell it: `core`, `autoscaling`,
    /// `networking-k8s-io`, `meta`.
    pub group: &'static str,
    /// Its version, `v1`.
    pub version: &'static str,
    /// The names of its properties, from k8s-openapi's schema.
    pub properties: BTreeSet<String>,
}

impl KubernetesType {
    fn of<T: JsonSchema>(name: &'static str, group: &'static str, version: &'static str) -> Self {
        let schema = serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default();
        let properties = schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        Self {
            name,
            group,
            version,
            properties,
        }
    }

    /// The type's entry in the Kubernetes API reference.
    pub fn link(&self) -> String {
        format!(
            "{KUBERNETES_API_REFERENCE}#{}-{}-{}",
            self.name.to_lowercase(),
            self.version,
            self.group
        )
    }

    /// `core/v1 Volume`.
    pub fn title(&self) -> String {
        let group = match self.group {
            "core" | "meta" => self.group.to_owned(),
            g => g.replace("-k8s-io", ".k8s.io"),
        };
        format!("{group}/{} {}", self.version, self.name)
    }
}

/// Every Kubernetes type the ActorCluster schema embeds. One missing here would be unrolled
/// field by field (the tests bound the reference's length to notice).
pub fn kubernetes_types() -> Vec<KubernetesType> {
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior;
    use k8s_openapi::api::core::v1::{
        Affinity, EnvVar, Probe, ResourceRequirements, Toleration, TopologySpreadConstraint,
        Volume, VolumeMount,
    };
    use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    vec![
        KubernetesType::of::<Affinity>("Affinity", "core", "v1"),
        KubernetesType::of::<EnvVar>("EnvVar", "core", "v1"),
        KubernetesType::of::<Probe>("Probe", "core", "v1"),
        KubernetesType::of::<ResourceRequirements>("ResourceRequirements", "core", "v1"),
        KubernetesType::of::<Toleration>("Toleration", "core", "v1"),
        KubernetesType::of::<TopologySpreadConstraint>("TopologySpreadConstraint", "core", "v1"),
        KubernetesType::of::<Volume>("Volume", "core", "v1"),
        KubernetesType::of::<VolumeMount>("VolumeMount", "core", "v1"),
        KubernetesType::of::<NetworkPolicyPeer>("NetworkPolicyPeer", "networking-k8s-io", "v1"),
        KubernetesType::of::<HorizontalPodAutoscalerBehavior>(
            "HorizontalPodAutoscalerBehavior",
            "autoscaling",
            "v2",
        ),
        KubernetesType::of::<Condition>("Condition", "meta", "v1"),
    ]
}

/// One documented field.
struct Field<'a> {
    path: String,
    schema: &'a Value,
    required: bool,
}

/// The reference of `crd` as Markdown.
pub fn reference_markdown(crd: &CustomResourceDefinition) -> Result<String, ReferenceError> {
    let version = crd
        .spec
        .versions
        .iter()
        .find(|v| {
            v.schema
                .as_ref()
                .is_some_and(|s| s.open_api_v3_schema.is_some())
        })
        .ok_or(ReferenceError::NoSchema)?;
    let schema = serde_json::to_value(
        version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .ok_or(ReferenceError::NoSchema)?,
    )?;
    let kinds = kubernetes_types();
    let names = &crd.spec.names;
    let mut out = String::new();
    let w = &mut out;
    // Writing to a String cannot fail.
    let _ = writeln!(w, "# {} reference", names.kind);
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "<!-- Generated by `make crds` (operator/src/bin/crddoc.rs) from the CRD; do not edit. -->"
    );
    let _ = writeln!(w);
    if let Some(d) = schema.get("description").and_then(Value::as_str) {
        let _ = writeln!(w, "{d}");
        let _ = writeln!(w);
    }
    let _ = writeln!(w, "| | |");
    let _ = writeln!(w, "|---|---|");
    let _ = writeln!(w, "| API version | `{}/{}` |", crd.spec.group, version.name);
    let _ = writeln!(w, "| kind | `{}` ({}) |", names.kind, crd.spec.scope);
    let _ = writeln!(
        w,
        "| plural, singular | `{}`, `{}` |",
        names.plural,
        names.singular.as_deref().unwrap_or("")
    );
    if let Some(short) = &names.short_names {
        let _ = writeln!(w, "| short names | {} |", code_list(short));
    }
    if let Some(categories) = &names.categories {
        let _ = writeln!(w, "| categories | {} |", code_list(categories));
    }
    if let Some(sub) = &version.subresources {
        let mut parts = Vec::new();
        if sub.status.is_some() {
            parts.push("`status`".to_owned());
        }
        if let Some(scale) = &sub.scale {
            parts.push(format!(
                "`scale` (replicas `{}`, status replicas `{}`{})",
                scale.spec_replicas_path,
                scale.status_replicas_path,
                scale
                    .label_selector_path
                    .as_ref()
                    .map(|s| format!(", selector `{s}`"))
                    .unwrap_or_default()
            ));
        }
        let _ = writeln!(w, "| subresources | {} |", parts.join(", "));
    }
    let _ = writeln!(w);

    if let Some(columns) = version
        .additional_printer_columns
        .as_ref()
        .filter(|c| !c.is_empty())
    {
        let _ = writeln!(w, "## `kubectl get {}` columns", names.plural);
        let _ = writeln!(w);
        let _ = writeln!(w, "| column | type | JSON path | description |");
        let _ = writeln!(w, "|---|---|---|---|");
        for c in columns {
            let _ = writeln!(
                w,
                "| {} | {} | `{}` | {} |",
                c.name,
                c.type_,
                c.json_path,
                cell(c.description.as_deref().unwrap_or(""))
            );
        }
        let _ = writeln!(w);
    }

    let mut fields = Vec::new();
    collect(&schema, "", &kinds, &mut fields);
    let mut section = "";
    for f in &fields {
        let top = f.path.split(['.', '[']).next().unwrap_or_default();
        if top != section {
            section = top;
            let _ = writeln!(w, "## `{top}`");
            let _ = writeln!(w);
        }
        field_markdown(w, f, &kinds);
    }
    Ok(out.trim_end().to_owned() + "\n")
}

/// Every field below `schema` at `path`, depth first in property order, not descending into
/// embedded Kubernetes types.
fn collect<'a>(schema: &'a Value, path: &str, kinds: &[KubernetesType], out: &mut Vec<Field<'a>>) {
    let required: BTreeSet<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, child) in properties {
        let child_path = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        out.push(Field {
            path: child_path.clone(),
            schema: child,
            required: required.contains(name.as_str()),
        });
        descend(child, &child_path, kinds, out);
    }
}

fn descend<'a>(schema: &'a Value, path: &str, kinds: &[KubernetesType], out: &mut Vec<Field<'a>>) {
    if kubernetes_type(schema, kinds).is_some() {
        return;
    }
    if let Some(items) = schema.get("items") {
        descend(items, &format!("{path}[]"), kinds, out);
    } else if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        descend(values, &format!("{path}.*"), kinds, out);
    } else {
        collect(schema, path, kinds, out);
    }
}

/// The Kubernetes type `schema` is, known by its property names.
fn kubernetes_type<'k>(schema: &Value, kinds: &'k [KubernetesType]) -> Option<&'k KubernetesType> {
    let properties: BTreeSet<String> = schema
        .get("properties")
        .and_then(Value::as_object)?
        .keys()
        .cloned()
        .collect();
    kinds.iter().find(|k| k.properties == properties)
}

/// `integer (int32)`, `array of string`, `map of string to string`, `core/v1 Volume`.
fn type_of(schema: &Value, kinds: &[KubernetesType]) -> String {
    if let Some(k) = kubernetes_type(schema, kinds) {
        return format!("[{}]({})", k.title(), k.link());
    }
    if schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
    {
        return "integer or string".to_owned();
    }
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("any");
    match ty {
        "array" => match schema.get("items") {
            Some(items) => format!("array of {}", type_of(items, kinds)),
            None => "array".to_owned(),
        },
        "object" => match schema.get("additionalProperties") {
            Some(values) if values.is_object() => {
                format!("map of string to {}", type_of(values, kinds))
            }
            _ => "object".to_owned(),
        },
        _ => match schema.get("format").and_then(Value::as_str) {
            Some(format) => format!("{ty} ({format})"),
            None => ty.to_owned(),
        },
    }
}

fn field_markdown(w: &mut String, f: &Field<'_>, kinds: &[KubernetesType]) {
    let s = f.schema;
    let _ = writeln!(w, "### `{}`", f.path);
    let _ = writeln!(w);
    let mut facts = vec![type_of(s, kinds)];
    facts.push(if f.required { "required" } else { "optional" }.to_owned());
    if let Some(d) = s.get("default") {
        facts.push(format!("default `{}`", compact(d)));
    }
    if let Some(values) = s.get("enum").and_then(Value::as_array) {
        let values: Vec<String> = values.iter().map(compact).collect();
        facts.push(format!("one of {}", code_list(&values)));
    }
    for (key, label, unit) in [
        ("minimum", "minimum", ""),
        ("maximum", "maximum", ""),
        ("minLength", "at least", "character"),
        ("maxLength", "at most", "character"),
        ("minItems", "at least", "item"),
        ("maxItems", "at most", "item"),
        ("maxProperties", "at most", "entry"),
    ] {
        if let Some(v) = s.get(key) {
            facts.push(format!("{label} {}", counted(v, unit)));
        }
    }
    if let Some(inner) = s.get("items").and_then(|i| i.get("maxLength")) {
        facts.push(format!("items at most {}", counted(inner, "character")));
    }
    if s.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map") {
        let keys: Vec<String> = s
            .get("x-kubernetes-list-map-keys")
            .and_then(Value::as_array)
            .map(|k| k.iter().map(compact).collect())
            .unwrap_or_default();
        facts.push(format!("keyed by {} (each once)", code_list(&keys)));
    }
    let _ = writeln!(w, "{}", facts.join(" · "));
    let _ = writeln!(w);
    if let Some(d) = s.get("description").and_then(Value::as_str) {
        let _ = writeln!(w, "{}", d.trim());
        let _ = writeln!(w);
    }
    let rules = s
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty());
    if let Some(rules) = rules {
        let _ = writeln!(w, "| rule (CEL) | message | field |");
        let _ = writeln!(w, "|---|---|---|");
        for r in rules {
            let text = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("");
            let field = match text("fieldPath") {
                "" => String::new(),
                p => format!("`{}{p}`", f.path),
            };
            let _ = writeln!(
                w,
                "| `{}` | {} | {field} |",
                cell(text("rule")),
                cell(text("message"))
            );
        }
        let _ = writeln!(w);
    }
}

/// A JSON value as written in YAML-ish shorthand: strings bare (the empty one `""`), the
/// rest as JSON.
fn compact(v: &Value) -> String {
    match v {
        Value::String(s) if !s.is_empty() => s.clone(),
        other => other.to_string(),
    }
}

/// `32 items`, `1 item`; a bare number without a unit.
fn counted(v: &Value, unit: &str) -> String {
    let n = compact(v);
    match unit {
        "" => n,
        _ if n == "1" => format!("1 {unit}"),
        "entry" => format!("{n} entries"),
        _ => format!("{n} {unit}s"),
    }
}

fn code_list(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Text safe in a Markdown table cell: one line, pipes escaped.
fn cell(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ActorCluster;
    use kube::CustomResourceExt;

    fn reference() -> String {
        reference_markdown(&ActorCluster::crd()).expect("reference")
    }

    /// Every field path of the CRD's schema, unrolled in full (into Kubernetes types too).
    fn all_paths(schema: &Value, path: &str, out: &mut Vec<String>) {
        if let Some(items) = schema.get("items") {
            return all_paths(items, &format!("{path}[]"), out);
        }
        if let Some(p) = schema.get("properties").and_then(Value::as_object) {
            for (name, child) in p {
                let child_path = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                out.push(child_path.clone());
                all_paths(child, &child_path, out);
            }
        }
    }

    fn schema() -> Value {
        let crd = ActorCluster::crd();
        serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("schema"),
        )
        .expect("json")
    }

    #[test]
    fn every_field_outside_kubernetes_types_has_a_section() {
        let doc = reference();
        let kinds = kubernetes_types();
        let mut paths = Vec::new();
        all_paths(&schema(), "", &mut paths);
        // Paths inside an embedded Kubernetes type are the only ones left out; the type
        // itself is named and linked.
        let mut inside: Vec<String> = Vec::new();
        let mut fields = Vec::new();
        let s = schema();
        collect(&s, "", &kinds, &mut fields);
        let documented: BTreeSet<&str> = fields.iter().map(|f| f.path.as_str()).collect();
        for p in &paths {
            if documented.contains(p.as_str()) {
                assert!(doc.contains(&format!("### `{p}`\n")), "no section for {p}");
            } else {
                inside.push(p.clone());
            }
        }
        for p in &inside {
            assert!(
                documented
                    .iter()
                    .any(|d| p.starts_with(&format!("{d}.")) || p.starts_with(&format!("{d}[]."))),
                "{p} is neither documented nor inside a documented Kubernetes type"
            );
        }
        for must in [
            "spec.replicas",
            "spec.autoscaling.minReplicas",
            "spec.podTemplate.env",
            "spec.app.volumeMounts",
            "spec.state.postgres.secretName",
            "status.members[].pod",
            "status.conditions",
        ] {
            assert!(documented.contains(must), "{must}");
        }
        assert!(!inside.is_empty(), "the Kubernetes types are not unrolled");
    }

    #[test]
    fn fields_show_type_default_bounds_and_rules() {
        let doc = reference();
        let section = |path: &str| -> String {
            let start = doc.find(&format!("### `{path}`\n")).expect(path);
            let rest = &doc[start + 4..];
            rest[..rest.find("\n### ").unwrap_or(rest.len())].to_owned()
        };
        let capacity = section("spec.mailbox.capacity");
        assert!(
            capacity.contains("integer (int32) · optional · default `1000`"),
            "{capacity}"
        );
        assert!(
            capacity.contains("Messages one actor's mailbox holds."),
            "{capacity}"
        );
        assert!(
            capacity.contains(
                "| `self > 0 && self <= 1000000` | spec.mailbox.capacity must be greater than 0 and at most 1000000 |"
            ),
            "{capacity}"
        );
        let overflow = section("spec.mailbox.overflow");
        assert!(
            overflow.contains("one of `Backpressure`, `DropNewest`, `DropOldest`, `Reject`"),
            "{overflow}"
        );
        let env = section("spec.podTemplate.env");
        assert!(
            env.contains("array of [core/v1 EnvVar](https://kubernetes.io/docs/reference/generated/kubernetes-api/v1.34/#envvar-v1-core)"),
            "{env}"
        );
        assert!(env.contains("at most 64 items"), "{env}");
        assert!(env.contains("keyed by `name` (each once)"), "{env}");
        assert!(env.contains("TROUPE_"), "{env}");
        let secret = section("spec.state.postgres.secretName");
        assert!(
            secret.contains("string · required · at most 253 characters"),
            "{secret}"
        );
        // An object-level rule names the field it is reported on.
        let state = section("spec.state");
        assert!(state.contains("`spec.state.postgres`"), "{state}");
        let labels = section("spec.podTemplate.labels");
        assert!(labels.contains("map of string to string"), "{labels}");
        let conditions = section("status.conditions");
        assert!(
            conditions.contains("array of [meta/v1 Condition]"),
            "{conditions}"
        );
    }

    #[test]
    fn the_header_shows_names_scale_and_columns() {
        let doc = reference();
        assert!(doc.starts_with("# ActorCluster reference\n"));
        assert!(
            doc.contains("| API version | `troupe.dev/v1alpha1` |"),
            "{doc}"
        );
        assert!(doc.contains("| short names | `ac` |"));
        assert!(doc.contains("`scale` (replicas `.spec.replicas`"));
        assert!(
            doc.contains("| Reason | string | `.status.conditions[?(@.type==\"Ready\")].reason` |")
        );
    }

    #[test]
    fn every_embedded_kubernetes_type_is_recognised() {
        // A type missing from kubernetes_types() would be unrolled into hundreds of sections.
        let doc = reference();
        let sections = doc.matches("\n### ").count();
        assert!(
            sections < 150,
            "{sections} sections: is a Kubernetes type unrolled?"
        );
        for k in kubernetes_types() {
            assert!(!k.properties.is_empty(), "{} has no properties", k.name);
            assert!(
                doc.contains(&format!("[{}]({})", k.title(), k.link())),
                "{} unused",
                k.name
            );
        }
    }

    #[test]
    fn a_crd_without_a_schema_is_an_error() {
        let mut crd = ActorCluster::crd();
        for v in &mut crd.spec.versions {
            v.schema = None;
        }
        assert!(matches!(
            reference_markdown(&crd),
            Err(ReferenceError::NoSchema)
        ));
    }
}
