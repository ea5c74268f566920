//! Cluster DNS: a pod resolves Services by name. The local cluster runs CoreDNS (started by
//! `hack/cluster-up.sh`, the kubelet's `clusterDNS`); a pod of `troupe-resolve:0.1.0`
//! (`hack/images/resolve.c`, a static resolver with no shell) resolves names with the
//! `/etc/resolv.conf` the kubelet gave it, prints what it got and exits 0 only when every
//! name resolved as expected. Its log is the test's evidence.

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::Service;
use kube::api::PostParams;
use serde_json::json;
use troupe_e2e::{one_shot, service, with_namespace};

const TARGET: &str = "dns-target";
const RESOLVER: &str = "resolve";

#[tokio::test]
async fn a_pod_resolves_services_by_name_and_nothing_outside_the_cluster() -> anyhow::Result<()> {
    with_namespace("dns", |ctx| async move {
        let svc: Service = serde_json::from_value(json!({
            "metadata": { "name": TARGET },
            "spec": { "selector": { "app": TARGET }, "ports": [{ "port": 80 }] }
        }))?;
        ctx.api::<Service>()
            .create(&PostParams::default(), &svc)
            .await
            .context("creating the Service")?;
        let addr = service::cluster_address(&ctx, TARGET, 80).await?;
        let ip = addr.trim_end_matches(":80").to_owned();
        let ns = &ctx.namespace;
        let kubernetes_ip = service::cluster_address(&troupe_e2e::TestContext {
            client: ctx.client.clone(),
            namespace: "default".into(),
        }, "kubernetes", 443)
        .await?
        .trim_end_matches(":443")
        .to_owned();
        let checks = vec![
            format!("{TARGET}.{ns}.svc.cluster.local={ip}"),
            // The search path the kubelet writes: the short name in the pod's namespace.
            format!("{TARGET}={ip}"),
            format!("kubernetes.default.svc.cluster.local={kubernetes_ip}"),
            format!("no-such-service.{ns}.svc.cluster.local=none"),
            // Nothing is forwarded outside the cluster domain.
            "example.com=none".to_owned(),
        ];
        let troupe_e2e::one_shot::Finished { phase, logs } =
            one_shot::run(&ctx, RESOLVER, "troupe-resolve:0.1.0", checks, "dns").await?;
        ensure!(
            phase == "Succeeded",
            "the resolver pod ended {phase}: a name did not resolve as expected (is CoreDNS running and the kubelet's clusterDNS set? see hack/cluster-up.sh):\n{logs}"
        );
        ensure!(
            logs.contains(&format!("resolve {TARGET}.{ns}.svc.cluster.local {ip}: ok {ip}")),
            "the resolver's log does not show the Service's FQDN resolving to {ip}:\n{logs}"
        );
        Ok(())
    })
    .await
}
