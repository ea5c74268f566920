//! `durable`: asks through one node with actor state in memory vs in PostgreSQL, side by
//! side in one run (a benchmark, not a test: it prints figures and asserts nothing).
//!
//! Two runtimes in this process, each a one-member cluster with its own client API on
//! 127.0.0.1: one in memory mode, one writing through to the PostgreSQL at
//! `--postgres-url` (loopback only; `bench/durable.sh` starts a throwaway one). The same
//! `counter add` load (`--concurrency` keep-alive connections over `--ids` actors) runs
//! against each in turn, `--rounds` times alternating, and the medians are compared:
//! throughput ratio, p50/p99 latency and what the store adds, and the group-commit batch
//! size the store reached (`troupe_state_commit_batch_size`).
//!
//! ```sh
//! bench/durable.sh                     # throwaway PostgreSQL, then this binary
//! cargo run -p troupe-bench --release --bin durable -- --postgres-url postgresql://u:p@127.0.0.1:5432/db
//! ```

use std::{sync::Arc, time::Duration};

use clap::Parser;
use prometheus::Registry;
use troupe_actors::{ActorRuntime, RuntimeConfig, StateStore};
use troupe_bench::{cluster, loadgen};
use troupe_contract::{Member, MemberStatus, MemberTable};
use troupe_state_postgres::{PostgresStore, Settings, Source, Status};

#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// PostgreSQL on this machine (127.0.0.1 or localhost only).
    #[arg(long, env = "TROUPE_BENCH_POSTGRES_URL")]
    postgres_url: String,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Distinct counters.
    #[arg(long, default_value_t = 1000)]
    ids: u64,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Measurements of each mode, alternating.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn loopback_postgres(url: &str) -> anyhow::Result<()> {
    let host = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split(['/', ':', '?']).next())
        .unwrap_or("");
    anyhow::ensure!(
        matches!(host, "127.0.0.1" | "localhost" | "[::1]"),
        "only a PostgreSQL on this machine (127.0.0.1, localhost), got host {host:?}"
    );
    Ok(())
}

/// A one-member cluster with `store`, serving its client API; returns it and its URL.
async fn node(
    pod: &str,
    store: Option<Arc<dyn StateStore>>,
) -> anyhow::Result<(ActorRuntime, String)> {
    let mut config = RuntimeConfig::new(pod, format!("{pod}-1"));
    config.mailbox.capacity = 10_000;
    config.state_store = store;
    let rt = ActorRuntime::new(config, &Registry::new())?;
    rt.update_members(&MemberTable {
        cluster: "bench".into(),
        first_epoch: 0,
        epoch: 0,
        version: 1,
        members: vec![Member {
            pod: pod.into(),
            incarnation: format!("{pod}-1"),
            address: "127.0.0.1:1".into(),
            status: MemberStatus::Up,
            since_version: 1,
        }],
    });
    rt.set_accepting(true);
    let url = cluster::serve_client_api(&rt).await?;
    Ok((rt, url))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// `(count, sum)` of a histogram in `registry`.
fn histogram(registry: &Registry, name: &str) -> (u64, f64) {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter().map(|m| m.get_histogram().clone()))
        .map(|h| (h.get_sample_count(), h.get_sample_sum()))
        .fold((0, 0.0), |(c, s), (c2, s2)| (c + c2, s + s2))
}

/// The largest bucket bound under which at most `q` of the samples are not, i.e. the
/// bucket the `q`-quantile falls in (its upper bound).
fn histogram_quantile(registry: &Registry, name: &str, q: f64) -> f64 {
    for f in registry.gather().iter().filter(|f| f.name() == name) {
        for m in f.get_metric() {
            let h = m.get_histogram();
            let total = h.get_sample_count() as f64;
            for b in h.get_bucket() {
                if b.cumulative_count() as f64 >= q * total {
                    return b.upper_bound();
                }
            }
        }
    }
    f64::NAN
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    loopback_postgres(&args.postgres_url)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let store_registry = Registry::new();
        let run_id = std::process::id();
        let store = PostgresStore::start(
            Settings::new(format!("bench/{run_id}"), Source::Url(args.postgres_url.clone())),
            &store_registry,
        )?;
        match store.wait_up(Duration::from_secs(15)).await {
            Status::Up => {}
            other => anyhow::bail!("PostgreSQL not usable: {other:?}"),
        }
        let (_memory_rt, memory_url) = node("memory", None).await?;
        let (_durable_rt, durable_url) = node("durable", Some(Arc::new(store))).await?;
        let spec = |url: &str| loadgen::LoadSpec {
            url: url.to_owned(),
            actor_type: "counter".into(),
            method: "add".into(),
            ask: true,
            ids: args.ids,
            concurrency: args.concurrency,
            requests: u64::MAX,
            duration: Duration::from_secs(args.seconds),
            body: bytes::Bytes::new(),
        };
        // Warm both (activations, the store's first rows) before measuring.
        for url in [&memory_url, &durable_url] {
            let mut warm = spec(url);
            warm.duration = Duration::from_secs(2);
            loadgen::run(&warm).await?;
        }
        let before = histogram(&store_registry, "troupe_state_commit_batch_size");
        let (mut mem, mut dur) = (Vec::new(), Vec::new());
        for round in 0..args.rounds {
            for (mode, url, out) in [("memory", &memory_url, &mut mem), ("postgres", &durable_url, &mut dur)] {
                let r = loadgen::run(&spec(url)).await?;
                println!("round {} {mode:8}: {}", round + 1, r.to_string().replace('\n', " | "));
                out.push(r);
            }
        }
        let after = histogram(&store_registry, "troupe_state_commit_batch_size");
        let commits = after.0 - before.0;
        let batched = after.1 - before.1;
        let rate = |v: &[loadgen::LoadReport]| median(v.iter().map(|r| r.rate()).collect());
        let lat = |v: &[loadgen::LoadReport], i: usize| median(v.iter().map(|r| r.latency_us[i] as f64).collect());
        let ok = |v: &[loadgen::LoadReport]| v.iter().all(|r| r.by_status.keys().all(|s| *s == 200));
        println!();
        println!("asks through one node, {} connections over {} counters, {} rounds of {} s each, medians:", args.concurrency, args.ids, args.rounds, args.seconds);
        println!("  memory   : {:>9.0} asks/s  p50 {:>6.0} µs  p99 {:>6.0} µs  all 200: {}", rate(&mem), lat(&mem, 0), lat(&mem, 2), ok(&mem));
        println!("  postgres : {:>9.0} asks/s  p50 {:>6.0} µs  p99 {:>6.0} µs  all 200: {}", rate(&dur), lat(&dur, 0), lat(&dur, 2), ok(&dur));
        println!("  throughput ratio postgres/memory: {:.2}x (goal >= 0.5x)", rate(&dur) / rate(&mem).max(1e-9));
        println!("  added latency: p50 +{:.0} µs, p99 +{:.0} µs", lat(&dur, 0) - lat(&mem, 0), lat(&dur, 2) - lat(&mem, 2));
        println!(
            "  group commit: {commits} transactions, {:.1} writes per transaction on average, median batch <= {}, p99 batch <= {}",
            batched / (commits.max(1) as f64),
            histogram_quantile(&store_registry, "troupe_state_commit_batch_size", 0.5),
            histogram_quantile(&store_registry, "troupe_state_commit_batch_size", 0.99),
        );
        Ok(())
    })
}
