//! The Kubernetes edge: the member store on a `coordination.k8s.io/v1` Lease, and the pod
//! watch that feeds [`PodSet`]. Everything here is I/O; what it means is decided elsewhere.
//!
//! * [`LeaseStore`]: the Lease `<cluster>-members` in the node's namespace. `holderIdentity`,
//!   `renewTime` and `leaseDurationSeconds` carry the coordinator lease (so `kubectl get
//!   lease` shows the coordinator), the annotation `troupe.dev/member-table` the table.
//!   Writes are `replace` with the read `resourceVersion` (409 → [`StoreError::Conflict`]).
//!   A Lease without the annotation reads as [`Found::Stripped`] (never as an empty table);
//!   a 403 is [`StoreError::Forbidden`], naming the Role `<cluster>-node`.
//!   Given the ActorCluster's UID ([`LeaseStore::owned_by`]), every write names the
//!   ActorCluster as the Lease's owner ([`own`]): deleting the ActorCluster collects the
//!   Lease, and a Lease a terminating node writes back after that is collected again. The
//!   reference does not block deletion, so it needs no permission beyond the write.
//! * [`watch_pods`]: a watch on the cluster's pods by label, in the node's namespace. On
//!   errors the watcher backs off and resumes; the snapshot stays as it was.
//!
//! RBAC needed: pods get/list/watch; the member Lease get/list/watch/update (by name),
//! leases create.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::watch_object;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use troupe_contract::coordination::{MEMBER_TABLE_ANNOTATION, lease_name};
use troupe_contract::{API_GROUP, API_VERSION, MemberTable, labels};

use crate::discovery::PodSet;
use crate::store::{ChangeStream, Found, LeaseRecord, MemberStore, StoreError, Stored};

/// The member store on the cluster's Lease.
#[derive(Clone)]
pub struct LeaseStore {
    api: Api<Lease>,
    name: String,
    cluster: String,
    /// The ActorCluster as the Lease's owner, when its UID is known.
    owner: Option<OwnerReference>,
    /// The last Lease object seen, so that a replace keeps its other metadata.
    last: Arc<Mutex<Option<Lease>>>,
}

impl std::fmt::Debug for LeaseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseStore")
            .field("name", &self.name)
            .finish()
    }
}

impl LeaseStore {
    /// The store of `cluster` in `namespace`.
    pub fn new(client: Client, namespace: &str, cluster: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: lease_name(cluster),
            cluster: cluster.to_owned(),
            owner: None,
            last: Arc::new(Mutex::new(None)),
        }
    }

    /// Every write names the ActorCluster with this UID as the Lease's owner. An empty
    /// UID (an operator of an earlier release) leaves the Lease without an owner.
    #[must_use]
    pub fn owned_by(mut self, uid: &str) -> Self {
        self.owner = (!uid.is_empty()).then(|| cluster_reference(&self.cluster, uid));
        self
    }

    fn remember(&self, lease: &Lease) {
        if let Ok(mut g) = self.last.lock() {
            *g = Some(lease.clone());
        }
    }

    /// The metadata of a write: the cached object's when it is the version written over,
    /// always with the node labels (the operator watches member Leases by them; a Lease
    /// written by an older release without them gets them on the next write).
    fn base(&self, resource_version: Option<&str>) -> ObjectMeta {
        let cached = self.last.lock().ok().and_then(|g| g.clone());
        let mut meta = match cached {
            Some(l)
                if resource_version.is_some()
                    && l.metadata.resource_version.as_deref() == resource_version =>
            {
                l.metadata
            }
            _ => ObjectMeta {
                name: Some(self.name.clone()),
                resource_version: resource_version.map(str::to_owned),
                ..ObjectMeta::default()
            },
        };
        let labels = meta.labels.get_or_insert_with(BTreeMap::new);
        for (k, v) in labels::node_selector_pairs(&self.cluster) {
            labels.insert(k.to_owned(), v);
        }
        if let Some(owner) = &self.owner {
            own(&mut meta, owner);
        }
        meta
    }

    fn lease(&self, resource_version: Option<&str>, record: &LeaseRecord) -> Lease {
        let mut metadata = self.base(resource_version);
        metadata.resource_version = resource_version.map(str::to_owned);
        metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(MEMBER_TABLE_ANNOTATION.to_owned(), record.table.to_json());
        Lease {
            metadata,
            spec: Some(LeaseSpec {
                holder_identity: record.holder.clone(),
                renew_time: Timestamp::from_millisecond(record.renew_ms)
                    .ok()
                    .map(MicroTime),
                lease_duration_seconds: Some(record.lease_duration_s),
                ..LeaseSpec::default()
            }),
        }
    }
}

