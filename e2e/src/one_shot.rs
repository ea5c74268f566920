//! One-shot pods a test runs to completion and reads the log of (the DNS resolver, the
//! security test's intruder): hardened like the node pods (non-root, read-only root, no
//! capabilities, no API token), `restartPolicy: Never`.

use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{LogParams, PostParams};
use serde_json::json;

use crate::{TestContext, wait};

/// How a one-shot pod ended.
#[derive(Debug)]
pub struct Finished {
    /// `Succeeded` or `Failed`.
    pub phase: String,
    /// Its container's log (also printed, each line behind `[<tag>] `).
    pub logs: String,
}

/// Creates the pod `name` running `image` with `args` in `ctx`'s namespace, waits up to
/// 120 s for it to finish, prints its log behind `[tag]` and returns how it ended.
pub async fn run(
    ctx: &TestContext,
    name: &str,
    image: &str,
    args: Vec<String>,
    tag: &str,
) -> anyhow::Result<Finished> {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "securityContext": { "runAsNonRoot": true, "runAsUser": 65532,
                                 "seccompProfile": { "type": "RuntimeDefault" } },
            "containers": [{
                "name": name,
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "args": args,
                "securityContext": { "readOnlyRootFilesystem": true,
                                     "allowPrivilegeEscalation": false,
                                     "capabilities": { "drop": ["ALL"] } }
            }]
        }
    }))?;
    let pods = ctx.api::<Pod>();
    pods.create(&PostParams::default(), &pod)
        .await
        .with_context(|| format!("creating the {name} pod"))?;
    let phase = wait::until(
        &format!("the {name} pod to finish"),
        Duration::from_secs(120),
        Duration::from_millis(500),
        || async {
            let p = ctx.api::<Pod>().get(name).await?;
            let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
            Ok(matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase))
        },
    )
    .await?;
    let logs = pods
        .logs(name, &LogParams::default())
        .await
        .with_context(|| format!("reading the {name} pod's log"))?;
    for line in logs.lines() {
        println!("[{tag}] {line}");
    }
    Ok(Finished { phase, logs })
}
