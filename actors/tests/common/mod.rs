//! Helpers shared by the integration tests: member tables, test actor types, nodes on
//! loopback.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use troupe_actors::{Actor, ActorError, ActorRuntime, ActorType, Message, RuntimeConfig, Step};
use troupe_contract::{Member, MemberStatus, MemberTable};

/// A table of `(pod, address, status)` at `version`.
pub fn table(version: u64, members: &[(&str, &str, MemberStatus)]) -> MemberTable {
    MemberTable {
        cluster: "test".into(),
        first_epoch: 0,
        epoch: 0,
        version,
        members: members
            .iter()
            .map(|(pod, addr, status)| Member {
                pod: (*pod).to_owned(),
                incarnation: format!("{pod}-1"),
                address: (*addr).to_owned(),
                status: *status,
                since_version: 1,
            })
            .collect(),
    }
}

/// A one-node cluster where `config` is Up, accepting client work.
pub fn single_node(config: RuntimeConfig) -> ActorRuntime {
    let pod = config.pod.clone();
    let registry = prometheus::Registry::new();
    let rt = ActorRuntime::new(config, &registry).expect("runtime");
    rt.update_members(&table(1, &[(&pod, "127.0.0.1:1", MemberStatus::Up)]));
    rt.set_accepting(true);
    rt
}

/// Counts live activations per id across every runtime of a test, and violations of
/// "one activation at a time".
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    live: Arc<Mutex<HashMap<String, Vec<String>>>>,
    pub violations: Arc<AtomicUsize>,
    pub activations: Arc<AtomicUsize>,
}

impl Tracker {
    fn up(&self, id: &str, node: &str) {
        self.activations.fetch_add(1, Ordering::SeqCst);
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let nodes = live.entry(id.to_owned()).or_default();
        nodes.push(node.to_owned());
        if nodes.len() > 1 {
            eprintln!("DOUBLE ACTIVATION of {id}: {nodes:?}");
            self.violations.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn down(&self, id: &str, node: &str) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(nodes) = live.get_mut(id)
            && let Some(i) = nodes.iter().position(|n| n == node)
        {
            nodes.remove(i);
        }
    }
    pub fn live_total(&self) -> usize {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(Vec::len)
            .sum()
    }
}

/// `tracked`: a counter that reports its activations to a [`Tracker`]; `panic` panics,
/// `sleep` sleeps 20 ms.
#[derive(Clone, Debug)]
pub struct TrackedType {
    pub node: String,
    pub tracker: Tracker,
}

#[derive(Debug)]
pub struct Tracked {
    id: String,
    node: String,
    tracker: Tracker,
    value: i64,
    handled: u64,
}

impl Actor for Tracked {
    fn handle(&mut self, m: &Message) -> Step {
        self.handled += 1;
        match &*m.method {
            "add" => {
                self.value += 1;
                Step::Done(Ok(Bytes::from(self.value.to_string())))
            }
            "get" => Step::Done(Ok(Bytes::from(self.value.to_string()))),
            "handled" => Step::Done(Ok(Bytes::from(self.handled.to_string()))),
            "panic" => panic!("asked to panic"),
            "sleep" => Step::Later(Box::pin(async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(Bytes::from_static(b"slept"))
            })),
            other => Step::Done(Err(ActorError::BadRequest(format!("no method {other}")))),
        }
    }

    fn deactivate(&mut self) -> Step {
        self.tracker.down(&self.id, &self.node);
        Step::Done(Ok(Bytes::copy_from_slice(&self.value.to_le_bytes())))
    }
}

impl ActorType for TrackedType {
    fn name(&self) -> &str {
        "tracked"
    }
    fn activate(&self, id: &str, state: Option<Bytes>) -> Box<dyn Actor> {
        self.tracker.up(id, &self.node);
        let value = state
            .and_then(|s| <[u8; 8]>::try_from(&s[..]).ok())
            .map(i64::from_le_bytes)
            .unwrap_or(0);
        Box::new(Tracked {
            id: id.to_owned(),
            node: self.node.clone(),
            tracker: self.tracker.clone(),
            value,
            handled: 0,
        })
    }
}

/// A node on loopback: a runtime serving its transport on an ephemeral port.
pub struct TestNode {
    pub pod: String,
    pub addr: String,
    pub rt: ActorRuntime,
    pub registry: prometheus::Registry,
    transport: tokio::task::JoinHandle<()>,
}

