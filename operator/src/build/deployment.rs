//! The node Deployment: the pod template of an actor node (ports, probes, downward-API
//! environment, a locked-down security context) and a rolling update that never takes a
//! member away before its replacement is Ready.
//!
//! `spec.replicas` of the Deployment is [`desired_replicas`]: `ActorCluster.spec.replicas`,
//! clamped into the autoscaling bounds when autoscaling is on. The operator is its only
//! writer; the HPA scales the ActorCluster, never the Deployment.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, ContainerPort, DownwardAPIProjection,
    DownwardAPIVolumeFile, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use troupe_contract::{env, labels, ports};

use super::Owner;
use crate::crd::{
    ActorClusterSpec, AppSpec, DEFAULT_MAX_ACTORS_PER_NODE, PostgresSpec, StateStoreKind,
};
use crate::validate::ValidSpec;

/// The uid and gid the containers run as (distroless `nonroot`).
pub const RUN_AS_USER: i64 = 65532;
/// Seconds a node gets to leave gracefully (hand actors over, finish accepted work).
pub const TERMINATION_GRACE_SECONDS: i64 = 30;
/// Name of the node container.
pub const NODE_CONTAINER: &str = "node";
/// Name of the sidecar-mode application container.
pub const APP_CONTAINER: &str = "app";
/// The volume of the user's database Secret.
pub const STATE_VOLUME: &str = "state-store";
/// Where the node container sees it.
pub const STATE_MOUNT: &str = "/etc/troupe/state";

/// The volume of the transport credential ([`troupe_contract::tls`]).
pub const TLS_VOLUME: &str = "transport-tls";
/// The volume of the node container's API token (the pod does not automount one, so the
/// sidecar application container gets none).
pub const API_TOKEN_VOLUME: &str = "kube-api-access";
/// Where in-cluster clients look for the service account token.
pub const API_TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The node pods the Deployment asks for: `spec.replicas`, clamped into
/// [`minReplicas`, `maxReplicas`] when `spec.autoscaling` is on. The API accepts any
/// replica count beside autoscaling (the default one, or one written before autoscaling
/// was turned on), because the HPA writes `spec.replicas` through `/scale` only on its
/// first sync after the object is stored; until then the bounds hold here.
pub fn desired_replicas(spec: &ActorClusterSpec) -> i32 {
    match &spec.autoscaling {
        // `max(min).min(max)`, not `clamp`: never panics on an (invalid) min > max.
        Some(a) => spec.replicas.max(a.min_replicas).min(a.max_replicas),
        None => spec.replicas,
    }
}

