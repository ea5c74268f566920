//! End-to-end tests of troupe-operator on the real local cluster.
//!
//! They assume the operator runs in `troupe-system`, installed by `helm upgrade --install`
//! of `charts/troupe` (as `make e2e` does), under the chart's own RBAC. Every test gets its
//! own namespace. ActorClusters are handled as dynamic objects, exactly as a user's YAML.
//!
//! How writes are counted: the operator counts every write call it makes (apply, delete,
//! status, event) in `troupe_operator_namespace_writes_total{namespace}` on its
//! `/metrics`; the tests read it from the operator pods' IPs.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams,
};
use kube::{Api, Client, Resource};
use serde_json::{Value, json};
use troupe_e2e::{TestContext, http, wait, with_namespace};

const OPERATOR_NAMESPACE: &str = "troupe-system";
const OPERATOR_SELECTOR: &str = "app.kubernetes.io/name=troupe-operator";
const TIMEOUT: Duration = Duration::from_secs(90);
const EVERY: Duration = Duration::from_millis(500);

fn ac_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "troupe.dev",
        "v1alpha1",
        "ActorCluster",
    ))
}

fn clusters(ctx: &TestContext) -> Api<DynamicObject> {
    Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &ac_resource())
}

fn actor_cluster(name: &str, spec: Value) -> anyhow::Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "troupe.dev/v1alpha1",
        "kind": "ActorCluster",
        "metadata": { "name": name },
        "spec": spec,
    }))?)
}

/// The example from `manifests/examples/actorcluster.yaml`.
fn example() -> anyhow::Result<DynamicObject> {
    let text = include_str!("../../manifests/examples/actorcluster.yaml");
    Ok(serde_yaml::from_str(text)?)
}

async fn create(ctx: &TestContext, ac: &DynamicObject) -> anyhow::Result<DynamicObject> {
    clusters(ctx)
        .create(&PostParams::default(), ac)
        .await
        .context("creating the ActorCluster")
}

async fn merge_spec(ctx: &TestContext, name: &str, spec: Value) -> anyhow::Result<DynamicObject> {
    clusters(ctx)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .context("patching the ActorCluster spec")
}

fn uid(ac: &DynamicObject) -> anyhow::Result<String> {
    ac.metadata.uid.clone().context("ActorCluster without uid")
}

fn owned_by<K: Resource>(obj: &K, owner_uid: &str) -> bool {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.uid == owner_uid && r.kind == "ActorCluster" && r.controller == Some(true))
}

/// Waits until `name` of kind `K` exists in the test namespace and `check` holds.
async fn until_child<K, F>(ctx: &TestContext, name: &str, what: &str, check: F) -> anyhow::Result<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    <K as Resource>::DynamicType: Default,
    F: Fn(&K) -> bool,
{
    let api = ctx.api::<K>();
    let check = &check;
    wait::until(what, TIMEOUT, EVERY, || {
        let api = api.clone();
        async move { Ok(api.get_opt(name).await?.filter(|o| check(o))) }
    })
    .await
}

async fn until_gone<K>(ctx: &TestContext, name: &str, what: &str) -> anyhow::Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    <K as Resource>::DynamicType: Default,
{
    let api = ctx.api::<K>();
    wait::until(what, TIMEOUT, EVERY, || {
        let api = api.clone();
        async move { Ok(api.get_opt(name).await?.is_none().then_some(())) }
    })
    .await
}

fn status_field<'a>(ac: &'a DynamicObject, field: &str) -> Option<&'a Value> {
    ac.data.get("status").and_then(|s| s.get(field))
}

fn condition(ac: &DynamicObject, type_: &str) -> Option<(String, String)> {
    status_field(ac, "conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

/// Waits until the status describes the current generation.
async fn until_observed(ctx: &TestContext, name: &str) -> anyhow::Result<DynamicObject> {
    let api = clusters(ctx);
    wait::until(
        &format!("status.observedGeneration of {name} to follow metadata.generation"),
        TIMEOUT,
        EVERY,
        || {
            let api = api.clone();
            async move {
                let ac = api.get(name).await?;
                let observed = status_field(&ac, "observedGeneration").and_then(Value::as_i64);
                Ok((observed.is_some() && observed == ac.metadata.generation).then_some(ac))
            }
        },
    )
    .await
}

fn deployment_container(d: &Deployment) -> anyhow::Result<k8s_openapi::api::core::v1::Container> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first().cloned())
        .context("Deployment without a container")
}

