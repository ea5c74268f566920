//! The `ActorCluster` API (`troupe.dev/v1alpha1`, short name `ac`).
//!
//! This module owns the Rust types of the custom resource and everything the API server
//! enforces on its own: the OpenAPI schema with defaults, the CEL rules
//! (`x-kubernetes-validations`, every message names the field it is about), the scale
//! subresource and the printer columns (`kubectl get ac`: replicas, ready pods, Up members,
//! mailbox depth, and the Ready condition's status and reason). It owns no I/O; `crdgen`
//! prints [`crd_yaml`].
//!
//! What only the operator can judge (an image that never starts, a quota that blocks pods)
//! is not here: it becomes a status condition (see [`crate::status`]).

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior;
use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, Probe, ResourceRequirements, Toleration, TopologySpreadConstraint, Volume,
    VolumeMount,
};
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Replicas when `spec.replicas` is not given.
pub const DEFAULT_REPLICAS: i32 = 1;
/// Mailbox capacity per actor when `spec.mailbox.capacity` is not given.
pub const DEFAULT_MAILBOX_CAPACITY: i32 = 1000;
/// The largest mailbox capacity the API accepts.
pub const MAX_MAILBOX_CAPACITY: i32 = 1_000_000;
/// Port of the sidecar-mode application container when `spec.app.port` is not given.
pub const DEFAULT_APP_PORT: i32 = 3000;
/// The Secret key holding the PostgreSQL connection string when `spec.state.postgres.key`
/// is not given.
pub const DEFAULT_POSTGRES_KEY: &str = "url";
/// The largest actor state a store may be told to take (`spec.state.postgres.maxStateBytes`).
pub const MAX_STATE_BYTES: i64 = 64 << 20;

/// Names of the pod volumes the operator adds itself; `spec.podTemplate.volumes` may not
/// use them (scratch `/tmp`, the transport credential, the node's API token, the database
/// Secret).
pub const RESERVED_VOLUMES: [&str; 4] = ["tmp", "transport-tls", "kube-api-access", "state-store"];
/// Environment variables of the node container the operator sets without the `TROUPE_`
/// prefix (the downward API); `spec.podTemplate.env` may not set them, nor any `TROUPE_*`.
pub const RESERVED_ENV: [&str; 4] = ["POD_NAME", "POD_NAMESPACE", "POD_IP", "POD_UID"];
/// The prefix of the node's own configuration variables, all set by the operator.
pub const RESERVED_ENV_PREFIX: &str = "TROUPE_";
/// Most entries of `spec.podTemplate.env`.
pub const MAX_ENV: usize = 64;
/// Most entries of `spec.podTemplate.volumes` and of `spec.app.volumeMounts`.
pub const MAX_VOLUMES: usize = 32;
/// Most entries of `spec.podTemplate.topologySpreadConstraints`.
pub const MAX_TOPOLOGY_SPREAD: usize = 8;

/// The desired state of an actor cluster.
// kube's `printcolumn(type_ = ...)` repeats keys by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "troupe.dev",
    version = "v1alpha1",
    kind = "ActorCluster",
    namespaced,
    shortname = "ac",
    category = "troupe",
    status = "ActorClusterStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "A self-forming, self-healing, mailbox-autoscaled cluster of Troupe actor nodes.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Desired number of actor nodes"
    ),
    printcolumn(
        name = "Pods Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Ready actor-node pods"
    ),
    printcolumn(
        name = "Members",
        type_ = "integer",
        json_path = ".status.upMembers",
        description = "Up members in the cluster's member table"
    ),
    printcolumn(
        name = "Mailbox",
        type_ = "integer",
        json_path = ".status.mailboxDepth",
        description = "Messages waiting in the mailboxes of all pods"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Status of the Ready condition: True when every requested node pod is Ready"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Reason of the Ready condition"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.replicas >= 0")
    .message("spec.replicas must be 0 or more")
    .field_path(".replicas"))]
