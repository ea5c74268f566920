//! Discovery: which pods of the cluster exist, as the pod watch reports them.
//!
//! [`PodSet`] is the pure snapshot every node keeps; [`crate::k8s::watch_pods`] feeds it
//! from a Kubernetes watch, and the multi-node tests feed it from a list. Membership uses
//! it for one decision only: a member whose pod is **gone** (deleted, or finished) may be
//! downed by the coordinator without waiting for the failure detector.
//!
//! Rules that keep it safe:
//! * peers are pods that are Running, have an IP and are not terminating — never filtered
//!   on Ready (a cold start would deadlock);
//! * a pod that is terminating is *not gone*: it is leaving gracefully;
//! * a pod's node container start time ([`PodInfo::started_at_ms`]) only tells a fresh
//!   node whether others were running before it (see `crate::membership`: a fresh node
//!   does not race the restorers of a deleted Lease);
//! * until the watch has completed its first list ([`PodSet::synced`]) nothing is gone, and
//!   a failed API call leaves the snapshot as it was: an error is "no change", never
//!   "no peers".

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

/// What the watch says about one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// The pod's IP, once it has one.
    pub ip: Option<String>,
    /// `status.phase == Running`.
    pub running: bool,
    /// `metadata.deletionTimestamp` is set: the pod is shutting down gracefully.
    pub terminating: bool,
    /// `status.phase` is `Succeeded` or `Failed`: its containers will not run again.
    pub finished: bool,
    /// When the node container's current run started (`state.running.startedAt`, in
    /// milliseconds since the Unix epoch; second precision from Kubernetes), if running.
    pub started_at_ms: Option<i64>,
}

/// The name of the node container in a Troupe pod (the operator's `NODE_CONTAINER`).
pub const NODE_CONTAINER: &str = "node";

impl PodInfo {
    /// A Running pod with `ip`, not terminating: a peer.
    pub fn running(ip: impl Into<String>) -> Self {
        Self {
            ip: Some(ip.into()),
            running: true,
            terminating: false,
            finished: false,
            started_at_ms: None,
        }
    }

    /// [`PodInfo::running`] whose node container started at `started_at_ms`.
    pub fn running_since(ip: impl Into<String>, started_at_ms: i64) -> Self {
        Self {
            started_at_ms: Some(started_at_ms),
            ..Self::running(ip)
        }
    }

    /// Whether this pod is a peer: Running, with an IP, not terminating.
    pub fn is_peer(&self) -> bool {
        self.running && self.ip.is_some() && !self.terminating && !self.finished
    }
}

/// The pods of one cluster, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodSet {
    /// Whether the watch has completed a full list; before that nothing counts as gone.
    pub synced: bool,
    /// Pods by name.
    pub pods: BTreeMap<String, PodInfo>,
}

impl PodSet {
    /// A synced set of Running pods, from `(name, ip)` pairs: what the tests feed.
    pub fn from_list<'a>(pods: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            synced: true,
            pods: pods
                .into_iter()
                .map(|(n, ip)| (n.to_owned(), PodInfo::running(ip)))
                .collect(),
        }
    }

    /// The peers: `(name, ip)` of the pods that are Running, with an IP, not terminating.
    pub fn peers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pods.iter().filter_map(|(name, p)| {
            p.is_peer()
                .then_some(())
                .and_then(|()| p.ip.as_deref().map(|ip| (name.as_str(), ip)))
        })
    }

    /// Whether `pod` is known to be gone: the watch is synced and the pod is absent or
    /// finished. A terminating pod is not gone.
    pub fn is_gone(&self, pod: &str) -> bool {
        self.synced && self.pods.get(pod).is_none_or(|p| p.finished)
    }

    /// Whether a peer other than `me` has a node container that started more than
    /// `margin_ms` before `my_start_ms`, or may have (its start time is unknown): then a
    /// cluster may already exist. Not knowing is never a cold start.
    pub fn peer_started_before(&self, me: &str, my_start_ms: i64, margin_ms: i64) -> bool {
        self.pods.iter().any(|(name, p)| {
            name != me
                && p.is_peer()
                && p.started_at_ms
                    .is_none_or(|t| t.saturating_add(margin_ms) < my_start_ms)
        })
    }

    /// Applies one pod from the watch (added or modified).
    pub fn apply(&mut self, pod: &Pod) {
        if let Some((name, info)) = classify(pod) {
            self.pods.insert(name, info);
        }
    }

    /// Applies the deletion of one pod from the watch.
    pub fn delete(&mut self, name: &str) {
        self.pods.remove(name);
    }
}

