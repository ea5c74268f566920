//! `loadgen`: bounded load against a Troupe node's client API on loopback.
//!
//! ```sh
//! cargo run -p troupe-bench --release --bin loadgen -- --serve --requests 200000 --concurrency 64
//! cargo run -p troupe-bench --release --bin loadgen -- --url http://127.0.0.1:8080 --actor-type load --body '{"spin_us":50}'
//! ```
//!
//! `--actor-type load` against a node of its own wants `load` enabled there
//! (`TROUPE_BUILTIN_TYPES=counter,kv,echo,load`); the `--serve` node enables it.

use std::time::Duration;

use clap::Parser;
use troupe_bench::{cluster, loadgen};

/// Drive a Troupe node's client HTTP API (loopback only) and print throughput and latency.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Base URL of the node's client API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Start a node in this process on 127.0.0.1 and drive it instead of --url.
    #[arg(long)]
    serve: bool,
    /// With --serve: a bare axum server that answers at once, instead of a node (the HTTP
    /// floor to compare with).
    #[arg(long)]
    baseline: bool,
    /// Actor type.
    #[arg(long, default_value = "counter")]
    actor_type: String,
    /// Method.
    #[arg(long, default_value = "add")]
    method: String,
    /// Send `tell` instead of `ask`.
    #[arg(long)]
    tell: bool,
    /// Distinct actor ids.
    #[arg(long, default_value_t = 1000)]
    ids: u64,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Most requests to send.
    #[arg(long, default_value_t = 100_000)]
    requests: u64,
    /// Most seconds to run.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Request body.
    #[arg(long, default_value = "")]
    body: String,
    /// Tokio worker threads (also for the in-process node with --serve).
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut url = args.url.clone();
        let mut _node = None;
        if args.serve && args.baseline {
            url = cluster::serve_bare_axum().await?;
        } else if args.serve {
            let mut nodes = cluster::start(1, 10_000).await?;
            let node = nodes.remove(0);
            url = cluster::serve_client_api(&node.rt).await?;
            _node = Some(node);
        }
        let spec = loadgen::LoadSpec {
            url,
            actor_type: args.actor_type,
            method: args.method,
            ask: !args.tell,
            ids: args.ids,
            concurrency: args.concurrency,
            requests: args.requests,
            duration: Duration::from_secs(args.duration),
            body: args.body.into(),
        };
        let report = loadgen::run(&spec).await?;
        println!("{report}");
        Ok(())
    })
}