#[serde(rename_all = "camelCase")]
pub struct ActorClusterSpec {
    /// Number of actor nodes. With `spec.autoscaling` the HPA writes it through `/scale`
    /// from its first sync on; it may be left out or lie outside [`minReplicas`,
    /// `maxReplicas`]: the operator clamps the node Deployment's replicas into those bounds
    /// (so `autoscaling: {minReplicas: 5, ...}` without `replicas` starts 5 nodes).
    #[serde(default = "default_replicas")]
    pub replicas: i32,

    /// The node image. Defaults to the operator's own node image (`TROUPE_NODE_IMAGE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    #[x_kube(validation = Rule::new("self.size() > 0 && !self.contains(' ')")
        .message("spec.image must be a non-empty image reference without spaces"))]
    pub image: Option<String>,

    /// Mailbox size and overflow policy of every actor.
    #[serde(default)]
    pub mailbox: MailboxSpec,

    /// What each node hosts: its bound on actors held in memory, the built-in types.
    #[serde(default)]
    pub actors: ActorsSpec,

    /// Mailbox-depth autoscaling. Absent: the replica count is fixed by `spec.replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,

    /// An optional sidecar-mode application container that implements actor types over
    /// localhost HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppSpec>,

    /// Where actor states are kept: `memory` (the default) or `postgres`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateSpec>,

    /// Resources of the node container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Overrides of the pod template: labels, annotations, scheduling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverrides>,

    /// Who may reach the nodes: the NetworkPolicy the operator writes (SECURITY.md).
    #[serde(default)]
    pub network: NetworkSpec,
}

/// The cluster's NetworkPolicy. The transport and management ports are open only to the
/// cluster's own pods (management also to the operator, and to `metricsFrom`); the client
/// port to `clientFrom`, everyone by default.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// Write the NetworkPolicy (`false`: remove it, every port open to every pod). A
    /// NetworkPolicy is only enforced where the cluster's network plugin enforces them.
    #[serde(default = "yes")]
    pub policy: bool,
    /// Who may call the client API (port 8080), as NetworkPolicy peers. Absent: anyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.size() <= 32")
        .message("spec.network.clientFrom may list at most 32 peers"))]
    pub client_from: Option<Vec<NetworkPolicyPeer>>,
    /// Who else may read the management port (8558: `/metrics`, and the probes' routes,
    /// which want the cluster's token), e.g. a Prometheus namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.size() <= 32")
        .message("spec.network.metricsFrom may list at most 32 peers"))]
    pub metrics_from: Option<Vec<NetworkPolicyPeer>>,
}

fn yes() -> bool {
    true
}

impl Default for NetworkSpec {
    fn default() -> Self {
        Self {
            policy: true,
            client_from: None,
            metrics_from: None,
        }
    }
}

fn default_replicas() -> i32 {
    DEFAULT_REPLICAS
}

/// What happens when a message arrives at a full mailbox.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OverflowPolicy {
    /// The sender waits (HTTP `tell` answers 429/503 with `Retry-After`).
    #[default]
    Backpressure,
    /// The new message is dropped and counted as a dead letter.
    DropNewest,
    /// The oldest queued message is dropped to make room.
    DropOldest,
    /// The message is refused with an error.
    Reject,
}

impl OverflowPolicy {
    /// The name as it appears in the API and in `TROUPE_MAILBOX_OVERFLOW`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backpressure => "Backpressure",
            Self::DropNewest => "DropNewest",
            Self::DropOldest => "DropOldest",
            Self::Reject => "Reject",
        }
    }
}

/// Most actors one node holds in memory when `spec.actors.maxPerNode` is not set (the
/// node's own default).
pub const DEFAULT_MAX_ACTORS_PER_NODE: i64 = 100_000;

/// What each node hosts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ActorsSpec {
    /// Most actors one node holds in memory, activations and kept states together
    /// (unset: 100000). At the bound a new activation answers 503 with `Retry-After`
    /// (memory mode never drops a kept state). Also sizes the node's default memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 10000000")
        .message("spec.actors.maxPerNode must be between 1 and 10000000"))]
    pub max_per_node: Option<i64>,
    /// Built-in actor types the nodes serve, among `counter`, `kv`, `echo` and `load`
    /// (unset: `counter`, `kv`, `echo`). `load` burns CPU on request: list it only for
    /// load tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4))]
    #[x_kube(validation = Rule::new("self.all(t, t in ['counter', 'kv', 'echo', 'load'])")
        .message("spec.actors.builtinTypes may list only counter, kv, echo and load"))]
    pub builtin_types: Option<Vec<String>>,
}

