//! The `troupe-node` binary: reads its identity from the downward API, joins its cluster
//! through the Kubernetes API, serves the management port, and leaves gracefully on
//! SIGTERM.
//!
//! ```text
//!   main ─► Node::start(LeaseStore, HttpProber, watch_pods)   (membership)
//!        ─► axum on :8558 (node.router())                     (management)
//!        ─► SIGTERM ─► node.leave(handover) ─► exit
//! ```
//!
//! The actor runtime ([`host_actors`]) follows `node.view()`, registers its metrics in
//! `node.registry()`, serves the client API and the transport, and its drain is the
//! `handover` of `node.leave`. With `TROUPE_STATE_STORE=postgres` the runtime writes
//! actor states through to PostgreSQL ([`troupe_state_postgres`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use prometheus::Registry;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;
use troupe_actors::tls::{TlsFiles, TransportTls};
use troupe_actors::transport::{Acceptor, Connector, PlainAcceptor, TcpConnector};
use troupe_actors::{ActorRuntime, RuntimeConfig};
use troupe_contract::{env, ports};
use troupe_node::guard::ManagementToken;
use troupe_node::health::{self, Health};
use troupe_node::k8s::{LeaseStore, watch_pods};
use troupe_node::probe::HttpProber;
use troupe_node::{Identity, Node, Timing};

