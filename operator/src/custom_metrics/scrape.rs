//! Gathers mailbox depth from the node pods: a pod watch (node pods of every ActorCluster,
//! by label) and, every interval, a concurrent GET of each pod's management `/metrics`
//! (port 8558), whose `troupe_node_mailbox_depth` goes into the [`DepthCache`].
//!
//! A failed scrape leaves the pod's previous sample to age out (the readers drop samples
//! older than their `max_age`); it never writes a guess.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use troupe_contract::{labels, metrics, ports};

use super::cache::{DepthCache, DepthSample, PodTarget};
use super::prom;

/// The pod annotation the ReplicaSet controller reads when it picks pods to delete.
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// Largest `/metrics` page read.
const MAX_PAGE: usize = 4 * 1024 * 1024;

/// The label selector of every node pod the operator manages.
pub fn node_pods_selector() -> String {
    format!(
        "{}={},{}={}",
        labels::NAME,
        labels::NAME_VALUE,
        labels::MANAGED_BY,
        labels::MANAGED_BY_VALUE
    )
}

/// The scrape target of a pod: running, with an IP and its cluster label, and made by its
/// cluster's Deployment (controlled by the ReplicaSet `<cluster>-<pod-template-hash>`);
/// else `None`. The labels alone are not enough: anyone who may create a pod can wear
/// them, and the operator would read that pod's page and patch its deletion cost.
pub fn target_of(pod: &Pod) -> Option<PodTarget> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip = status.pod_ip.clone().filter(|ip| !ip.is_empty())?;
    let pod_labels = pod.metadata.labels.clone().unwrap_or_default();
    let cluster = pod_labels.get(labels::INSTANCE)?.clone();
    let hash = pod_labels.get("pod-template-hash")?;
    let made_by_its_deployment = pod.owner_references().iter().any(|r| {
        r.controller == Some(true)
            && r.kind == "ReplicaSet"
            && r.api_version == "apps/v1"
            && r.name == format!("{cluster}-{hash}")
    });
    if !made_by_its_deployment {
        return None;
    }
    Some(PodTarget {
        namespace: pod.namespace()?,
        name: pod.metadata.name.clone()?,
        ip,
        cluster,
        labels: pod_labels.into_iter().collect(),
        deletion_cost: pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DELETION_COST))
            .cloned(),
    })
}

/// The scraper's own metrics.
#[derive(Debug, Clone)]
pub struct ScrapeMetrics {
    /// `troupe_operator_depth_scrapes_total{result="ok"|"error"}`.
    pub scrapes: prometheus::IntCounterVec,
    /// `troupe_operator_depth_pods`: node pods scraped each round.
    pub pods: prometheus::IntGauge,
}

impl ScrapeMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let scrapes = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "troupe_operator_depth_scrapes_total",
                "Scrapes of node pods' mailbox depth, by result",
            ),
            &["result"],
        )?;
        let pods = prometheus::IntGauge::new(
            "troupe_operator_depth_pods",
            "Node pods whose mailbox depth is scraped",
        )?;
        registry.register(Box::new(scrapes.clone()))?;
        registry.register(Box::new(pods.clone()))?;
        Ok(Self { scrapes, pods })
    }
}

/// Scraping settings.
#[derive(Debug, Clone, Copy)]
pub struct ScrapeConfig {
    /// Time between two rounds.
    pub interval: Duration,
    /// Time limit of one pod's scrape.
    pub timeout: Duration,
    /// Pods scraped at once.
    pub concurrency: usize,
}

/// Watches node pods and scrapes them forever, filling `cache`.
pub async fn run(
    client: Client,
    cache: Arc<RwLock<DepthCache>>,
    config: ScrapeConfig,
    metrics: Option<ScrapeMetrics>,
) {
    let (store, writer) = reflector::store::<Pod>();
    let watch = watcher(
        Api::<Pod>::all(client),
        watcher::Config::default().labels(&node_pods_selector()),
    )
    .backoff(crate::watches::WatchBackoff::new(13))
    .reflect(writer)
    .applied_objects()
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "custom metrics: pod watch");
        }
    });
    tokio::spawn(watch);
    let http: HttpClient<HttpConnector, Empty<Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build_http();
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        round(&store, &http, &cache, config, metrics.as_ref()).await;
    }
}

async fn round(
    store: &Store<Pod>,
    http: &HttpClient<HttpConnector, Empty<Bytes>>,
    cache: &Arc<RwLock<DepthCache>>,
    config: ScrapeConfig,
    metrics: Option<&ScrapeMetrics>,
) {
    let targets: Vec<PodTarget> = store.state().iter().filter_map(|p| target_of(p)).collect();
    if let Ok(mut c) = cache.write() {
        c.set_pods(targets.clone());
    }
    let results: Vec<(PodTarget, Option<Page>)> = futures::stream::iter(targets)
        .map(|t| async move {
            let v = scrape(http, &t.ip, config.timeout).await;
            (t, v)
        })
        .buffer_unordered(config.concurrency.max(1))
        .collect()
        .await;
    let at = SystemTime::now();
    if let Some(m) = metrics {
        let ok = results
            .iter()
            .filter(|(_, v)| v.is_some_and(|p| p.depth.is_some()))
            .count();
        m.pods.set(i64::try_from(results.len()).unwrap_or(i64::MAX));
        m.scrapes.with_label_values(&["ok"]).inc_by(ok as u64);
        m.scrapes
            .with_label_values(&["error"])
            .inc_by((results.len() - ok) as u64);
    }
    if let Ok(mut c) = cache.write() {
        for (t, page) in results {
            if let Some(up) = page.as_ref().and_then(|p| p.store_up) {
                c.record_store(&t.namespace, &t.name, up, at);
            }
            match page.and_then(|p| p.depth) {
                Some(value) => c.record(&t.namespace, &t.name, DepthSample { value, at }),
                None => {
                    tracing::debug!(pod = %t.name, namespace = %t.namespace, "custom metrics: no depth sample")
                }
            }
        }
    }
}

