//! The foundation: proves the local cluster is a real Kubernetes. A Deployment of the node
//! image runs with liveness and readiness probes; the kubelet's probes drive the pods'
//! Ready condition; a pod taken out of readiness leaves the Service's ready endpoints and
//! requests to the ClusterIP reach only Ready pods; a deleted pod is replaced by its
//! ReplicaSet; and RBAC refuses a ServiceAccount without rights.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, Config};
use serde_json::json;
use troupe_e2e::{
    TestContext, diagnostics, diagnostics::is_ready, http, service, wait, with_namespace,
};

const APP: &str = "skeleton";
const REPLICAS: usize = 3;

fn deployment() -> anyhow::Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": { "name": APP },
        "spec": {
            "replicas": REPLICAS,
            "selector": { "matchLabels": { "app": APP } },
            "template": {
                "metadata": { "labels": { "app": APP } },
                "spec": {
                    "securityContext": { "runAsNonRoot": true, "runAsUser": 65532,
                                         "seccompProfile": { "type": "RuntimeDefault" } },
                    "containers": [{
                        "name": "node",
                        "image": "troupe-node:0.1.0",
                        "imagePullPolicy": "IfNotPresent",
                        "env": [{ "name": "TROUPE_STANDALONE", "value": "true" }],
                        "ports": [{ "name": "management", "containerPort": 8558 }],
                        "securityContext": { "readOnlyRootFilesystem": true,
                                             "allowPrivilegeEscalation": false,
                                             "capabilities": { "drop": ["ALL"] } },
                        "livenessProbe": { "httpGet": { "path": "/alive", "port": "management" },
                                           "periodSeconds": 2 },
                        "readinessProbe": { "httpGet": { "path": "/ready", "port": "management" },
                                            "periodSeconds": 1, "failureThreshold": 1 }
                    }]
                }
            }
        }
    }))?)
}

fn service() -> anyhow::Result<Service> {
    Ok(serde_json::from_value(json!({
        "metadata": { "name": APP },
        "spec": { "selector": { "app": APP },
                  "ports": [{ "name": "management", "port": 80, "targetPort": "management" }] }
    }))?)
}

async fn live_pods(ctx: &TestContext) -> anyhow::Result<Vec<Pod>> {
    diagnostics::live_pods(&ctx.api::<Pod>(), &format!("app={APP}")).await
}

async fn wait_ready_pods(ctx: &TestContext, n: usize) -> anyhow::Result<Vec<Pod>> {
    wait::until(
        &format!("{n} Ready pods"),
        Duration::from_secs(120),
        Duration::from_millis(500),
        || async {
            let pods = live_pods(ctx).await?;
            let ready = pods.iter().filter(|p| is_ready(p)).count();
            Ok((pods.len() == n && ready == n).then_some(pods))
        },
    )
    .await
}

/// The IPs of the ready endpoints of the Service, from its EndpointSlices.
async fn ready_endpoints(ctx: &TestContext) -> anyhow::Result<BTreeSet<String>> {
    Ok(service::ready_endpoints(ctx, APP).await?.addresses)
}

fn pod_ip(p: &Pod) -> anyhow::Result<String> {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .context("pod has no IP")
}

/// A Ready skeleton pod answers `/ready` with 200; a drained one with 503.
fn ready_probe() -> service::Probe {
    service::Probe::get("/ready", 200)
}

async fn setup(ctx: &TestContext) -> anyhow::Result<Vec<Pod>> {
    ctx.api::<Deployment>()
        .create(&PostParams::default(), &deployment()?)
        .await?;
    ctx.api::<Service>()
        .create(&PostParams::default(), &service()?)
        .await?;
    wait_ready_pods(ctx, REPLICAS).await
}