/// The Deployment `<name>`.
pub fn desired_deployment(owner: &Owner, spec: &ValidSpec<'_>) -> Deployment {
    let overrides = spec.spec.pod_template.clone().unwrap_or_default();

    // User labels first; the selector and component labels always win.
    let mut pod_labels: BTreeMap<String, String> = overrides.labels.unwrap_or_default();
    pod_labels.extend(owner.labels());
    pod_labels.insert(
        labels::COMPONENT.to_owned(),
        labels::COMPONENT_NODE.to_owned(),
    );

    // The application is a native sidecar: started before the node, stopped
    // only after the node has exited, so it serves every `$deactivate` of the drain.
    let init_containers = spec.spec.app.as_ref().map(|app| vec![app_container(app)]);

    Deployment {
        metadata: owner.meta(owner.name.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(desired_replicas(spec.spec)),
            selector: LabelSelector {
                match_labels: Some(owner.selector()),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            revision_history_limit: Some(3),
            progress_deadline_seconds: Some(180),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: overrides.annotations.filter(|a| !a.is_empty()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(owner.node_account_name()),
                    // Only the node container mounts a token (API_TOKEN_VOLUME).
                    automount_service_account_token: Some(false),
                    termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS_USER),
                        run_as_group: Some(RUN_AS_USER),
                        // Mounted Secret files belong to this group (mode 0440).
                        fs_group: Some(RUN_AS_USER),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    init_containers,
                    containers: vec![node_container(owner, spec)],
                    volumes: Some(volumes(owner, spec)),
                    node_selector: overrides.node_selector.filter(|m| !m.is_empty()),
                    tolerations: overrides.tolerations.filter(|t| !t.is_empty()),
                    affinity: overrides.affinity,
                    priority_class_name: overrides.priority_class_name,
                    topology_spread_constraints: overrides
                        .topology_spread_constraints
                        .filter(|c| !c.is_empty()),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The PostgreSQL settings when actor states are kept there.
fn postgres<'a>(spec: &'a ValidSpec<'_>) -> Option<&'a PostgresSpec> {
    spec.spec
        .state
        .as_ref()
        .filter(|s| s.store == StateStoreKind::Postgres)
        .and_then(|s| s.postgres.as_ref())
}

/// `/tmp`, the transport credential, the node container's API token, the user's
/// database Secret (only its connection-string key, read-only), then the user's own
/// `spec.podTemplate.volumes` (validation keeps their names off the operator's).
fn volumes(owner: &Owner, spec: &ValidSpec<'_>) -> Vec<Volume> {
    let mut v = vec![Volume {
        name: "tmp".to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("16Mi".to_owned())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }];
    v.push(tls_volume(owner));
    v.push(api_token_volume());
    if let Some(pg) = postgres(spec) {
        v.push(Volume {
            name: STATE_VOLUME.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(pg.secret_name.clone()),
                items: Some(vec![KeyToPath {
                    key: pg.key.clone(),
                    path: pg.key.clone(),
                    mode: None,
                }]),
                default_mode: Some(0o440),
                optional: Some(false),
            }),
            ..Volume::default()
        });
    }
    if let Some(user) = spec
        .spec
        .pod_template
        .as_ref()
        .and_then(|t| t.volumes.as_ref())
    {
        v.extend(user.iter().cloned());
    }
    v
}

fn tls_volume(owner: &Owner) -> Volume {
    Volume {
        name: TLS_VOLUME.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(troupe_contract::tls::secret_name(&owner.name)),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// What the kubelet would automount, for the node container alone: a bound token, the
/// cluster CA and the namespace.
fn api_token_volume() -> Volume {
    Volume {
        name: API_TOKEN_VOLUME.to_owned(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o444),
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".to_owned(),
                        expiration_seconds: Some(3607),
                        ..ServiceAccountTokenProjection::default()
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".to_owned(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".to_owned(),
                            path: "ca.crt".to_owned(),
                            ..KeyToPath::default()
                        }]),
                        ..ConfigMapProjection::default()
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".to_owned(),
                            field_ref: Some(ObjectFieldSelector {
                                api_version: Some("v1".to_owned()),
                                field_path: "metadata.namespace".to_owned(),
                            }),
                            ..DownwardAPIVolumeFile::default()
                        }]),
                    }),
                    ..VolumeProjection::default()
                },
            ]),
        }),
        ..Volume::default()
    }
}

fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".to_owned()),
                field_path: path.to_owned(),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn value_env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(ports::MANAGEMENT_NAME.to_owned()),
            scheme: Some("HTTP".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(1),
        success_threshold: Some(1),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn container_port(name: &str, number: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: i32::from(number),
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

fn node_container(owner: &Owner, spec: &ValidSpec<'_>) -> Container {
    let mut env_vars = vec![
        field_env(env::POD_NAME, "metadata.name"),
        field_env(env::POD_NAMESPACE, "metadata.namespace"),
        field_env(env::POD_IP, "status.podIP"),
        field_env(env::POD_UID, "metadata.uid"),
        value_env(env::CLUSTER_NAME, owner.name.clone()),
        value_env(env::CLUSTER_UID, owner.reference.uid.clone()),
        value_env(
            env::MAILBOX_CAPACITY,
            spec.spec.mailbox.capacity.to_string(),
        ),
        value_env(env::MAILBOX_OVERFLOW, spec.spec.mailbox.overflow.as_str()),
        value_env(env::TLS_DIR, troupe_contract::tls::MOUNT_DIR),
    ];
    if let Some(app) = &spec.spec.app {
        env_vars.push(value_env(
            env::APP_URL,
            format!("http://127.0.0.1:{}", app.port),
        ));
        env_vars.push(value_env(env::APP_TYPES, app.types.join(",")));
    }
    if let Some(max) = spec.spec.actors.max_per_node {
        env_vars.push(value_env(env::MAX_ACTORS, max.to_string()));
    }
    if let Some(types) = &spec.spec.actors.builtin_types {
        env_vars.push(value_env(env::BUILTIN_TYPES, types.join(",")));
    }
    let mut mounts = vec![
        VolumeMount {
            name: "tmp".to_owned(),
            mount_path: "/tmp".to_owned(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: TLS_VOLUME.to_owned(),
            mount_path: troupe_contract::tls::MOUNT_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: API_TOKEN_VOLUME.to_owned(),
            mount_path: API_TOKEN_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ];
    if let Some(pg) = postgres(spec) {
        env_vars.push(value_env(
            env::STATE_STORE,
            StateStoreKind::Postgres.as_str(),
        ));
        env_vars.push(value_env(
            env::STATE_POSTGRES_FILE,
            format!("{STATE_MOUNT}/{}", pg.key),
        ));
        if let Some(max) = pg.max_state_bytes {
            env_vars.push(value_env(env::STATE_MAX_BYTES, max.to_string()));
        }
        mounts.push(VolumeMount {
            name: STATE_VOLUME.to_owned(),
            mount_path: STATE_MOUNT.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    // The user's variables come last; validation keeps them off the operator's names.
    if let Some(user) = spec.spec.pod_template.as_ref().and_then(|t| t.env.as_ref()) {
        env_vars.extend(user.iter().cloned());
    }
    Container {
        name: NODE_CONTAINER.to_owned(),
        image: Some(spec.image.clone()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        ports: Some(vec![
            container_port(ports::MANAGEMENT_NAME, ports::MANAGEMENT),
            container_port(ports::CLIENT_NAME, ports::CLIENT),
            container_port(ports::TRANSPORT_NAME, ports::TRANSPORT),
        ]),
        env: Some(env_vars),
        // `/alive` never depends on membership, so a slow bootstrap never kills a pod.
        liveness_probe: Some(http_probe("/alive", 10, 3)),
        // `/ready` only while an Up member: probed every second so joins show quickly.
        readiness_probe: Some(http_probe("/ready", 1, 2)),
        // Up to 60 s to start before liveness takes over.
        startup_probe: Some(http_probe("/alive", 1, 60)),
        resources: Some(
            spec.spec
                .resources
                .clone()
                .unwrap_or_else(|| default_resources(spec.spec)),
        ),
        security_context: Some(container_security()),
        volume_mounts: Some(mounts),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Container::default()
    }
}

/// Memory a node needs before any actor: the runtime, the HTTP and transport buffers.
const BASE_MEMORY: i64 = 64 * MIB;
/// Memory budget per actor held (the activation, its mailbox and a small state).
const MEMORY_PER_ACTOR: i64 = 2 * KIB;
/// Memory budget per mailbox slot: one actor's full mailbox of mid-size messages.
const MEMORY_PER_MAILBOX_SLOT: i64 = 4 * KIB;
const KIB: i64 = 1024;
const MIB: i64 = 1024 * KIB;

/// Resources of a node when `spec.resources` is not given: requests enough to schedule
/// sensibly, and a memory limit sized from what the node is allowed to hold
/// (`spec.actors.maxPerNode` actors and one full mailbox, `spec.mailbox.capacity`), so a
/// node that grows past its bounds is stopped by the kubelet instead of starving its
/// neighbours. No CPU limit (throttling would stall membership's timers).
fn default_resources(spec: &ActorClusterSpec) -> ResourceRequirements {
    let actors = spec
        .actors
        .max_per_node
        .unwrap_or(DEFAULT_MAX_ACTORS_PER_NODE);
    let bytes = BASE_MEMORY
        .saturating_add(actors.saturating_mul(MEMORY_PER_ACTOR))
        .saturating_add(i64::from(spec.mailbox.capacity).saturating_mul(MEMORY_PER_MAILBOX_SLOT));
    let mib = bytes.saturating_add(MIB - 1) / MIB;
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("10m".to_owned())),
            ("memory".to_owned(), Quantity("32Mi".to_owned())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity(format!("{mib}Mi")),
        )])),
        ..ResourceRequirements::default()
    }
}

/// The sidecar application: an init container with `restartPolicy: Always` (a native
/// sidecar, Kubernetes >= 1.29), started before the node and stopped after it. The node
/// waits for it to accept connections on localhost before it joins. Probes are the user's
/// (`spec.app.livenessProbe`, `startupProbe`; a sidecar may have them, and the kubelet
/// starts the node only after the sidecar's startup probe succeeded); none by default,
/// since the application need only listen on localhost, which the kubelet cannot reach.
/// It mounts only the user's volumes (`spec.app.volumeMounts`).
fn app_container(app: &AppSpec) -> Container {
    Container {
        name: APP_CONTAINER.to_owned(),
        restart_policy: Some("Always".to_owned()),
        image: Some(app.image.clone()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        command: app.command.clone(),
        args: app.args.clone(),
        env: app.env.clone().filter(|e| !e.is_empty()),
        ports: Some(vec![ContainerPort {
            name: Some(APP_CONTAINER.to_owned()),
            container_port: app.port,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        resources: app.resources.clone(),
        volume_mounts: app.volume_mounts.clone().filter(|m| !m.is_empty()),
        liveness_probe: app.liveness_probe.clone(),
        startup_probe: app.startup_probe.clone(),
        security_context: Some(container_security()),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Container::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::owner;
    use crate::crd::{ActorClusterSpec, OverflowPolicy, PodTemplateOverrides};
    use crate::validate::validate;

    fn build(spec: &ActorClusterSpec) -> Deployment {
        let valid = validate(spec, "troupe-node:0.1.0").expect("valid");
        desired_deployment(&owner(), &valid)
    }

    fn pod(d: &Deployment) -> PodSpec {
        d.spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .expect("pod spec")
    }

    fn env_of(c: &Container, name: &str) -> Option<EnvVar> {
        c.env.iter().flatten().find(|e| e.name == name).cloned()
    }

    #[test]
    fn replicas_and_rolling_update_follow_the_design() {
        let d = build(&ActorClusterSpec {
            replicas: 3,
            ..Default::default()
        });
        let spec = d.spec.as_ref().expect("spec");
        assert_eq!(spec.replicas, Some(3));
        let ru = spec
            .strategy
            .as_ref()
            .and_then(|s| s.rolling_update.clone())
            .expect("rolling update");
        assert_eq!(ru.max_surge, Some(IntOrString::Int(1)));
        assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
        assert_eq!(spec.selector.match_labels, Some(owner().selector()));
    }

    #[test]
    fn postgres_state_mounts_the_users_secret_and_memory_changes_nothing() {
        use crate::crd::{PostgresSpec, StateSpec};
        let memory = pod(&build(&ActorClusterSpec::default()));
        let explicit = pod(&build(&ActorClusterSpec {
            state: Some(StateSpec::default()),
            ..Default::default()
        }));
        assert_eq!(memory, explicit, "memory mode builds exactly today's pod");
        // The transport credential is mounted in every mode: its files belong to the group.
        assert_eq!(
            memory.security_context.and_then(|s| s.fs_group),
            Some(RUN_AS_USER)
        );
        assert!(env_of(&memory.containers[0], env::STATE_STORE).is_none());

        let p = pod(&build(&ActorClusterSpec {
            state: Some(StateSpec {
                store: StateStoreKind::Postgres,
                postgres: Some(PostgresSpec {
                    secret_name: "orders-db".into(),
                    key: "uri".into(),
                    max_state_bytes: Some(4096),
                }),
            }),
            ..Default::default()
        }));
        let node = &p.containers[0];
        let value = |n: &str| env_of(node, n).and_then(|e| e.value);
        assert_eq!(value(env::STATE_STORE).as_deref(), Some("postgres"));
        assert_eq!(
            value(env::STATE_POSTGRES_FILE).as_deref(),
            Some("/etc/troupe/state/uri")
        );
        assert_eq!(value(env::STATE_MAX_BYTES).as_deref(), Some("4096"));
        // The connection string never goes through the environment or the API: a volume.
        assert!(node.env.iter().flatten().all(|e| {
            e.value_from
                .as_ref()
                .is_none_or(|v| v.secret_key_ref.is_none())
        }));
        let secret = p
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == STATE_VOLUME)
            .and_then(|v| v.secret.clone())
            .expect("secret volume");
        assert_eq!(secret.secret_name.as_deref(), Some("orders-db"));
        assert_eq!(secret.default_mode, Some(0o440));
        let mount = node
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == STATE_VOLUME)
            .expect("mount");
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            (STATE_MOUNT, Some(true))
        );
        assert_eq!(
            p.security_context.and_then(|s| s.fs_group),
            Some(RUN_AS_USER)
        );
    }

    fn autoscaled(replicas: i32, min: i32, max: i32) -> ActorClusterSpec {
        ActorClusterSpec {
            replicas,
            autoscaling: Some(crate::crd::AutoscalingSpec {
                min_replicas: min,
                max_replicas: max,
                target_mailbox_depth: 100,
                behavior: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn autoscaling_clamps_the_deployment_replicas_into_its_bounds() {
        let replicas = |spec: &ActorClusterSpec| build(spec).spec.and_then(|s| s.replicas);
        // Below minReplicas (the default 1 with minReplicas 5): raised to the minimum.
        assert_eq!(replicas(&autoscaled(1, 5, 10)), Some(5));
        assert_eq!(replicas(&autoscaled(0, 5, 10)), Some(5));
        // Above maxReplicas: lowered to the maximum.
        assert_eq!(replicas(&autoscaled(30, 5, 10)), Some(10));
        // Within the bounds, and on them: as written.
        assert_eq!(replicas(&autoscaled(7, 5, 10)), Some(7));
        assert_eq!(replicas(&autoscaled(5, 5, 10)), Some(5));
        assert_eq!(replicas(&autoscaled(10, 5, 10)), Some(10));
        // Without autoscaling nothing is clamped.
        let fixed = ActorClusterSpec {
            replicas: 30,
            ..Default::default()
        };
        assert_eq!(replicas(&fixed), Some(30));
    }

    #[test]
    fn desired_replicas_never_panics_on_inverted_bounds() {
        // validate() refuses min > max, but status is computed for invalid specs too.
        assert_eq!(desired_replicas(&autoscaled(7, 10, 5)), 5);
    }

    #[test]
    fn zero_replicas_stay_zero() {
        let d = build(&ActorClusterSpec {
            replicas: 0,
            ..Default::default()
        });
        assert_eq!(d.spec.and_then(|s| s.replicas), Some(0));
    }

    #[test]
    fn node_container_has_image_ports_probes_and_env() {
        let d = build(&ActorClusterSpec::default());
        let p = pod(&d);
        assert_eq!(p.service_account_name.as_deref(), Some("orders-node"));
        assert_eq!(p.termination_grace_period_seconds, Some(30));
        let c = &p.containers[0];
        assert_eq!(c.image.as_deref(), Some("troupe-node:0.1.0"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        let ports: Vec<i32> = c.ports.iter().flatten().map(|p| p.container_port).collect();
        assert_eq!(ports, [8558, 8080, 25520]);
        let path = |p: &Option<Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
        };
        assert_eq!(path(&c.liveness_probe).as_deref(), Some("/alive"));
        assert_eq!(path(&c.readiness_probe).as_deref(), Some("/ready"));
        assert_eq!(path(&c.startup_probe).as_deref(), Some("/alive"));
        for (name, field) in [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
            ("POD_IP", "status.podIP"),
        ] {
            let e = env_of(c, name).expect(name);
            assert_eq!(
                e.value_from.and_then(|v| v.field_ref).map(|f| f.field_path),
                Some(field.to_owned())
            );
        }
        assert_eq!(
            env_of(c, "TROUPE_CLUSTER").and_then(|e| e.value),
            Some("orders".into())
        );
        assert_eq!(
            env_of(c, "TROUPE_CLUSTER_UID").and_then(|e| e.value),
            Some(owner().reference.uid)
        );
        assert_eq!(
            env_of(c, "TROUPE_MAILBOX_CAPACITY").and_then(|e| e.value),
            Some("1000".into())
        );
        assert!(env_of(c, "TROUPE_APP_URL").is_none());
    }

    #[test]
    fn pods_are_locked_down() {
        let p = pod(&build(&ActorClusterSpec::default()));
        let psc = p.security_context.expect("pod security");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.run_as_user, Some(65532));
        assert_eq!(
            psc.seccomp_profile.map(|s| s.type_),
            Some("RuntimeDefault".into())
        );
        let sc = p.containers[0].security_context.clone().expect("security");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.and_then(|c| c.drop),
            Some(vec!["ALL".to_owned()])
        );
    }

    #[test]
    fn mailbox_settings_reach_the_environment() {
        let mut spec = ActorClusterSpec::default();
        spec.mailbox.capacity = 7;
        spec.mailbox.overflow = OverflowPolicy::DropOldest;
        let p = pod(&build(&spec));
        let c = &p.containers[0];
        assert_eq!(
            env_of(c, "TROUPE_MAILBOX_CAPACITY").and_then(|e| e.value),
            Some("7".into())
        );
        assert_eq!(
            env_of(c, "TROUPE_MAILBOX_OVERFLOW").and_then(|e| e.value),
            Some("DropOldest".into())
        );
    }

    /// A spec with a sidecar application `shop/app:1` on port 3000 serving `cart` and `order`.
    fn with_app() -> ActorClusterSpec {
        ActorClusterSpec {
            app: Some(AppSpec {
                image: "shop/app:1".into(),
                port: 3000,
                types: vec!["cart".into(), "order".into()],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_the_node_container_holds_the_api_token_and_the_credential() {
        let p = pod(&build(&with_app()));
        assert_eq!(p.automount_service_account_token, Some(false));
        let mounts = |c: &Container| -> Vec<String> {
            c.volume_mounts
                .iter()
                .flatten()
                .map(|m| m.mount_path.clone())
                .collect()
        };
        let node = mounts(&p.containers[0]);
        assert!(node.contains(&API_TOKEN_DIR.to_owned()), "{node:?}");
        assert!(node.contains(&troupe_contract::tls::MOUNT_DIR.to_owned()));
        let app = &p.init_containers.as_ref().expect("the app")[0];
        assert!(mounts(app).is_empty(), "the app mounts nothing");
        let tls = p
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == TLS_VOLUME)
            .and_then(|v| v.secret.as_ref())
            .and_then(|s| s.secret_name.clone());
        assert_eq!(tls.as_deref(), Some("orders-transport-tls"));
        assert_eq!(
            env_of(&p.containers[0], "TROUPE_TLS_DIR").and_then(|e| e.value),
            Some("/etc/troupe/tls".into())
        );
    }

    #[test]
    fn the_app_is_a_native_sidecar_started_before_the_node_and_its_types_declared() {
        let p = pod(&build(&with_app()));
        // Only the node is a main container: the app is an init container that keeps
        // running (restartPolicy Always), so the kubelet starts it before the node and
        // stops it only after the node has drained.
        let main: Vec<&str> = p.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(main, ["node"]);
        let init = p.init_containers.clone().unwrap_or_default();
        assert_eq!(init.len(), 1);
        let app = &init[0];
        assert_eq!(app.name, "app");
        assert_eq!(app.restart_policy.as_deref(), Some("Always"));
        assert_eq!(
            env_of(&p.containers[0], "TROUPE_APP_TYPES").and_then(|e| e.value),
            Some("cart,order".into())
        );
    }

    #[test]
    fn app_sidecar_gets_a_container_and_the_node_its_url() {
        let p = pod(&build(&with_app()));
        let app = &p.init_containers.as_ref().expect("the app")[0];
        assert_eq!(app.name, "app");
        assert_eq!(app.image.as_deref(), Some("shop/app:1"));
        assert_eq!(
            app.security_context
                .as_ref()
                .and_then(|s| s.read_only_root_filesystem),
            Some(true)
        );
        assert_eq!(
            env_of(&p.containers[0], "TROUPE_APP_URL").and_then(|e| e.value),
            Some("http://127.0.0.1:3000".into())
        );
    }

    #[test]
    fn template_overrides_apply_but_selector_labels_win() {
        let spec = ActorClusterSpec {
            pod_template: Some(PodTemplateOverrides {
                labels: Some(BTreeMap::from([
                    ("team".to_owned(), "shop".to_owned()),
                    (labels::INSTANCE.to_owned(), "hijack".to_owned()),
                ])),
                annotations: Some(BTreeMap::from([("a".to_owned(), "b".to_owned())])),
                node_selector: Some(BTreeMap::from([("disk".to_owned(), "ssd".to_owned())])),
                priority_class_name: Some("high".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let d = build(&spec);
        let meta = d
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.clone())
            .expect("meta");
        let l = meta.labels.expect("labels");
        assert_eq!(l.get("team").map(String::as_str), Some("shop"));
        assert_eq!(l.get(labels::INSTANCE).map(String::as_str), Some("orders"));
        assert_eq!(
            l.get(labels::COMPONENT).map(String::as_str),
            Some("actor-node")
        );
        assert_eq!(
            meta.annotations.and_then(|a| a.get("a").cloned()),
            Some("b".into())
        );
        let p = pod(&d);
        assert_eq!(p.priority_class_name.as_deref(), Some("high"));
        assert!(p.node_selector.is_some());
    }

    fn topology(key: &str) -> k8s_openapi::api::core::v1::TopologySpreadConstraint {
        k8s_openapi::api::core::v1::TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.to_owned(),
            when_unsatisfiable: "ScheduleAnyway".to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn topology_spread_constraints_reach_the_pods_and_none_stay_none() {
        let spread = vec![topology("topology.kubernetes.io/zone")];
        let p = pod(&build(&ActorClusterSpec {
            pod_template: Some(PodTemplateOverrides {
                topology_spread_constraints: Some(spread.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }));
        assert_eq!(p.topology_spread_constraints, Some(spread));
        // None given (or an empty list): the pod keeps the default, no constraint.
        let empty = pod(&build(&ActorClusterSpec {
            pod_template: Some(PodTemplateOverrides {
                topology_spread_constraints: Some(vec![]),
                ..Default::default()
            }),
            ..Default::default()
        }));
        assert_eq!(empty.topology_spread_constraints, None);
        assert_eq!(
            empty,
            pod(&build(&ActorClusterSpec::default())),
            "an empty list builds exactly the default pod"
        );
    }

    #[test]
    fn user_env_follows_the_operators_in_the_node_container_only() {
        let user = vec![value_env("RUST_BACKTRACE", "1"), value_env("REGION", "eu")];
        let spec = ActorClusterSpec {
            pod_template: Some(PodTemplateOverrides {
                env: Some(user.clone()),
                ..Default::default()
            }),
            ..with_app()
        };
        let p = pod(&build(&spec));
        let node_env = p.containers[0].env.clone().unwrap_or_default();
        let own = pod(&build(&with_app())).containers[0]
            .env
            .clone()
            .unwrap_or_default();
        // The operator's variables unchanged and first, the user's after them.
        assert_eq!(node_env[..own.len()], own[..]);
        assert_eq!(node_env[own.len()..], user[..]);
        let app = &p.init_containers.as_ref().expect("the app")[0];
        assert!(
            env_of(app, "REGION").is_none(),
            "the app's env is spec.app.env"
        );
    }

    #[test]
    fn user_volumes_join_the_pod_and_only_the_app_mounts_them() {
        let cache = Volume {
            name: "cache".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        };
        let mount = VolumeMount {
            name: "cache".to_owned(),
            mount_path: "/var/cache/app".to_owned(),
            ..VolumeMount::default()
        };
        let mut spec = with_app();
        spec.pod_template = Some(PodTemplateOverrides {
            volumes: Some(vec![cache.clone()]),
            ..Default::default()
        });
        if let Some(app) = spec.app.as_mut() {
            app.volume_mounts = Some(vec![mount.clone()]);
        }
        let p = pod(&build(&spec));
        let own = pod(&build(&with_app())).volumes.unwrap_or_default();
        let all = p.volumes.clone().unwrap_or_default();
        assert_eq!(
            all[..own.len()],
            own[..],
            "the operator's volumes stay first"
        );
        assert_eq!(all[own.len()..], [cache]);
        let app = &p.init_containers.as_ref().expect("the app")[0];
        assert_eq!(app.volume_mounts, Some(vec![mount]));
        let node_mounts: Vec<&str> = p.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.name.as_str())
            .collect();
        assert!(!node_mounts.contains(&"cache"), "{node_mounts:?}");
    }

    #[test]
    fn the_names_users_may_not_take_cover_every_volume_and_variable_of_the_operator() {
        use crate::crd::{
            PostgresSpec, RESERVED_ENV, RESERVED_ENV_PREFIX, RESERVED_VOLUMES, StateSpec,
        };
        let spec = ActorClusterSpec {
            state: Some(StateSpec {
                store: StateStoreKind::Postgres,
                postgres: Some(PostgresSpec {
                    secret_name: "db".into(),
                    key: "url".into(),
                    max_state_bytes: Some(1),
                }),
            }),
            actors: crate::crd::ActorsSpec {
                max_per_node: Some(10),
                builtin_types: Some(vec!["kv".into()]),
            },
            ..with_app()
        };
        let p = pod(&build(&spec));
        for v in p.volumes.iter().flatten() {
            assert!(RESERVED_VOLUMES.contains(&v.name.as_str()), "{}", v.name);
        }
        for e in p.containers[0].env.iter().flatten() {
            assert!(
                e.name.starts_with(RESERVED_ENV_PREFIX) || RESERVED_ENV.contains(&e.name.as_str()),
                "{}",
                e.name
            );
        }
    }

    #[test]
    fn app_probes_are_the_users_and_absent_by_default() {
        let exec = |cmd: &str| Probe {
            exec: Some(k8s_openapi::api::core::v1::ExecAction {
                command: Some(vec![cmd.to_owned()]),
            }),
            period_seconds: Some(5),
            ..Probe::default()
        };
        let mut spec = with_app();
        if let Some(app) = spec.app.as_mut() {
            app.liveness_probe = Some(exec("/alive"));
            app.startup_probe = Some(exec("/started"));
        }
        let p = pod(&build(&spec));
        let app = &p.init_containers.as_ref().expect("the app")[0];
        assert_eq!(app.liveness_probe, Some(exec("/alive")));
        assert_eq!(app.startup_probe, Some(exec("/started")));
        assert_eq!(app.readiness_probe, None);
        let plain = pod(&build(&with_app()));
        let app = &plain.init_containers.as_ref().expect("the app")[0];
        assert_eq!((&app.liveness_probe, &app.startup_probe), (&None, &None));
        assert_eq!(app.volume_mounts, None);
    }

    #[test]
    fn empty_overrides_leave_no_empty_collections() {
        let spec = ActorClusterSpec {
            pod_template: Some(PodTemplateOverrides {
                annotations: Some(BTreeMap::new()),
                tolerations: Some(vec![]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let d = build(&spec);
        let p = pod(&d);
        assert!(p.tolerations.is_none());
        assert!(
            d.spec
                .and_then(|s| s.template.metadata)
                .and_then(|m| m.annotations)
                .is_none()
        );
    }

    #[test]
    fn own_resources_replace_the_defaults() {
        let spec = ActorClusterSpec {
            resources: Some(ResourceRequirements {
                limits: Some(BTreeMap::from([(
                    "memory".to_owned(),
                    Quantity("64Mi".to_owned()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = &pod(&build(&spec)).containers[0];
        let r = c.resources.clone().expect("resources");
        assert!(r.requests.is_none());
        assert!(r.limits.is_some());
    }

    #[test]
    fn default_memory_limit_follows_the_actor_bound_and_the_mailbox() {
        let memory = |spec: &ActorClusterSpec| {
            let c = &pod(&build(spec)).containers[0];
            let r = c.resources.clone().expect("resources");
            let get = |m: Option<BTreeMap<String, Quantity>>| {
                m.and_then(|m| m.get("memory").map(|q| q.0.clone()))
            };
            (get(r.requests), get(r.limits))
        };
        // 64 MiB + 100 000 actors x 2 KiB + 1 000 messages x 4 KiB, rounded up to MiB.
        assert_eq!(
            memory(&ActorClusterSpec::default()),
            (Some("32Mi".into()), Some("264Mi".into()))
        );
        let small = ActorClusterSpec {
            actors: crate::crd::ActorsSpec {
                max_per_node: Some(1000),
                builtin_types: Some(vec!["counter".into(), "load".into()]),
            },
            mailbox: crate::crd::MailboxSpec {
                capacity: 100,
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(memory(&small), (Some("32Mi".into()), Some("67Mi".into())));
        let node = &pod(&build(&small)).containers[0];
        assert_eq!(
            env_of(node, "TROUPE_MAX_ACTORS").and_then(|e| e.value),
            Some("1000".into())
        );
        assert_eq!(
            env_of(node, "TROUPE_BUILTIN_TYPES").and_then(|e| e.value),
            Some("counter,load".into())
        );
        let defaults = &pod(&build(&ActorClusterSpec::default())).containers[0];
        assert!(env_of(defaults, "TROUPE_MAX_ACTORS").is_none());
        assert!(env_of(defaults, "TROUPE_BUILTIN_TYPES").is_none());
    }
}
