//! Validation of an `ActorCluster` spec before anything is built from it.
//!
//! The API server already refuses most invalid specs through the CRD's CEL rules
//! ([`crate::crd`]); this module repeats those checks in Rust so that an object stored
//! before a rule existed (or with the CRD installed without validation) becomes an
//! `InvalidSpec` condition instead of broken children. It owns no I/O.

use troupe_contract::ports;

use std::collections::BTreeSet;

use crate::crd::{
    ActorClusterSpec, MAX_ENV, MAX_MAILBOX_CAPACITY, MAX_STATE_BYTES, MAX_TOPOLOGY_SPREAD,
    MAX_VOLUMES, RESERVED_ENV, RESERVED_ENV_PREFIX, RESERVED_VOLUMES, StateStoreKind,
};

/// A spec that cannot be turned into children. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSpec(pub String);

/// A spec that passed [`validate`], with the node image resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSpec<'a> {
    /// The spec as written.
    pub spec: &'a ActorClusterSpec,
    /// The node image: `spec.image` or the operator's default.
    pub image: String,
}

/// Checks `spec`, resolving the node image against `default_image`.
/// Returns every problem, joined, so that one round trip shows them all.
pub fn validate<'a>(
    spec: &'a ActorClusterSpec,
    default_image: &str,
) -> Result<ValidSpec<'a>, InvalidSpec> {
    let mut problems = Vec::new();
    if spec.replicas < 0 {
        problems.push("spec.replicas must be 0 or more".to_owned());
    }
    let image = spec
        .image
        .clone()
        .unwrap_or_else(|| default_image.to_owned());
    if image.is_empty() || image.contains(char::is_whitespace) {
        problems.push("spec.image must be a non-empty image reference without spaces".to_owned());
    }
    if spec.mailbox.capacity <= 0 || spec.mailbox.capacity > MAX_MAILBOX_CAPACITY {
        problems
            .push("spec.mailbox.capacity must be greater than 0 and at most 1000000".to_owned());
    }
    if let Some(a) = &spec.autoscaling {
        if a.min_replicas < 1 {
            problems.push("spec.autoscaling.minReplicas must be at least 1".to_owned());
        }
        if a.max_replicas < 1 || a.max_replicas > 1000 {
            problems.push("spec.autoscaling.maxReplicas must be between 1 and 1000".to_owned());
        }
        if a.min_replicas > a.max_replicas {
            problems.push(
                "spec.autoscaling.minReplicas must be less than or equal to spec.autoscaling.maxReplicas"
                    .to_owned(),
            );
        }
        if a.target_mailbox_depth <= 0 {
            problems.push("spec.autoscaling.targetMailboxDepth must be greater than 0".to_owned());
        }
    }
    if let Some(app) = &spec.app {
        if app.image.is_empty() || app.image.contains(char::is_whitespace) {
            problems.push(
                "spec.app.image must be a non-empty image reference without spaces".to_owned(),
            );
        }
        let reserved = [ports::CLIENT, ports::MANAGEMENT, ports::TRANSPORT];
        if !(1..=65535).contains(&app.port) || reserved.iter().any(|p| i32::from(*p) == app.port) {
            problems.push(
                "spec.app.port must be between 1 and 65535 and not one of the node's ports 8080, 8558, 25520"
                    .to_owned(),
            );
        }
    }
    pod_template_problems(spec, &mut problems);
    if let Some(state) = &spec.state {
        match (state.store, &state.postgres) {
            (StateStoreKind::Postgres, None) | (StateStoreKind::Memory, Some(_)) => problems.push(
                "spec.state.postgres is required when spec.state.store is postgres, and allowed only then"
                    .to_owned(),
            ),
            (_, Some(pg)) => {
                let name_ok = !pg.secret_name.is_empty()
                    && pg.secret_name.len() <= 253
                    && pg
                        .secret_name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
                    && !pg.secret_name.starts_with(['-', '.'])
                    && !pg.secret_name.ends_with(['-', '.']);
                if !name_ok {
                    problems.push("spec.state.postgres.secretName must be a Secret name (lowercase letters, digits, '-' and '.')".to_owned());
                }
                let key_ok = !pg.key.is_empty()
                    && pg.key.len() <= 253
                    && pg
                        .key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                if !key_ok {
                    problems.push("spec.state.postgres.key must be a Secret key (letters, digits, '-', '_' and '.')".to_owned());
                }
                if pg
                    .max_state_bytes
                    .is_some_and(|b| b <= 0 || b > MAX_STATE_BYTES)
                {
                    problems.push("spec.state.postgres.maxStateBytes must be greater than 0 and at most 67108864 (64 MiB)".to_owned());
                }
            }
            (StateStoreKind::Memory, None) => {}
        }
    }
    if problems.is_empty() {
        Ok(ValidSpec { spec, image })
    } else {
        Err(InvalidSpec(problems.join("; ")))
    }
}

