//! End-to-end: autoscaling on mailbox depth, on the real local cluster.
//!
//! The operator (installed by `charts/troupe` in `troupe-system`) serves
//! `custom.metrics.k8s.io/v1beta2` through the aggregation layer; the HPA it creates for an
//! ActorCluster reads `troupe_mailbox_depth` per pod from there. This test drives load with
//! the built-in `load` actor through the cluster's client Service and prints:
//!
//! * the metric values per pod as `kubectl get --raw` sees them, and the APIService state;
//! * the time from "average depth above target" to a new pod Ready;
//! * the acknowledged tells against the messages the nodes processed (must be equal);
//! * the time from the end of the load to the scale-down back to `minReplicas`.
//!
//! Traffic goes only to the cluster's own addresses (the client Service's ClusterIP and pod
//! IPs); every loop is bounded in count and time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use troupe_e2e::diagnostics::is_ready;
use troupe_e2e::{TestContext, actor_cluster, http, wait, with_namespace};

const CLUSTER: &str = "scaler";
const TARGET_DEPTH: f64 = 5.0;
const METRIC_PATH: &str = "/apis/custom.metrics.k8s.io/v1beta2/namespaces";
const EVERY: Duration = Duration::from_millis(500);
/// Actors the load is spread over; each handles 50 messages/s (20 ms per message).
const LOAD_ACTORS: usize = 8;
/// Concurrent senders and the pace of each: 4 x 125/s = 500/s, above the 400/s the actors
/// handle, so depth grows by about 100/s while the load runs.
const SENDERS: usize = 4;
const SENDER_PERIOD: Duration = Duration::from_millis(8);
/// Upper bound of the load phase.
const MAX_LOAD: Duration = Duration::from_secs(90);

fn ac_api(ctx: &TestContext) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "troupe.dev",
        "v1alpha1",
        "ActorCluster",
    ));
    Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &ar)
}

async fn raw(client: &Client, path: &str) -> anyhow::Result<Value> {
    let req = hyper::Request::get(path).body(Vec::new())?;
    client
        .request::<Value>(req)
        .await
        .with_context(|| format!("GET {path}"))
}

/// `kubectl get --raw .../pods/*/troupe_mailbox_depth?labelSelector=<cluster>`: pod → depth.
async fn depths(ctx: &TestContext) -> anyhow::Result<BTreeMap<String, f64>> {
    let selector = troupe_contract::labels::node_selector(CLUSTER)
        .replace('=', "%3D")
        .replace(',', "%2C")
        .replace('/', "%2F");
    let list = raw(
        &ctx.client,
        &format!(
            "{METRIC_PATH}/{}/pods/*/troupe_mailbox_depth?labelSelector={selector}",
            ctx.namespace
        ),
    )
    .await?;
    ensure!(
        list["kind"] == "MetricValueList",
        "not a MetricValueList: {list}"
    );
    let mut out = BTreeMap::new();
    for item in list["items"].as_array().cloned().unwrap_or_default() {
        let name = item["describedObject"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let value = quantity(item["value"].as_str().unwrap_or_default())
            .with_context(|| format!("bad quantity in {item}"))?;
        out.insert(name, value);
    }
    Ok(out)
}

fn quantity(q: &str) -> Option<f64> {
    match q.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().ok().map(|v| v / 1000.0),
        None => q.parse().ok(),
    }
}

async fn node_pods(ctx: &TestContext) -> anyhow::Result<Vec<Pod>> {
    troupe_e2e::diagnostics::live_pods(
        &ctx.api::<Pod>(),
        &troupe_contract::labels::node_selector(CLUSTER),
    )
    .await
}

fn pod_name(p: &Pod) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

/// Sum of the series `name` of the `load` actor type on a node's management `/metrics`
/// (other types, e.g. the harness's `echo` probe of the client Service, do not count).
async fn node_sum(pod: &Pod, name: &str) -> anyhow::Result<f64> {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .context("pod without IP")?;
    let resp = http::get(
        &format!("{ip}:{}", troupe_contract::ports::MANAGEMENT),
        "/metrics",
    )
    .await?;
    ensure!(resp.status == 200, "/metrics answered {}", resp.status);
    Ok(resp
        .body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name && series.contains("actor_type=\"load\""))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum())
}

async fn api_service_available(client: &Client) -> anyhow::Result<Option<String>> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "apiregistration.k8s.io",
        "v1",
        "APIService",
    ));
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let svc = api
        .get("v1beta2.custom.metrics.k8s.io")
        .await
        .context("APIService v1beta2.custom.metrics.k8s.io (is the chart installed with customMetrics.enabled?)")?;
    let available = svc.data["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Available")
        .cloned();
    Ok(available
        .filter(|c| c["status"] == "True")
        .map(|c| format!("{} ({})", c["status"], c["reason"])))
}