/// What one node's `/metrics` page says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Page {
    /// `troupe_node_mailbox_depth` (or, from a node of an older release, its deprecated
    /// name `troupe_mailbox_depth_total`).
    pub depth: Option<f64>,
    /// `troupe_state_store_up` (absent in memory mode).
    pub store_up: Option<bool>,
}

/// Reads what the operator needs from a node's metrics page.
pub fn read_page(text: &str) -> Page {
    Page {
        depth: prom::unlabelled(text, metrics::NODE_MAILBOX_DEPTH)
            .or_else(|| prom::unlabelled(text, metrics::MAILBOX_DEPTH_TOTAL)),
        store_up: prom::unlabelled(text, metrics::STATE_STORE_UP).map(|v| v >= 1.0),
    }
}

/// Reads the per-pod total depth and store health from one node; `None` on any failure.
async fn scrape(
    http: &HttpClient<HttpConnector, Empty<Bytes>>,
    ip: &str,
    timeout: Duration,
) -> Option<Page> {
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    };
    let uri: hyper::Uri = format!("http://{host}:{}/metrics", ports::MANAGEMENT)
        .parse()
        .ok()?;
    let fetch = async {
        let resp = http.get(uri).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body = Limited::new(resp.into_body(), MAX_PAGE)
            .collect()
            .await
            .ok()?;
        let text = String::from_utf8(body.to_bytes().to_vec()).ok()?;
        Some(read_page(&text))
    };
    tokio::time::timeout(timeout, fetch).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_gives_depth_and_store_health() {
        let page = "troupe_mailbox_depth_total 4\ntroupe_state_store_up 0\n";
        assert_eq!(
            read_page(page),
            Page {
                depth: Some(4.0),
                store_up: Some(false)
            }
        );
        assert_eq!(read_page("troupe_mailbox_depth_total 4\n").store_up, None);
        // The v1 name wins; a node of an older release (a rolling update) is still read.
        assert_eq!(
            read_page("troupe_node_mailbox_depth 6\ntroupe_mailbox_depth_total 6\n").depth,
            Some(6.0)
        );
        assert_eq!(read_page("troupe_node_mailbox_depth 7\n").depth, Some(7.0));
        assert_eq!(read_page("troupe_mailbox_depth_total 4\n").depth, Some(4.0));
    }

    fn pod(phase: &str, ip: Option<&str>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "orders-1", "namespace": "shop",
                "labels": {"app.kubernetes.io/name": "troupe-node", "app.kubernetes.io/instance": "orders",
                           "pod-template-hash": "5d9f"},
                "annotations": {DELETION_COST: "12"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                     "name": "orders-5d9f", "uid": "rs-1", "controller": true}]
            },
            "status": {"phase": phase, "podIP": ip}
        }))
        .expect("pod")
    }

    #[test]
    fn scrape_metrics_show_on_the_operator_page() {
        let m = crate::metrics::Metrics::new().expect("metrics");
        let s = ScrapeMetrics::register(m.registry()).expect("register");
        s.scrapes.with_label_values(&["ok"]).inc();
        s.pods.set(3);
        let page = m.encode();
        assert!(page.contains("troupe_operator_depth_scrapes_total{result=\"ok\"} 1"));
        assert!(page.contains("troupe_operator_depth_pods 3"));
    }

    #[test]
    fn a_pod_that_only_wears_the_labels_is_not_a_target() {
        // Anyone who may create pods can put the node labels on one; the scraper would
        // read its page and the operator patch its deletion cost.
        let mut stranger = pod("Running", Some("10.1.2.3"));
        stranger.metadata.owner_references = None;
        assert!(target_of(&stranger).is_none(), "a pod without a ReplicaSet");
        let mut other = pod("Running", Some("10.1.2.3"));
        if let Some(r) = other.metadata.owner_references.as_mut() {
            r[0].name = "billing-5d9f".into();
        }
        assert!(target_of(&other).is_none(), "a pod of another Deployment");
        let mut not_controller = pod("Running", Some("10.1.2.3"));
        if let Some(r) = not_controller.metadata.owner_references.as_mut() {
            r[0].controller = None;
        }
        assert!(
            target_of(&not_controller).is_none(),
            "a ReplicaSet that is not the controller"
        );
    }

    #[test]
    fn running_pods_with_an_ip_are_targets() {
        let t = target_of(&pod("Running", Some("10.1.2.3"))).expect("target");
        assert_eq!(
            (t.namespace.as_str(), t.name.as_str(), t.ip.as_str()),
            ("shop", "orders-1", "10.1.2.3")
        );
        assert_eq!(t.cluster, "orders");
        assert_eq!(t.deletion_cost.as_deref(), Some("12"));
        assert!(target_of(&pod("Pending", Some("10.1.2.3"))).is_none());
        assert!(target_of(&pod("Running", None)).is_none());
        assert_eq!(
            node_pods_selector(),
            "app.kubernetes.io/name=troupe-node,app.kubernetes.io/managed-by=troupe-operator"
        );
    }
}
