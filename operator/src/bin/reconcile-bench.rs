//! Benchmark of the installed operator on the local cluster: creates N ActorClusters
//! (`replicas: 0`, so no pods), waits until all converged, then changes one ActorCluster
//! at a time and measures *change → Deployment updated* as seen by a watch, and reads the
//! operator's resident memory and its own reconcile-duration histogram from `/metrics`.
//!
//! Run through `operator/bench/reconcile.sh`; prints figures, asserts nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams,
};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Parser)]
struct Args {
    /// ActorClusters to create.
    #[arg(long, default_value_t = 1000)]
    clusters: usize,
    /// Sequential changes to time.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Namespace for the benchmark (deleted at the end unless --keep).
    #[arg(long, default_value = "bench-operator")]
    namespace: String,
    /// Keep the namespace afterwards.
    #[arg(long)]
    keep: bool,
    /// Namespace of the operator.
    #[arg(long, default_value = "troupe-system")]
    operator_namespace: String,
    /// Skip the restart phase (operator pods deleted, the new leader's resync of the
    /// converged ActorClusters is measured: RSS and write calls).
    #[arg(long)]
    no_restart: bool,
}

fn ac_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "troupe.dev",
        "v1alpha1",
        "ActorCluster",
    ));
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn capacity_of(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()?
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == "TROUPE_MAILBOX_CAPACITY")?
        .value
        .clone()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64)).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .context("connect timeout")??;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut buf))
        .await
        .context("read timeout")??;
    Ok(buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

/// Metrics of the leading operator pod.
async fn leader_metrics(client: &Client, ns: &str) -> anyhow::Result<HashMap<String, f64>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=troupe-operator"))
        .await?;
    for pod in list.items {
        let Some(ip) = pod.status.and_then(|s| s.pod_ip) else {
            continue;
        };
        let Ok(text) = http_get(&format!("{ip}:8080"), "/metrics").await else {
            continue;
        };
        let m: HashMap<String, f64> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect();
        if m.get("troupe_operator_leader") == Some(&1.0) {
            return Ok(m);
        }
    }
    bail!("no leading operator pod answered /metrics in {ns}")
}

