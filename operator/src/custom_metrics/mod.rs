//! Mailbox-depth autoscaling support: the operator serves `custom.metrics.k8s.io/v1beta2`
//! as an aggregated API so that the HPA reads `troupe_mailbox_depth` per pod with nothing
//! else installed, and the leader reports depth in status and as pod deletion costs.
//!
//! ```text
//!  pod watch (node pods) ─► scrape every 2 s ─► DepthCache ─┬─► server: /apis/custom.metrics.k8s.io/...
//!   GET <podIP>:8558/metrics   (scrape, prom)     (cache)    │     (api, selector, quantity; TLS + auth)
//!   troupe_node_mailbox_depth                                └─► reporter (leader): status.mailboxDepth,
//!                                                                   pod-deletion-cost
//! ```
//!
//! Pure: [`prom`], [`quantity`], [`selector`], [`cache`], [`api`], the decisions in
//! [`auth`] and [`reporter`]. Edges: [`scrape`] (kube + HTTP), [`tls`] (sockets, files,
//! the authentication ConfigMap), [`auth::Authorizer`] (SubjectAccessReview), [`run`].
//!
//! Not here: the HPA itself ([`crate::build::autoscaling`]) and the ScalingLimited
//! condition ([`crate::status`]).

pub mod api;
pub mod auth;
pub mod cache;
pub mod prom;
pub mod quantity;
pub mod reporter;
pub mod scrape;
pub mod selector;
pub mod server;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kube::Client;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// The API group served.
pub const GROUP: &str = "custom.metrics.k8s.io";
/// The version served.
pub const VERSION: &str = "v1beta2";
/// The one metric served, per pod.
pub const METRIC: &str = troupe_contract::metrics::MAILBOX_DEPTH;

/// What can go wrong serving metrics; each message says what to check.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Certificates or keys cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// Configuration (files, the authentication ConfigMap) cannot be read.
    #[error("{0}")]
    Config(String),
    /// A SubjectAccessReview failed (needs the ClusterRole system:auth-delegator).
    #[error("SubjectAccessReview failed (is system:auth-delegator bound to the operator?): {0}")]
    Authorization(#[source] kube::Error),
    /// The listener cannot be bound.
    #[error("binding the custom metrics server: {0}")]
    Io(#[from] std::io::Error),
}

/// Command-line flags of the metrics API.
#[derive(Debug, Clone, clap::Args)]
pub struct Flags {
    /// Serve custom.metrics.k8s.io (HTTPS) on this address; unset: not served.
    #[arg(long, env = "TROUPE_CUSTOM_METRICS_ADDR")]
    pub custom_metrics_addr: Option<SocketAddr>,
    /// PEM serving certificate of the metrics API.
    #[arg(
        long,
        env = "TROUPE_CUSTOM_METRICS_CERT",
        default_value = "/var/run/troupe/custom-metrics-tls/tls.crt"
    )]
    pub custom_metrics_cert: PathBuf,
    /// PEM private key of the metrics API.
    #[arg(
        long,
        env = "TROUPE_CUSTOM_METRICS_KEY",
        default_value = "/var/run/troupe/custom-metrics-tls/tls.key"
    )]
    pub custom_metrics_key: PathBuf,
    /// Authorize metric reads with SubjectAccessReview.
    #[arg(long, env = "TROUPE_CUSTOM_METRICS_AUTHORIZATION", default_value_t = true, action = clap::ArgAction::Set)]
    pub custom_metrics_authorization: bool,
    /// Milliseconds between two scrapes of the node pods.
    #[arg(long, env = "TROUPE_DEPTH_SCRAPE_MS", default_value_t = 2000)]
    pub depth_scrape_ms: u64,
    /// Write controller.kubernetes.io/pod-deletion-cost = mailbox depth on node pods.
    #[arg(long, env = "TROUPE_POD_DELETION_COST", default_value_t = true, action = clap::ArgAction::Set)]
    pub pod_deletion_cost: bool,
}

