//! Durable actor state on the real local cluster, against a real PostgreSQL (Debian's
//! server started by `hack/postgres.sh`, reached from the pods on the node address like a
//! managed database). Counter load through the client Service, then the reckoning of
//! acknowledged against counted increments (`troupe_e2e::load`).
//!
//! | test | fault | asserts |
//! |---|---|---|
//! | `sigkill_chaos_with_postgres…` | a node process `kill -9`ed every ~20 s | acknowledged == counted: no counter lost an acknowledged increment, none above acknowledged + maybe-applied; no reset seen by a client |
//! | `sigkill_chaos_in_memory…` (ignored: `make soak-durable`) | the same with `store: memory` | figures only, side by side with the one above |
//! | `a_cluster_formed_anew…` | the ActorCluster deleted (its member Lease collected with it, as its owner), the ActorCluster created again: a new life (another cluster id) | the Lease is collected; every counter reads what the earlier life acknowledged, and counts on from there (durable sim seeds 29 and 422: a new life's activations were refused for good) |
//! | `database_stopped…` | PostgreSQL stopped `TROUPE_E2E_DURABLE_DB_DOWN_SECS` (30 s) | nothing acknowledged lost; asks answered 503 meanwhile (what the clients saw is printed); the ActorCluster turned Degraded (StateStoreUnreachable) and the increments succeed again after the database is back, without a pod restart |
//!
//! Figures go to the `TROUPE_E2E_FIGURES` file as `[faults] durable-…` lines.
//! `TROUPE_E2E_DURABLE_KILLS` (3) / `TROUPE_E2E_DURABLE_SIGKILL_SECS` make the chaos longer.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};
use troupe_contract::{coordination, labels};
use troupe_e2e::faults::{self, MetricLedger, env_u64, figure};
use troupe_e2e::load::{self, CounterLoad, LoadSpec, Target};
use troupe_e2e::{TestContext, actor_cluster, diagnostics, members, wait, with_namespace};

const NAME: &str = "durable";
const IMAGE: &str = "troupe-node:0.1.0";
const SECRET: &str = "durable-db";
const SETTLE: Duration = Duration::from_secs(180);
const STATES_LOST: &str = "troupe_actor_states_lost_total";
const STATE_WRITES: &str = "troupe_state_writes_total";

/// The connection URL of the local cluster's PostgreSQL (`hack/postgres.sh url`), after
/// making sure it runs (`up` is idempotent).
async fn postgres_url() -> anyhow::Result<String> {
    let script = faults::hack_dir().join("postgres.sh");
    let up = tokio::process::Command::new(&script)
        .arg("up")
        .output()
        .await?;
    ensure!(
        up.status.success(),
        "hack/postgres.sh up failed: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let out = tokio::process::Command::new(&script)
        .arg("url")
        .output()
        .await?;
    ensure!(out.status.success(), "hack/postgres.sh url failed");
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

async fn postgres(cmd: &str) -> anyhow::Result<()> {
    let out = tokio::process::Command::new(faults::hack_dir().join("postgres.sh"))
        .arg(cmd)
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "hack/postgres.sh {cmd} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Starts the database again when dropped (a failed test never leaves it stopped).
struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new(faults::hack_dir().join("postgres.sh"))
            .arg("start")
            .output();
    }
}

/// The user's Secret with the connection string, then the ActorCluster of 3 nodes with
/// `state`; returns the client address once it serves.
async fn start_cluster(ctx: &TestContext, state: Value) -> anyhow::Result<String> {
    if state["store"] == "postgres" {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": { "name": SECRET },
            "stringData": { "url": postgres_url().await? },
        }))?;
        ctx.api::<Secret>()
            .create(&PostParams::default(), &secret)
            .await
            .context("creating the database Secret")?;
    }
    create_cluster(ctx, state).await
}

/// The ActorCluster of 3 nodes with `state` (its Secret made already); the client address
/// once it serves.
async fn create_cluster(ctx: &TestContext, state: Value) -> anyhow::Result<String> {
    actor_cluster::create(
        ctx,
        NAME,
        json!({ "replicas": 3, "image": IMAGE, "state": state }),
    )
    .await?;
    actor_cluster::until_settled(ctx, NAME, 3, SETTLE).await?;
    actor_cluster::client_address(ctx, NAME).await
}