fn env_value(d: &Deployment, name: &str) -> Option<String> {
    deployment_container(d)
        .ok()?
        .env?
        .into_iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value)
}

fn deployment_replicas(d: &Deployment) -> Option<i32> {
    d.spec.as_ref().and_then(|s| s.replicas)
}

#[tokio::test]
async fn example_creates_every_child_with_owner_references() -> anyhow::Result<()> {
    with_namespace("op-apply", |ctx| async move {
        let ac = create(&ctx, &example()?).await?;
        let owner = uid(&ac)?;
        let o = owner.as_str();

        let d: Deployment =
            until_child(&ctx, "orders", "Deployment orders", |d| owned_by(d, o)).await?;
        ensure!(
            deployment_replicas(&d) == Some(3),
            "Deployment replicas {:?}",
            deployment_replicas(&d)
        );
        let c = deployment_container(&d)?;
        ensure!(
            c.image.as_deref() == Some("troupe-node:0.1.0"),
            "image {:?}",
            c.image
        );
        ensure!(c.image_pull_policy.as_deref() == Some("IfNotPresent"));
        let sc = c
            .security_context
            .clone()
            .context("container securityContext")?;
        ensure!(sc.read_only_root_filesystem == Some(true));
        ensure!(sc.capabilities.and_then(|c| c.drop) == Some(vec!["ALL".to_owned()]));
        let pod = d
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .context("pod spec")?;
        ensure!(pod.service_account_name.as_deref() == Some("orders-node"));
        let strategy = d
            .spec
            .as_ref()
            .and_then(|s| s.strategy.clone())
            .and_then(|s| s.rolling_update)
            .context("rolling update")?;
        ensure!(
            serde_json::to_value(&strategy)? == json!({"maxSurge": 1, "maxUnavailable": 0}),
            "strategy {strategy:?}"
        );

        let peers: Service =
            until_child(&ctx, "orders-peers", "peer Service", |s| owned_by(s, o)).await?;
        let spec = peers.spec.context("peer Service spec")?;
        ensure!(
            spec.cluster_ip.as_deref() == Some("None"),
            "peer Service must be headless"
        );
        ensure!(spec.publish_not_ready_addresses == Some(true));
        let client: Service =
            until_child(&ctx, "orders", "client Service", |s| owned_by(s, o)).await?;
        let ports: Vec<i32> = client
            .spec
            .and_then(|s| s.ports)
            .unwrap_or_default()
            .iter()
            .map(|p| p.port)
            .collect();
        ensure!(ports == [8080], "client Service ports {ports:?}");
        until_child::<PodDisruptionBudget, _>(&ctx, "orders", "PodDisruptionBudget", |p| {
            owned_by(p, o)
        })
        .await?;
        until_child::<ServiceAccount, _>(&ctx, "orders-node", "node ServiceAccount", |s| {
            owned_by(s, o)
        })
        .await?;
        // The node's rights are the chart's node ClusterRole, bound in this namespace only
        // (the operator holds `bind` on it, not the rights themselves).
        let binding: RoleBinding =
            until_child(&ctx, "orders-node", "node RoleBinding", |r| owned_by(r, o)).await?;
        ensure!(
            binding.role_ref.kind == "ClusterRole" && binding.role_ref.name == "troupe-node",
            "node RoleBinding refers to {:?}",
            binding.role_ref
        );
        let subjects: Vec<(String, Option<String>)> = binding
            .subjects
            .unwrap_or_default()
            .into_iter()
            .map(|s| (s.name, s.namespace))
            .collect();
        ensure!(
            subjects == [("orders-node".to_owned(), Some(ctx.namespace.clone()))],
            "node RoleBinding subjects {subjects:?}"
        );
        ensure!(
            ctx.api::<HorizontalPodAutoscaler>()
                .get_opt("orders")
                .await?
                .is_none(),
            "no HPA without spec.autoscaling"
        );

        let ac = until_observed(&ctx, "orders").await?;
        let selector = status_field(&ac, "selector").and_then(Value::as_str);
        ensure!(
            selector
                == Some("app.kubernetes.io/name=troupe-node,app.kubernetes.io/instance=orders"),
            "status.selector {selector:?}"
        );
        for t in ["Ready", "Progressing", "Degraded"] {
            ensure!(
                condition(&ac, t).is_some(),
                "condition {t} missing: {:?}",
                ac.data
            );
        }

        // `kubectl get ac` prints the printer columns: ask for the same Table.
        let table = printer_table(&ctx.client, &ctx.namespace).await?;
        let columns: Vec<&str> = table["columnDefinitions"]
            .as_array()
            .context("columnDefinitions")?
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        for c in [
            "Name",
            "Replicas",
            "Pods Ready",
            "Members",
            "Mailbox",
            "Ready",
            "Reason",
            "Age",
        ] {
            ensure!(columns.contains(&c), "column {c} missing from {columns:?}");
        }
        let row = &table["rows"][0]["cells"];
        ensure!(row[0] == "orders" && row[1] == 3, "row {row}");
        let cell = |name: &str| columns.iter().position(|c| *c == name).map(|i| &row[i]);
        let ready = cell("Ready").and_then(Value::as_str);
        ensure!(
            matches!(ready, Some("True" | "False")),
            "Ready cell {ready:?} in row {row}"
        );
        let reason = cell("Reason").and_then(Value::as_str);
        ensure!(
            reason.is_some_and(|r| !r.is_empty()),
            "Reason cell {reason:?} in row {row}"
        );
        Ok(())
    })
    .await
}