/// Mailbox settings of every actor in the cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MailboxSpec {
    /// Messages one actor's mailbox holds.
    #[serde(default = "default_capacity")]
    #[x_kube(validation = Rule::new("self > 0 && self <= 1000000")
        .message("spec.mailbox.capacity must be greater than 0 and at most 1000000"))]
    pub capacity: i32,
    /// Overflow policy: Backpressure, DropNewest, DropOldest or Reject.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self in ['Backpressure', 'DropNewest', 'DropOldest', 'Reject']")
        .message("spec.mailbox.overflow must be one of Backpressure, DropNewest, DropOldest, Reject"))]
    pub overflow: OverflowPolicy,
}

fn default_capacity() -> i32 {
    DEFAULT_MAILBOX_CAPACITY
}

impl Default for MailboxSpec {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_MAILBOX_CAPACITY,
            overflow: OverflowPolicy::default(),
        }
    }
}

/// Mailbox-depth autoscaling through an `autoscaling/v2` HPA on the cluster's `/scale`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas")
    .message("spec.autoscaling.minReplicas must be less than or equal to spec.autoscaling.maxReplicas")
    .field_path(".minReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// The fewest nodes the HPA keeps.
    #[serde(default = "default_min_replicas")]
    #[x_kube(validation = Rule::new("self >= 1")
        .message("spec.autoscaling.minReplicas must be at least 1"))]
    pub min_replicas: i32,
    /// The most nodes the HPA creates.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1000")
        .message("spec.autoscaling.maxReplicas must be between 1 and 1000"))]
    pub max_replicas: i32,
    /// Target average mailbox depth per pod (the HPA's `averageValue`).
    #[x_kube(validation = Rule::new("self > 0")
        .message("spec.autoscaling.targetMailboxDepth must be greater than 0"))]
    pub target_mailbox_depth: i64,
    /// Passed to the HPA's `spec.behavior` as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
}

fn default_min_replicas() -> i32 {
    1
}

/// A sidecar-mode application container in every node pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AppSpec {
    /// The application image.
    #[schemars(length(max = 512))]
    #[x_kube(validation = Rule::new("self.size() > 0 && !self.contains(' ')")
        .message("spec.app.image must be a non-empty image reference without spaces"))]
    pub image: String,
    /// The port on which the application serves actor calls on localhost.
    #[serde(default = "default_app_port")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535 && !(self in [8080, 8558, 25520])")
        .message("spec.app.port must be between 1 and 65535 and not one of the node's ports 8080, 8558, 25520"))]
    pub port: i32,
    /// The actor types the application serves (at least one). The node hosts exactly
    /// these; a client request for any other type is refused (404), never passed to the
    /// application.
    #[schemars(length(min = 1, max = 64), inner(length(max = 256)))]
    #[x_kube(validation = Rule::new("self.all(t, t.size() > 0 && t.size() <= 256 && !t.contains('/') && !t.contains(',') && !t.startsWith('$'))")
        .message("spec.app.types must list the application's actor types: names of 1 to 256 characters without '/', ',' or a leading '$'"))]
    pub types: Vec<String>,
    /// Command of the application container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Arguments of the application container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Environment of the application container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    /// Resources of the application container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Volumes mounted into the application container, each one of
    /// `spec.podTemplate.volumes`: the node's own volumes (its API token and transport
    /// credential among them) are not the application's, and the API refuses their names;
    /// a mount of a volume not listed there makes the spec invalid (condition InvalidSpec).
    /// At most 32, one per `mountPath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_VOLUMES))]
    #[x_kube(validation = Rule::new("self.all(m, !(m.name in ['tmp', 'transport-tls', 'kube-api-access', 'state-store']))")
        .message("spec.app.volumeMounts may mount only volumes of spec.podTemplate.volumes, none of the operator's: tmp, transport-tls, kube-api-access, state-store"))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["mountPath".into()]))]
    pub volume_mounts: Option<Vec<VolumeMount>>,
    /// Liveness probe of the application container: the kubelet restarts the application
    /// (a native sidecar) when it fails. `httpGet`, `tcpSocket` and `grpc` probes reach the
    /// pod IP, so the application must listen there for them (the node calls it on
    /// `127.0.0.1` only); an `exec` probe needs neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    /// Startup probe of the application container. The kubelet starts the node container
    /// only once it has succeeded, and holds the liveness probe until then (same reach as
    /// `livenessProbe`). Absent: the node waits for the application's port on localhost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
}

