//! In-node messaging: tell throughput and ask round trip for Troupe beside ractor, kameo,
//! actix and a bare tokio mpsc channel, in the same run; plus the cost of mailbox-depth
//! accounting.
//!
//! Every contender runs the same actor: a counter that adds one per message and answers
//! its value to a `get`. "tell" sends one message without waiting (a batch is flushed by
//! one final ask, counted in the time); "ask" waits for each reply before the next. Every
//! contender runs on one thread, sender and actor alike: Tokio contenders on a
//! current-thread runtime, actix on its own System (the same model), so that the figures
//! compare the frameworks and not the OS scheduler of a shared 2-core machine.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use troupe_actors::{
    MailboxConfig, Message, OverflowPolicy,
    mailbox::{Envelope, Mailbox},
};
use troupe_bench::cluster;

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---------- bare tokio mpsc ----------

enum MpscMsg {
    Add,
    Get(tokio::sync::oneshot::Sender<u64>),
}

fn mpsc_counter(rt: &tokio::runtime::Runtime) -> tokio::sync::mpsc::Sender<MpscMsg> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<MpscMsg>(1000);
    rt.spawn(async move {
        let mut n = 0u64;
        while let Some(m) = rx.recv().await {
            match m {
                MpscMsg::Add => n += 1,
                MpscMsg::Get(r) => {
                    let _ = r.send(n);
                }
            }
        }
    });
    tx
}

async fn mpsc_get(tx: &tokio::sync::mpsc::Sender<MpscMsg>) -> u64 {
    let (r, w) = tokio::sync::oneshot::channel();
    let _ = tx.send(MpscMsg::Get(r)).await;
    w.await.unwrap_or(0)
}

// ---------- ractor ----------

mod ractor_counter {
    use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

    pub enum Msg {
        Add,
        Get(RpcReplyPort<u64>),
    }

    pub struct Counter;

    impl Actor for Counter {
        type Msg = Msg;
        type State = u64;
        type Arguments = ();

        async fn pre_start(&self, _: ActorRef<Msg>, _: ()) -> Result<u64, ActorProcessingErr> {
            Ok(0)
        }

        async fn handle(
            &self,
            _: ActorRef<Msg>,
            msg: Msg,
            state: &mut u64,
        ) -> Result<(), ActorProcessingErr> {
            match msg {
                Msg::Add => *state += 1,
                Msg::Get(r) => {
                    let _ = r.send(*state);
                }
            }
            Ok(())
        }
    }
}

// ---------- kameo ----------

mod kameo_counter {
    use kameo::{
        Actor,
        message::{Context, Message},
    };

    #[derive(Actor, Default)]
    pub struct Counter {
        pub n: u64,
    }

    pub struct Add;
    pub struct Get;

    impl Message<Add> for Counter {
        type Reply = ();
        async fn handle(&mut self, _: Add, _: &mut Context<Self, ()>) {
            self.n += 1;
        }
    }

    impl Message<Get> for Counter {
        type Reply = u64;
        async fn handle(&mut self, _: Get, _: &mut Context<Self, u64>) -> u64 {
            self.n
        }
    }
}

// ---------- actix ----------

mod actix_counter {
    use actix::prelude::*;

    pub struct Counter(pub u64);

    impl Actor for Counter {
        type Context = Context<Self>;
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    pub struct Add;

    #[derive(Message)]
    #[rtype(result = "u64")]
    pub struct Get;

    impl Handler<Add> for Counter {
        type Result = ();
        fn handle(&mut self, _: Add, _: &mut Context<Self>) {
            self.0 += 1;
        }
    }