impl TestNode {
    pub async fn start(
        pod: &str,
        tracker: &Tracker,
        tune: impl FnOnce(&mut RuntimeConfig),
    ) -> Self {
        Self::start_as(pod, &format!("{pod}-1"), tracker, tune).await
    }

    /// A node of `pod` with its own incarnation (a restarted process).
    pub async fn start_as(
        pod: &str,
        incarnation: &str,
        tracker: &Tracker,
        tune: impl FnOnce(&mut RuntimeConfig),
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let mut config = RuntimeConfig::new(pod, incarnation);
        config.actor_types.push(Arc::new(TrackedType {
            node: pod.to_owned(),
            tracker: tracker.clone(),
        }));
        tune(&mut config);
        let registry = prometheus::Registry::new();
        let rt = ActorRuntime::new(config, &registry).expect("runtime");
        rt.set_accepting(true);
        let transport = tokio::spawn({
            let rt = rt.clone();
            async move {
                let _ = rt.serve_transport(listener).await;
            }
        });
        Self {
            pod: pod.to_owned(),
            addr,
            rt,
            registry,
            transport,
        }
    }

    /// Stops serving the transport (the process "exits").
    pub fn stop(&self) {
        self.transport.abort();
    }
}

/// Reads an integer reply.
pub fn int(b: &Bytes) -> i64 {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(i64::MIN)
}

/// A TCP proxy on loopback in front of a node's transport, to break links on purpose.
pub struct Proxy {
    pub addr: String,
    /// Bumped by [`Proxy::wedge`]: connections accepted before stop forwarding bytes.
    wedged_before: Arc<std::sync::atomic::AtomicU64>,
    /// Set by [`Proxy::blackhole`]: nothing is forwarded; new connections are dropped.
    blackhole: Arc<std::sync::atomic::AtomicBool>,
    /// Serial number of the last connection accepted.
    serial: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy forwarding to `target`.
    pub async fn start(target: &str) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("addr").to_string();
        let wedged_before = Arc::new(AtomicU64::new(0));
        let blackhole = Arc::new(AtomicBool::new(false));
        let serials = Arc::new(AtomicU64::new(0));
        let target = target.to_owned();
        let task = tokio::spawn({
            let (wedged_before, blackhole) = (wedged_before.clone(), blackhole.clone());
            let serials = serials.clone();
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    let serial = serials.fetch_add(1, Ordering::SeqCst) + 1;
                    if blackhole.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                        continue;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    for (r, w) in [(ri, wo), (ro, wi)].map(|(r, w)| {
                        (
                            Box::new(r) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                            Box::new(w) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                        )
                    }) {
                        let (wedged_before, blackhole) = (wedged_before.clone(), blackhole.clone());
                        tokio::spawn(pump(r, w, serial, wedged_before, blackhole));
                    }
                }
            }
        });
        Self {
            addr,
            wedged_before,
            blackhole,
            serial: serials,
            task,
        }
    }

    /// Existing connections stop forwarding bytes (kept open, silent); new ones work.
    pub fn wedge(&self) {
        self.wedged_before
            .store(self.serial.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Nothing is forwarded any more and new connections are dropped at once.
    pub fn blackhole(&self) {
        self.blackhole.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut r: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    mut w: Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
    serial: u64,
    wedged_before: Arc<std::sync::atomic::AtomicU64>,
    blackhole: Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    // Bounded: a test connection carries far fewer than a million chunks.
    for _ in 0..1_000_000 {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // A wedged connection swallows bytes (like a flushed conntrack entry).
        if blackhole.load(Ordering::SeqCst) || serial <= wedged_before.load(Ordering::SeqCst) {
            continue;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// POSTs `body` to `uri` on `router`: status, `Retry-After`, body text.
pub async fn post(
    router: &axum::Router,
    uri: &str,
    body: impl Into<axum::body::Body>,
) -> (axum::http::StatusCode, Option<String>, String) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let req = axum::http::Request::post(uri)
        .body(body.into())
        .expect("request");
    let resp = router.clone().oneshot(req).await.expect("response");
    let status = resp.status();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (status, retry, String::from_utf8_lossy(&body).into_owned())
}
