//! What a failed end-to-end test prints: the state of every pod that is not Ready, its
//! container statuses and logs, and the namespace's Events, oldest first.

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{ListParams, LogParams};

use crate::TestContext;

/// Prints the diagnostics of the test's namespace to stderr. Never fails.
pub async fn dump(ctx: &TestContext) {
    let pods = ctx.api::<Pod>();
    match pods.list(&ListParams::default()).await {
        Ok(list) => {
            for pod in list.items {
                let name = pod.metadata.name.clone().unwrap_or_default();
                if is_ready(&pod) {
                    eprintln!("--- pod {name}: Ready");
                    continue;
                }
                let status = pod.status.clone().unwrap_or_default();
                eprintln!(
                    "--- pod {name}: phase={:?} ip={:?}",
                    status.phase, status.pod_ip
                );
                for c in status.conditions.unwrap_or_default() {
                    eprintln!(
                        "    condition {}={} {}",
                        c.type_,
                        c.status,
                        c.message.unwrap_or_default()
                    );
                }
                for cs in status.container_statuses.unwrap_or_default() {
                    eprintln!(
                        "    container {} ready={} restarts={} state={}",
                        cs.name,
                        cs.ready,
                        cs.restart_count,
                        serde_json::to_string(&cs.state).unwrap_or_default()
                    );
                    let lp = LogParams {
                        container: Some(cs.name.clone()),
                        tail_lines: Some(40),
                        ..LogParams::default()
                    };
                    match pods.logs(&name, &lp).await {
                        Ok(logs) => {
                            for line in logs.lines() {
                                eprintln!("    | {line}");
                            }
                        }
                        Err(e) => eprintln!("    (no logs: {e})"),
                    }
                }
            }
        }
        Err(e) => eprintln!("cannot list pods: {e}"),
    }
    match ctx.api::<Event>().list(&ListParams::default()).await {
        Ok(list) => {
            let mut events = list.items;
            events.sort_by_key(|e| e.metadata.creation_timestamp.clone());
            eprintln!("--- events in {}", ctx.namespace);
            for e in events {
                eprintln!(
                    "    {} {}/{} {}: {}",
                    e.type_.unwrap_or_default(),
                    e.involved_object.kind.unwrap_or_default(),
                    e.involved_object.name.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.message.unwrap_or_default()
                );
            }
        }
        Err(e) => eprintln!("cannot list events: {e}"),
    }
}

/// The pods matching `selector` that are not being deleted.
pub async fn live_pods(pods: &kube::Api<Pod>, selector: &str) -> anyhow::Result<Vec<Pod>> {
    Ok(pods
        .list(&ListParams::default().labels(selector))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect())
}

/// Whether the pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