/// Waits until the leader has made at least `min_reconciles` reconciles and `series` (a
/// write counter) has not moved for `quiet`; returns its metrics then.
async fn until_idle(
    client: &Client,
    ns: &str,
    series: &str,
    min_reconciles: f64,
    quiet: Duration,
    timeout: Duration,
) -> anyhow::Result<HashMap<String, f64>> {
    let start = Instant::now();
    let mut last = f64::NAN;
    let mut since = Instant::now();
    loop {
        if let Ok(m) = leader_metrics(client, ns).await {
            let reconciles = m
                .get("troupe_operator_reconciles_total{result=\"ok\"}")
                .copied()
                .unwrap_or_default();
            let writes = m.get(series).copied().unwrap_or_default();
            if writes != last {
                last = writes;
                since = Instant::now();
            } else if reconciles >= min_reconciles && since.elapsed() >= quiet {
                return Ok(m);
            }
        }
        if start.elapsed() > timeout {
            bail!("the operator did not become idle within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// p-th percentile upper bound from a Prometheus histogram (cumulative buckets).
fn histogram_quantile(m: &HashMap<String, f64>, name: &str, q: f64) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = m
        .iter()
        .filter_map(|(k, v)| {
            let le = k
                .strip_prefix(&format!("{name}_bucket{{le=\""))?
                .strip_suffix("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    buckets
        .into_iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| le)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = Client::try_default().await.context("no cluster")?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": args.namespace}}))?;
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let acs = ac_api(&client, &args.namespace);
    let series = format!(
        "troupe_operator_namespace_writes_total{{namespace=\"{}\"}}",
        args.namespace
    );
    let before = leader_metrics(&client, &args.operator_namespace).await?;
    let rss_before = before
        .get("troupe_operator_resident_memory_bytes")
        .copied()
        .unwrap_or_default();

    // Watch the Deployments of the namespace: (name, capacity) → when first seen.
    let seen: Arc<Mutex<HashMap<(String, String), Instant>>> = Arc::default();
    let names: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
    let names_w = names.clone();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &args.namespace);
    let seen_w = seen.clone();
    let watch = tokio::spawn(async move {
        let stream = watcher(deployments, watcher::Config::default()).applied_objects();
        futures::pin_mut!(stream);
        while let Ok(Some(d)) = stream.try_next().await {
            if let (Some(name), Some(cap)) = (d.metadata.name.clone(), capacity_of(&d))
                && let Ok(mut m) = seen_w.lock()
            {
                if let Ok(mut n) = names_w.lock() {
                    n.insert(name.clone());
                }
                m.entry((name, cap)).or_insert_with(Instant::now);
            }
        }
    });

    // Create N ActorClusters.
    let start = Instant::now();
    futures::stream::iter(0..args.clusters)
        .map(|i| {
            let acs = acs.clone();
            async move {
                let ac: DynamicObject = serde_json::from_value(json!({
                    "apiVersion": "troupe.dev/v1alpha1", "kind": "ActorCluster",
                    "metadata": {"name": format!("b{i:04}")},
                    "spec": {"replicas": 0, "mailbox": {"capacity": 1000}}
                }))?;
                match acs.create(&PostParams::default(), &ac).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                    Err(e) => Err(anyhow::Error::from(e)),
                }
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    let created = start.elapsed();
    loop {
        let n = names.lock().map(|m| m.len()).unwrap_or_default();
        if n >= args.clusters {
            break;
        }
        if start.elapsed() > Duration::from_secs(900) {
            bail!("only {n} of {} Deployments after 15 min", args.clusters);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let converged = start.elapsed();
    // Let status writes and their follow-up reconciles settle before measuring.
    until_idle(
        &client,
        &args.operator_namespace,
        &series,
        0.0,
        Duration::from_secs(3),
        Duration::from_secs(600),
    )
    .await?;

    // Sequential changes: change → Deployment carries the new env value.
    let mut latencies = Vec::with_capacity(args.samples);
    for i in 0..args.samples {
        let name = format!("b{:04}", (i * 7) % args.clusters);
        let capacity = (2000 + i).to_string();
        let t0 = Instant::now();
        acs.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"mailbox": {"capacity": 2000 + i}}})),
        )
        .await?;
        loop {
            let hit = seen
                .lock()
                .ok()
                .and_then(|m| m.get(&(name.clone(), capacity.clone())).copied());
            if let Some(at) = hit {
                latencies.push(at.saturating_duration_since(t0));
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("change of {name} not applied within 30 s");
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
    latencies.sort();
    println!(
        "  change -> Deployment applied     p50 {:>8.2?}  p99 {:>8.2?}  (measured first)",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0)
    );

    // Baseline in the same run: the same watch sees a Deployment patched directly (no
    // operator in the path) — the API server + watch floor of the figure above.
    let direct: Api<Deployment> = Api::namespaced(client.clone(), &args.namespace);
    let mut baseline = Vec::with_capacity(args.samples);
    for i in 0..args.samples {
        let name = format!("b{:04}", (i * 7 + 3) % args.clusters);
        let capacity = (900_000 + i).to_string();
        let t0 = Instant::now();
        // Strategic merge on the container's env list (merge key `name`).
        direct
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                    {"name": "node", "env": [{"name": "TROUPE_MAILBOX_CAPACITY", "value": capacity}]}
                ]}}}})),
            )
            .await?;
        loop {
            let hit = seen
                .lock()
                .ok()
                .and_then(|m| m.get(&(name.clone(), capacity.clone())).copied());
            if let Some(at) = hit {
                baseline.push(at.saturating_duration_since(t0));
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("direct patch of {name} not seen within 30 s");
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
    baseline.sort();
    // The operator puts the hand-edited env values back; let it finish.
    until_idle(
        &client,
        &args.operator_namespace,
        &series,
        0.0,
        Duration::from_secs(3),
        Duration::from_secs(300),
    )
    .await?;
    let after = leader_metrics(&client, &args.operator_namespace).await?;
    let rss_after = after
        .get("troupe_operator_resident_memory_bytes")
        .copied()
        .unwrap_or_default();
    let name = "troupe_operator_reconcile_duration_seconds";

    println!(
        "operator reconcile benchmark ({} ActorClusters, {} sequential changes)",
        args.clusters, args.samples
    );
    println!(
        "  create {} ActorClusters          {:>10.2?}",
        args.clusters, created
    );
    println!(
        "  all {} Deployments applied       {:>10.2?}",
        args.clusters, converged
    );
    println!(
        "  change -> Deployment applied     p50 {:>8.2?}  p99 {:>8.2?}  max {:>8.2?}  (goal p99 <= 50 ms)",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or_default()
    );
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!(
        "  direct Deployment patch (floor)  p50 {:>8.2?}  p99 {:>8.2?}   operator/floor p50 x{:.2}  p99 x{:.2}",
        percentile(&baseline, 50.0),
        percentile(&baseline, 99.0),
        ratio(percentile(&latencies, 50.0), percentile(&baseline, 50.0)),
        ratio(percentile(&latencies, 99.0), percentile(&baseline, 99.0)),
    );
    println!(
        "  reconcile duration (operator)    p50 <= {:?} s  p99 <= {:?} s  (histogram bucket bounds)",
        histogram_quantile(&after, name, 0.5),
        histogram_quantile(&after, name, 0.99)
    );
    println!(
        "  operator RSS                     before {:.1} MiB  with {} ActorClusters {:.1} MiB  (goal <= 30 MiB)",
        rss_before / 1_048_576.0,
        args.clusters,
        rss_after / 1_048_576.0
    );

    if !args.no_restart {
        // Restart: delete the operator pods; the new leader resyncs N converged clusters.
        let pods: Api<Pod> = Api::namespaced(client.clone(), &args.operator_namespace);
        pods.delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("app.kubernetes.io/name=troupe-operator"),
        )
        .await?;
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let m = until_idle(
            &client,
            &args.operator_namespace,
            &series,
            args.clusters as f64,
            Duration::from_secs(5),
            Duration::from_secs(600),
        )
        .await?;
        let writes = m.get(&series).copied().unwrap_or_default();
        println!(
            "  after an operator restart        resynced {} converged ActorClusters in {:.2?} with {} write calls; RSS {:.1} MiB",
            args.clusters,
            t0.elapsed().saturating_sub(Duration::from_secs(5)),
            writes,
            m.get("troupe_operator_resident_memory_bytes")
                .copied()
                .unwrap_or_default()
                / 1_048_576.0
        );
    }

    watch.abort();
    if !args.keep {
        namespaces
            .delete(&args.namespace, &DeleteParams::background())
            .await?;
        println!("  namespace {} deleted", args.namespace);
    }
    Ok(())
}