/// Scrapes the nodes, reports depth while leading, and serves the metrics API when
/// `flags.custom_metrics_addr` is set, until `stop` turns true.
pub async fn run(
    client: Client,
    flags: Flags,
    metrics: Metrics,
    is_leader: impl Fn() -> bool + Send + 'static,
    cache: Arc<RwLock<cache::DepthCache>>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    let interval = Duration::from_millis(flags.depth_scrape_ms.max(200));
    let max_age = (interval * 5).max(Duration::from_secs(10));
    let config = scrape::ScrapeConfig {
        interval,
        timeout: interval.min(Duration::from_secs(2)),
        concurrency: 32,
    };
    let scrape_metrics = scrape::ScrapeMetrics::register(metrics.registry())
        .map_err(|e| tracing::warn!(error = %e, "cannot register the scrape metrics"))
        .ok();
    let scraper = tokio::spawn(scrape::run(
        client.clone(),
        cache.clone(),
        config,
        scrape_metrics,
    ));
    let reporter = tokio::spawn(reporter::run(
        client.clone(),
        cache.clone(),
        metrics,
        is_leader,
        interval.max(Duration::from_secs(2)),
        max_age,
        flags.pod_deletion_cost,
    ));
    let result = match flags.custom_metrics_addr {
        Some(addr) => serve(client, &flags, addr, cache, interval, max_age, stop).await,
        None => {
            let _ = stop.wait_for(|s| *s).await;
            Ok(())
        }
    };
    scraper.abort();
    reporter.abort();
    result
}

async fn serve(
    client: Client,
    flags: &Flags,
    addr: SocketAddr,
    cache: Arc<RwLock<cache::DepthCache>>,
    window: Duration,
    max_age: Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    let files = tls::CertFiles {
        cert: flags.custom_metrics_cert.clone(),
        key: flags.custom_metrics_key.clone(),
    };
    // The certificate Secret and the ConfigMap may lag the pod at install: retry.
    let (material, server_config) = loop {
        let attempt = async {
            let m = tls::Material::read(&client, &files).await?;
            let c = m.server_config()?;
            Ok::<_, Error>((m, c))
        };
        match attempt.await {
            Ok(ok) => break ok,
            Err(e) => {
                tracing::warn!(error = %e, "custom metrics API not served yet; retrying in 5 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                }
            }
        }
    };
    let request_header = Arc::new(RwLock::new(material.request_header.clone()));
    let (config_tx, config_rx) = watch::channel(Arc::new(server_config));
    let reload = {
        let client = client.clone();
        let request_header = request_header.clone();
        let mut current = material;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let next = match tls::Material::read(&client, &files).await {
                    Ok(n) if n != current => n,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "custom metrics: reloading TLS material failed; keeping the old");
                        continue;
                    }
                };
                match next.server_config() {
                    Ok(c) => {
                        if let Ok(mut rh) = request_header.write() {
                            *rh = next.request_header.clone();
                        }
                        let _ = config_tx.send(Arc::new(c));
                        tracing::info!("custom metrics: TLS material reloaded");
                        current = next;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "custom metrics: new TLS material unusable; keeping the old")
                    }
                }
            }
        })
    };
    let authorizer = if flags.custom_metrics_authorization {
        auth::Authorizer::delegated(client)
    } else {
        auth::Authorizer::AllowAuthenticated
    };
    let app = server::app(server::ApiState {
        cache,
        request_header,
        authorizer: Arc::new(authorizer),
        window,
        max_age,
    });
    let listener = tls::TlsListener::new(tokio::net::TcpListener::bind(addr).await?, config_rx)?;
    tracing::info!(%addr, "serving custom.metrics.k8s.io/v1beta2");
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<tls::PeerInfo>(),
    )
    .with_graceful_shutdown(async move {
        let _ = stop.wait_for(|s| *s).await;
    })
    .await;
    reload.abort();
    served.map_err(Error::Io)
}