/// Whether `names` holds a name twice.
fn repeats<'n>(names: impl IntoIterator<Item = &'n str>) -> bool {
    let mut seen = BTreeSet::new();
    names.into_iter().any(|n| !seen.insert(n))
}

/// The checks of `spec.podTemplate` and of the application's mounts, as the CEL rules and
/// list bounds of [`crate::crd`] make them.
fn pod_template_problems(spec: &ActorClusterSpec, problems: &mut Vec<String>) {
    let template = spec.pod_template.as_ref();
    let user_volumes = template
        .and_then(|t| t.volumes.as_deref())
        .unwrap_or_default();
    if let Some(env) = template.and_then(|t| t.env.as_deref()) {
        if env.len() > MAX_ENV {
            problems.push(format!(
                "spec.podTemplate.env may list at most {MAX_ENV} variables"
            ));
        }
        if env.iter().any(|e| {
            e.name.starts_with(RESERVED_ENV_PREFIX) || RESERVED_ENV.contains(&e.name.as_str())
        }) {
            problems.push("spec.podTemplate.env must not set TROUPE_* variables or POD_NAME, POD_NAMESPACE, POD_IP, POD_UID: the operator sets those".to_owned());
        }
        if repeats(env.iter().map(|e| e.name.as_str())) {
            problems.push("spec.podTemplate.env must not name a variable twice".to_owned());
        }
    }
    if user_volumes.len() > MAX_VOLUMES {
        problems.push(format!(
            "spec.podTemplate.volumes may list at most {MAX_VOLUMES} volumes"
        ));
    }
    if user_volumes
        .iter()
        .any(|v| RESERVED_VOLUMES.contains(&v.name.as_str()))
    {
        problems.push("spec.podTemplate.volumes must not use the names of the operator's volumes: tmp, transport-tls, kube-api-access, state-store".to_owned());
    }
    if repeats(user_volumes.iter().map(|v| v.name.as_str())) {
        problems.push("spec.podTemplate.volumes must not name a volume twice".to_owned());
    }
    if template
        .and_then(|t| t.topology_spread_constraints.as_ref())
        .is_some_and(|c| c.len() > MAX_TOPOLOGY_SPREAD)
    {
        problems.push(format!(
            "spec.podTemplate.topologySpreadConstraints may list at most {MAX_TOPOLOGY_SPREAD} constraints"
        ));
    }
    let mounts = spec
        .app
        .as_ref()
        .and_then(|a| a.volume_mounts.as_deref())
        .unwrap_or_default();
    if mounts.len() > MAX_VOLUMES {
        problems.push(format!(
            "spec.app.volumeMounts may list at most {MAX_VOLUMES} mounts"
        ));
    }
    if repeats(mounts.iter().map(|m| m.mount_path.as_str())) {
        problems.push("spec.app.volumeMounts must not repeat a mountPath".to_owned());
    }
    if mounts
        .iter()
        .any(|m| !user_volumes.iter().any(|v| v.name == m.name))
    {
        problems.push("spec.app.volumeMounts may mount only volumes of spec.podTemplate.volumes, none of the operator's: tmp, transport-tls, kube-api-access, state-store".to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AppSpec, AutoscalingSpec};

    fn autoscaling(min: i32, max: i32, target: i64) -> AutoscalingSpec {
        AutoscalingSpec {
            min_replicas: min,
            max_replicas: max,
            target_mailbox_depth: target,
            behavior: None,
        }
    }

    #[test]
    fn state_specs_are_checked_like_the_cel_rules() {
        use crate::crd::{PostgresSpec, StateSpec};
        let pg = |secret: &str, key: &str, max: Option<i64>| PostgresSpec {
            secret_name: secret.into(),
            key: key.into(),
            max_state_bytes: max,
        };
        let with = |store, postgres| ActorClusterSpec {
            state: Some(StateSpec { store, postgres }),
            ..Default::default()
        };
        assert!(validate(&with(StateStoreKind::Memory, None), "n:1").is_ok());
        assert!(
            validate(
                &with(StateStoreKind::Postgres, Some(pg("db", "url", None))),
                "n:1"
            )
            .is_ok()
        );
        let cases = [
            (
                with(StateStoreKind::Postgres, None),
                "spec.state.postgres is required",
            ),
            (
                with(StateStoreKind::Memory, Some(pg("db", "url", None))),
                "spec.state.postgres is required",
            ),
            (
                with(StateStoreKind::Postgres, Some(pg("Db!", "url", None))),
                "spec.state.postgres.secretName",
            ),
            (
                with(StateStoreKind::Postgres, Some(pg("db", "a/b", None))),
                "spec.state.postgres.key",
            ),
            (
                with(StateStoreKind::Postgres, Some(pg("db", "url", Some(0)))),
                "spec.state.postgres.maxStateBytes",
            ),
        ];
        for (spec, field) in cases {
            let e = validate(&spec, "n:1").expect_err(field);
            assert!(e.0.contains(field), "{e}");
        }
    }

    #[test]
    fn default_spec_is_valid_and_takes_the_default_image() {
        let spec = ActorClusterSpec::default();
        let valid = validate(&spec, "troupe-node:0.1.0").expect("valid");
        assert_eq!(valid.image, "troupe-node:0.1.0");
    }

    #[test]
    fn own_image_wins_over_the_default() {
        let spec = ActorClusterSpec {
            image: Some("reg/node:2".into()),
            ..Default::default()
        };
        assert_eq!(validate(&spec, "x:1").expect("valid").image, "reg/node:2");
    }

    #[test]
    fn each_problem_names_its_field() {
        let cases: Vec<(ActorClusterSpec, &str)> = vec![
            (
                ActorClusterSpec {
                    replicas: -1,
                    ..Default::default()
                },
                "spec.replicas",
            ),
            (
                ActorClusterSpec {
                    image: Some(String::new()),
                    ..Default::default()
                },
                "spec.image",
            ),
            (
                {
                    let mut s = ActorClusterSpec::default();
                    s.mailbox.capacity = 0;
                    s
                },
                "spec.mailbox.capacity",
            ),
            (
                ActorClusterSpec {
                    autoscaling: Some(autoscaling(5, 2, 10)),
                    ..Default::default()
                },
                "spec.autoscaling.minReplicas must be less than or equal",
            ),
            (
                ActorClusterSpec {
                    autoscaling: Some(autoscaling(1, 2, 0)),
                    ..Default::default()
                },
                "spec.autoscaling.targetMailboxDepth",
            ),
            (
                ActorClusterSpec {
                    autoscaling: Some(autoscaling(0, 2, 1)),
                    ..Default::default()
                },
                "spec.autoscaling.minReplicas must be at least 1",
            ),
            (
                ActorClusterSpec {
                    app: Some(AppSpec {
                        image: "app:1".into(),
                        port: 8558,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "spec.app.port",
            ),
        ];
        for (spec, field) in cases {
            let err = validate(&spec, "img:1").expect_err(field);
            assert!(err.0.contains(field), "{err} should name {field}");
        }
    }

    #[test]
    fn all_problems_are_reported_together() {
        let mut spec = ActorClusterSpec {
            replicas: -3,
            ..Default::default()
        };
        spec.mailbox.capacity = -1;
        let err = validate(&spec, "img:1").expect_err("invalid");
        assert!(err.0.contains("spec.replicas") && err.0.contains("spec.mailbox.capacity"));
    }

    #[test]
    fn zero_replicas_is_allowed() {
        let spec = ActorClusterSpec {
            replicas: 0,
            ..Default::default()
        };
        assert!(validate(&spec, "img:1").is_ok());
    }
}
