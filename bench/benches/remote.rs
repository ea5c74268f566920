//! Node-to-node on loopback: two runtimes joined by the real transport (TCP on 127.0.0.1).
//! Node 0 sends to an actor that node 1 owns, so every message crosses the transport:
//! forwarded, queued, handled, answered.
//!
//! - `remote_ask`: one ask at a time (round trip latency).
//! - `remote_tell`: one-way throughput, 100-byte payloads, 256 tells in flight, each
//!   acknowledged once it is in the remote mailbox.
//! - `*_tls`: the same two over mutual TLS 1.3 (`troupe_actors::tls`, as in production).

use std::{hint::black_box, time::Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use troupe_actors::Message;
use troupe_bench::cluster;

/// The two benchmarks over links made by `start` (plaintext or mutual TLS), named `label`.
fn remote_over(c: &mut Criterion, label: &str, tls: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (nodes, id) = rt.block_on(async {
        let nodes = if tls {
            cluster::start_tls(2, 1_000_000).await
        } else {
            cluster::start(2, 1_000_000).await
        }
        .expect("nodes");
        let id = cluster::id_owned_by(&nodes, 1, "bench").await.expect("id");
        (nodes, id)
    });
    let sender = nodes[0].rt.clone();

    let mut g = c.benchmark_group("remote_ask");
    g.throughput(Throughput::Elements(1));
    g.bench_function(format!("troupe_loopback{label}"), |b| {
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
    g.bench_function(format!("troupe_loopback{label}_100B"), |b| {
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

fn remote(c: &mut Criterion) {
    remote_over(c, "", false);
}

/// The same over mutual TLS (TLS 1.3, the production transport).
fn remote_tls(c: &mut Criterion) {
    remote_over(c, "_tls", true);
}

/// The floor: a bare tokio TCP ping-pong on loopback (4-byte length + 100-byte body each
/// way), one request at a time, and pipelined one-way with a 4-byte ack per message.
fn tcp_floor(c: &mut Criterion) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let addr = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let _ = s.set_nodelay(true);
                tokio::spawn(async move {
                    let (r, w) = s.into_split();
                    let mut r = tokio::io::BufReader::new(r);
                    let mut w = tokio::io::BufWriter::new(w);
                    let mut body = [0u8; 100];
                    while let Ok(n) = r.read_u32().await {
                        if n as usize != body.len() || r.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        if w.write_u32(0).await.is_err() {
                            return;
                        }
                        if r.buffer().is_empty() && w.flush().await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    });
    let stream = rt.block_on(async {
        let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _ = s.set_nodelay(true);
        s
    });
    let (r, mut w) = stream.into_split();
    let mut r = tokio::io::BufReader::new(r);
    let frame = {
        let mut f = 100u32.to_be_bytes().to_vec();
        f.extend_from_slice(&[b'x'; 100]);
        f
    };
    let mut g = c.benchmark_group("remote_ask");
    g.throughput(Throughput::Elements(1));
    g.bench_function("bare_tcp_ping_pong", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    let _ = w.write_all(&frame).await;
                    black_box(r.read_u32().await.ok());
                }
                t.elapsed()
            })
        })
    });
    g.finish();
    let mut g = c.benchmark_group("remote_tell");
    g.throughput(Throughput::Elements(1));
    g.bench_function("bare_tcp_pipelined_100B", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                let mut batch = Vec::with_capacity(frame.len() * 64);
                let mut sent = 0;
                while sent < iters {
                    let n = (iters - sent).min(64);
                    batch.clear();
                    for _ in 0..n {
                        batch.extend_from_slice(&frame);
                    }
                    let _ = w.write_all(&batch).await;
                    for _ in 0..n {
                        black_box(r.read_u32().await.ok());
                    }
                    sent += n;
                }
                t.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, remote, remote_tls, tcp_floor);
criterion_main!(benches);
