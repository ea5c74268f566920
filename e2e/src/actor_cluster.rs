//! ActorClusters from a test's point of view: created as dynamic objects, exactly as a
//! user's YAML would be, scaled through the `/scale` subresource as `kubectl scale` does,
//! and awaited on their status.

use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

use crate::{TestContext, wait};

/// The `ActorCluster` resource.
pub fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            troupe_contract::API_GROUP,
            troupe_contract::API_VERSION,
            "ActorCluster",
        ),
        "actorclusters",
    )
}

/// ActorClusters in the test's namespace.
pub fn api(ctx: &TestContext) -> Api<DynamicObject> {
    Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &resource())
}

/// Creates the ActorCluster `name` with `spec`.
pub async fn create(ctx: &TestContext, name: &str, spec: Value) -> anyhow::Result<DynamicObject> {
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{}/{}", troupe_contract::API_GROUP, troupe_contract::API_VERSION),
        "kind": "ActorCluster",
        "metadata": { "name": name },
        "spec": spec,
    }))?;
    api(ctx)
        .create(&PostParams::default(), &obj)
        .await
        .with_context(|| format!("creating ActorCluster {name}"))
}

/// `kubectl scale ac/<name> --replicas=<n>`: writes `spec.replicas` through `/scale`.
pub async fn scale(ctx: &TestContext, name: &str, replicas: i32) -> anyhow::Result<()> {
    api(ctx)
        .patch_scale(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": replicas } })),
        )
        .await
        .with_context(|| format!("scaling ActorCluster {name} to {replicas}"))?;
    Ok(())
}

/// The `ip:port` of the ActorCluster's client Service (its ClusterIP and the client port).
pub async fn client_address(ctx: &TestContext, name: &str) -> anyhow::Result<String> {
    let ip = ctx
        .api::<Service>()
        .get(name)
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .with_context(|| format!("client Service {name} has no ClusterIP"))?;
    Ok(format!("{ip}:{}", troupe_contract::ports::CLIENT))
}

/// Waits until the status reports `n` pods, `n` Ready and `n` Up members.
pub async fn until_settled(
    ctx: &TestContext,
    name: &str,
    n: i64,
    timeout: Duration,
) -> anyhow::Result<DynamicObject> {
    wait::until(
        &format!("ActorCluster {name} with {n} Ready pods and {n} Up members"),
        timeout,
        Duration::from_millis(500),
        || async {
            let ac = api(ctx).get(name).await?;
            let status = ac.data.get("status").cloned().unwrap_or(Value::Null);
            let field = |f: &str| status.get(f).and_then(Value::as_i64).unwrap_or(-1);
            let settled =
                field("replicas") == n && field("readyReplicas") == n && field("upMembers") == n;
            Ok(settled.then_some(ac))
        },
    )
    .await
}
