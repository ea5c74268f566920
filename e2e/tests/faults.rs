//! Fault tests on the real local cluster: counter load through the client Service (and to
//! the pods directly) while the cluster suffers one fault at a time, then the reckoning of
//! acknowledged against counted increments (`troupe_e2e::load`).
//!
//! | test | fault | asserts |
//! |---|---|---|
//! | `api_server_outage…` | kube-apiserver stopped (60 s) | nodes stay Ready and answer; nothing acknowledged lost; no restarts; operator `/readyz` 503 after its watches are dead for 30 s and 200 again; a `kubectl scale ac` applied ≤ 30 s after the API returns (that bound only in the open, ignored variant) |
//! | `sigkill_chaos…` | a node process `kill -9`ed every ~20 s | no counter above acknowledged + maybe-applied; the rise of `troupe_actor_states_lost_total` equals the losses (resets) the clients saw |
//! | `graceful_chaos…` | a pod deleted every ~15 s | acknowledged == counted; `troupe_actor_states_lost_total` does not rise |
//! | `partitioned_pod…` | one pod's transport and probe ports cut from its peers | one cluster id and epoch throughout; no counter above acknowledged + maybe-applied; losses (the cut-off member is downed, as if dead) equal the rise of `troupe_actor_states_lost_total` |
//! | `member_lease_deleted…` | `kubectl delete lease <cluster>-members` | the same cluster id at epoch + 1; acknowledged == counted |
//! | `rolling_image_update…` | `spec.image` changed | every pod replaced; acknowledged == counted |
//!
//! Every test prints its figures as `[faults] <test>: …` lines (hack/e2e.sh repeats them
//! after the run). The short variants run in `make test`; `make soak-faults` runs the long
//! ones through the `TROUPE_E2E_FAULTS_*` variables below. The tests never overlap
//! (`faults::exclusive`): each fault is cluster-wide.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use troupe_contract::{MemberTable, coordination, labels, ports};
use troupe_e2e::faults::{self, ApiServerOutage, MetricLedger, Partition, env_u64, figure};
use troupe_e2e::load::{self, CounterLoad, LoadSpec, Target};
use troupe_e2e::{TestContext, actor_cluster, diagnostics, http, members, wait, with_namespace};

const NAME: &str = "faulty";
const IMAGE: &str = "troupe-node:0.1.0";
/// The same image under its second name (hack/images.sh).
const ROLLOUT_IMAGE: &str = "troupe-node:0.1.0-rollout";
const STATES_LOST: &str = "troupe_actor_states_lost_total";
const HANDOVERS_MISSED: &str = "troupe_handovers_missed_total";
const OPERATOR_NAMESPACE: &str = "troupe-system";
const OPERATOR_SELECTOR: &str = "app.kubernetes.io/name=troupe-operator";
const SETTLE: Duration = Duration::from_secs(180);

// --- shared steps ----------------------------------------------------------------------

/// Creates the ActorCluster with `replicas` pods and returns its client address once it
/// serves.
async fn start_cluster(ctx: &TestContext, replicas: i64) -> anyhow::Result<String> {
    actor_cluster::create(ctx, NAME, json!({ "replicas": replicas, "image": IMAGE })).await?;
    actor_cluster::until_settled(ctx, NAME, replicas, SETTLE).await?;
    actor_cluster::client_address(ctx, NAME).await
}

async fn node_pods(ctx: &TestContext) -> anyhow::Result<Vec<Pod>> {
    let mut pods = diagnostics::live_pods(&ctx.api::<Pod>(), &labels::node_selector(NAME)).await?;
    pods.sort_by_key(name);
    Ok(pods)
}

/// Every node pod, terminating ones included.
async fn all_node_pods(ctx: &TestContext) -> anyhow::Result<Vec<Pod>> {
    Ok(ctx
        .api::<Pod>()
        .list(&kube::api::ListParams::default().labels(&labels::node_selector(NAME)))
        .await?
        .items)
}

fn name(p: &Pod) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

fn ip(p: &Pod) -> anyhow::Result<String> {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .with_context(|| format!("pod {} has no IP", name(p)))
}