/// What a pod object means for discovery; `None` for an object without a name.
pub fn classify(pod: &Pod) -> Option<(String, PodInfo)> {
    let name = pod.metadata.name.clone()?;
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("");
    let ip = status
        .and_then(|s| s.pod_ip.clone())
        .filter(|ip| !ip.is_empty());
    let started_at_ms = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == NODE_CONTAINER))
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.running.as_ref())
        .and_then(|r| r.started_at.as_ref())
        .map(|t| t.0.as_millisecond());
    Some((
        name,
        PodInfo {
            ip,
            running: phase == "Running",
            terminating: pod.metadata.deletion_timestamp.is_some(),
            finished: phase == "Succeeded" || phase == "Failed",
            started_at_ms,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, phase: &str, ip: Option<&str>, terminating: bool) -> Pod {
        let mut v = serde_json::json!({
            "metadata": { "name": name },
            "status": { "phase": phase },
        });
        if let Some(ip) = ip {
            v["status"]["podIP"] = ip.into();
        }
        if terminating {
            v["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
        }
        serde_json::from_value(v).unwrap_or_default()
    }

    #[test]
    fn peers_are_running_with_ip_and_not_terminating_whatever_their_readiness() {
        let mut s = PodSet::default();
        s.apply(&pod("a", "Running", Some("10.0.0.1"), false));
        s.apply(&pod("b", "Pending", None, false));
        s.apply(&pod("c", "Running", None, false));
        s.apply(&pod("d", "Running", Some("10.0.0.4"), true));
        s.apply(&pod("e", "Failed", Some("10.0.0.5"), false));
        let peers: Vec<_> = s.peers().collect();
        assert_eq!(peers, vec![("a", "10.0.0.1")]);
    }

    #[test]
    fn nothing_is_gone_before_the_first_full_list() {
        let mut s = PodSet::default();
        assert!(!s.is_gone("x"));
        s.synced = true;
        assert!(s.is_gone("x"));
        s.apply(&pod("d", "Running", Some("10.0.0.4"), true));
        assert!(!s.is_gone("d"), "a terminating pod is leaving, not gone");
        s.apply(&pod("e", "Failed", None, false));
        assert!(s.is_gone("e"));
        s.delete("d");
        assert!(s.is_gone("d"));
    }

    #[test]
    fn the_node_containers_start_tells_who_ran_first() {
        let v = serde_json::json!({
            "metadata": { "name": "a" },
            "status": { "phase": "Running", "podIP": "10.0.0.1", "containerStatuses": [
                { "name": "app", "image": "x", "imageID": "", "ready": true, "restartCount": 0,
                  "state": { "running": { "startedAt": "2026-01-01T00:00:00Z" } } },
                { "name": "node", "image": "x", "imageID": "", "ready": true, "restartCount": 0,
                  "state": { "running": { "startedAt": "2026-01-01T00:00:10Z" } } }
            ] },
        });
        let p: Pod = serde_json::from_value(v).unwrap_or_default();
        let mut s = PodSet::default();
        s.apply(&p);
        let a = s.pods.get("a").and_then(|p| p.started_at_ms);
        assert_eq!(a, Some(1_767_225_610_000));
        assert!(s.peer_started_before("b", 1_767_225_620_000, 5_000));
        assert!(!s.peer_started_before("b", 1_767_225_612_000, 5_000));
        assert!(!s.peer_started_before("a", 1_767_225_620_000, 5_000));
        // A peer whose start is unknown may have run long before: never a cold start.
        s.pods.insert("c".into(), PodInfo::running("10.0.0.3"));
        assert!(s.peer_started_before("b", 1_767_225_612_000, 5_000));
    }

    #[test]
    fn from_list_builds_a_synced_set_of_peers() {
        let s = PodSet::from_list([("a", "127.0.0.1"), ("b", "127.0.0.2")]);
        assert!(s.synced);
        assert_eq!(s.peers().count(), 2);
    }
}