/// How often the mounted credential is re-read (the kubelet refreshes a Secret volume
/// within about a minute).
const TLS_RELOAD_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(version, about = "Troupe actor node")]
struct Args {
    /// Address of the management server (/alive, /ready, /metrics, /cluster/*).
    #[arg(long, env = "TROUPE_MANAGEMENT_ADDR", default_value = "0.0.0.0:8558")]
    management_addr: std::net::SocketAddr,
    /// Start Ready without any membership (no Kubernetes needed): for local experiments.
    #[arg(long, env = "TROUPE_STANDALONE", default_value_t = false)]
    standalone: bool,
    /// The ActorCluster this node belongs to.
    #[arg(long, env = env::CLUSTER_NAME)]
    cluster: Option<String>,
    /// The ActorCluster's UID: the member Lease names the ActorCluster as its owner.
    #[arg(long, env = env::CLUSTER_UID, default_value = "")]
    cluster_uid: String,
    /// This pod's name (downward API).
    #[arg(long, env = env::POD_NAME)]
    pod_name: Option<String>,
    /// This pod's namespace (downward API).
    #[arg(long, env = env::POD_NAMESPACE)]
    pod_namespace: Option<String>,
    /// This pod's IP (downward API): the address other members probe.
    #[arg(long, env = env::POD_IP)]
    pod_ip: Option<String>,
    /// How long `/ready` may hold its answer while the node is joining (milliseconds); keep
    /// it below the readiness probe's timeoutSeconds. 0 answers at once.
    #[arg(long, env = "TROUPE_READY_WAIT_MS", default_value_t = 800)]
    ready_wait_ms: u64,
    /// Directory of the mounted transport credential (ca.crt, tls.crt, tls.key): the
    /// transport then speaks mutual TLS only. Unset: plaintext, unauthenticated.
    #[arg(long, env = env::TLS_DIR)]
    tls_dir: Option<std::path::PathBuf>,
    /// Time allowed for a graceful leave; keep it below terminationGracePeriodSeconds.
    #[arg(long, env = "TROUPE_LEAVE_TIMEOUT_SECS", default_value_t = 20)]
    leave_timeout_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env(env::LOG).unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.management_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.management_addr))?;
    tracing::info!(addr = %args.management_addr, "management server listening");

    if args.standalone {
        let health = Health::default();
        health.set_member_up(true);
        axum::serve(listener, health::router(health))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("management server failed")?;
        return Ok(());
    }

    let cluster = required(args.cluster, env::CLUSTER_NAME)?;
    let pod = required(args.pod_name, env::POD_NAME)?;
    let namespace = required(args.pod_namespace, env::POD_NAMESPACE)?;
    let address = required(args.pod_ip, env::POD_IP)?;
    // The transport credential first: a node that cannot authenticate must not join.
    let tls = match &args.tls_dir {
        Some(dir) => {
            let identity = troupe_contract::tls::identity(&namespace, &cluster);
            let tls = TransportTls::load(TlsFiles::in_dir(dir), &identity).with_context(|| {
                format!(
                    "cannot load the transport credential from {}",
                    dir.display()
                )
            })?;
            tokio::spawn(tls.clone().watch(TLS_RELOAD_EVERY));
            tracing::info!(%identity, "transport speaks mutual TLS");
            Some(tls)
        }
        None => None,
    };
    let token = match &args.tls_dir {
        Some(dir) => {
            let path = dir.join(troupe_contract::tls::TOKEN_FILE);
            Some(ManagementToken::read(&path).context("the management routes need their token")?)
        }
        None => None,
    };
    if let Ok(url) = std::env::var(env::APP_URL) {
        wait_for_app(&url).await;
    }
    let client = kube::Client::try_default()
        .await
        .context("cannot configure the Kubernetes client (in-cluster service account expected)")?;

    let registry = Registry::new();
    let timing = Timing::default();
    let (pods, _pod_watch) = watch_pods(client.clone(), &namespace, &cluster);
    let store = LeaseStore::new(client, &namespace, &cluster).owned_by(&args.cluster_uid);
    let prober = HttpProber::new(ports::MANAGEMENT, timing.probe_timeout).with_token(token.clone());
    let node = Node::start(
        Identity { pod, address },
        timing,
        store,
        prober,
        pods,
        registry,
    )
    .context("cannot start membership")?;
    node.health()
        .set_ready_wait(Duration::from_millis(args.ready_wait_ms));
    tracing::info!(%cluster, %namespace, me = %node.view().borrow().me, "node started");

    // The management server runs until the node has left, so that /alive keeps answering
    // during the graceful leave.
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let router = troupe_node::guard::protect(node.router(), token);
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await
    });

    let leave_timeout = Duration::from_secs(args.leave_timeout_secs);
    let actors = host_actors(&node, tls).await?;

    shutdown_signal().await;
    // Not Ready first (leave does that), then Leaving in the table, then the actors are
    // handed over and every accepted message finished, then out of the table.
    let handover = {
        let actors = actors.clone();
        async move {
            let report = troupe_node::host::hand_over(actors, leave_timeout).await;
            tracing::info!(?report, "actors drained");
        }
    };
    let report = node
        .leave(handover, leave_timeout)
        .await
        .context("graceful leave failed")?;
    tracing::info!(?report, "left; exiting");
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(2), server).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "management server failed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "management server task failed"),
        _ => {}
    }
    Ok(())
}

/// Starts the actor runtime next to membership: the client API on
/// [`ports::CLIENT`], the node-to-node transport on [`ports::TRANSPORT`], metrics in the
/// node's registry, and a task that feeds every membership change to the runtime with
/// the serving deadline (the runtime checks it on every delivery and stops its actors
/// when it passes) and the draining flag.
/// How long a node waits for its sidecar application to accept connections before it
/// joins anyway (within the kubelet's 60 s startup probe of `/alive`).
const APP_WAIT: Duration = Duration::from_secs(45);

