//! Runtimes on loopback for benchmarks: one node serving the client API, or several nodes
//! joined by the real transport. Never binds anything but 127.0.0.1.

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use troupe_actors::tls::{TlsFiles, TransportTls};
use troupe_actors::transport::{Acceptor, Connector, PlainAcceptor, TcpConnector};
use troupe_actors::{Actor, ActorRuntime, ActorType, RuntimeConfig, Step};
use troupe_contract::{Member, MemberStatus, MemberTable};

/// `bench`: the smallest useful actor (counts, answers empty), so that benchmarks measure
/// the runtime and not JSON.
#[derive(Debug, Clone, Copy, Default)]
pub struct BenchType;

/// One `bench` actor.
#[derive(Debug, Default)]
pub struct BenchActor {
    /// Messages seen.
    pub count: u64,
}

impl Actor for BenchActor {
    fn handle(&mut self, _m: &troupe_actors::Message) -> Step {
        self.count += 1;
        Step::Done(Ok(Bytes::new()))
    }
}

impl ActorType for BenchType {
    fn name(&self) -> &str {
        "bench"
    }
    fn activate(&self, _id: &str, _state: Option<Bytes>) -> Box<dyn Actor> {
        Box::new(BenchActor::default())
    }
}

/// A running node on loopback.
#[derive(Debug)]
pub struct LoopbackNode {
    /// Its runtime.
    pub rt: ActorRuntime,
    /// Where its transport listens.
    pub transport: SocketAddr,
    /// Its pod name.
    pub pod: String,
}

/// Starts `n` runtimes on 127.0.0.1 (transport on ephemeral ports), all Up and accepting,
/// with the `bench` type and a large mailbox. Call inside a Tokio runtime.
pub async fn start(n: usize, capacity: usize) -> anyhow::Result<Vec<LoopbackNode>> {
    start_with(n, capacity, None).await
}

/// Like [`start`], with the transport speaking mutual TLS as in production: one CA, one
/// node credential for the cluster `bench`, written to a temporary directory.
pub async fn start_tls(n: usize, capacity: usize) -> anyhow::Result<Vec<LoopbackNode>> {
    let tls = bench_credential()?;
    start_with(n, capacity, Some(tls)).await
}

fn bench_credential() -> anyhow::Result<Arc<TransportTls>> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let identity = troupe_contract::tls::identity("bench", "bench");
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec![identity.clone()])?.signed_by(&key, &issuer)?;
    let dir = std::env::temp_dir().join(format!("troupe-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let files = TlsFiles::in_dir(&dir);
    std::fs::write(&files.ca, ca.pem())?;
    std::fs::write(&files.cert, cert.pem())?;
    std::fs::write(&files.key, key.serialize_pem())?;
    Ok(TransportTls::load(files, &identity)?)
}

async fn start_with(
    n: usize,
    capacity: usize,
    tls: Option<Arc<TransportTls>>,
) -> anyhow::Result<Vec<LoopbackNode>> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let pod = format!("bench-{i}");
        let mut config = RuntimeConfig::new(&pod, format!("{pod}-1"));
        config.actor_types.push(Arc::new(BenchType));
        // `loadgen --serve --actor-type load` drives the CPU-burning `load` type too.
        config.builtin_types = troupe_actors::BuiltinType::ALL.to_vec();
        config.mailbox.capacity = capacity;
        let (connector, acceptor): (Arc<dyn Connector>, Arc<dyn Acceptor>) = match &tls {
            Some(t) => (Arc::new(t.connector()), Arc::new(t.acceptor())),
            None => (Arc::new(TcpConnector), Arc::new(PlainAcceptor)),
        };
        let rt = ActorRuntime::with_connector(config, &prometheus::Registry::new(), connector)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let transport = listener.local_addr()?;
        tokio::spawn({
            let rt = rt.clone();
            async move { rt.serve_transport_with(listener, acceptor).await }
        });
        rt.set_accepting(true);
        nodes.push(LoopbackNode { rt, transport, pod });
    }
    let table = MemberTable {
        cluster: "bench".into(),
        first_epoch: 0,
        epoch: 0,
        version: 1,
        members: nodes
            .iter()
            .map(|n| Member {
                pod: n.pod.clone(),
                incarnation: format!("{}-1", n.pod),
                address: n.transport.to_string(),
                status: MemberStatus::Up,
                since_version: 1,
            })
            .collect(),
    };
    for n in &nodes {
        n.rt.update_members(&table);
    }
    Ok(nodes)
}

/// Serves `rt`'s client API on 127.0.0.1 (ephemeral port); returns the base URL.
pub async fn serve_client_api(rt: &ActorRuntime) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = rt.client_router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(format!("http://{addr}"))
}

/// An id of `actor_type` that `owner` owns under the current table, found by asking the
/// placement through the runtime's routing (first id whose activation lands on `owner`).
pub async fn id_owned_by(
    nodes: &[LoopbackNode],
    owner: usize,
    actor_type: &str,
) -> anyhow::Result<String> {
    for i in 0..10_000 {
        let id = format!("id-{i}");
        nodes[0]
            .rt
            .ask(actor_type, &id, troupe_actors::Message::new("get", ""))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if nodes[owner].rt.active_ids(actor_type).contains(&id) {
            return Ok(id);
        }
    }
    anyhow::bail!("no id lands on node {owner}")
}

/// A bare axum server on 127.0.0.1 answering every `POST /actors/{type}/{id}/{mode}/{method}`
/// with `{}` at once: the HTTP floor the client API is compared with. Returns the base URL.
pub async fn serve_bare_axum() -> anyhow::Result<String> {
    use axum::routing::post;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = axum::Router::new().route(
        "/actors/{t}/{id}/{mode}/{method}",
        post(|_body: axum::body::Bytes| async { "{}" }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(format!("http://{addr}"))
}