fn default_app_port() -> i32 {
    DEFAULT_APP_PORT
}

/// Where the actors' states are kept.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("self.store == 'postgres' ? has(self.postgres) : !has(self.postgres)")
    .message("spec.state.postgres is required when spec.state.store is postgres, and allowed only then")
    .field_path(".postgres"))]
#[serde(rename_all = "camelCase")]
pub struct StateSpec {
    /// `memory`: in the node only; a crash loses the actors of that pod (each loss is
    /// counted in `troupe_actor_states_lost_total`). `postgres`: every changed state is
    /// written through to PostgreSQL before the reply leaves the node.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self in ['memory', 'postgres']")
        .message("spec.state.store must be memory or postgres"))]
    pub store: StateStoreKind,
    /// The PostgreSQL database (with `store: postgres`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSpec>,
}

/// Where actor states are kept.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StateStoreKind {
    /// In the node's memory (today's behaviour).
    #[default]
    Memory,
    /// In PostgreSQL.
    Postgres,
}

impl StateStoreKind {
    /// The name as it appears in the API and in `TROUPE_STATE_STORE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Postgres => "postgres",
        }
    }
}

/// A PostgreSQL database for actor states, the user's own. The node creates its tables
/// on first use (`troupe_actor_state`, `troupe_schema`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSpec {
    /// A Secret in the ActorCluster's namespace whose key `key` holds a connection string
    /// (`postgresql://user:password@host:port/database`). The kubelet mounts it into the
    /// node container; neither the node nor the operator reads Secrets through the API.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')")
        .message("spec.state.postgres.secretName must be a Secret name (lowercase letters, digits, '-' and '.')"))]
    pub secret_name: String,
    /// The Secret's key holding the connection string.
    #[serde(default = "default_postgres_key")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]+$')")
        .message("spec.state.postgres.key must be a Secret key (letters, digits, '-', '_' and '.')"))]
    pub key: String,
    /// Largest state of one actor, in bytes; a turn that would store more is refused with
    /// 413 and changes nothing. Default 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0 && self <= 67108864")
        .message("spec.state.postgres.maxStateBytes must be greater than 0 and at most 67108864 (64 MiB)"))]
    pub max_state_bytes: Option<i64>,
}

fn default_postgres_key() -> String {
    DEFAULT_POSTGRES_KEY.to_owned()
}

/// What a user may add to the node pods. The selector labels always win.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateOverrides {
    /// Extra pod labels (the selector labels cannot be overridden).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Node selector of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Affinity of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Priority class of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// How the pods spread over topology domains (zones, nodes), as in a pod spec; at most 8.
    /// Absent or empty: the operator sets none (the scheduler's cluster-wide default
    /// spreading, if configured, applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_TOPOLOGY_SPREAD))]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// Extra environment of the node container, after the operator's own; at most 64, each
    /// name once. Names starting with `TROUPE_` and the downward-API names `POD_NAME`,
    /// `POD_NAMESPACE`, `POD_IP`, `POD_UID` are refused: the operator sets those from the
    /// spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_ENV))]
    #[x_kube(validation = Rule::new("self.all(e, !e.name.startsWith('TROUPE_') && !(e.name in ['POD_NAME', 'POD_NAMESPACE', 'POD_IP', 'POD_UID']))")
        .message("spec.podTemplate.env must not set TROUPE_* variables or POD_NAME, POD_NAMESPACE, POD_IP, POD_UID: the operator sets those"))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub env: Option<Vec<EnvVar>>,
    /// Annotations of the cluster's node ServiceAccount `<name>-node`, e.g. a cloud IAM
    /// role (`eks.amazonaws.com/role-arn`, `iam.gke.io/gcp-service-account`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_annotations: Option<BTreeMap<String, String>>,
    /// Extra volumes of the pods, for `spec.app.volumeMounts`; at most 32, each name once.
    /// The names of the operator's own volumes (`tmp`, `transport-tls`, `kube-api-access`,
    /// `state-store`) are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_VOLUMES))]
    #[x_kube(validation = Rule::new("self.all(v, !(v.name in ['tmp', 'transport-tls', 'kube-api-access', 'state-store']))")
        .message("spec.podTemplate.volumes must not use the names of the operator's volumes: tmp, transport-tls, kube-api-access, state-store"))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub volumes: Option<Vec<Volume>>,
}