/// Waits until the sidecar application at `url` accepts TCP connections, so that the node
/// joins (and is handed actors to `$activate`) only once the application can answer. A
/// native sidecar is started before the node but may take a while to listen; it listens on
/// localhost, where no kubelet probe reaches. After [`APP_WAIT`] the node joins anyway and
/// says so: its activations then fail (500) until the application answers.
async fn wait_for_app(url: &str) {
    let Some(authority) = troupe_actors::sidecar::authority(url) else {
        tracing::warn!(%url, "cannot tell the application's address from the URL; not waiting for it");
        return;
    };
    let started = tokio::time::Instant::now();
    let mut said = started;
    loop {
        if tokio::net::TcpStream::connect(authority).await.is_ok() {
            tracing::info!(%url, waited_ms = started.elapsed().as_millis() as u64, "the application accepts connections");
            return;
        }
        if started.elapsed() >= APP_WAIT {
            tracing::warn!(%url, "the application still refuses connections after {APP_WAIT:?}; joining without it (its actors fail until it answers)");
            return;
        }
        if said.elapsed() >= Duration::from_secs(5) {
            tracing::info!(%url, "waiting for the application to accept connections");
            said = tokio::time::Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn host_actors(node: &Node, tls: Option<Arc<TransportTls>>) -> anyhow::Result<ActorRuntime> {
    let me = node.view().borrow().me.clone();
    let mut config = RuntimeConfig::from_env(me.pod.clone(), me.incarnation.clone(), |k| {
        std::env::var(k).ok()
    })
    .context("invalid actor runtime configuration")?;
    config.state_store = state_store(node.registry()).await?;
    let (connector, acceptor): (Arc<dyn Connector>, Arc<dyn Acceptor>) = match tls {
        Some(tls) => (Arc::new(tls.connector()), Arc::new(tls.acceptor())),
        None => {
            tracing::warn!(
                "{} is not set: the transport accepts any peer, unauthenticated",
                env::TLS_DIR
            );
            (Arc::new(TcpConnector), Arc::new(PlainAcceptor))
        }
    };
    let actors = ActorRuntime::with_connector(config, node.registry(), connector)
        .context("cannot start the actor runtime")?;

    let transport = tokio::net::TcpListener::bind(("0.0.0.0", ports::TRANSPORT))
        .await
        .with_context(|| format!("cannot listen on transport port {}", ports::TRANSPORT))?;
    let rt = actors.clone();
    tokio::spawn(async move {
        if let Err(e) = rt.serve_transport_with(transport, acceptor).await {
            tracing::error!(error = %e, "transport server failed");
        }
    });
    let client = tokio::net::TcpListener::bind(("0.0.0.0", ports::CLIENT))
        .await
        .with_context(|| format!("cannot listen on client port {}", ports::CLIENT))?;
    let router = actors.client_router();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(client, router).await {
            tracing::error!(error = %e, "client API server failed");
        }
    });

    tokio::spawn(troupe_node::host::feed_actors(
        node.view(),
        node.health().clone(),
        actors.clone(),
    ));
    tracing::info!(
        client = ports::CLIENT,
        transport = ports::TRANSPORT,
        "actor runtime started"
    );
    Ok(actors)
}

/// The durable state store the environment asks for (`None`: memory mode). A database
/// that cannot be used yet does not stop the node: actors answer 503 until it can, and
/// the store's status is logged and exported (`troupe_state_store_up`).
async fn state_store(
    registry: &Registry,
) -> anyhow::Result<Option<std::sync::Arc<dyn troupe_actors::StateStore>>> {
    use troupe_state_postgres::{PostgresStore, Settings, Status};
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let cluster = format!(
        "{}/{}",
        var(env::POD_NAMESPACE).unwrap_or_default(),
        var(env::CLUSTER_NAME).unwrap_or_default()
    );
    let Some(settings) = Settings::from_env(&cluster, |k| std::env::var(k).ok())? else {
        tracing::info!(
            "actor state: memory (a crash loses the actors' states of this node; each loss is counted)"
        );
        return Ok(None);
    };
    let store = PostgresStore::start(settings, registry).context("cannot start the state store")?;
    match store.wait_up(Duration::from_secs(3)).await {
        Status::Up => tracing::info!("actor state: postgres, write-through before every reply"),
        other => {
            tracing::warn!(status = ?other, "actor state: postgres, not usable yet; actors answer 503 until it is")
        }
    }
    Ok(Some(std::sync::Arc::new(store)))
}

fn required(value: Option<String>, var: &str) -> anyhow::Result<String> {
    value.filter(|v| !v.is_empty()).with_context(|| {
        format!("{var} is not set: set it from the downward API (or pass --standalone)")
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the node");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}