/// `kubectl get ac -o wide` without kubectl: the Table the API server renders.
async fn printer_table(client: &Client, namespace: &str) -> anyhow::Result<Value> {
    let req = hyper::Request::builder()
        .uri(format!(
            "/apis/troupe.dev/v1alpha1/namespaces/{namespace}/actorclusters"
        ))
        .header(
            "Accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .body(Vec::new())?;
    let text = client.request_text(req).await?;
    Ok(serde_json::from_str(&text)?)
}

#[tokio::test]
async fn spec_changes_and_scale_reach_the_children() -> anyhow::Result<()> {
    with_namespace("op-update", |ctx| async move {
        create(&ctx, &example()?).await?;
        until_observed(&ctx, "orders").await?;

        let ac = merge_spec(
            &ctx,
            "orders",
            json!({"image": "troupe-node:e2e-changed", "replicas": 2,
                   "mailbox": {"capacity": 50, "overflow": "DropOldest"}}),
        )
        .await?;
        let generation = ac.metadata.generation;
        let d: Deployment = until_child(&ctx, "orders", "Deployment to follow the spec", |d| {
            deployment_container(d)
                .ok()
                .and_then(|c| c.image)
                .as_deref()
                == Some("troupe-node:e2e-changed")
                && deployment_replicas(d) == Some(2)
                && env_value(d, "TROUPE_MAILBOX_CAPACITY").as_deref() == Some("50")
        })
        .await?;
        ensure!(env_value(&d, "TROUPE_MAILBOX_OVERFLOW").as_deref() == Some("DropOldest"));
        let ac = until_observed(&ctx, "orders").await?;
        ensure!(
            ac.metadata.generation == generation,
            "generation moved unexpectedly"
        );

        // kubectl scale ac/orders --replicas=5
        clusters(&ctx)
            .patch_scale(
                "orders",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 5}})),
            )
            .await
            .context("patching /scale")?;
        until_child::<Deployment, _>(&ctx, "orders", "Deployment replicas 5 after /scale", |d| {
            deployment_replicas(d) == Some(5)
        })
        .await?;
        let scale = clusters(&ctx).get_scale("orders").await?;
        ensure!(scale.spec.and_then(|s| s.replicas) == Some(5));

        // Autoscaling on: an HPA on the ActorCluster's /scale; off: the HPA goes.
        merge_spec(
            &ctx,
            "orders",
            json!({"autoscaling": {"minReplicas": 2, "maxReplicas": 6, "targetMailboxDepth": 100}}),
        )
        .await?;
        let hpa: HorizontalPodAutoscaler = until_child(&ctx, "orders", "HPA", |_| true).await?;
        let spec = hpa.spec.context("HPA spec")?;
        ensure!(spec.scale_target_ref.kind == "ActorCluster" && spec.max_replicas == 6);
        merge_spec(&ctx, "orders", json!({"autoscaling": null})).await?;
        until_gone::<HorizontalPodAutoscaler>(&ctx, "orders", "HPA to be removed").await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn deleting_the_cluster_removes_every_child() -> anyhow::Result<()> {
    with_namespace("op-delete", |ctx| async move {
        let ac = create(&ctx, &example()?).await?;
        let owner = uid(&ac)?;
        let o = owner.as_str();
        until_child::<Deployment, _>(&ctx, "orders", "Deployment", |d| owned_by(d, o)).await?;
        until_child::<RoleBinding, _>(&ctx, "orders-node", "RoleBinding", |r| owned_by(r, o))
            .await?;
        clusters(&ctx)
            .delete("orders", &DeleteParams::foreground())
            .await?;
        until_gone::<Deployment>(&ctx, "orders", "Deployment to be collected").await?;
        until_gone::<Service>(&ctx, "orders", "client Service to be collected").await?;
        until_gone::<Service>(&ctx, "orders-peers", "peer Service to be collected").await?;
        until_gone::<PodDisruptionBudget>(&ctx, "orders", "PDB to be collected").await?;
        until_gone::<ServiceAccount>(&ctx, "orders-node", "ServiceAccount to be collected").await?;
        until_gone::<RoleBinding>(&ctx, "orders-node", "RoleBinding to be collected").await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn invalid_specs_are_refused_naming_the_field() -> anyhow::Result<()> {
    with_namespace("op-refuse", |ctx| async move {
        let cases = [
            (json!({"replicas": -1}), "spec.replicas"),
            (json!({"mailbox": {"capacity": 0}}), "spec.mailbox.capacity"),
            (json!({"mailbox": {"overflow": "Sometimes"}}), "spec.mailbox.overflow"),
            (
                json!({"replicas": 3, "autoscaling": {"minReplicas": 5, "maxReplicas": 2, "targetMailboxDepth": 10}}),
                "spec.autoscaling.minReplicas",
            ),
            (
                json!({"replicas": 3, "autoscaling": {"minReplicas": 1, "maxReplicas": 5, "targetMailboxDepth": 0}}),
                "spec.autoscaling.targetMailboxDepth",
            ),
            (json!({"image": ""}), "spec.image"),
            (
                json!({"app": {"image": "app:1", "port": 8558, "types": ["cart"]}}),
                "spec.app.port",
            ),
            (json!({"app": {"image": "app:1"}}), "spec.app.types"),
        ];
        let mut refused = 0;
        for (i, (spec, field)) in cases.iter().enumerate() {
            let ac = actor_cluster(&format!("bad-{i}"), spec.clone())?;
            match clusters(&ctx).create(&PostParams::default(), &ac).await {
                Ok(_) => bail!("{spec} was accepted; it should be refused naming {field}"),
                Err(kube::Error::Api(status)) => {
                    ensure!(
                        status.code == 422 && status.message.contains(field),
                        "{spec}: expected 422 naming {field}, got {} {}",
                        status.code,
                        status.message
                    );
                    refused += 1;
                }
                Err(e) => bail!("{spec}: unexpected error {e}"),
            }
        }
        ensure!(refused >= 5);

        Ok(())
    })
    .await
}

#[tokio::test]
async fn autoscaling_keeps_the_deployment_within_its_bounds() -> anyhow::Result<()> {
    with_namespace("op-bounds", |ctx| async move {
        // No spec.replicas (the default 1 lies below minReplicas): accepted, and the
        // Deployment asks for minReplicas until the HPA writes /scale.
        create(
            &ctx,
            &actor_cluster(
                "bounded",
                json!({"autoscaling": {"minReplicas": 2, "maxReplicas": 3, "targetMailboxDepth": 10}}),
            )?,
        )
        .await?;
        let in_bounds = |d: &Deployment| deployment_replicas(d).is_some_and(|r| (2..=3).contains(&r));
        until_child::<Deployment, _>(&ctx, "bounded", "Deployment within [2, 3]", in_bounds).await?;

        // A /scale beyond maxReplicas is accepted too; the Deployment stays within bounds.
        clusters(&ctx)
            .patch_scale(
                "bounded",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 50}})),
            )
            .await
            .context("a /scale beyond maxReplicas should be accepted")?;
        until_observed(&ctx, "bounded").await?;
        let d = ctx.api::<Deployment>().get("bounded").await?;
        ensure!(
            in_bounds(&d),
            "Deployment replicas {:?} left [2, 3]",
            deployment_replicas(&d)
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn deleted_service_and_hand_edited_image_are_put_back() -> anyhow::Result<()> {
    with_namespace("op-drift", |ctx| async move {
        let ac = create(&ctx, &example()?).await?;
        let owner = uid(&ac)?;
        let o = owner.as_str();
        let svc: Service =
            until_child(&ctx, "orders", "client Service", |s| owned_by(s, o)).await?;
        let old_uid = svc.metadata.uid.clone().context("service uid")?;
        ctx.api::<Service>()
            .delete("orders", &DeleteParams::default())
            .await?;
        until_child::<Service, _>(&ctx, "orders", "client Service to be re-created", |s| {
            s.metadata.uid.as_deref() != Some(old_uid.as_str()) && owned_by(s, o)
        })
        .await?;

        until_child::<Deployment, _>(&ctx, "orders", "Deployment", |d| owned_by(d, o)).await?;
        // kubectl set image deployment/orders node=evil:1
        ctx.api::<Deployment>()
            .patch(
                "orders",
                &PatchParams {
                    field_manager: Some("kubectl-set".into()),
                    ..PatchParams::default()
                },
                &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                    {"name": "node", "image": "evil:1"}
                ]}}}})),
            )
            .await
            .context("hand-editing the Deployment image")?;
        until_child::<Deployment, _>(&ctx, "orders", "Deployment image to be put back", |d| {
            deployment_container(d)
                .ok()
                .and_then(|c| c.image)
                .as_deref()
                == Some("troupe-node:0.1.0")
        })
        .await?;

        // A hand-edited replica count is put back too: the operator owns it.
        ctx.api::<Deployment>()
            .patch(
                "orders",
                &PatchParams {
                    field_manager: Some("kubectl-scale".into()),
                    ..PatchParams::default()
                },
                &Patch::Merge(json!({"spec": {"replicas": 7}})),
            )
            .await?;
        until_child::<Deployment, _>(&ctx, "orders", "Deployment replicas to be put back", |d| {
            deployment_replicas(d) == Some(3)
        })
        .await?;
        Ok(())
    })
    .await
}

