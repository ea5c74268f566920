//! A bounded load generator for the client HTTP API (`actors/API.md`).
//!
//! `concurrency` workers, each with its own keep-alive connection, send `ask` or `tell`
//! requests to `/actors/{type}/{id}/{mode}/{method}`, spreading ids over `ids` actors,
//! until `requests` were sent or `duration` passed, whichever comes first. Only loopback
//! targets are allowed (`127.0.0.0/8`, `::1`, `localhost`): reach a cluster through
//! `kubectl port-forward`.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

/// What to send.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Base URL of a node's client API, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// Actor type.
    pub actor_type: String,
    /// Method.
    pub method: String,
    /// `ask` or `tell`.
    pub ask: bool,
    /// Number of distinct actor ids (`load-0` … `load-{n-1}`).
    pub ids: u64,
    /// Requests in flight.
    pub concurrency: usize,
    /// Upper bound on requests.
    pub requests: u64,
    /// Upper bound on time.
    pub duration: Duration,
    /// Request body.
    pub body: Bytes,
}

/// What happened.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Requests sent.
    pub sent: u64,
    /// Answers by HTTP status (0: transport error).
    pub by_status: BTreeMap<u16, u64>,
    /// Wall time.
    pub elapsed: Duration,
    /// Latency percentiles in microseconds: p50, p90, p99, p99.9, max.
    pub latency_us: [u64; 5],
}

impl LoadReport {
    /// Requests per second.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [p50, p90, p99, p999, max] = self.latency_us;
        writeln!(
            f,
            "sent {} in {:.2} s = {:.0} req/s",
            self.sent,
            self.elapsed.as_secs_f64(),
            self.rate()
        )?;
        writeln!(
            f,
            "latency µs: p50 {p50}  p90 {p90}  p99 {p99}  p99.9 {p999}  max {max}"
        )?;
        write!(f, "status:")?;
        for (s, n) in &self.by_status {
            write!(f, " {s}×{n}")?;
        }
        Ok(())
    }
}

/// Refuses targets that are not on this machine.
pub fn check_loopback(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("only http:// URLs are supported, got {url}"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    let ok = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    anyhow::ensure!(
        ok,
        "loadgen only targets loopback (127.0.0.0/8, ::1, localhost); got {host}. Use kubectl port-forward to reach a cluster."
    );
    Ok(())
}

/// The HTTP client the load generator uses (keep-alive pool).
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A keep-alive client for up to `concurrency` connections.
pub fn client(concurrency: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build(connector)
}

/// Runs the load with a fresh client and reports.
pub async fn run(spec: &LoadSpec) -> anyhow::Result<LoadReport> {
    run_with(&client(spec.concurrency), spec).await
}

/// Runs the load with `client` (reusing its open connections) and reports.
pub async fn run_with(client: &HttpClient, spec: &LoadSpec) -> anyhow::Result<LoadReport> {
    check_loopback(&spec.url)?;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + spec.duration;
    let mode = if spec.ask { "ask" } else { "tell" };
    let mut workers = Vec::new();
    for _ in 0..spec.concurrency.max(1) {
        let (client, next, spec) = (client.clone(), next.clone(), spec.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= spec.requests || Instant::now() >= deadline {
                    break;
                }
                let url = format!(
                    "{}/actors/{}/load-{}/{mode}/{}",
                    spec.url,
                    spec.actor_type,
                    n % spec.ids.max(1),
                    spec.method
                );
                let t = Instant::now();
                let status = match hyper::Request::post(&url).body(Full::new(spec.body.clone())) {
                    Ok(req) => match client.request(req).await {
                        Ok(resp) => {
                            let s = resp.status().as_u16();
                            let _ = resp.into_body().collect().await;
                            s
                        }
                        Err(_) => 0,
                    },
                    Err(_) => 0,
                };
                latencies.push(t.elapsed().as_micros() as u64);
                *statuses.entry(status).or_default() += 1;
            }
            (latencies, statuses)
        }));
    }
    let mut all = Vec::new();
    let mut report = LoadReport::default();
    for w in workers {
        let (l, s) = w.await?;
        all.extend(l);
        for (k, v) in s {
            *report.by_status.entry(k).or_default() += v;
        }
    }
    report.elapsed = started.elapsed();
    report.sent = all.len() as u64;
    all.sort_unstable();
    let pct = |p: f64| -> u64 {
        if all.is_empty() {
            return 0;
        }
        all[((all.len() as f64 * p) as usize).min(all.len() - 1)]
    };
    report.latency_us = [
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(0.999),
        all.last().copied().unwrap_or(0),
    ];
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::check_loopback;

    #[test]
    fn only_loopback_targets_are_allowed() {
        assert!(check_loopback("http://127.0.0.1:8080").is_ok());
        assert!(check_loopback("http://localhost:8080/x").is_ok());
        assert!(check_loopback("http://[::1]:8080").is_ok());
        assert!(check_loopback("http://10.0.0.1:8080").is_err());
        assert!(check_loopback("http://example.com").is_err());
        assert!(check_loopback("https://127.0.0.1").is_err());
    }
}
