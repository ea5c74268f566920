//! The contract between `troupe-operator` and `troupe-node`.
//!
//! Both programs are built from this crate so that they can never disagree on:
//!
//! * the **labels** that select a cluster's pods ([`labels`]),
//! * the **ports** and **environment variables** of a node container ([`ports`], [`env`]),
//! * the **metric names** the HPA and the operator read ([`metrics`]),
//! * the **member table**: the versioned list of members that the nodes publish and the
//!   operator copies into `ActorCluster.status.members` ([`member_table`]).
//!
//! It owns no I/O and no Kubernetes types; it is plain data, kept small on purpose.

pub mod member_table;

pub use member_table::{Member, MemberStatus, MemberTable, MemberTableError};

/// API group and version of the `ActorCluster` resource.
pub const API_GROUP: &str = "troupe.dev";
/// API version of the `ActorCluster` resource.
pub const API_VERSION: &str = "v1alpha1";

/// Labels every object of one ActorCluster carries.
pub mod labels {
    /// `app.kubernetes.io/name`: always [`NAME_VALUE`] on node pods.
    pub const NAME: &str = "app.kubernetes.io/name";
    /// The value of [`NAME`] on node pods.
    pub const NAME_VALUE: &str = "troupe-node";
    /// `app.kubernetes.io/instance`: the ActorCluster's name.
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    /// `app.kubernetes.io/managed-by`: always [`MANAGED_BY_VALUE`].
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// The value of [`MANAGED_BY`].
    pub const MANAGED_BY_VALUE: &str = "troupe-operator";
    /// `app.kubernetes.io/component`.
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    /// The value of [`COMPONENT`] on node pods.
    pub const COMPONENT_NODE: &str = "actor-node";

    /// The label selector (as `k=v,k=v`) that finds the node pods of `cluster`.
    pub fn node_selector(cluster: &str) -> String {
        format!("{NAME}={NAME_VALUE},{INSTANCE}={cluster}")
    }

    /// The selector labels of the node pods of `cluster`, as pairs.
    pub fn node_selector_pairs(cluster: &str) -> [(&'static str, String); 2] {
        [
            (NAME, NAME_VALUE.to_owned()),
            (INSTANCE, cluster.to_owned()),
        ]
    }
}

/// Well-known ports of a node container.
pub mod ports {
    /// Management: `/alive`, `/ready`, `/metrics`, `/cluster/members`.
    pub const MANAGEMENT: u16 = 8558;
    /// Client HTTP API: `ask` and `tell`.
    pub const CLIENT: u16 = 8080;
    /// Node-to-node transport.
    pub const TRANSPORT: u16 = 25520;
    /// Port names used in the pod spec and the Services.
    pub const MANAGEMENT_NAME: &str = "management";
    /// Port name of [`CLIENT`].
    pub const CLIENT_NAME: &str = "http";
    /// Port name of [`TRANSPORT`].
    pub const TRANSPORT_NAME: &str = "transport";
}

/// Environment variables the operator sets on node containers.
pub mod env {
    /// The pod's name (downward API `metadata.name`).
    pub const POD_NAME: &str = "POD_NAME";
    /// The pod's namespace (downward API `metadata.namespace`).
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
    /// The pod's IP (downward API `status.podIP`).
    pub const POD_IP: &str = "POD_IP";
    /// The pod's UID (downward API `metadata.uid`).
    pub const POD_UID: &str = "POD_UID";
    /// The ActorCluster's name.
    pub const CLUSTER_NAME: &str = "TROUPE_CLUSTER";
    /// The ActorCluster's UID: the member Lease the node creates names the ActorCluster as
    /// its owner, so that deleting the ActorCluster collects the Lease too.
    pub const CLUSTER_UID: &str = "TROUPE_CLUSTER_UID";
    /// Mailbox capacity per actor.
    pub const MAILBOX_CAPACITY: &str = "TROUPE_MAILBOX_CAPACITY";
    /// Mailbox overflow policy (`Backpressure`, `DropNewest`, `DropOldest`, `Reject`).
    pub const MAILBOX_OVERFLOW: &str = "TROUPE_MAILBOX_OVERFLOW";
    /// Base URL of the sidecar-mode application container, if any.
    pub const APP_URL: &str = "TROUPE_APP_URL";
    /// Comma-separated actor types the sidecar application serves (empty or unset: every
    /// type that is not built into the node).
    pub const APP_TYPES: &str = "TROUPE_APP_TYPES";
    /// Most actors one node holds in memory, activations and kept states together (a
    /// positive integer; unset: 100 000). At the bound new activations answer 503.
    pub const MAX_ACTORS: &str = "TROUPE_MAX_ACTORS";
    /// Comma-separated built-in actor types the node serves, of `counter`, `kv`, `echo`,
    /// `load` (unset: `counter,kv,echo`; empty: none). `load` burns CPU on request: list it
    /// only for load tests.
    pub const BUILTIN_TYPES: &str = "TROUPE_BUILTIN_TYPES";
    /// Log filter (tracing `EnvFilter` syntax).
    pub const LOG: &str = "TROUPE_LOG";
    /// Where actor states are kept: `memory` (unset: the default) or `postgres`.
    pub const STATE_STORE: &str = "TROUPE_STATE_STORE";
    /// File holding the PostgreSQL connection string (a key of the user's Secret, mounted
    /// by the kubelet); read again on every reconnect, so a rotated Secret is picked up.
    pub const STATE_POSTGRES_FILE: &str = "TROUPE_STATE_POSTGRES_FILE";
    /// The PostgreSQL connection string itself (instead of the file; tests, local runs).
    pub const STATE_POSTGRES_URL: &str = "TROUPE_STATE_POSTGRES_URL";
    /// Largest actor state the store takes, in bytes (a larger one is refused with 413).
    pub const STATE_MAX_BYTES: &str = "TROUPE_STATE_MAX_BYTES";
    /// Directory of the mounted transport credential ([`crate::tls`]); set, the transport
    /// speaks mutual TLS only and the management endpoints want the cluster's token.
    pub const TLS_DIR: &str = "TROUPE_TLS_DIR";
}

/// The per-ActorCluster credential: a CA the operator keeps, and a certificate, key and
/// management token it issues into a Secret that the kubelet mounts into node pods.
pub mod tls {
    /// Where the operator mounts the credential Secret in the node container.
    pub const MOUNT_DIR: &str = "/etc/troupe/tls";
    /// The CA bundle file (PEM, one or more certificates: old and new during a rotation).
    pub const CA_FILE: &str = "ca.crt";
    /// The node certificate file (PEM).
    pub const CERT_FILE: &str = "tls.crt";
    /// The node key file (PEM, PKCS#8).
    pub const KEY_FILE: &str = "tls.key";
    /// The management token file: `Authorization: Bearer <token>` on `/admin/*` and
    /// `/cluster/*`.
    pub const TOKEN_FILE: &str = "management.token";
    /// The ALPN protocol of the current wire format: the handshake versions the wire.
    pub const ALPN_WIRE_V1: &[u8] = b"troupe-wire/1";

