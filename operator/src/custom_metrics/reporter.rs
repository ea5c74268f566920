//! What the leader writes from the depth cache: `status.mailboxDepth` of each ActorCluster
//! (the sum over its pods) and `controller.kubernetes.io/pod-deletion-cost` on each node pod
//! (its depth), so that a scale-down removes the least-loaded pods first.
//!
//! Both are written only when the value moved meaningfully and at most once per
//! [`MIN_WRITE_INTERVAL`] per object ([`worth_writing`], pure), so a busy cluster causes no
//! write storm; every write is counted in `troupe_operator_api_writes_total`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use super::cache::DepthCache;
use super::scrape::DELETION_COST;
use crate::crd::ActorCluster;
use crate::metrics::Metrics;

/// The field manager of these writes (not the controller's: its server-side applies own
/// other fields).
pub const FIELD_MANAGER: &str = "troupe-operator-metrics";
/// The least time between two writes of the same object.
pub const MIN_WRITE_INTERVAL: Duration = Duration::from_secs(10);

/// Whether `new` differs enough from what was last written (`old`): always when nothing
/// was written, when crossing zero, or when the change is at least 2 and at least a fifth of
/// the old value.
pub fn worth_writing(old: Option<i64>, new: i64) -> bool {
    match old {
        None => true,
        Some(old) if old == new => false,
        Some(old) if old == 0 || new == 0 => true,
        Some(old) => {
            // Depths come from pods' pages: saturate rather than overflow.
            let diff = new.saturating_sub(old).saturating_abs();
            diff >= 2 && diff.saturating_mul(5) >= old.saturating_abs()
        }
    }
}

#[derive(Debug, Default)]
struct Written {
    value: HashMap<(String, String), (i64, Instant)>,
}

impl Written {
    fn due(&self, key: &(String, String), current: Option<i64>, new: i64, now: Instant) -> bool {
        match self.value.get(key) {
            Some((old, at)) => {
                now.duration_since(*at) >= MIN_WRITE_INTERVAL && worth_writing(Some(*old), new)
            }
            None => worth_writing(current, new),
        }
    }
}

/// Runs forever: every `interval`, while `is_leader()`, writes what is due.
pub async fn run(
    client: Client,
    cache: Arc<RwLock<DepthCache>>,
    metrics: Metrics,
    is_leader: impl Fn() -> bool + Send + 'static,
    interval: Duration,
    max_age: Duration,
    deletion_cost: bool,
) {
    // What the ActorClusters carry now, so that a new leader writes nothing that is already
    // there (a converged cluster sees no writes across a leader handover).
    let (clusters, writer) = reflector::store::<ActorCluster>();
    tokio::spawn(
        watcher(
            Api::<ActorCluster>::all(client.clone()),
            watcher::Config::default(),
        )
        .backoff(crate::watches::WatchBackoff::new(11))
        .reflect(writer)
        .applied_objects()
        .for_each(|_| async {}),
    );
    let mut status_written = Written::default();
    let mut cost_written = Written::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !is_leader() {
            status_written = Written::default();
            cost_written = Written::default();
            continue;
        }
        let (totals, pods) = match cache.read() {
            Ok(c) => (
                c.cluster_totals(SystemTime::now(), max_age),
                c.fresh(SystemTime::now(), max_age),
            ),
            Err(_) => continue,
        };
        let now = Instant::now();
        for ((namespace, cluster), total) in totals {
            let key = (namespace.clone(), cluster.clone());
            let current = clusters
                .get(&ObjectRef::new(&cluster).within(&namespace))
                .and_then(|ac| ac.status.as_ref().and_then(|s| s.mailbox_depth));
            if !status_written.due(&key, current, total, now) {
                continue;
            }
            let api: Api<ActorCluster> = Api::namespaced(client.clone(), &namespace);
            metrics.write("ActorCluster", "status", &namespace);
            let patch = serde_json::json!({ "status": { "mailboxDepth": total } });
            match api
                .patch_status(
                    &cluster,
                    &PatchParams::apply(FIELD_MANAGER),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {
                    status_written.value.insert(key, (total, now));
                }
                Err(e) => {
                    tracing::debug!(%namespace, %cluster, error = %e, "writing status.mailboxDepth failed")
                }
            }
        }
        if !deletion_cost {
            continue;
        }
        for d in pods {
            let cost = d.sample.value.max(0.0).min(f64::from(i32::MAX)).round() as i64;
            let key = (d.pod.namespace.clone(), d.pod.name.clone());
            let current = d.pod.deletion_cost.as_deref().and_then(|c| c.parse().ok());
            if !cost_written.due(&key, current, cost, now) {
                continue;
            }
            let api: Api<Pod> = Api::namespaced(client.clone(), &d.pod.namespace);
            metrics.write("Pod", "patch", &d.pod.namespace);
            let patch = serde_json::json!({
                "metadata": { "annotations": { DELETION_COST: cost.to_string() } }
            });
            match api
                .patch(
                    &d.pod.name,
                    &PatchParams::apply(FIELD_MANAGER),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {
                    cost_written.value.insert(key, (cost, now));
                }
                Err(e) => {
                    tracing::debug!(pod = %d.pod.name, error = %e, "writing the pod deletion cost failed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_depths_never_overflow() {
        // Depths come from pods' /metrics pages: any i64 can reach here.
        assert!(worth_writing(Some(i64::MIN), i64::MAX));
        assert!(worth_writing(Some(i64::MAX), -1));
        assert!(worth_writing(Some(1), i64::MAX));
        assert!(!worth_writing(Some(i64::MAX), i64::MAX - 1));
    }

    #[test]
    fn only_meaningful_changes_are_written() {
        assert!(worth_writing(None, 0));
        assert!(!worth_writing(Some(5), 5));
        assert!(worth_writing(Some(0), 1), "leaving idle");
        assert!(worth_writing(Some(7), 0), "becoming idle");
        assert!(!worth_writing(Some(100), 110), "10 % is noise");
        assert!(worth_writing(Some(100), 120));
        assert!(!worth_writing(Some(3), 4), "a change of 1 is noise");
        assert!(worth_writing(Some(3), 5));
    }

    #[test]
    fn writes_are_rate_limited_per_object() {
        let mut w = Written::default();
        let key = ("ns".to_owned(), "p".to_owned());
        let t0 = Instant::now();
        assert!(
            !w.due(&key, Some(4), 4, t0),
            "the pod already carries the value"
        );
        assert!(w.due(&key, Some(4), 40, t0));
        w.value.insert(key.clone(), (40, t0));
        assert!(!w.due(&key, None, 400, t0 + Duration::from_secs(1)));
        assert!(w.due(&key, None, 400, t0 + MIN_WRITE_INTERVAL));
        assert!(!w.due(&key, None, 41, t0 + MIN_WRITE_INTERVAL));
    }
}