/// A non-controller, non-blocking owner reference to the ActorCluster `name` with `uid`.
fn cluster_reference(name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: format!("{API_GROUP}/{API_VERSION}"),
        kind: "ActorCluster".to_owned(),
        name: name.to_owned(),
        uid: uid.to_owned(),
        controller: None,
        block_owner_deletion: None,
    }
}

/// Makes `owner` the Lease's ActorCluster owner: a reference to an ActorCluster of the
/// same name with another UID (an earlier life) is replaced; other owners are kept.
pub fn own(meta: &mut ObjectMeta, owner: &OwnerReference) {
    let refs = meta.owner_references.get_or_insert_with(Vec::new);
    refs.retain(|r| !(r.kind == owner.kind && r.name == owner.name && r.uid != owner.uid));
    if !refs.iter().any(|r| r.uid == owner.uid) {
        refs.push(owner.clone());
    }
}

/// Reads a [`LeaseRecord`] out of a Lease: [`Found::Stripped`] when the Lease has no
/// member-table annotation (never an empty table: that would start a second history).
pub fn record_of(lease: &Lease) -> Result<Found, StoreError> {
    let resource_version = lease
        .metadata
        .resource_version
        .clone()
        .ok_or_else(|| StoreError::Malformed("the Lease has no resourceVersion".into()))?;
    let spec = lease.spec.clone().unwrap_or_default();
    let table = match lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(MEMBER_TABLE_ANNOTATION))
    {
        Some(json) => {
            Some(MemberTable::from_json(json).map_err(|e| StoreError::Malformed(e.to_string()))?)
        }
        None => None,
    };
    let stored = |table| Stored {
        resource_version: resource_version.clone(),
        record: LeaseRecord {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            renew_ms: spec
                .renew_time
                .as_ref()
                .map(|t| t.0.as_millisecond())
                .unwrap_or_default(),
            lease_duration_s: spec.lease_duration_seconds.unwrap_or(3),
            table,
        },
    };
    Ok(match table {
        Some(t) => Found::Table(stored(t)),
        None => Found::Stripped(stored(MemberTable::default())),
    })
}

/// The record of a Lease this node just wrote: it must carry the table.
fn written(lease: &Lease) -> Result<Stored, StoreError> {
    match record_of(lease)? {
        Found::Table(s) => Ok(s),
        Found::Absent | Found::Stripped(_) => Err(StoreError::Malformed(
            "the API server returned the Lease without the member table just written".into(),
        )),
    }
}

/// What a failed API call means for membership. A 403 names the Role the node needs.
fn store_error(e: kube::Error, cluster: &str) -> StoreError {
    match &e {
        kube::Error::Api(s) if s.is_conflict() || s.is_already_exists() => StoreError::Conflict,
        kube::Error::Api(s) if s.is_forbidden() => StoreError::Forbidden {
            role: format!("{cluster}-node"),
            reason: s.message.clone(),
        },
        _ => StoreError::Unavailable(e.to_string()),
    }
}

impl MemberStore for LeaseStore {
    async fn read(&self) -> Result<Found, StoreError> {
        // `get` is a quorum read: it reflects the store after the call was made.
        match self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| store_error(e, &self.cluster))?
        {
            Some(lease) => {
                self.remember(&lease);
                record_of(&lease)
            }
            None => Ok(Found::Absent),
        }
    }

    async fn create(&self, record: &LeaseRecord) -> Result<Stored, StoreError> {
        let lease = self.lease(None, record);
        let created = self
            .api
            .create(&PostParams::default(), &lease)
            .await
            .map_err(|e| store_error(e, &self.cluster))?;
        self.remember(&created);
        written(&created)
    }

    async fn replace(
        &self,
        resource_version: &str,
        record: &LeaseRecord,
    ) -> Result<Stored, StoreError> {
        let lease = self.lease(Some(resource_version), record);
        let replaced = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map_err(|e| store_error(e, &self.cluster))?;
        self.remember(&replaced);
        written(&replaced)
    }

    fn changes(&self) -> ChangeStream {
        let me = self.clone();
        watch_object(self.api.clone(), &self.name)
            .map(move |r| match r {
                Ok(Some(lease)) => {
                    me.remember(&lease);
                    record_of(&lease)
                }
                Ok(None) => Ok(Found::Absent),
                Err(e) => Err(StoreError::Unavailable(e.to_string())),
            })
            .boxed()
    }
}

