//! The client HTTP API through one node on loopback: asks to the built-in `counter` over
//! keep-alive connections (64 in flight), spread over 1,000 actors. Criterion reports the
//! time per request at that concurrency (its inverse is the throughput); the latency
//! percentiles come from `loadgen` (see BENCHMARKS.md). A bare axum server answering at
//! once, driven the same way in the same run, is the floor.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use troupe_bench::{cluster, loadgen};

fn http(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (_node, url, bare) = rt.block_on(async {
        let mut nodes = cluster::start(1, 10_000).await.expect("node");
        let node = nodes.remove(0);
        let url = cluster::serve_client_api(&node.rt).await.expect("serve");
        let bare = cluster::serve_bare_axum().await.expect("bare");
        (node, url, bare)
    });
    let mut g = c.benchmark_group("client_http");
    g.throughput(Throughput::Elements(1));
    for (name, url) in [("troupe_ask_counter_c64", url), ("bare_axum_c64", bare)] {
        let client = loadgen::client(64);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let spec = loadgen::LoadSpec {
                    url: url.clone(),
                    actor_type: "counter".into(),
                    method: "add".into(),
                    ask: true,
                    ids: 1000,
                    concurrency: 64,
                    requests: iters,
                    duration: Duration::from_secs(60),
                    body: bytes::Bytes::new(),
                };
                let t = Instant::now();
                let _ = rt.block_on(loadgen::run_with(&client, &spec));
                t.elapsed()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, http);
criterion_main!(benches);
