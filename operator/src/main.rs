//! The `troupe-operator` binary: flags, logging, the HTTP server, leader election and the
//! controller, wired together; everything else lives in the library.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio::sync::watch;
use troupe_operator::controller::{self, Config};
use troupe_operator::leader::Election;
use troupe_operator::metrics::Metrics;
use troupe_operator::server::{self, ServerState};

/// Reconciles ActorClusters into actor-node Deployments, Services, HPAs and RBAC.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Node image for ActorClusters that do not name one.
    #[arg(long, env = "TROUPE_NODE_IMAGE", default_value = "troupe-node:0.1.0")]
    node_image: String,
    /// Address of the metrics and health server.
    #[arg(long, env = "TROUPE_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Elect a leader through a Lease (turn off only when running a single replica).
    #[arg(long, env = "TROUPE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "TROUPE_LEADER_LEASE",
        default_value = "troupe-operator-leader"
    )]
    leader_lease: String,
    /// Namespace of the leader Lease (defaults to the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "troupe-system")]
    namespace: String,
    /// The chart's node ClusterRole: bound (the `bind` verb) to each ActorCluster's node
    /// ServiceAccount in its namespace.
    #[arg(long, env = "TROUPE_NODE_CLUSTER_ROLE", default_value = "troupe-node")]
    node_cluster_role: String,
    /// Identity in the election and in Events (defaults to the pod's name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds between full resyncs of every ActorCluster.
    #[arg(long, env = "TROUPE_RESYNC_SECONDS", default_value_t = 300)]
    resync_seconds: u64,
    /// ActorClusters reconciled at once.
    #[arg(long, env = "TROUPE_CONCURRENCY", default_value_t = 8)]
    concurrency: u16,
    /// Log format: `json` or `text`.
    #[arg(long, env = "TROUPE_LOG_FORMAT", default_value = "json")]
    log_format: String,
    /// Mailbox-depth scraping and the custom.metrics.k8s.io API.
    #[command(flatten)]
    custom_metrics: troupe_operator::custom_metrics::Flags,
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TROUPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().with_current_span(false).init();
    } else {
        builder.init();
    }
}

async fn terminated() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args.log_format);
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("troupe-operator-{}", std::process::id()));

    let metrics = Metrics::new().context("registering metrics")?;
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);

    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("binding the HTTP server to {}", args.http_addr))?;
    let watch_health = troupe_operator::watches::WatchHealth::default();
    let app = server::app(ServerState {
        metrics: metrics.clone(),
        ready: ready.clone(),
        watches: watch_health.clone(),
    });
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = server_stop.wait_for(|s| *s).await;
            })
            .await
    });

    tokio::spawn(async move {
        terminated().await;
        tracing::info!("shutdown requested");
        let _ = stop_tx.send(true);
    });

    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (in-cluster config or KUBECONFIG)")?;
    // The node pods' scraped metrics: depth for the HPA, state-store health for status.
    let scraped = std::sync::Arc::new(std::sync::RwLock::new(
        troupe_operator::custom_metrics::cache::DepthCache::default(),
    ));
    let config = Config {
        default_image: args.node_image.clone(),
        resync: Duration::from_secs(args.resync_seconds.max(10)),
        concurrency: args.concurrency.max(1),
        instance: Some(identity.clone()),
        scraped: Some(scraped.clone()),
        namespace: args.namespace.clone(),
        node_cluster_role: args.node_cluster_role.clone(),
    };
    tracing::info!(node_image = %args.node_image, %identity, "troupe-operator starting");
    {
        let leading = metrics.clone();
        let depth = troupe_operator::custom_metrics::run(
            client.clone(),
            args.custom_metrics.clone(),
            metrics.clone(),
            move || leading.leader.get() == 1,
            scraped,
            stop_rx.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = depth.await {
                tracing::error!(error = %e, "custom metrics API stopped");
            }
        });
    }

    if !args.leader_election {
        ready.store(true, Ordering::Relaxed);
        metrics.leader.set(1);
        let mut stop = stop_rx.clone();
        controller::run(
            client,
            config,
            metrics.clone(),
            watch_health.clone(),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        )
        .await;
    } else {
        loop {
            // The API server may be away (an outage is when a lease is lost): keep trying
            // instead of exiting, so the operator resumes without a restart.
            let joined = loop {
                match Election::join(
                    client.clone(),
                    &args.namespace,
                    &args.leader_lease,
                    &identity,
                )
                .await
                {
                    Ok(e) => break Some(e),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot join the leader election (API server reachable? Role on leases?); retrying in 2 s");
                        let mut stop = stop_rx.clone();
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                            _ = stop.wait_for(|s| *s) => break None,
                        }
                    }
                }
            };
            let Some(mut election) = joined else {
                break;
            };
            ready.store(true, Ordering::Relaxed);
            tracing::info!("standing by for the leader lease");
            let mut stop = stop_rx.clone();
            let leading = tokio::select! {
                l = election.until_leading() => l,
                _ = stop.wait_for(|s| *s) => false,
            };
            if !leading {
                election.leave().await;
                break;
            }
            tracing::info!("leading: reconciling");
            metrics.leader.set(1);
            let mut lost = election.changes.clone();
            let mut stop = stop_rx.clone();
            controller::run(
                client.clone(),
                config.clone(),
                metrics.clone(),
                watch_health.clone(),
                async move {
                    tokio::select! {
                        _ = Election::until_lost(&mut lost) => tracing::warn!("leader lease lost"),
                        _ = stop.wait_for(|s| *s) => {}
                    }
                },
            )
            .await;
            metrics.leader.set(0);
            let stopping = *stop_rx.borrow();
            election.leave().await;
            if stopping {
                break;
            }
        }
    }
    tracing::info!("controller stopped");
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server failed"),
        Err(e) => tracing::warn!(error = %e, "HTTP server task failed"),
    }
    Ok(())
}