/// The observed state of an actor cluster, written only by the operator's leader.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ActorClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Node pods that exist (the Deployment's `status.replicas`); read by `/scale`.
    #[serde(default)]
    pub replicas: i32,
    /// Node pods that are Ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// The label selector of the node pods, for `/scale` and the HPA.
    #[serde(default)]
    pub selector: String,
    /// Members of the cluster's member table, as the nodes publish it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberSummary>,
    /// Number of members that are Up.
    #[serde(default)]
    pub up_members: i32,
    /// Messages waiting in the mailboxes of all the cluster's pods (the sum of every
    /// pod's `troupe_node_mailbox_depth`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox_depth: Option<i64>,
    /// Ready, Progressing, Degraded and ScalingLimited.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One member as shown in the status.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MemberSummary {
    /// The pod's name.
    pub pod: String,
    /// Joining, Up, Leaving or Down.
    pub status: String,
}

/// The CRD as YAML, exactly what `crdgen` prints and `crds/actorcluster.yaml` holds.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&ActorCluster::crd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_an_almost_empty_spec() {
        let spec: ActorClusterSpec = serde_json::from_str("{}").expect("parses");
        assert_eq!(spec.replicas, 1);
        assert_eq!(spec.mailbox.capacity, 1000);
        assert_eq!(spec.mailbox.overflow, OverflowPolicy::Backpressure);
        assert!(spec.autoscaling.is_none());
    }

    #[test]
    fn crd_has_scale_printer_columns_and_short_name() {
        let crd = ActorCluster::crd();
        assert_eq!(crd.spec.names.short_names, Some(vec!["ac".to_owned()]));
        let version = &crd.spec.versions[0];
        let scale = version
            .subresources
            .as_ref()
            .and_then(|s| s.scale.as_ref())
            .expect("scale subresource");
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(scale.status_replicas_path, ".status.replicas");
        assert_eq!(
            scale.label_selector_path.as_deref(),
            Some(".status.selector")
        );
    }

    #[test]
    fn printer_columns_show_the_ready_condition_and_its_reason() {
        let crd = ActorCluster::crd();
        let columns: Vec<_> = crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| (c.name.as_str(), c.type_.as_str(), c.json_path.as_str()))
            .collect();
        assert_eq!(
            columns,
            [
                ("Replicas", "integer", ".spec.replicas"),
                ("Pods Ready", "integer", ".status.readyReplicas"),
                ("Members", "integer", ".status.upMembers"),
                ("Mailbox", "integer", ".status.mailboxDepth"),
                (
                    "Ready",
                    "string",
                    ".status.conditions[?(@.type==\"Ready\")].status"
                ),
                (
                    "Reason",
                    "string",
                    ".status.conditions[?(@.type==\"Ready\")].reason"
                ),
                ("Age", "date", ".metadata.creationTimestamp"),
            ]
        );
        // The condition type the columns select is one the operator writes.
        let status = crate::status::compute(
            &crate::status::Observed {
                name: "orders",
                generation: Some(1),
                spec: &ActorClusterSpec::default(),
                deployment: None,
                members: &troupe_contract::MemberTable::default(),
                problem: None,
                store: None,
            },
            None,
            &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
        );
        assert!(crate::status::condition(&status, "Ready").is_some());
    }

    #[test]
    fn every_cel_message_names_a_spec_field() {
        let json = serde_json::to_string(&ActorCluster::crd()).expect("serialises");
        let value: serde_json::Value = serde_json::from_str(&json).expect("parses");
        let mut messages = Vec::new();
        collect_messages(&value, &mut messages);
        assert!(messages.len() >= 9, "{messages:?}");
        for m in messages {
            assert!(m.starts_with("spec."), "{m}");
        }
    }

    fn cel_errors(spec: serde_json::Value) -> Vec<String> {
        let crd = ActorCluster::crd();
        let schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("schema"),
        )
        .expect("schema json");
        let object = serde_json::json!({
            "apiVersion": "troupe.dev/v1alpha1",
            "kind": "ActorCluster",
            "metadata": {"name": "orders", "namespace": "shop"},
            "spec": spec,
        });
        match kube::core::cel::Validator::new().validate(&schema, &object, None) {
            Ok(()) => vec![],
            Err(errors) => errors.into_vec().into_iter().map(|e| e.message).collect(),
        }
    }

    #[test]
    fn cel_accepts_the_example_and_autoscaled_specs() {
        let example = serde_json::json!({"replicas": 3, "image": "troupe-node:0.1.0",
            "mailbox": {"capacity": 1000, "overflow": "Backpressure"}});
        assert_eq!(cel_errors(example), Vec::<String>::new());
        let autoscaled = serde_json::json!({"replicas": 2, "autoscaling":
            {"minReplicas": 2, "maxReplicas": 10, "targetMailboxDepth": 100, "behavior": {}}});
        assert_eq!(cel_errors(autoscaled), Vec::<String>::new());
        assert_eq!(cel_errors(serde_json::json!({})), Vec::<String>::new());
        let durable = serde_json::json!({"state": {"store": "postgres",
            "postgres": {"secretName": "orders-db", "key": "url", "maxStateBytes": 65536}}});
        assert_eq!(cel_errors(durable), Vec::<String>::new());
        let memory = serde_json::json!({"state": {"store": "memory"}});
        assert_eq!(cel_errors(memory), Vec::<String>::new());
    }

    #[test]
    fn cel_accepts_autoscaling_whatever_the_replicas() {
        // The HPA writes spec.replicas through /scale only after the object is stored, so
        // a replica count outside [minReplicas, maxReplicas] (the default one among them)
        // must be accepted: the operator clamps the Deployment's replicas instead.
        let autoscaling = serde_json::json!({"minReplicas": 5, "maxReplicas": 10,
            "targetMailboxDepth": 100});
        for spec in [
            serde_json::json!({"autoscaling": autoscaling}),
            serde_json::json!({"replicas": DEFAULT_REPLICAS, "autoscaling": autoscaling}),
            serde_json::json!({"replicas": 30, "autoscaling": autoscaling}),
        ] {
            assert_eq!(cel_errors(spec.clone()), Vec::<String>::new(), "{spec}");
        }
    }

    #[test]
    fn cel_refuses_invalid_specs_naming_the_field() {
        let cases = [
            (serde_json::json!({"replicas": -1}), "spec.replicas"),
            (
                serde_json::json!({"mailbox": {"capacity": 0}}),
                "spec.mailbox.capacity",
            ),
            (
                serde_json::json!({"mailbox": {"overflow": "Sometimes"}}),
                "spec.mailbox.overflow",
            ),
            (
                serde_json::json!({"replicas": 3, "autoscaling": {"minReplicas": 5, "maxReplicas": 2, "targetMailboxDepth": 1}}),
                "spec.autoscaling.minReplicas must be less than or equal",
            ),
            (
                serde_json::json!({"replicas": 3, "autoscaling": {"minReplicas": 1, "maxReplicas": 5, "targetMailboxDepth": 0}}),
                "spec.autoscaling.targetMailboxDepth",
            ),
            (serde_json::json!({"image": ""}), "spec.image"),
            (
                serde_json::json!({"app": {"image": "app:1", "port": 8558}}),
                "spec.app.port",
            ),
            (
                serde_json::json!({"app": {"image": "app:1", "types": ["cart", "$activate"]}}),
                "spec.app.types",
            ),
            (
                serde_json::json!({"actors": {"builtinTypes": ["counter", "shell"]}}),
                "spec.actors.builtinTypes",
            ),
            (
                serde_json::json!({"actors": {"maxPerNode": 0}}),
                "spec.actors.maxPerNode",
            ),
            (
                serde_json::json!({"state": {"store": "redis"}}),
                "spec.state.store",
            ),
            (
                serde_json::json!({"state": {"store": "postgres"}}),
                "spec.state.postgres is required",
            ),
            (
                serde_json::json!({"state": {"store": "memory", "postgres": {"secretName": "db"}}}),
                "spec.state.postgres is required",
            ),
            (
                serde_json::json!({"state": {"store": "postgres", "postgres": {"secretName": "Not A Name"}}}),
                "spec.state.postgres.secretName",
            ),
            (
                serde_json::json!({"state": {"store": "postgres", "postgres": {"secretName": "db", "key": "a/b"}}}),
                "spec.state.postgres.key",
            ),
            (
                serde_json::json!({"state": {"store": "postgres", "postgres": {"secretName": "db", "maxStateBytes": 0}}}),
                "spec.state.postgres.maxStateBytes",
            ),
            (
                serde_json::json!({"network": {"clientFrom": vec![serde_json::json!({}); 33]}}),
                "spec.network.clientFrom",
            ),
        ];
        for (spec, field) in cases {
            let errors = cel_errors(spec.clone());
            assert!(
                errors.iter().any(|m| m.contains(field)),
                "{spec} should be refused naming {field}, got {errors:?}"
            );
        }
    }

    #[test]
    fn pod_template_knobs_are_accepted() {
        let spec = serde_json::json!({
            "podTemplate": {
                "topologySpreadConstraints": [{"maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "ScheduleAnyway"}],
                "env": [{"name": "RUST_BACKTRACE", "value": "1"}],
                "serviceAccountAnnotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"},
                "volumes": [{"name": "cache", "emptyDir": {}}],
            },
            "app": {"image": "app:1", "types": ["cart"],
                "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
                "livenessProbe": {"exec": {"command": ["/alive"]}},
                "startupProbe": {"tcpSocket": {"port": 3000}, "failureThreshold": 30}},
        });
        assert_eq!(cel_errors(spec.clone()), Vec::<String>::new());
        let parsed: ActorClusterSpec = serde_json::from_value(spec).expect("parses");
        assert!(crate::validate::validate(&parsed, "n:1").is_ok());
    }

    /// The CEL rule and `validate` refuse `spec` with the same message, which contains
    /// `message`.
    fn refused_alike(spec: serde_json::Value, message: &str) {
        let cel = cel_errors(spec.clone());
        assert!(
            cel.iter().any(|m| m.contains(message)),
            "{spec}: CEL should say {message:?}, said {cel:?}"
        );
        let parsed: ActorClusterSpec = serde_json::from_value(spec.clone()).expect("parses");
        let rust = crate::validate::validate(&parsed, "n:1").expect_err("refused");
        assert!(
            cel.iter().any(|m| rust.0.contains(m.as_str())),
            "{spec}: validate said {rust}, CEL said {cel:?}"
        );
    }

    #[test]
    fn pod_template_knobs_are_refused_naming_the_field() {
        let env = |name: &str| serde_json::json!({"podTemplate": {"env": [{"name": name, "value": "x"}]}});
        for name in ["TROUPE_MAILBOX_CAPACITY", "TROUPE_LOG", "POD_IP"] {
            refused_alike(env(name), "spec.podTemplate.env must not set TROUPE_*");
        }
        for name in RESERVED_VOLUMES {
            refused_alike(
                serde_json::json!({"podTemplate": {"volumes": [{"name": name, "emptyDir": {}}]}}),
                "spec.podTemplate.volumes must not use the names of the operator's volumes",
            );
        }
        let app = |mounts: serde_json::Value, volumes: Option<serde_json::Value>| {
            let mut spec = serde_json::json!({"app": {"image": "app:1", "types": ["cart"],
                "volumeMounts": mounts}});
            if let Some(v) = volumes {
                spec["podTemplate"] = serde_json::json!({"volumes": v});
            }
            spec
        };
        // The node's own volumes (its API token) are not the application's to mount.
        for volumes in [
            None,
            Some(serde_json::json!([{"name": "cache", "emptyDir": {}}])),
        ] {
            refused_alike(
                app(
                    serde_json::json!([{"name": "kube-api-access", "mountPath": "/t"}]),
                    volumes,
                ),
                "spec.app.volumeMounts may mount only volumes of spec.podTemplate.volumes",
            );
        }
        // What the API server refuses by the lists' keys (a repeated name or mountPath),
        // or what no CEL rule can afford to check (each mount's volume among the user's:
        // two unbounded string lists), the operator refuses, naming the field.
        let invalid = |spec: serde_json::Value, message: &str| {
            let parsed: ActorClusterSpec = serde_json::from_value(spec.clone()).expect("parses");
            let e = crate::validate::validate(&parsed, "n:1").expect_err("refused");
            assert!(e.0.contains(message), "{spec}: {e}");
        };
        invalid(
            serde_json::json!({"podTemplate": {"env": [{"name": "A"}, {"name": "A", "value": "2"}]}}),
            "spec.podTemplate.env must not name a variable twice",
        );
        invalid(
            serde_json::json!({"podTemplate": {"volumes": [{"name": "a", "emptyDir": {}}, {"name": "a", "emptyDir": {}}]}}),
            "spec.podTemplate.volumes must not name a volume twice",
        );
        invalid(
            app(
                serde_json::json!([{"name": "cache", "mountPath": "/c"}, {"name": "cache", "mountPath": "/c"}]),
                Some(serde_json::json!([{"name": "cache", "emptyDir": {}}])),
            ),
            "spec.app.volumeMounts must not repeat a mountPath",
        );
        invalid(
            app(
                serde_json::json!([{"name": "cache", "mountPath": "/c"}]),
                Some(serde_json::json!([{"name": "other", "emptyDir": {}}])),
            ),
            "spec.app.volumeMounts may mount only volumes of spec.podTemplate.volumes",
        );
    }

    #[test]
    fn pod_template_lists_are_bounded() {
        let schema = serde_json::to_value(ActorCluster::crd()).expect("json");
        let spec = &schema["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"];
        let template = &spec["podTemplate"]["properties"];
        assert_eq!(template["env"]["maxItems"], MAX_ENV);
        assert_eq!(template["volumes"]["maxItems"], MAX_VOLUMES);
        assert_eq!(
            template["topologySpreadConstraints"]["maxItems"],
            MAX_TOPOLOGY_SPREAD
        );
        assert_eq!(
            spec["app"]["properties"]["volumeMounts"]["maxItems"],
            MAX_VOLUMES
        );
        // Keyed lists: the API server refuses a repeated key, and server-side apply merges
        // by it.
        for (list, key) in [
            (&template["env"], "name"),
            (&template["volumes"], "name"),
            (&spec["app"]["properties"]["volumeMounts"], "mountPath"),
        ] {
            assert_eq!(list["x-kubernetes-list-type"], "map");
            assert_eq!(list["x-kubernetes-list-map-keys"], serde_json::json!([key]));
        }
        // Beyond the bound validate refuses too (a spec stored without the schema).
        let many = serde_json::json!({"podTemplate": {"env":
            (0..=MAX_ENV).map(|i| serde_json::json!({"name": format!("V{i}")})).collect::<Vec<_>>()}});
        let parsed: ActorClusterSpec = serde_json::from_value(many).expect("parses");
        let e = crate::validate::validate(&parsed, "n:1").expect_err("too many");
        assert!(
            e.0.contains("spec.podTemplate.env may list at most 64"),
            "{e}"
        );
    }

    fn collect_messages(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Array(rules)) = map.get("x-kubernetes-validations") {
                    for r in rules {
                        if let Some(m) = r.get("message").and_then(|m| m.as_str()) {
                            out.push(m.to_owned());
                        }
                    }
                }
                for v in map.values() {
                    collect_messages(v, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| collect_messages(v, out)),
            _ => {}
        }
    }
}