/// The operator pods and their metrics.
async fn operator_pods(client: &Client) -> anyhow::Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    troupe_e2e::diagnostics::live_pods(&pods, OPERATOR_SELECTOR).await
}

/// Parses the Prometheus text of one operator pod into `series → value`.
async fn pod_metrics(pod: &Pod) -> anyhow::Result<BTreeMap<String, f64>> {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .context("operator pod without IP")?;
    let resp = http::get(&format!("{ip}:8080"), "/metrics").await?;
    ensure!(resp.status == 200, "/metrics answered {}", resp.status);
    Ok(resp
        .body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect())
}

fn leaders(all: &[(Pod, BTreeMap<String, f64>)]) -> Vec<String> {
    all.iter()
        .filter(|(_, m)| m.get("troupe_operator_leader") == Some(&1.0))
        .filter_map(|(p, _)| p.metadata.name.clone())
        .collect()
}

async fn all_metrics(client: &Client) -> anyhow::Result<Vec<(Pod, BTreeMap<String, f64>)>> {
    let mut out = Vec::new();
    for pod in operator_pods(client).await? {
        if let Ok(m) = pod_metrics(&pod).await {
            out.push((pod, m));
        }
    }
    Ok(out)
}

async fn scale_operator(client: &Client, replicas: i32) -> anyhow::Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let list = deployments
        .list(&ListParams::default().labels(OPERATOR_SELECTOR))
        .await?;
    let name = list
        .items
        .first()
        .and_then(|d| d.metadata.name.clone())
        .context("no operator Deployment in troupe-system: install the chart first")?;
    deployments
        .patch_scale(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await?;
    Ok(())
}

