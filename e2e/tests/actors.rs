//! Actors end to end: counter actors driven through the client Service keep exact counts
//! while the ActorCluster scales 3 → 5 → 2 with graceful leaves. Every acknowledged
//! increment must be counted, and no increment may be counted twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use troupe_e2e::{actor_cluster, http, with_namespace};

const NAME: &str = "counters";
const COUNTERS: usize = 24;
const WORKERS: usize = 4;

#[derive(Debug, Default, Clone)]
struct Tally {
    /// Increments sent, per counter.
    sent: BTreeMap<usize, u64>,
    /// Increments answered 200, per counter.
    acked: BTreeMap<usize, u64>,
    /// Refusals and failures by status (0: no answer).
    refused: BTreeMap<u16, u64>,
}

async fn counter_value(vip: &str, k: usize) -> anyhow::Result<u64> {
    let r = http::request("POST", vip, &format!("/actors/counter/c{k}/ask/get"), None).await?;
    ensure!(
        r.status == 200,
        "get c{k} answered {}: {}",
        r.status,
        r.body
    );
    let v: Value = serde_json::from_str(&r.body)?;
    v.get("value")
        .and_then(Value::as_u64)
        .with_context(|| format!("get c{k} answered {}", r.body))
}

#[tokio::test]
async fn counters_stay_exact_while_the_cluster_scales_3_5_2() -> anyhow::Result<()> {
    with_namespace("actors", |ctx| async move {
        actor_cluster::create(
            &ctx,
            NAME,
            json!({ "replicas": 3, "image": "troupe-node:0.1.0" }),
        )
        .await?;
        actor_cluster::until_settled(&ctx, NAME, 3, Duration::from_secs(180)).await?;
        let vip = actor_cluster::client_address(&ctx, NAME).await?;

        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for w in 0..WORKERS {
            let (tally, stop, vip) = (tally.clone(), stop.clone(), vip.clone());
            workers.push(tokio::spawn(async move {
                // Bounded: at most 20,000 requests per worker, and it stops when told.
                for i in 0..20_000usize {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let k = (i * WORKERS + w) % COUNTERS;
                    let path = format!("/actors/counter/c{k}/ask/add");
                    let result =
                        http::request("POST", &vip, &path, Some(r#"{"by":1}"#.into())).await;
                    let refused = {
                        let mut t = tally.lock().await;
                        *t.sent.entry(k).or_default() += 1;
                        match result {
                            Ok(r) if r.status == 200 => {
                                *t.acked.entry(k).or_default() += 1;
                                false
                            }
                            Ok(r) => {
                                *t.refused.entry(r.status).or_default() += 1;
                                true
                            }
                            Err(_) => {
                                *t.refused.entry(0).or_default() += 1;
                                true
                            }
                        }
                    };
                    if refused {
                        // Back off a little instead of spinning while a node leaves.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }));
        }

        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        actor_cluster::scale(&ctx, NAME, 5).await?;
        actor_cluster::until_settled(&ctx, NAME, 5, Duration::from_secs(180)).await?;
        eprintln!("scaled 3 -> 5 at {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_secs(3)).await;
        actor_cluster::scale(&ctx, NAME, 2).await?;
        actor_cluster::until_settled(&ctx, NAME, 2, Duration::from_secs(180)).await?;
        eprintln!("scaled 5 -> 2 at {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.await?;
        }

        // The final reads go to the two remaining pods only once kube-proxy follows.
        let vip = actor_cluster::client_address(&ctx, NAME).await?;
        let t = tally.lock().await.clone();
        let total_sent: u64 = t.sent.values().sum();
        let total_acked: u64 = t.acked.values().sum();
        eprintln!(
            "sent {total_sent} increments, {total_acked} acknowledged, refused by status: {:?}",
            t.refused
        );
        ensure!(total_acked > 0, "no increment was acknowledged at all");
        let mut counted = 0;
        for k in 0..COUNTERS {
            let value = counter_value(&vip, k).await?;
            let acked = t.acked.get(&k).copied().unwrap_or(0);
            let sent = t.sent.get(&k).copied().unwrap_or(0);
            ensure!(
                value >= acked,
                "counter c{k} lost increments: {acked} acknowledged, {value} counted"
            );
            ensure!(
                value <= sent,
                "counter c{k} counted increments twice: {sent} sent, {value} counted"
            );
            counted += value;
        }
        eprintln!("counted {counted} increments over {COUNTERS} counters");
        Ok(())
    })
    .await
}