/// Waits until `n` pods are Ready and the Lease's table has exactly them, all Up, and
/// every pod serves a table of the same cluster id and epoch with the same Up members.
/// Returns the Lease's table.
async fn one_cluster(
    ctx: &TestContext,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<MemberTable> {
    wait::until(
        &format!("{n} Ready pods, all Up in the Lease's table and every pod serving that cluster and epoch"),
        timeout,
        Duration::from_millis(250),
        || async {
            let pods = node_pods(ctx).await?;
            if pods.len() != n || !pods.iter().all(diagnostics::is_ready) {
                return Ok(None);
            }
            let Some(t) = members::lease_table(ctx, NAME).await? else {
                return Ok(None);
            };
            let names: BTreeSet<String> = pods.iter().map(name).collect();
            let up: BTreeSet<String> = t.up_members().map(|m| m.pod.clone()).collect();
            if t.members.len() != n || up != names {
                return Ok(None);
            }
            for p in &pods {
                let pt = members::pod_table(p).await?;
                let pup: BTreeSet<String> = pt.up_members().map(|m| m.pod.clone()).collect();
                if pt.cluster != t.cluster || pt.epoch != t.epoch || pup != up {
                    return Ok(None);
                }
            }
            Ok(Some(t))
        },
    )
    .await
}

/// Every loss the clients saw is counted once by the loss metric, and nothing is counted
/// twice or applied beyond what was sent: no counter above acknowledged + maybe-applied,
/// and the rise of `troupe_actor_states_lost_total` (over every node process) equals the
/// resets the clients saw.
fn assert_losses_counted(r: &load::Reckoning, rise: f64) -> anyhow::Result<()> {
    ensure!(
        r.over().is_empty(),
        "counters above acknowledged + maybe-applied on {}: {}",
        r.over().len(),
        r.describe(load::Reckoned::over)
    );
    ensure!(r.acked() > 0, "no increment was acknowledged at all");
    ensure!(
        rise == r.resets() as f64,
        "the clients saw {} losses (resets; {} counters short) but {STATES_LOST} rose by {rise}",
        r.resets(),
        r.lost().len()
    );
    Ok(())
}

fn service_load(vip: &str, workers: usize) -> (Vec<Target>, LoadSpec) {
    (
        vec![Target::new("service", vip)],
        LoadSpec {
            workers_per_target: workers,
            ..LoadSpec::default()
        },
    )
}

/// Samples the cluster id and epoch in the Lease and on every pod every 500 ms while the
/// returned task runs; the set of `cluster@epoch` seen, and the Lease's status of `watch`
/// over time (`(seconds, status)` at each change).
#[derive(Debug, Default)]
struct Histories {
    seen: BTreeMap<String, BTreeSet<String>>,
    lease_ids: BTreeSet<String>,
    watched: Vec<(f64, String)>,
    samples: usize,
}

fn sample_histories(
    ctx: &TestContext,
    watch: Option<String>,
    started: Instant,
) -> (Arc<Mutex<Histories>>, tokio::task::JoinHandle<()>) {
    let out = Arc::new(Mutex::new(Histories::default()));
    let (ctx, inner) = (ctx.clone(), out.clone());
    let task = tokio::spawn(async move {
        // Bounded: at most an hour of samples; aborted by the test.
        for _ in 0..7200 {
            let lease = members::lease_table(&ctx, NAME).await.ok().flatten();
            let mut pods_seen = Vec::new();
            if let Ok(pods) = node_pods(&ctx).await {
                for p in &pods {
                    if let Ok(t) = members::pod_table(p).await
                        && !t.cluster.is_empty()
                    {
                        pods_seen.push((name(p), members::history(&t)));
                    }
                }
            }
            if let Ok(mut h) = inner.lock() {
                h.samples += 1;
                if let Some(t) = &lease {
                    h.lease_ids.insert(t.cluster.clone());
                    h.seen
                        .entry(members::history(t))
                        .or_default()
                        .insert("lease".into());
                    if let Some(w) = &watch {
                        let status = t.get(w).map_or_else(
                            || "absent".to_owned(),
                            |m| {
                                format!(
                                    "{} ({})",
                                    m.status,
                                    &m.incarnation[..m.incarnation.len().min(8)]
                                )
                            },
                        );
                        if h.watched.last().is_none_or(|(_, s)| *s != status) {
                            h.watched.push((started.elapsed().as_secs_f64(), status));
                        }
                    }
                }
                for (pod, hist) in pods_seen {
                    h.seen.entry(hist).or_default().insert(pod);
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    (out, task)
}

fn cluster_ids(seen: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    seen.keys()
        .filter_map(|h| h.split_once('@').map(|(c, _)| c.to_owned()))
        .collect()
}

/// Waits until the pods are `n`, Ready, and the ActorCluster's status says so.
async fn settled(ctx: &TestContext, n: i64) -> anyhow::Result<Duration> {
    let t = Instant::now();
    actor_cluster::until_settled(ctx, NAME, n, SETTLE).await?;
    Ok(t.elapsed())
}

// --- 1. the API server stopped -----------------------------------------------------------

/// One `/ready` (or `/readyz`) sample: seconds since the load started, who, status (0: no
/// answer), body, and how long the answer took (ms).
type Sample = (f64, String, u16, String, f64);

fn sample_http(
    targets: Vec<(String, String)>,
    path: &'static str,
    every: Duration,
    started: Instant,
) -> (Arc<Mutex<Vec<Sample>>>, tokio::task::JoinHandle<()>) {
    let out = Arc::new(Mutex::new(Vec::new()));
    let inner = out.clone();
    let task = tokio::spawn(async move {
        // Bounded: at most an hour at 4 samples a second; aborted by the test.
        for _ in 0..14_400 {
            for (who, addr) in &targets {
                let asked = Instant::now();
                let (status, body) =
                    match tokio::time::timeout(Duration::from_secs(2), http::get(addr, path)).await
                    {
                        Ok(Ok(r)) => (r.status, r.body.trim().to_owned()),
                        Ok(Err(e)) => (0, format!("{e:#}")),
                        Err(_) => (0, "timed out".to_owned()),
                    };
                if let Ok(mut s) = inner.lock() {
                    let took = asked.elapsed().as_secs_f64() * 1000.0;
                    s.push((
                        started.elapsed().as_secs_f64(),
                        who.clone(),
                        status,
                        body,
                        took,
                    ));
                }
            }
            tokio::time::sleep(every).await;
        }
    });
    (out, task)
}

/// Prints the warnings and serving changes in the node logs of `pods` (last `since` s).
async fn node_logs(ctx: &TestContext, pods: &[Pod], since: i64) {
    for p in pods {
        let lp = kube::api::LogParams {
            container: Some("node".into()),
            since_seconds: Some(since),
            ..kube::api::LogParams::default()
        };
        match ctx.api::<Pod>().logs(&name(p), &lp).await {
            Ok(text) => {
                let lines: Vec<&str> = text
                    .lines()
                    .filter(|l| {
                        l.contains("WARN")
                            || l.contains("ERROR")
                            || l.contains("serv")
                            || l.contains("Serv")
                    })
                    .collect();
                eprintln!(
                    "--- node log of {} ({} matching lines, last 80):",
                    name(p),
                    lines.len()
                );
                for l in lines.iter().skip(lines.len().saturating_sub(80)) {
                    eprintln!("    | {l}");
                }
            }
            Err(e) => eprintln!("--- no node log of {}: {e}", name(p)),
        }
    }
}

async fn operator_pods(ctx: &TestContext) -> anyhow::Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), OPERATOR_NAMESPACE);
    let pods = diagnostics::live_pods(&api, OPERATOR_SELECTOR).await?;
    ensure!(
        !pods.is_empty(),
        "no operator pod in {OPERATOR_NAMESPACE}: install the chart first (hack/e2e.sh does)"
    );
    Ok(pods)
}

fn restart_counts(pods: &[Pod]) -> BTreeMap<String, i32> {
    pods.iter()
        .map(|p| {
            let n = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum());
            (name(p), n)
        })
        .collect()
}

/// The kube-apiserver stopped for `TROUPE_E2E_FAULTS_OUTAGE_SECS` (60) under counter load,
/// to every pod directly and through the client Service.
//
// Fixed by the membership loop taking in probe replies while a store call waits
// (node/src/membership/driver.rs `Driver::call`); before, every node lapsed out of serving
// every 2-2.5 s of the outage and 18-26 % of the increments answered 503.
#[tokio::test]
async fn api_server_outage_nodes_keep_serving_and_nothing_is_lost() -> anyhow::Result<()> {
    api_server_outage(false).await
}

/// The same outage, holding the operator to applying a scale within 10 s of the moment it
/// can reach the API server again. The API server's own return is not that moment: a
/// single API server's lease reconciler removes its endpoint from the `kubernetes` Service
/// when it shuts down and re-adds it after it starts, and the cluster IP answers only once
/// kube-proxy (whose watch backed off through the outage) resyncs — 20 s after the return
/// in one run, during which every in-cluster client fails with `Connect`. The test prints
/// both figures. `make soak-faults` runs it.
#[tokio::test]
#[ignore = "soak: part of make soak-faults"]
async fn api_server_outage_the_operator_resumes_within_10_s_of_reaching_the_api()
-> anyhow::Result<()> {
    api_server_outage(true).await
}

/// One outage: nodes stay Ready and answer, nothing acknowledged lost, no restarts, the
/// operator's `/readyz` says when its watches are dead; with `operator_bound`, the scale
/// applied within 30 s of the return too (the figure is printed either way).
async fn api_server_outage(operator_bound: bool) -> anyhow::Result<()> {
    let _only = faults::exclusive().await;
    with_namespace("faults-api", |ctx| async move {
        let test = "api-outage";
        let outage = Duration::from_secs(env_u64("TROUPE_E2E_FAULTS_OUTAGE_SECS", 60));
        let vip = start_cluster(&ctx, 3).await?;
        let pods = node_pods(&ctx).await?;
        let op_pods = operator_pods(&ctx).await?;
        let node_restarts = restart_counts(&pods);
        let op_restarts = restart_counts(&op_pods);

        let mut targets: Vec<Target> = Vec::new();
        for p in &pods {
            targets.push(Target::new(name(p), format!("{}:{}", ip(p)?, ports::CLIENT)));
        }
        targets.push(Target::new("service", vip.clone()));
        targets.push(Target::new("service", vip.clone()));
        let spec = LoadSpec {
            workers_per_target: 1,
            ..LoadSpec::default()
        };
        let load = CounterLoad::start("api", targets, &spec);
        let ready_targets = pods
            .iter()
            .map(|p| Ok((name(p), format!("{}:{}", ip(p)?, ports::MANAGEMENT))))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (ready, ready_task) =
            sample_http(ready_targets, "/ready", Duration::from_millis(250), load.started());
        let op_targets = op_pods
            .iter()
            .map(|p| Ok((name(p), format!("{}:8080", ip(p)?))))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (readyz, readyz_task) =
            sample_http(op_targets, "/readyz", Duration::from_millis(500), load.started());

        tokio::time::sleep(Duration::from_secs(5)).await;
        let stop_at = load.now();
        let api = ApiServerOutage::begin(outage + Duration::from_secs(120)).await?;
        let stopped_at = load.now();
        figure(test, &format!("kube-apiserver sent SIGTERM at +{stop_at:.1} s (process gone {:.1} s later); outage of {} s from the SIGTERM", stopped_at - stop_at, outage.as_secs()));
        tokio::time::sleep_until((load.started() + Duration::from_secs_f64(stop_at) + outage).into()).await;
        let start_at = load.now();
        api.end().await?;
        let api_ready_at = load.now();
        figure(test, &format!("kube-apiserver started again at +{start_at:.1} s with its original arguments, /readyz after {:.1} s", api_ready_at - start_at));

        // The cluster IP in-cluster clients use (the operator, the nodes) answers again
        // only once kube-proxy has the endpoint the API server re-adds after its start.
        let vip_client = ctx.client.clone();
        let vip_task = tokio::spawn(async move {
            faults::service_ip_answers_within(&vip_client, Duration::from_secs(120)).await
        });
        // `kubectl scale ac/faulty --replicas=4`, and the operator writing it to the
        // Deployment.
        let scaled = Instant::now();
        wait::until("the API server to take the scale", Duration::from_secs(30), Duration::from_millis(200), || async {
            Ok(actor_cluster::scale(&ctx, NAME, 4).await.ok())
        })
        .await?;
        let deployments = ctx.api::<Deployment>();
        let applied = wait::until("the operator to apply replicas 4 to the Deployment", Duration::from_secs(120), Duration::from_millis(100), || async {
            let d = deployments.get(NAME).await?;
            Ok((d.spec.and_then(|s| s.replicas) == Some(4)).then(|| scaled.elapsed()))
        })
        .await?;
        let vip_back = vip_task.await.context("the cluster IP probe panicked")??;
        let vip_back = vip_back.context("the kubernetes Service's cluster IP did not answer within 120 s of the API server's return")?;
        // From the later of the scale and the cluster IP answering: the operator's own part.
        let applied_after_vip = applied.saturating_sub(vip_back);
        figure(test, &format!("kubectl scale ac --replicas=4 after the API server's return: Deployment at 4 after {:.2} s; the kubernetes Service's cluster IP answered again after {:.2} s (kube-proxy resyncing the endpoint the API server re-added), so the operator applied it {:.2} s after it could reach the API server", applied.as_secs_f64(), vip_back.as_secs_f64(), applied_after_vip.as_secs_f64()));
        tokio::time::sleep(Duration::from_secs(3)).await;
        let readyz_back = wait::until("every operator pod's /readyz 200 again", Duration::from_secs(60), Duration::from_millis(250), || {
            let readyz = readyz.clone();
            async move {
                let s = readyz.lock().map(|s| s.clone()).unwrap_or_default();
                let mut back = BTreeMap::new();
                for (at, who, status, _, _) in s.iter().filter(|x| x.0 >= api_ready_at) {
                    if *status == 200 {
                        back.entry(who.clone()).or_insert(*at - api_ready_at);
                    }
                }
                let all = s.iter().map(|x| x.1.clone()).collect::<BTreeSet<_>>();
                Ok((back.len() == all.len()).then_some(back))
            }
        })
        .await?;
        ready_task.abort();
        readyz_task.abort();
        let record = load.stop().await?;

        // Figures.
        for label in record.targets.iter().map(|t| t.label.clone()).collect::<BTreeSet<_>>() {
            let w = record.window(|t| t.label == label, stop_at, api_ready_at);
            figure(test, &format!("during the outage, to {label}: {w}; 503 {:.2} %", w.percent("503") + w.percent("503?")));
        }
        let all = record.window(|_| true, stop_at, api_ready_at);
        figure(test, &format!("during the outage, all targets: {all}"));
        figure(test, &format!("whole run, all targets: {}", record.all()));
        let ready = ready.lock().map(|s| s.clone()).unwrap_or_default();
        let in_outage: Vec<&Sample> = ready.iter().filter(|s| s.0 >= stop_at && s.0 <= api_ready_at).collect();
        let mut per_pod: BTreeMap<String, BTreeMap<u16, u64>> = BTreeMap::new();
        for s in &in_outage {
            *per_pod.entry(s.1.clone()).or_default().entry(s.2).or_default() += 1;
        }
        figure(test, &format!("/ready of every pod during the outage, by status (0: no answer): {per_pod:?}"));
        for (what, from, to) in [("before", 0.0, stop_at), ("during", stop_at, api_ready_at)] {
            let mut ms: Vec<f64> = ready.iter().filter(|s| s.0 >= from && s.0 <= to).map(|s| s.4).collect();
            ms.sort_by(f64::total_cmp);
            let q = |f: f64| ms.get(((ms.len() as f64 - 1.0) * f) as usize).copied().unwrap_or(f64::NAN);
            figure(test, &format!("/ready answer time {what} the outage (management port, like the peers' probes): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} samples", q(0.5), q(0.99), q(1.0), ms.len()));
        }
        let readyz = readyz.lock().map(|s| s.clone()).unwrap_or_default();
        let first_503 = readyz.iter().find(|s| s.0 >= stop_at && s.2 != 200).cloned();
        figure(test, &format!(
            "operator /readyz: first not-200 {} after the stop ({}); 200 again on every operator pod {:?} s after the API server's /readyz",
            first_503.as_ref().map_or("never".to_owned(), |s| format!("{:.1} s", s.0 - stop_at)),
            first_503.as_ref().map_or(String::new(), |s| format!("{} {}", s.2, s.3)),
            readyz_back
        ));
        let node_after = restart_counts(&node_pods(&ctx).await?.into_iter().filter(|p| node_restarts.contains_key(&name(p))).collect::<Vec<_>>());
        let op_after = restart_counts(&operator_pods(&ctx).await?);
        figure(test, &format!("container restarts: nodes {node_restarts:?} -> {node_after:?}; operator {op_restarts:?} -> {op_after:?}"));
        let reckoning = faults::reckon(&ctx, NAME, test, &record).await?;
        settled(&ctx, 4).await?;
        figure(test, &format!("4 pods Ready and Up {:.1} s after the scale", scaled.elapsed().as_secs_f64()));

        // Assertions.
        ensure!(!in_outage.is_empty(), "no /ready sample during the outage");
        let not_ready: Vec<&&Sample> = in_outage.iter().filter(|s| s.2 != 200).collect();
        if !not_ready.is_empty() {
            let times: Vec<String> = not_ready
                .iter()
                .take(40)
                .map(|s| format!("{} +{:.1}s", s.1, s.0 - stop_at))
                .collect();
            eprintln!("[faults] /ready not 200 during the outage (pod, seconds after the stop): {times:?}");
            node_logs(&ctx, &pods, 240).await;
        }
        ensure!(
            not_ready.is_empty(),
            "nodes did not stay Ready during the API server outage: {} of {} /ready samples not 200, first {:?}",
            not_ready.len(),
            in_outage.len(),
            not_ready.first()
        );
        for t in record.targets.iter().map(|t| t.label.clone()).collect::<BTreeSet<_>>() {
            let late = record.window(|x| x.label == t, start_at - 10.0, start_at);
            ensure!(late.acked > 0, "{t} answered no increment with 200 in the last 10 s of the outage: {late}");
        }
        reckoning.ensure_exact()?;
        ensure!(node_after == node_restarts, "node containers restarted: {node_restarts:?} -> {node_after:?}");
        ensure!(op_after == op_restarts, "operator containers restarted: {op_restarts:?} -> {op_after:?}");
        ensure!(
            !operator_bound || applied_after_vip <= Duration::from_secs(10),
            "the operator took {:.1} s after the API server's cluster IP answered again to apply a scale (promise: within seconds; bound 10 s)",
            applied_after_vip.as_secs_f64()
        );
        if outage >= Duration::from_secs(40) {
            let first = first_503.context("operator /readyz answered 200 throughout an outage longer than its 30 s dead-watch limit")?;
            ensure!(first.2 == 503 && first.3.contains("watches failing"), "operator /readyz during the outage: {first:?}");
            ensure!(first.0 - stop_at >= 25.0, "operator /readyz went not-ready {:.1} s into the outage, before its 30 s dead-watch limit", first.0 - stop_at);
        }
        Ok(())
    })
    .await
}

// --- 2. SIGKILL chaos ------------------------------------------------------------------

/// A node process SIGKILLed every `TROUPE_E2E_FAULTS_KILL_INTERVAL_SECS` (20) under load
/// through the client Service: `TROUPE_E2E_FAULTS_KILLS` (3) kills, or as many as fill
/// `TROUPE_E2E_FAULTS_SIGKILL_SECS`.
#[tokio::test]
async fn sigkill_chaos_loses_only_what_the_loss_metric_counts() -> anyhow::Result<()> {
    let _only = faults::exclusive().await;
    with_namespace("faults-kill", |ctx| async move {
        let test = "sigkill-chaos";
        let interval = Duration::from_secs(env_u64("TROUPE_E2E_FAULTS_KILL_INTERVAL_SECS", 20));
        let kills = env_u64("TROUPE_E2E_FAULTS_KILLS", 3)
            .max(env_u64("TROUPE_E2E_FAULTS_SIGKILL_SECS", 0) / interval.as_secs().max(1));
        let vip = start_cluster(&ctx, 3).await?;
        let (targets, spec) = service_load(&vip, 4);
        let load = CounterLoad::start("kill", targets, &spec);
        let mut lost_ledger = MetricLedger::new(STATES_LOST);
        let mut missed_ledger = MetricLedger::new(HANDOVERS_MISSED);
        let pods = node_pods(&ctx).await?;
        lost_ledger.read(&pods).await;
        missed_ledger.read(&pods).await;
        let restarts_before = restart_counts(&pods);
        tokio::time::sleep(Duration::from_secs(5)).await;

        let mut kill_times = Vec::new();
        for i in 0..kills {
            let waited = settled(&ctx, 3).await?;
            let pods = node_pods(&ctx).await?;
            lost_ledger.read(&pods).await;
            missed_ledger.read(&pods).await;
            let victim = pods[usize::try_from(i)? % pods.len()].clone();
            let restarts = faults::restarts(&victim, "node");
            let at = load.now();
            let pid = faults::sigkill_node(&victim).await?;
            kill_times.push(at);
            let killed = Instant::now();
            let back = wait::until(
                &format!("{} restarted and Ready", name(&victim)),
                SETTLE,
                Duration::from_millis(100),
                || async {
                    let p = ctx.api::<Pod>().get(&name(&victim)).await?;
                    Ok((faults::restarts(&p, "node") > restarts && diagnostics::is_ready(&p))
                        .then(|| killed.elapsed()))
                },
            )
            .await?;
            figure(test, &format!(
                "kill {}: {} (host PID {pid}) SIGKILLed at +{at:.1} s (after {:.1} s waiting for 3 settled); restarted and Ready after {:.1} s",
                i + 1,
                name(&victim),
                waited.as_secs_f64(),
                back.as_secs_f64()
            ));
            let next = killed + interval;
            tokio::time::sleep_until(next.into()).await;
        }
        let t = one_cluster(&ctx, 3, SETTLE).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let pods = node_pods(&ctx).await?;
        lost_ledger.read(&pods).await;
        missed_ledger.read(&pods).await;
        let record = load.stop().await?;
        let restarts_after = restart_counts(&pods);

        for (i, at) in kill_times.iter().enumerate() {
            let w = record.window(|_| true, *at, at + interval.as_secs_f64());
            figure(test, &format!("after kill {}: {w}", i + 1));
        }
        figure(test, &format!("whole run ({kills} kills): {}", record.all()));
        figure(test, &format!("container restarts {restarts_before:?} -> {restarts_after:?}; one cluster {} v{} at the end", members::history(&t), t.version));
        let reckoning = faults::reckon(&ctx, NAME, test, &record).await?;
        let lost = reckoning.lost().len();
        let rise = lost_ledger.rise();
        figure(test, &format!(
            "counters that lost state: {lost}; resets seen by the client: {}; rise of {STATES_LOST} over {} node processes: {rise}; rise of {HANDOVERS_MISSED}: {}",
            reckoning.resets(),
            lost_ledger.processes(),
            missed_ledger.rise()
        ));

        let restarted: i32 = restarts_after.values().sum::<i32>() - restarts_before.values().sum::<i32>();
        ensure!(
            i64::from(restarted) >= i64::try_from(kills)?,
            "{kills} SIGKILLs but only {restarted} container restarts: the kills did not land"
        );
        ensure!(
            reckoning.over().is_empty(),
            "counters above acknowledged + maybe-applied on {}: {}",
            reckoning.over().len(),
            reckoning.describe(load::Reckoned::over)
        );
        ensure!(reckoning.acked() > 0, "no increment was acknowledged at all");
        ensure!(lost > 0, "{kills} SIGKILLs under load and no counter lost state: the kills missed the actors");
        assert_losses_counted(&reckoning, rise)?;
        Ok(())
    })
    .await
}

// --- 3. graceful chaos -----------------------------------------------------------------

/// A pod deleted (gracefully) every `TROUPE_E2E_FAULTS_DELETE_INTERVAL_SECS` (15), for
/// `TROUPE_E2E_FAULTS_DELETES` (3) deletions, under load through the client Service.
#[tokio::test]
async fn graceful_chaos_keeps_counters_exact() -> anyhow::Result<()> {
    let _only = faults::exclusive().await;
    with_namespace("faults-delete", |ctx| async move {
        let test = "graceful-chaos";
        let interval = Duration::from_secs(env_u64("TROUPE_E2E_FAULTS_DELETE_INTERVAL_SECS", 15));
        let deletes = env_u64("TROUPE_E2E_FAULTS_DELETES", 3);
        let vip = start_cluster(&ctx, 3).await?;
        let (targets, spec) = service_load(&vip, 4);
        let load = CounterLoad::start("del", targets, &spec);
        let mut lost_ledger = MetricLedger::new(STATES_LOST);
        let mut missed_ledger = MetricLedger::new(HANDOVERS_MISSED);
        let pods = node_pods(&ctx).await?;
        lost_ledger.read(&pods).await;
        missed_ledger.read(&pods).await;
        tokio::time::sleep(Duration::from_secs(5)).await;

        let mut recoveries = Vec::new();
        for i in 0..deletes {
            let waited = settled(&ctx, 3).await?;
            let pods = node_pods(&ctx).await?;
            lost_ledger.read(&pods).await;
            missed_ledger.read(&pods).await;
            let victim = name(&pods[usize::try_from(i)? % pods.len()]);
            let at = load.now();
            let deleted = Instant::now();
            ctx.api::<Pod>().delete(&victim, &DeleteParams::default()).await?;
            // Read the leaving node's counters while it drains (it answers until it exits).
            let gone = loop {
                let pods = node_pods(&ctx).await?;
                let all = all_node_pods(&ctx).await?;
                lost_ledger.read(&all).await;
                missed_ledger.read(&all).await;
                if pods.len() == 3
                    && pods.iter().all(diagnostics::is_ready)
                    && all.iter().all(|p| name(p) != victim)
                {
                    break deleted.elapsed();
                }
                ensure!(deleted.elapsed() < SETTLE, "timed out after {SETTLE:?} waiting for {victim} gone and 3 pods Ready");
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            recoveries.push(gone.as_secs_f64());
            figure(test, &format!(
                "delete {}: {victim} at +{at:.1} s (after {:.1} s waiting for 3 settled); gone and replaced, 3 Ready after {:.1} s",
                i + 1,
                waited.as_secs_f64(),
                gone.as_secs_f64()
            ));
            tokio::time::sleep_until((deleted + interval).into()).await;
        }
        let t = one_cluster(&ctx, 3, SETTLE).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let pods = node_pods(&ctx).await?;
        lost_ledger.read(&pods).await;
        missed_ledger.read(&pods).await;
        let record = load.stop().await?;
        figure(test, &format!("whole run ({deletes} graceful deletions): {}", record.all()));
        figure(test, &format!(
            "rise of {STATES_LOST}: {} and of {HANDOVERS_MISSED}: {} over {} node processes; one cluster {} v{} at the end",
            lost_ledger.rise(),
            missed_ledger.rise(),
            lost_ledger.processes(),
            members::history(&t),
            t.version
        ));
        let reckoning = faults::reckon(&ctx, NAME, test, &record).await?;
        reckoning.ensure_exact()?;
        ensure!(
            lost_ledger.rise() == 0.0,
            "{STATES_LOST} rose by {} under graceful deletions only",
            lost_ledger.rise()
        );
        Ok(())
    })
    .await
}

// --- 4. a partitioned pod --------------------------------------------------------------

/// One pod cut off from its peers on the transport and probe ports (iptables in its own
/// network namespace) for `TROUPE_E2E_FAULTS_PARTITION_SECS` (20), then healed,
/// `TROUPE_E2E_FAULTS_PARTITIONS` (1) times, under load through the client Service.
///
/// The partitioned member still reaches the API server; the coordinator downs it about 3 s
/// into the cut (it then rejoins as a new incarnation and stays Joining until the heal).
/// To the others a member cut off past `detect_timeout` is dead: after the down grace they
/// activate its actors without their states, as after a crash, and the states it held are
/// lost (without a durable store). What the test holds to: one cluster id and epoch
/// throughout; no counter above acknowledged + maybe-applied; and every loss the clients
/// saw (a counter reset) counted once by `troupe_actor_states_lost_total`.
#[tokio::test]
async fn partitioned_pod_heals_into_one_cluster_and_its_losses_are_counted() -> anyhow::Result<()> {
    let _only = faults::exclusive().await;
    with_namespace("faults-partition", |ctx| async move {
        let test = "partition";
        let cut = Duration::from_secs(env_u64("TROUPE_E2E_FAULTS_PARTITION_SECS", 20));
        let rounds = env_u64("TROUPE_E2E_FAULTS_PARTITIONS", 1);
        let vip = start_cluster(&ctx, 3).await?;
        let before = one_cluster(&ctx, 3, SETTLE).await?;
        let (targets, spec) = service_load(&vip, 4);
        let load = CounterLoad::start("part", targets, &spec);
        let mut lost_ledger = MetricLedger::new(STATES_LOST);
        lost_ledger.read(&node_pods(&ctx).await?).await;
        tokio::time::sleep(Duration::from_secs(5)).await;

        let mut windows = Vec::new();
        let mut samplers = Vec::new();
        for round in 0..rounds {
            let pods = node_pods(&ctx).await?;
            // A member that is not the coordinator (the usual case: one of many).
            let mut victim = None;
            for p in &pods {
                if members::self_view(p).await?.get("coordinator") == Some(&json!(false)) {
                    victim = Some(p.clone());
                    break;
                }
            }
            let victim = victim.context("no member that is not the coordinator")?;
            let peers: Vec<String> = pods
                .iter()
                .filter(|p| name(p) != name(&victim))
                .map(ip)
                .collect::<anyhow::Result<_>>()?;
            let (hist, sampler) = sample_histories(&ctx, Some(name(&victim)), load.started());
            samplers.push(sampler);
            let from = load.now();
            let partition = Partition::isolate(
                &ip(&victim)?,
                &peers,
                &[ports::TRANSPORT, ports::MANAGEMENT],
                cut + Duration::from_secs(60),
            )
            .await?;
            tokio::time::sleep(cut).await;
            partition.heal().await?;
            let healed_at = load.now();
            let healed = Instant::now();
            let t = one_cluster(&ctx, 3, SETTLE).await?;
            let recovered = healed.elapsed();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let h = {
                let h = hist.lock().map_err(|_| anyhow::anyhow!("sampler poisoned"))?;
                (h.seen.clone(), h.lease_ids.clone(), h.watched.clone(), h.samples)
            };
            figure(test, &format!(
                "round {}: {} cut from {peers:?} on ports {}/{} at +{from:.1} s for {} s; one cluster of 3 Up again {:.1} s after the heal; its status in the Lease (s since load start): {:?}",
                round + 1,
                name(&victim),
                ports::TRANSPORT,
                ports::MANAGEMENT,
                cut.as_secs(),
                recovered.as_secs_f64(),
                h.2
            ));
            figure(test, &format!("round {}: cluster@epoch seen in {} samples (by whom): {:?}", round + 1, h.3, h.0));
            let ids = cluster_ids(&h.0);
            ensure!(
                ids.len() == 1 && h.1.len() == 1 && ids == h.1,
                "more than one cluster id during the partition: {:?} (Lease: {:?})",
                h.0,
                h.1
            );
            ensure!(
                t.cluster == before.cluster && t.epoch == before.epoch,
                "after the partition the cluster is {} (before {})",
                members::history(&t),
                members::history(&before)
            );
            ensure!(
                h.0.len() == 1,
                "more than one epoch during a partition (nothing was deleted): {:?}",
                h.0
            );
            windows.push((from, healed_at));
        }
        for s in samplers {
            s.abort();
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        lost_ledger.read(&node_pods(&ctx).await?).await;
        let record = load.stop().await?;
        for (i, (from, to)) in windows.iter().enumerate() {
            figure(test, &format!("during partition {}: {}", i + 1, record.window(|_| true, *from, *to)));
        }
        figure(test, &format!("whole run: {}; rise of {STATES_LOST}: {}", record.all(), lost_ledger.rise()));
        let reckoning = faults::reckon(&ctx, NAME, test, &record).await?;
        assert_losses_counted(&reckoning, lost_ledger.rise())?;
        Ok(())
    })
    .await
}

// --- 5. the member Lease deleted -------------------------------------------------------

/// `kubectl delete lease faulty-members` under load, `TROUPE_E2E_FAULTS_LEASE_DELETES` (1)
/// times.
#[tokio::test]
async fn member_lease_deleted_restores_one_cluster_one_epoch_later() -> anyhow::Result<()> {
    let _only = faults::exclusive().await;
    with_namespace("faults-lease", |ctx| async move {
        let test = "lease-deleted";
        let rounds = env_u64("TROUPE_E2E_FAULTS_LEASE_DELETES", 1);
        let vip = start_cluster(&ctx, 3).await?;
        let first = one_cluster(&ctx, 3, SETTLE).await?;
        let (targets, spec) = service_load(&vip, 4);
        let load = CounterLoad::start("lease", targets, &spec);
        let (hist, sampler) = sample_histories(&ctx, None, load.started());
        tokio::time::sleep(Duration::from_secs(5)).await;
        let leases = ctx.api::<Lease>();
        let lease = coordination::lease_name(NAME);
        let mut windows = Vec::new();
        for round in 0..rounds {
            let before = one_cluster(&ctx, 3, SETTLE).await?;
            let from = load.now();
            let deleted = Instant::now();
            leases.delete(&lease, &DeleteParams::default()).await?;
            let restored = wait::until(
                "the Lease restored with the same cluster id one epoch later",
                Duration::from_secs(60),
                Duration::from_millis(50),
                || async {
                    // A table of another cluster id, or of the same epoch, ends the wait too.
                    Ok(members::lease_table(&ctx, NAME)
                        .await
                        .ok()
                        .flatten()
                        .filter(|t| t.cluster != before.cluster || t.epoch != before.epoch)
                        .map(|t| (t, deleted.elapsed())))
                },
            )
            .await?;
            ensure!(
                restored.0.cluster == before.cluster,
                "the deleted Lease came back as another cluster: {} v{} (before {} v{})",
                members::history(&restored.0),
                restored.0.version,
                members::history(&before),
                before.version
            );
            let t = one_cluster(&ctx, 3, SETTLE).await?;
            let all_follow = deleted.elapsed();
            let to = load.now();
            figure(test, &format!(
                "round {}: Lease deleted at +{from:.1} s ({} v{}); restored as {} v{} after {:.2} s; all 3 pods Up following it after {:.2} s",
                round + 1,
                members::history(&before),
                before.version,
                members::history(&restored.0),
                restored.0.version,
                restored.1.as_secs_f64(),
                all_follow.as_secs_f64()
            ));
            ensure!(
                restored.0.epoch == before.epoch + 1 && t.epoch == before.epoch + 1,
                "restored at epoch {} (Lease now {}), expected {}",
                restored.0.epoch,
                t.epoch,
                before.epoch + 1
            );
            ensure!(t.cluster == first.cluster, "cluster id changed: {} -> {}", first.cluster, t.cluster);
            windows.push((from, to));
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        sampler.abort();
        let record = load.stop().await?;
        let h = hist.lock().map(|h| (h.seen.clone(), h.lease_ids.clone())).unwrap_or_default();
        figure(test, &format!("cluster@epoch seen (by whom): {:?}", h.0));
        for (i, (from, to)) in windows.iter().enumerate() {
            // Serving resumes isolation_timeout (2 s) after the restore: the 10 s after the
            // deletion show the gap.
            let until = (from + 10.0).max(*to).min(record.ended_at);
            figure(test, &format!("from deletion {} (+{from:.1} s) to +{until:.1} s: {}", i + 1, record.window(|_| true, *from, until)));
        }
        figure(test, &format!("whole run: {}", record.all()));
        let reckoning = faults::reckon(&ctx, NAME, test, &record).await?;
        ensure!(
            cluster_ids(&h.0).len() == 1 && h.1.len() == 1,
            "more than one cluster id: {:?}",
            h.0
        );
        reckoning.ensure_exact()?;
        Ok(())
    })
    .await
}

// --- 6. rolling image update -----------------------------------------------------------

fn node_image(p: &Pod) -> Option<String> {
    p.spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == "node")?
        .image
        .clone()
}

/// `spec.image` changed under load, `TROUPE_E2E_FAULTS_ROLLOUTS` (1) times (back and
/// forth between the node image's two names).
#[tokio::test]
async fn rolling_image_update_replaces_every_pod_and_loses_nothing() -> anyhow::Result<()> {
    let _only = faults::exclusive().await;
    with_namespace("faults-rollout", |ctx| async move {
        let test = "rolling-update";
        let rounds = env_u64("TROUPE_E2E_FAULTS_ROLLOUTS", 1);
        let vip = start_cluster(&ctx, 3).await?;
        let (targets, spec) = service_load(&vip, 4);
        let load = CounterLoad::start("roll", targets, &spec);
        let mut lost_ledger = MetricLedger::new(STATES_LOST);
        lost_ledger.read(&node_pods(&ctx).await?).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut windows = Vec::new();
        for round in 0..rounds {
            let image = if round % 2 == 0 { ROLLOUT_IMAGE } else { IMAGE };
            let old: BTreeSet<String> = node_pods(&ctx).await?.iter().map(name).collect();
            let from = load.now();
            let started = Instant::now();
            actor_cluster::api(&ctx)
                .patch(NAME, &PatchParams::default(), &Patch::Merge(json!({ "spec": { "image": image } })))
                .await
                .context("changing spec.image")?;
            let rolled = loop {
                let all = all_node_pods(&ctx).await?;
                // Read the leaving nodes' counters while they drain.
                lost_ledger.read(&all).await;
                if all.len() == 3
                    && all.iter().all(|p| !old.contains(&name(p)))
                    && all.iter().all(|p| node_image(p).as_deref() == Some(image))
                    && all.iter().all(diagnostics::is_ready)
                {
                    break started.elapsed();
                }
                ensure!(started.elapsed() < Duration::from_secs(300), "timed out after 300 s waiting for every pod replaced by one running {image}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            let t = one_cluster(&ctx, 3, SETTLE).await?;
            let to = load.now();
            figure(test, &format!(
                "round {}: spec.image -> {image} at +{from:.1} s; all 3 pods replaced and Ready after {:.1} s; one cluster {} v{}",
                round + 1,
                rolled.as_secs_f64(),
                members::history(&t),
                t.version
            ));
            windows.push((from, to));
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        lost_ledger.read(&node_pods(&ctx).await?).await;
        let record = load.stop().await?;
        for (i, (from, to)) in windows.iter().enumerate() {
            figure(test, &format!("during rollout {}: {}", i + 1, record.window(|_| true, *from, *to)));
        }
        figure(test, &format!("whole run: {}; rise of {STATES_LOST} over {} node processes: {}", record.all(), lost_ledger.processes(), lost_ledger.rise()));
        let reckoning = faults::reckon(&ctx, NAME, test, &record).await?;
        reckoning.ensure_exact()?;
        Ok(())
    })
    .await
}