/// Two operator replicas: exactly one leads; killing it hands over; the new leader
/// converges 20 ActorClusters with zero write calls.
#[tokio::test]
async fn one_leader_hands_over_and_a_converged_resync_writes_nothing() -> anyhow::Result<()> {
    with_namespace("op-leader", |ctx| async move {
        const CLUSTERS: usize = 20;
        for i in 0..CLUSTERS {
            create(&ctx, &actor_cluster(&format!("c{i:02}"), json!({"replicas": 0}))?).await?;
        }
        for i in 0..CLUSTERS {
            let ac = until_observed(&ctx, &format!("c{i:02}")).await?;
            ensure!(
                condition(&ac, "Ready") == Some(("True".into(), "ScaledToZero".into())),
                "c{i:02} not converged: {:?}",
                ac.data.get("status")
            );
        }

        let result = async {
            scale_operator(&ctx.client, 2).await?;
            let leader = wait::until("two operator pods, exactly one leader", TIMEOUT, EVERY, || {
                let client = ctx.client.clone();
                async move {
                    let all = all_metrics(&client).await?;
                    let l = leaders(&all);
                    Ok((all.len() == 2 && l.len() == 1).then(|| l[0].clone()))
                }
            })
            .await?;

            // Kill the leader without a graceful release: the standby must take over.
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), OPERATOR_NAMESPACE);
            pods.delete(&leader, &DeleteParams::default().grace_period(0))
                .await?;
            let namespace_series =
                format!("troupe_operator_namespace_writes_total{{namespace=\"{}\"}}", ctx.namespace);
            let (new_leader, metrics) = wait::until(
                "a new leader that has reconciled the 20 ActorClusters",
                Duration::from_secs(120),
                Duration::from_secs(1),
                || {
                    let client = ctx.client.clone();
                    let leader = leader.clone();
                    async move {
                        let all = all_metrics(&client).await?;
                        let found = all.into_iter().find(|(p, m)| {
                            p.metadata.name.as_deref() != Some(leader.as_str())
                                && m.get("troupe_operator_leader") == Some(&1.0)
                                && m.get("troupe_operator_reconciles_total{result=\"ok\"}")
                                    .copied()
                                    .unwrap_or_default()
                                    >= CLUSTERS as f64
                        });
                        Ok(found.map(|(p, m)| (p.metadata.name.unwrap_or_default(), m)))
                    }
                },
            )
            .await?;
            let writes = metrics.get(&namespace_series).copied().unwrap_or_default();
            ensure!(
                writes == 0.0,
                "new leader {new_leader} made {writes} writes for {CLUSTERS} converged ActorClusters"
            );
            tracing::info!(%new_leader, "handover done; resync of converged clusters wrote nothing");

            // The new leader reconciles: a change still reaches the children.
            merge_spec(&ctx, "c00", json!({"replicas": 1})).await?;
            until_child::<Deployment, _>(&ctx, "c00", "c00 Deployment scaled by the new leader", |d| {
                deployment_replicas(d) == Some(1)
            })
            .await?;
            anyhow::Ok(())
        }
        .await;
        // Back to the chart's single replica whatever happened.
        let restored = scale_operator(&ctx.client, 1).await;
        result?;
        restored
    })
    .await
}