/// Watches the pods of `cluster` in `namespace` and publishes the [`PodSet`]. A watch
/// error leaves the snapshot unchanged (the watcher backs off and resumes).
pub fn watch_pods(
    client: Client,
    namespace: &str,
    cluster: &str,
) -> (watch::Receiver<PodSet>, JoinHandle<()>) {
    let api: Api<Pod> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().labels(&labels::node_selector(cluster));
    let (tx, rx) = watch::channel(PodSet::default());
    let task = tokio::spawn(async move {
        let mut stream = watcher::watcher(api, config).default_backoff().boxed();
        let mut buffer: Option<PodSet> = None;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(Event::Init) => {
                    buffer = Some(PodSet {
                        synced: true,
                        pods: BTreeMap::new(),
                    })
                }
                Ok(Event::InitApply(pod)) => {
                    if let Some(b) = buffer.as_mut() {
                        b.apply(&pod);
                    }
                }
                Ok(Event::InitDone) => {
                    if let Some(b) = buffer.take() {
                        tracing::debug!(pods = b.pods.len(), "pod watch synced");
                        tx.send_if_modified(|s| replace_if_changed(s, b));
                    }
                }
                Ok(Event::Apply(pod)) => {
                    tx.send_if_modified(|s| {
                        let mut next = s.clone();
                        next.apply(&pod);
                        replace_if_changed(s, next)
                    });
                }
                Ok(Event::Delete(pod)) => {
                    if let Some(name) = pod.metadata.name {
                        tx.send_if_modified(|s| s.pods.remove(&name).is_some());
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pod watch failed; keeping the last known pods")
                }
            }
        }
    });
    (rx, task)
}

fn replace_if_changed(current: &mut PodSet, next: PodSet) -> bool {
    if *current == next {
        false
    } else {
        *current = next;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_names_the_actor_cluster_as_a_non_blocking_owner() {
        let owner = cluster_reference("orders", "uid-2");
        assert_eq!(owner.api_version, "troupe.dev/v1alpha1");
        assert_eq!(
            owner.block_owner_deletion, None,
            "blocking would need more RBAC"
        );
        assert_eq!(
            owner.controller, None,
            "the operator is not the Lease's controller"
        );

        let mut meta = ObjectMeta::default();
        own(&mut meta, &owner);
        own(&mut meta, &owner);
        assert_eq!(
            meta.owner_references,
            Some(vec![owner.clone()]),
            "added once"
        );

        // A Lease an earlier life of `orders` owned, with another object's reference too.
        let other = OwnerReference {
            kind: "ConfigMap".into(),
            ..cluster_reference("orders", "cm-1")
        };
        let mut meta = ObjectMeta {
            owner_references: Some(vec![cluster_reference("orders", "uid-1"), other.clone()]),
            ..ObjectMeta::default()
        };
        own(&mut meta, &owner);
        assert_eq!(meta.owner_references, Some(vec![other, owner]));
    }

    #[test]
    fn a_lease_round_trips_a_record() {
        let mut table = MemberTable::default();
        table.join("a", "i1", "10.0.0.1");
        let record = LeaseRecord {
            holder: Some("a_i1".into()),
            renew_ms: 1_700_000_000_123,
            lease_duration_s: 3,
            table,
        };
        // Build the Lease the way the store does, without a client.
        let mut lease: Lease = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "x-members", "resourceVersion": "42" }
        }))
        .unwrap_or_default();
        lease
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(MEMBER_TABLE_ANNOTATION.to_owned(), record.table.to_json());
        lease.spec = Some(LeaseSpec {
            holder_identity: record.holder.clone(),
            renew_time: Timestamp::from_millisecond(record.renew_ms)
                .ok()
                .map(MicroTime),
            lease_duration_seconds: Some(3),
            ..LeaseSpec::default()
        });
        let stored = record_of(&lease).ok();
        assert_eq!(
            stored,
            Some(Found::Table(Stored {
                resource_version: "42".into(),
                record
            }))
        );
    }

    #[test]
    fn a_lease_without_the_annotation_is_stripped_not_an_empty_table() {
        let lease: Lease = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "x-members", "resourceVersion": "7" },
            "spec": { "holderIdentity": "a_1", "leaseDurationSeconds": 3 }
        }))
        .unwrap_or_default();
        let found = record_of(&lease);
        assert!(
            matches!(&found, Ok(Found::Stripped(s)) if s.resource_version == "7"),
            "{found:?}"
        );
    }

    #[test]
    fn a_forbidden_answer_is_a_typed_error_that_names_the_role() {
        let status = kube::core::Status::failure("leases is forbidden", "Forbidden").with_code(403);
        let e = store_error(kube::Error::Api(Box::new(status)), "orders");
        assert_eq!(e.metric_label(), "forbidden", "{e}");
        assert!(e.to_string().contains("check the Role orders-node"), "{e}");
    }

    #[test]
    fn a_malformed_annotation_is_an_error_not_an_empty_table() {
        let lease: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "x-members",
                "resourceVersion": "1",
                "annotations": { MEMBER_TABLE_ANNOTATION: "{oops" }
            }
        }))
        .unwrap_or_default();
        assert!(matches!(record_of(&lease), Err(StoreError::Malformed(_))));
    }
}
