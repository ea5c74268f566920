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
//! The actor runtime plugs in here: give it `node.members()` / `node.view()` and
//! `node.registry()`, serve its routes next to `node.router()`, and pass its drain future
//! as the `handover` of `node.leave`.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use prometheus::Registry;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;
use troupe_contract::{env, ports};
use troupe_node::health::{self, Health};
use troupe_node::k8s::{LeaseStore, watch_pods};
use troupe_node::probe::HttpProber;
use troupe_node::{Identity, Node, Timing};

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
    let client = kube::Client::try_default()
        .await
        .context("cannot configure the Kubernetes client (in-cluster service account expected)")?;

    let registry = Registry::new();
    let timing = Timing::default();
    let (pods, _pod_watch) = watch_pods(client.clone(), &namespace, &cluster);
    let store = LeaseStore::new(client, &namespace, &cluster);
    let prober = HttpProber::new(ports::MANAGEMENT, timing.probe_timeout);
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
    let router = node.router();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await
    });

    shutdown_signal().await;
    let report = node
        .leave(async {}, Duration::from_secs(args.leave_timeout_secs))
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