    /// The Secret mounted into the node pods of `cluster` (CA bundle, certificate, key,
    /// token; no CA key).
    pub fn secret_name(cluster: &str) -> String {
        format!("{cluster}-transport-tls")
    }

    /// The Secret holding the CA key of `cluster` (read by the operator only, never
    /// mounted).
    pub fn ca_secret_name(cluster: &str) -> String {
        format!("{cluster}-transport-ca")
    }

    /// The DNS name the node certificate of `namespace/cluster` carries and every peer
    /// checks: a credential of another cluster is refused even if its CA were trusted.
    pub fn identity(namespace: &str, cluster: &str) -> String {
        format!("{cluster}.{namespace}.troupe.internal")
    }
}

/// Names of metrics that more than one program reads.
pub mod metrics {
    /// Mailbox depth. On a node's `/metrics` this series is labelled by `actor_type`; in
    /// `custom.metrics.k8s.io` it is the **per-pod** metric the HPA scales on, whose value
    /// is the node's [`NODE_MAILBOX_DEPTH`].
    pub const MAILBOX_DEPTH: &str = "troupe_mailbox_depth";
    /// The per-pod total mailbox depth (sum over every actor on the node), unlabelled, as
    /// the node exports it; the custom metrics API reads this one.
    pub const NODE_MAILBOX_DEPTH: &str = "troupe_node_mailbox_depth";
    /// **Deprecated** name of [`NODE_MAILBOX_DEPTH`] (a gauge must not end in `_total`):
    /// nodes export both until v1, and the operator reads it from nodes that export only
    /// this one (an older release, during a rolling update). Removed at v1.
    pub const MAILBOX_DEPTH_TOTAL: &str = "troupe_mailbox_depth_total";
    /// 1 while the node reaches its durable state store, 0 while it does not (absent in
    /// `memory` mode); the operator reports Degraded from it.
    pub const STATE_STORE_UP: &str = "troupe_state_store_up";
}

/// Where the member table of a cluster is kept in Kubernetes.
pub mod coordination {
    /// Name of the `coordination.k8s.io/v1` Lease that elects the coordinator and holds the
    /// member table of `cluster`.
    pub fn lease_name(cluster: &str) -> String {
        format!("{cluster}-members")
    }
    /// The Lease annotation that holds the JSON member table.
    pub const MEMBER_TABLE_ANNOTATION: &str = "troupe.dev/member-table";
}
