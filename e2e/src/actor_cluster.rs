//! ActorClusters from a test's point of view: created as dynamic objects, exactly as a
//! user's YAML would be, scaled through the `/scale` subresource as `kubectl scale` does,
//! and awaited on their status.

use std::time::Duration;

use anyhow::Context;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

use crate::{TestContext, service, wait};

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

/// The `ip:port` of the ActorCluster's client Service (its ClusterIP and the client port),
/// once it serves: [`service::until_serving`] with an ask to the built-in `echo` actor,
/// which a node answers 200 only while it accepts clients and the actor's owner is
/// reachable. Call it again after a scale when the test needs traffic to follow the new
/// endpoints.
pub async fn client_address(ctx: &TestContext, name: &str) -> anyhow::Result<String> {
    let serving = service::until_serving(
        ctx,
        name,
        troupe_contract::ports::CLIENT,
        &service::Probe::post("/actors/echo/e2e-probe/ask", Some("{}".into()), 200),
        service::DEFAULT_TIMEOUT,
    )
    .await?;
    Ok(serving.addr)
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