#[tokio::test]
async fn probes_drive_readiness_and_readiness_gates_service_traffic() -> anyhow::Result<()> {
    with_namespace("readiness", |ctx| async move {
        let pods = setup(&ctx).await?;
        let all: BTreeSet<String> = pods.iter().map(pod_ip).collect::<Result<_, _>>()?;
        wait::until(
            "all pods in the EndpointSlice",
            Duration::from_secs(30),
            Duration::from_millis(250),
            || async { Ok((ready_endpoints(&ctx).await? == all).then_some(())) },
        )
        .await?;
        // The fresh Service answers through its ClusterIP only once kube-proxy programmed it.
        let serving =
            service::until_serving(&ctx, APP, 80, &ready_probe(), service::DEFAULT_TIMEOUT).await?;
        ensure!(
            serving.endpoints.addresses == all,
            "the Service served from {:?}, not from every Ready pod {all:?}",
            serving.endpoints.addresses
        );

        // Take one pod out of readiness through its own management endpoint. The kubelet's
        // readiness probe must notice and flip the pod's Ready condition.
        let victim = &pods[0];
        let victim_ip = pod_ip(victim)?;
        let victim_name = victim.metadata.name.clone().unwrap_or_default();
        let resp =
            http::request("POST", &format!("{victim_ip}:8558"), "/admin/drain", None).await?;
        ensure!(resp.status == 200, "drain answered {}", resp.status);
        wait::until(
            "the drained pod to lose its Ready condition",
            Duration::from_secs(30),
            Duration::from_millis(250),
            || async {
                let p = ctx.api::<Pod>().get(&victim_name).await?;
                Ok((!is_ready(&p)).then_some(()))
            },
        )
        .await?;
        let mut rest = all.clone();
        rest.remove(&victim_ip);
        wait::until(
            "the drained pod to leave the ready endpoints",
            Duration::from_secs(30),
            Duration::from_millis(250),
            || async { Ok((ready_endpoints(&ctx).await? == rest).then_some(())) },
        )
        .await?;

        // The drained pod answers /ready with 503; every request through the ClusterIP must
        // therefore land on another pod and answer 200.
        let direct = http::get(&format!("{victim_ip}:8558"), "/ready").await?;
        ensure!(
            direct.status == 503,
            "drained pod answered /ready with {}",
            direct.status
        );
        // kube-proxy programs the change a moment after the EndpointSlice has it: wait
        // until the Service answers /ready with 200 `service::CONSECUTIVE` times in a row,
        // then require every one of 60 more to do so.
        let vip = service::until_serving(&ctx, APP, 80, &ready_probe(), service::DEFAULT_TIMEOUT)
            .await?
            .addr;
        for i in 0..60 {
            let r = http::get(&vip, "/ready").await?;
            ensure!(
                r.status == 200,
                "request {i} through the Service reached a pod that is not Ready ({}: {})",
                r.status,
                r.body.trim()
            );
        }

        // And back.
        http::request("POST", &format!("{victim_ip}:8558"), "/admin/undrain", None).await?;
        wait::until(
            "the undrained pod to rejoin the ready endpoints",
            Duration::from_secs(30),
            Duration::from_millis(250),
            || async { Ok((ready_endpoints(&ctx).await? == all).then_some(())) },
        )
        .await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_deleted_pod_is_replaced_by_its_replicaset() -> anyhow::Result<()> {
    with_namespace("replace", |ctx| async move {
        let pods = setup(&ctx).await?;
        let victim = pods[0].metadata.name.clone().unwrap_or_default();
        ctx.api::<Pod>()
            .delete(&victim, &DeleteParams::default())
            .await?;
        let after = wait::until(
            "a replacement pod",
            Duration::from_secs(120),
            Duration::from_millis(500),
            || async {
                let pods = live_pods(&ctx).await?;
                let names: BTreeSet<String> = pods
                    .iter()
                    .filter_map(|p| p.metadata.name.clone())
                    .collect();
                let ready = pods.iter().filter(|p| is_ready(p)).count();
                Ok(
                    (names.len() == REPLICAS && ready == REPLICAS && !names.contains(&victim))
                        .then_some(names),
                )
            },
        )
        .await?;
        ensure!(
            !after.contains(&victim),
            "the deleted pod came back by name"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn rbac_refuses_a_service_account_without_rights() -> anyhow::Result<()> {
    with_namespace("rbac", |ctx| async move {
        let sa: ServiceAccount =
            serde_json::from_value(json!({ "metadata": { "name": "nobody" } }))?;
        ctx.api::<ServiceAccount>()
            .create(&PostParams::default(), &sa)
            .await?;
        let req: TokenRequest = serde_json::from_value(json!({
            "spec": { "audiences": [], "expirationSeconds": 600 }
        }))?;
        let token = ctx
            .api::<ServiceAccount>()
            .create_token_request("nobody", &PostParams::default(), &req)
            .await?
            .status
            .context("token request has no status")?
            .token;

        let mut config = Config::infer().await?;
        config.auth_info = kube::config::AuthInfo {
            token: Some(token.into()),
            ..Default::default()
        };
        let nobody = Client::try_from(config)?;
        let as_nobody: Api<Pod> = Api::namespaced(nobody.clone(), &ctx.namespace);
        match as_nobody.list(&ListParams::default()).await {
            Err(kube::Error::Api(s)) if s.code == 403 => {}
            Err(e) => bail!("expected 403 Forbidden, got {e}"),
            Ok(_) => bail!("a ServiceAccount without rights could list pods: RBAC is not enforced"),
        }
        // The same identity is authenticated (not anonymous): a self review names it.
        let me = nobody.apiserver_version().await;
        ensure!(me.is_ok(), "the token was not accepted at all: {me:?}");
        Ok(())
    })
    .await
}