    impl Handler<Get> for Counter {
        type Result = u64;
        fn handle(&mut self, _: Get, _: &mut Context<Self>) -> u64 {
            self.0
        }
    }
}

fn troupe_node(rt: &tokio::runtime::Runtime) -> troupe_actors::ActorRuntime {
    rt.block_on(async {
        let mut nodes = cluster::start(1, 1000).await.expect("node");
        let node = nodes.remove(0).rt;
        // Activate the actor outside the measurement.
        let _ = node.ask("bench", "b", Message::new("get", "")).await;
        let _ = node.ask("counter", "c", Message::new("get", "")).await;
        node
    })
}

fn tell(c: &mut Criterion) {
    let rt = tokio_rt();
    let mut g = c.benchmark_group("local_tell");
    g.throughput(Throughput::Elements(1));

    let node = troupe_node(&rt);
    g.bench_function("troupe", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    let _ = node.tell("bench", "b", Message::new("add", "")).await;
                }
                let _ = node.ask("bench", "b", Message::new("get", "")).await;
                t.elapsed()
            })
        })
    });
    let mut handle = node.actor_ref("bench", "b").expect("ref");
    g.bench_function("troupe_actor_ref", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    let _ = handle.tell(Message::new("add", "")).await;
                }
                let _ = handle.ask(Message::new("get", "")).await;
                t.elapsed()
            })
        })
    });
    g.bench_function("troupe_builtin_counter", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    let _ = node.tell("counter", "c", Message::new("add", "")).await;
                }
                let _ = node.ask("counter", "c", Message::new("get", "")).await;
                t.elapsed()
            })
        })
    });

    let tx = mpsc_counter(&rt);
    g.bench_function("tokio_mpsc", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    let _ = tx.send(MpscMsg::Add).await;
                }
                black_box(mpsc_get(&tx).await);
                t.elapsed()
            })
        })
    });

    let ractor_ref = rt
        .block_on(ractor::Actor::spawn(None, ractor_counter::Counter, ()))
        .expect("ractor")
        .0;
    g.bench_function("ractor", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    let _ = ractor_ref.cast(ractor_counter::Msg::Add);
                }
                black_box(ractor_ref.call(ractor_counter::Msg::Get, None).await.ok());
                t.elapsed()
            })
        })
    });

    let kameo_ref = rt.block_on(async {
        <kameo_counter::Counter as kameo::actor::Spawn>::spawn(kameo_counter::Counter::default())
    });
    g.bench_function("kameo", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    let _ = kameo_ref.tell(kameo_counter::Add).await;
                }
                black_box(kameo_ref.ask(kameo_counter::Get).await.ok());
                t.elapsed()
            })
        })
    });

    let sys = actix_rt::System::new();
    let actix_addr = sys.block_on(async { actix::Actor::start(actix_counter::Counter(0)) });
    g.bench_function("actix", |b| {
        b.iter_custom(|iters| {
            sys.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    actix_addr.do_send(actix_counter::Add);
                }
                black_box(actix_addr.send(actix_counter::Get).await.ok());
                t.elapsed()
            })
        })
    });
    g.finish();
}

fn ask(c: &mut Criterion) {
    let rt = tokio_rt();
    let mut g = c.benchmark_group("local_ask");
    g.throughput(Throughput::Elements(1));

    let node = troupe_node(&rt);
    g.bench_function("troupe", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    black_box(node.ask("bench", "b", Message::new("add", "")).await.ok());
                }
                t.elapsed()
            })
        })
    });

    let mut handle = node.actor_ref("bench", "b").expect("ref");
    g.bench_function("troupe_actor_ref", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    black_box(handle.ask(Message::new("add", "")).await.ok());
                }
                t.elapsed()
            })
        })
    });

    let tx = mpsc_counter(&rt);
    g.bench_function("tokio_mpsc", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    black_box(mpsc_get(&tx).await);
                }
                t.elapsed()
            })
        })
    });

    let ractor_ref = rt
        .block_on(ractor::Actor::spawn(None, ractor_counter::Counter, ()))
        .expect("ractor")
        .0;
    g.bench_function("ractor", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    black_box(ractor_ref.call(ractor_counter::Msg::Get, None).await.ok());
                }
                t.elapsed()
            })
        })
    });

    let kameo_ref = rt.block_on(async {
        <kameo_counter::Counter as kameo::actor::Spawn>::spawn(kameo_counter::Counter::default())
    });
    g.bench_function("kameo", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    black_box(kameo_ref.ask(kameo_counter::Get).await.ok());
                }
                t.elapsed()
            })
        })
    });

    let sys = actix_rt::System::new();
    let actix_addr = sys.block_on(async { actix::Actor::start(actix_counter::Counter(0)) });
    g.bench_function("actix", |b| {
        b.iter_custom(|iters| {
            sys.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    black_box(actix_addr.send(actix_counter::Get).await.ok());
                }
                t.elapsed()
            })
        })
    });
    g.finish();
}

/// Mailbox-depth accounting costs nothing per message (the queue length is the depth); the
/// price is paid at scrape time, walking the activations. Measured: a bare mailbox push +
/// pop, and one depth read with 10,000 active actors.
fn depth_accounting(c: &mut Criterion) {
    let mut g = c.benchmark_group("mailbox_depth_accounting");
    let config = MailboxConfig {
        capacity: 1024,
        overflow: OverflowPolicy::Reject,
        backpressure_timeout: Duration::from_secs(1),
    };
    let mailbox = Mailbox::new(config);
    g.throughput(Throughput::Elements(1));
    g.bench_function("mailbox_push_pop", |b| {
        b.iter(|| {
            let _ = mailbox.try_push(Envelope::tell(Message::new("add", "")));
            black_box(mailbox.try_recv());
        })
    });
    let rt = tokio_rt();
    let node = troupe_node(&rt);
    rt.block_on(async {
        for i in 0..10_000 {
            let _ = node
                .tell("bench", &format!("a{i}"), Message::new("add", ""))
                .await;
        }
        let _ = node.ask("bench", "a0", Message::new("get", "")).await;
    });
    g.bench_function("depth_scrape_10k_actors", |b| {
        b.iter(|| black_box(node.mailbox_depth()))
    });
    g.finish();
}

criterion_group!(benches, tell, ask, depth_accounting);
criterion_main!(benches);