fn postgres_state() -> Value {
    json!({ "store": "postgres", "postgres": { "secretName": SECRET, "key": "url" } })
}

async fn node_pods(ctx: &TestContext) -> anyhow::Result<Vec<Pod>> {
    let mut pods = diagnostics::live_pods(&ctx.api::<Pod>(), &labels::node_selector(NAME)).await?;
    pods.sort_by_key(name);
    Ok(pods)
}

fn name(p: &Pod) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

fn restart_total(pods: &[Pod]) -> i32 {
    pods.iter()
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
        .flatten()
        .map(|c| c.restart_count)
        .sum()
}

fn service_load(vip: &str) -> (Vec<Target>, LoadSpec) {
    (
        vec![Target::new("service", vip)],
        LoadSpec {
            workers_per_target: 4,
            ..LoadSpec::default()
        },
    )
}

/// Nothing acknowledged lost, nothing counted beyond acknowledged + maybe-applied, no
/// reset seen by a client.
fn assert_nothing_lost(r: &load::Reckoning) -> anyhow::Result<()> {
    r.ensure_exact()?;
    ensure!(
        r.resets() == 0,
        "the clients saw {} resets (an actor started without its state)",
        r.resets()
    );
    Ok(())
}

/// SIGKILL chaos under load: the same run for `state` (postgres or memory). Returns the
/// reckoning and how many kills landed.
async fn sigkill_chaos(
    ctx: &TestContext,
    test: &str,
    state: Value,
) -> anyhow::Result<load::Reckoning> {
    let interval = Duration::from_secs(20);
    let kills = env_u64("TROUPE_E2E_DURABLE_KILLS", 3)
        .max(env_u64("TROUPE_E2E_DURABLE_SIGKILL_SECS", 0) / interval.as_secs());
    let vip = start_cluster(ctx, state).await?;
    let (targets, spec) = service_load(&vip);
    let load = CounterLoad::start("kill", targets, &spec);
    let mut lost_ledger = MetricLedger::new(STATES_LOST);
    let mut writes = MetricLedger::new(STATE_WRITES);
    let pods = node_pods(ctx).await?;
    lost_ledger.read(&pods).await;
    writes.read(&pods).await;
    let restarts_before = restart_total(&pods);
    tokio::time::sleep(Duration::from_secs(5)).await;
    for i in 0..kills {
        actor_cluster::until_settled(ctx, NAME, 3, SETTLE).await?;
        let pods = node_pods(ctx).await?;
        lost_ledger.read(&pods).await;
        writes.read(&pods).await;
        let victim = pods[usize::try_from(i)? % pods.len()].clone();
        let restarts = faults::restarts(&victim, "node");
        let at = load.now();
        faults::sigkill_node(&victim).await?;
        let killed = Instant::now();
        let back = wait::until(
            &format!("{} restarted and Ready", name(&victim)),
            SETTLE,
            Duration::from_millis(100),
            || async {
                let p = ctx.api::<Pod>().get(&name(&victim)).await?;
                Ok(
                    (faults::restarts(&p, "node") > restarts && diagnostics::is_ready(&p))
                        .then(|| killed.elapsed()),
                )
            },
        )
        .await?;
        figure(
            test,
            &format!(
                "kill {}: {} SIGKILLed at +{at:.1} s; restarted and Ready after {:.1} s",
                i + 1,
                name(&victim),
                back.as_secs_f64()
            ),
        );
        tokio::time::sleep_until((killed + interval).into()).await;
    }
    actor_cluster::until_settled(ctx, NAME, 3, SETTLE).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pods = node_pods(ctx).await?;
    lost_ledger.read(&pods).await;
    writes.read(&pods).await;
    let record = load.stop().await?;
    let restarted = restart_total(&pods) - restarts_before;
    figure(
        test,
        &format!(
            "whole run ({kills} kills, {restarted} container restarts): {}",
            record.all()
        ),
    );
    let r = faults::reckon(ctx, NAME, test, &record).await?;
    figure(
        test,
        &format!(
            "sent {} / acknowledged {} / counted {} / lost {} counters ({} resets seen by clients); {STATES_LOST} rose by {}; {STATE_WRITES} rose by {}",
            record.all().sent,
            r.acked(),
            r.counted(),
            r.lost().len(),
            r.resets(),
            lost_ledger.rise(),
            writes.rise()
        ),
    );
    ensure!(
        i64::from(restarted) >= i64::try_from(kills)?,
        "{kills} SIGKILLs but only {restarted} container restarts: the kills did not land"
    );
    Ok(r)
}