#[derive(Debug, Default)]
struct Load {
    accepted: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    /// The first refusal and the first failure, for the printout.
    first_problems: std::sync::Mutex<Vec<String>>,
}

impl Load {
    fn note(&self, what: String) {
        if let Ok(mut p) = self.first_problems.lock()
            && p.len() < 4
        {
            p.push(what);
        }
    }
}

/// Sends tells until `stop`, or `MAX_LOAD`, whichever is first.
async fn sender(addr: String, index: usize, load: Arc<Load>, stop: Arc<AtomicBool>) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(SENDER_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_LOAD {
        tick.tick().await;
        let actor = (index + n * SENDERS) % LOAD_ACTORS;
        n += 1;
        let body = Some(json!({ "sleep_us": 20_000 }).to_string());
        match http::request("POST", &addr, &format!("/actors/load/a{actor}/tell"), body).await {
            Ok(r) if r.status == 202 => {
                load.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => {
                if load.refused.fetch_add(1, Ordering::Relaxed) < 2 {
                    load.note(format!("refused {}: {}", r.status, r.body.trim()));
                }
            }
            Err(e) => {
                if load.failed.fetch_add(1, Ordering::Relaxed) < 2 {
                    load.note(format!(
                        "failed after {:.1}s: {e:#}",
                        started.elapsed().as_secs_f64()
                    ));
                }
            }
        }
    }
}

#[tokio::test]
async fn mailbox_depth_scales_the_cluster_out_and_back_in() -> anyhow::Result<()> {
    with_namespace("autoscaling", |ctx| async move {
        let available = wait::until(
            "APIService v1beta2.custom.metrics.k8s.io Available",
            Duration::from_secs(60),
            EVERY,
            || api_service_available(&ctx.client),
        )
        .await?;
        println!("APIService v1beta2.custom.metrics.k8s.io Available={available}");

        let ac: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "troupe.dev/v1alpha1",
            "kind": "ActorCluster",
            "metadata": { "name": CLUSTER },
            "spec": {
                "replicas": 1,
                // `load` is off unless listed: it burns CPU on request.
                "actors": { "builtinTypes": ["counter", "kv", "echo", "load"] },
                "mailbox": { "capacity": 2000, "overflow": "Backpressure" },
                "autoscaling": {
                    "minReplicas": 1,
                    "maxReplicas": 3,
                    "targetMailboxDepth": TARGET_DEPTH as i64,
                    "behavior": {
                        "scaleUp": {
                            "stabilizationWindowSeconds": 0,
                            "policies": [{ "type": "Pods", "value": 2, "periodSeconds": 5 }]
                        },
                        "scaleDown": {
                            "stabilizationWindowSeconds": 15,
                            "policies": [{ "type": "Percent", "value": 100, "periodSeconds": 5 }]
                        }
                    }
                }
            }
        }))?;
        ac_api(&ctx).create(&PostParams::default(), &ac).await.context("creating the ActorCluster")?;

        // One Ready pod, and a metric value for it through the aggregation layer.
        let first = wait::until("the first node pod Ready", Duration::from_secs(120), EVERY, || async {
            Ok(node_pods(&ctx).await?.into_iter().find(is_ready))
        })
        .await?;
        let first_name = pod_name(&first);
        let initial = wait::until("a depth value for every node pod", Duration::from_secs(60), EVERY, || async {
            let pods = node_pods(&ctx).await?;
            let d = depths(&ctx).await?;
            Ok((!pods.is_empty() && pods.iter().all(|p| d.contains_key(&pod_name(p)))).then_some(d))
        })
        .await?;
        println!("kubectl get --raw {METRIC_PATH}/{}/pods/*/troupe_mailbox_depth: {initial:?}", ctx.namespace);
        let hpa = wait::until("the HPA", Duration::from_secs(30), EVERY, || async {
            Ok(ctx.api::<HorizontalPodAutoscaler>().get_opt(CLUSTER).await?)
        })
        .await?;
        let target = hpa.spec.as_ref().map(|s| (&s.scale_target_ref.kind, &s.scale_target_ref.name));
        println!("HPA {CLUSTER}: target {target:?}");

        // Load through the client Service (Ready pods only).
        let addr = actor_cluster::client_address(&ctx, CLUSTER).await?;
        let load = Arc::new(Load::default());
        let stop = Arc::new(AtomicBool::new(false));
        let load_started = Instant::now();
        let senders: Vec<_> = (0..SENDERS)
            .map(|i| tokio::spawn(sender(addr.clone(), i, load.clone(), stop.clone())))
            .collect();

        // Watch: average depth above target, then new pods Ready.
        let mut above: Option<Instant> = None;
        let mut first_new_ready: Option<Duration> = None;
        let mut max_ready = 1usize;
        let mut peak_avg = 0.0f64;
        while load_started.elapsed() < MAX_LOAD {
            let d = depths(&ctx).await.unwrap_or_default();
            if !d.is_empty() {
                let avg = d.values().sum::<f64>() / d.len() as f64;
                peak_avg = peak_avg.max(avg);
                if above.is_none() && avg > TARGET_DEPTH {
                    above = Some(Instant::now());
                    println!(
                        "depth above target after {:.1}s of load: {d:?} (avg {avg:.1} > {TARGET_DEPTH})",
                        load_started.elapsed().as_secs_f64()
                    );
                }
            }
            let ready: Vec<Pod> = node_pods(&ctx).await?.into_iter().filter(is_ready).collect();
            if let Some(t) = above
                && first_new_ready.is_none()
                && ready.iter().any(|p| pod_name(p) != first_name)
            {
                let dt = t.elapsed();
                first_new_ready = Some(dt);
                println!("depth above target -> new pod Ready: {:.1}s", dt.as_secs_f64());
            }
            if ready.len() > max_ready {
                max_ready = ready.len();
                println!(
                    "{max_ready} node pods Ready after {:.1}s of load",
                    load_started.elapsed().as_secs_f64()
                );
            }
            if max_ready >= 3 {
                break;
            }
            tokio::time::sleep(EVERY).await;
        }
        // A little more load at full size, so the new nodes take part.
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        for s in senders {
            let _ = s.await;
        }
        let load_stopped = Instant::now();
        let accepted = load.accepted.load(Ordering::Relaxed);
        println!(
            "load: {:.1}s, tells accepted (202) {accepted}, refused {}, failed {}; peak average depth {peak_avg:.1}",
            load_stopped.duration_since(load_started).as_secs_f64(),
            load.refused.load(Ordering::Relaxed),
            load.failed.load(Ordering::Relaxed),
        );
        if let Ok(p) = load.first_problems.lock()
            && !p.is_empty()
        {
            println!("first refusals/failures (not acknowledged, so not counted): {p:?}");
        }
        ensure!(above.is_some(), "the average depth never rose above the target {TARGET_DEPTH}");
        ensure!(first_new_ready.is_some(), "the HPA added no pod within {MAX_LOAD:?} of load");

        // Every acknowledged tell is processed: the nodes' counters add up, before any
        // node is scaled away (the scale-down window is 15 s after the depth falls).
        let processed = wait::until(
            "every accepted tell processed",
            Duration::from_secs(120),
            Duration::from_secs(1),
            || async {
                let mut sum = 0.0;
                let mut per_pod = BTreeMap::new();
                for p in node_pods(&ctx).await? {
                    let n = node_sum(&p, "troupe_messages_processed_total").await?;
                    per_pod.insert(pod_name(&p), n);
                    sum += n;
                }
                Ok((sum as u64 >= accepted).then_some((sum as u64, per_pod)))
            },
        )
        .await?;
        println!(
            "processed (troupe_messages_processed_total, all pods) {} = accepted {accepted}: {:?}; drained {:.1}s after the load stopped",
            processed.0,
            processed.1,
            load_stopped.elapsed().as_secs_f64()
        );
        ensure!(processed.0 == accepted, "processed {} != accepted {accepted}", processed.0);

        let ac = ac_api(&ctx).get(CLUSTER).await?;
        println!(
            "status.mailboxDepth={} conditions={}",
            ac.data["status"]["mailboxDepth"], ac.data["status"]["conditions"]
        );
        let costs: Vec<(String, Option<String>)> = node_pods(&ctx)
            .await?
            .iter()
            .map(|p| {
                let cost = p
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("controller.kubernetes.io/pod-deletion-cost"))
                    .cloned();
                (pod_name(p), cost)
            })
            .collect();
        println!("pod-deletion-cost: {costs:?}");

        // Scale back down to minReplicas once idle.
        wait::until("scale-down to 1 node pod", Duration::from_secs(150), Duration::from_secs(1), || async {
            let pods = node_pods(&ctx).await?;
            Ok((pods.len() == 1).then_some(()))
        })
        .await?;
        println!(
            "scaled back to 1 pod {:.1}s after the load stopped",
            load_stopped.elapsed().as_secs_f64()
        );
        let ac = ac_api(&ctx).get(CLUSTER).await?;
        let limited = ac.data["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "ScalingLimited")
            .cloned();
        println!("ScalingLimited: {limited:?}");
        Ok(())
    })
    .await
}
