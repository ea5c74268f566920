//! Node-to-node on loopback: two runtimes joined by the real transport (TCP on 127.0.0.1).
//! Node 0 sends to an actor that node 1 owns, so every message crosses the transport:
//! forwarded, queued, handled, answered.
//!
//! - `remote_ask`: one ask at a time (round trip latency).
//! - `remote_tell`: one-way throughput, 100-byte payloads, 256 tells in flight, each
//!   acknowledged once it is in the remote mailbox.

use std::{hint::black_box, time::Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use troupe_actors::Message;
use troupe_bench::cluster;

fn remote(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (nodes, id) = rt.block_on(async {
        let nodes = cluster::start(2, 1_000_000).await.expect("nodes");
        let id = cluster::id_owned_by(&nodes, 1, "bench").await.expect("id");
        (nodes, id)
    });
    let sender = nodes[0].rt.clone();

    let mut g = c.benchmark_group("remote_ask");
    g.throughput(Throughput::Elements(1));
    g.bench_function("troupe_loopback", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    black_box(sender.ask("bench", &id, Message::new("add", "")).await.ok());
                }
                t.elapsed()
            })
        })
    });
    g.finish();

    let payload = Bytes::from(vec![b'x'; 100]);
    let mut g = c.benchmark_group("remote_tell");
    g.throughput(Throughput::Elements(1));
    g.bench_function("troupe_loopback_100B", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                const IN_FLIGHT: u64 = 256;
                let t = Instant::now();
                let mut tasks = Vec::new();
                for w in 0..IN_FLIGHT {
                    let n = iters / IN_FLIGHT + u64::from(w < iters % IN_FLIGHT);
                    let (sender, id, payload) = (sender.clone(), id.clone(), payload.clone());
                    tasks.push(tokio::spawn(async move {
                        for _ in 0..n {
                            let _ = sender
                                .tell("bench", &id, Message::new("add", payload.clone()))
                                .await;
                        }
                    }));
                }
                for task in tasks {
                    let _ = task.await;
                }
                t.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, remote);
criterion_main!(benches);