#[tokio::test]
async fn sigkill_chaos_with_postgres_loses_nothing_acknowledged() -> anyhow::Result<()> {
    let _only = faults::exclusive().await;
    with_namespace("durable-kill", |ctx| async move {
        let r = sigkill_chaos(&ctx, "durable-sigkill-postgres", postgres_state()).await?;
        assert_nothing_lost(&r)
    })
    .await
}

/// The comparison run for the figures: the same chaos in memory mode (its losses are the
/// fault suite's business, `faults.rs`).
#[tokio::test]
#[ignore = "comparison figures only: make soak-durable"]
async fn sigkill_chaos_in_memory_for_comparison() -> anyhow::Result<()> {
    let _only = faults::exclusive().await;
    with_namespace("durable-kill-mem", |ctx| async move {
        let r = sigkill_chaos(&ctx, "durable-sigkill-memory", json!({ "store": "memory" })).await?;
        ensure!(
            r.over().is_empty(),
            "counters above acknowledged + maybe-applied"
        );
        Ok(())
    })
    .await
}

/// Durable sim seeds 29 and 422 on the real cluster: a cluster that forms anew (no pod
/// of the earlier one left and its Lease gone: a namespace cleanup, GitOps pruning, the
/// ActorCluster deleted and applied again) must activate the actors the earlier life
/// stored. Deleting the ActorCluster collects its member Lease (the node names the
/// ActorCluster as the Lease's owner), which the test waits for. With epochs restarting at 0 its tables were "behind" the owners in the store,
/// and every such activation was refused.
#[tokio::test]
async fn a_cluster_formed_anew_reads_what_an_earlier_life_stored() -> anyhow::Result<()> {
    let _only = faults::exclusive().await;
    with_namespace("durable-lives", |ctx| async move {
        let test = "durable-new-life";
        let vip = start_cluster(&ctx, postgres_state()).await?;
        let (targets, spec) = service_load(&vip);
        let load = CounterLoad::start("life", targets, &spec);
        tokio::time::sleep(Duration::from_secs(8)).await;
        let record = load.stop().await?;
        figure(test, &format!("life 1: {}", record.all()));
        let first = faults::reckon(&ctx, NAME, test, &record).await?;
        assert_nothing_lost(&first)?;
        let before = members::lease_table(&ctx, NAME).await?.context("no member Lease")?;

        actor_cluster::api(&ctx).delete(NAME, &DeleteParams::background()).await?;
        wait::until("the ActorCluster and every node pod gone", SETTLE, Duration::from_millis(500), || async {
            let gone = actor_cluster::api(&ctx).get_opt(NAME).await?.is_none();
            Ok((gone && node_pods(&ctx).await?.is_empty()).then_some(()))
        })
        .await?;
        // The Lease names the ActorCluster as its owner: the garbage collector takes it.
        let lease = coordination::lease_name(NAME);
        wait::until("the member Lease collected with its ActorCluster", SETTLE, Duration::from_millis(500), || async {
            Ok(ctx.api::<Lease>().get_opt(&lease).await?.is_none().then_some(()))
        })
        .await?;
        let formed = Instant::now();
        create_cluster(&ctx, postgres_state()).await?;
        let after = members::lease_table(&ctx, NAME).await?.context("no member Lease")?;
        figure(test, &format!(
            "life 1 ran cluster {} epoch {} (first {}), version {}; life 2 formed as cluster {} epoch {} (first {}), serving {:.1} s after the create",
            before.cluster, before.epoch, before.first_epoch, before.version,
            after.cluster, after.epoch, after.first_epoch, formed.elapsed().as_secs_f64()
        ));
        ensure!(after.cluster != before.cluster, "the cluster did not form anew: {after:?}");

        let again = faults::reckon(&ctx, NAME, test, &record).await?;
        assert_nothing_lost(&again)?;
        // And the new life counts on from what the earlier one stored.
        let vip = actor_cluster::client_address(&ctx, NAME).await?;
        for c in &again.counters {
            let id = &c.facts.id;
            // Retried only while surely not applied (a maybe-applied answer would blur the
            // count, so it fails the test).
            let deadline = Instant::now() + Duration::from_secs(30);
            let value = loop {
                match load::increment(&vip, id).await {
                    load::Outcome::Acked(v) => break v,
                    load::Outcome::Refused(status) if Instant::now() < deadline => {
                        tracing::debug!(%id, status, "increment refused; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    other => anyhow::bail!("an increment of {id} answered {other:?}"),
                }
            };
            ensure!(value == c.value + 1, "{id}: the earlier life stored {}, the new one counted on to {value}", c.value);
        }
        figure(test, &format!("life 2 read every one of {} counters as life 1 left it and counted each on by one", again.counters.len()));
        Ok(())
    })
    .await
}

/// The Degraded condition's reason, if the ActorCluster is Degraded.
async fn degraded_reason(ctx: &TestContext) -> anyhow::Result<Option<String>> {
    let ac = actor_cluster::api(ctx).get(NAME).await?;
    let conditions = ac.data["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(conditions
        .iter()
        .find(|c| c["type"] == "Degraded" && c["status"] == "True")
        .and_then(|c| c["reason"].as_str().map(str::to_owned)))
}

#[tokio::test]
async fn database_stopped_under_load_loses_nothing_acknowledged() -> anyhow::Result<()> {
    let _only = faults::exclusive().await;
    with_namespace("durable-dbdown", |ctx| async move {
        let test = "durable-db-down";
        let down_for = Duration::from_secs(env_u64("TROUPE_E2E_DURABLE_DB_DOWN_SECS", 30));
        let vip = start_cluster(&ctx, postgres_state()).await?;
        let (targets, spec) = service_load(&vip);
        let load = CounterLoad::start("dbdown", targets, &spec);
        let restarts_before = restart_total(&node_pods(&ctx).await?);
        tokio::time::sleep(Duration::from_secs(5)).await;

        let _restart = RestartOnDrop;
        let stopped_at = load.now();
        postgres("stop").await?;
        // The server is gone once `pg_ctl stop -w` returns: nothing sent from here on can
        // commit (an answer to a request sent before may still arrive later).
        let stop_done = load.now();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let until = Instant::now() + down_for;
        while Instant::now() < until {
            if let Ok(Some(r)) = degraded_reason(&ctx).await {
                *reasons.entry(r).or_default() += 1;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        postgres("start").await?;
        let started_at = load.now();
        // Increments succeed again (the first 200 after the restart), without a restart.
        let back = wait::until("an increment acknowledged after the database returned", SETTLE, Duration::from_millis(100), || async {
            Ok(load.events().iter().find(|e| e.at > started_at && matches!(e.outcome, load::Outcome::Acked(_))).map(|e| e.at - started_at))
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let pods = node_pods(&ctx).await?;
        let record = load.stop().await?;
        let restarted = restart_total(&pods) - restarts_before;

        figure(test, &format!("before the stop: {}", record.window(|_| true, 0.0, stopped_at)));
        figure(test, &format!("database down {:.0} s: {}", down_for.as_secs_f64(), record.window(|_| true, stopped_at, started_at)));
        figure(test, &format!("after it returned: first 200 after {back:.2} s; {}", record.window(|_| true, started_at, record.ended_at)));
        figure(test, &format!("Degraded reasons sampled while down (every 0.5 s): {reasons:?}; container restarts: {restarted}"));
        let r = faults::reckon(&ctx, NAME, test, &record).await?;
        figure(test, &format!("acknowledged {} / counted {} / lost {} counters / maybe-applied {}", r.acked(), r.counted(), r.lost().len(), r.unknown()));

        assert_nothing_lost(&r)?;
        let down = record.sent_within(stop_done, started_at);
        ensure!(down.sent > 0 && down.acked == 0, "nothing sent while the database was down may be acknowledged: {down}");
        ensure!(down.by_kind.keys().all(|k| k.starts_with("503")), "every request sent while the database was down should be answered 503: {down}");
        ensure!(restarted == 0, "{restarted} container restarts: the nodes must ride the outage out");
        if down_for >= Duration::from_secs(30) {
            ensure!(reasons.contains_key("StateStoreUnreachable"), "the ActorCluster never turned Degraded (StateStoreUnreachable) during the outage: {reasons:?}");
        }
        Ok(())
    })
    .await
}
