//! The operator's own Prometheus metrics: reconciles, their durations, errors by kind, API
//! writes by kind and verb (the figure behind "a converged resync makes zero writes"), and
//! whether this replica leads.
//!
//! Owns the registry and the encoding; [`crate::server`] serves it on `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// All metrics of one operator process.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles run, by result (`ok`, `error`).
    pub reconciles: IntCounterVec,
    /// Duration of one reconcile.
    pub reconcile_duration: Histogram,
    /// Failed reconciles by error kind ([`crate::controller::Error::metric_label`]).
    pub errors: IntCounterVec,
    /// Write calls to the API server, by object kind and verb (`apply`, `delete`, `status`,
    /// `event`). Reads (cache lookups) are not counted.
    pub writes: IntCounterVec,
    /// Write calls to the API server, by namespace of the ActorCluster (lets a test or an
    /// operator see the writes made for one namespace).
    pub namespace_writes: IntCounterVec,
    /// Children found converged and therefore not written.
    pub skipped_applies: IntCounter,
    /// 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
    /// Resident memory of this process, refreshed on every scrape (Linux only).
    pub resident_memory: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "troupe_operator_reconciles_total",
                "Reconciles run, by result",
            ),
            &["result"],
        )?;
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "troupe_operator_reconcile_duration_seconds",
                "Duration of one reconcile",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "troupe_operator_reconcile_errors_total",
                "Failed reconciles, by error kind",
            ),
            &["kind"],
        )?;
        let writes = IntCounterVec::new(
            Opts::new(
                "troupe_operator_api_writes_total",
                "Write calls to the Kubernetes API, by object kind and verb",
            ),
            &["kind", "verb"],
        )?;
        let namespace_writes = IntCounterVec::new(
            Opts::new(
                "troupe_operator_namespace_writes_total",
                "Write calls to the Kubernetes API, by namespace",
            ),
            &["namespace"],
        )?;
        let skipped_applies = IntCounter::new(
            "troupe_operator_skipped_applies_total",
            "Children found converged and not written",
        )?;
        let leader = IntGauge::new(
            "troupe_operator_leader",
            "1 while this replica holds the leader Lease",
        )?;
        let resident_memory = IntGauge::new(
            "troupe_operator_resident_memory_bytes",
            "Resident memory (VmRSS) of the operator process",
        )?;
        registry.register(Box::new(resident_memory.clone()))?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(writes.clone()))?;
        registry.register(Box::new(namespace_writes.clone()))?;
        registry.register(Box::new(skipped_applies.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Self {
            registry,
            reconciles,
            reconcile_duration,
            errors,
            writes,
            namespace_writes,
            skipped_applies,
            leader,
            resident_memory,
        })
    }

    /// The registry, for modules that register their own metrics
    /// ([`crate::custom_metrics`]).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts one write call for an object in `namespace`.
    pub fn write(&self, kind: &str, verb: &str, namespace: &str) {
        self.writes.with_label_values(&[kind, verb]).inc();
        self.namespace_writes.with_label_values(&[namespace]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        if let Some(rss) = std::fs::read_to_string("/proc/self/status")
            .ok()
            .as_deref()
            .and_then(resident_bytes)
        {
            self.resident_memory.set(rss);
        }
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// `VmRSS` from the text of `/proc/<pid>/status`, in bytes.
pub fn resident_bytes(proc_status: &str) -> Option<i64> {
    let line = proc_status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read_from_proc_status() {
        let text = "Name:\ttroupe\nVmPeak:\t 9000 kB\nVmRSS:\t   12345 kB\nThreads: 3\n";
        assert_eq!(resident_bytes(text), Some(12345 * 1024));
        assert_eq!(resident_bytes("Name: x"), None);
    }

    #[test]
    fn writes_show_up_by_kind_and_verb() {
        let m = Metrics::new().expect("metrics");
        m.write("Deployment", "apply", "shop");
        m.reconciles.with_label_values(&["ok"]).inc();
        let text = m.encode();
        assert!(
            text.contains("troupe_operator_api_writes_total{kind=\"Deployment\",verb=\"apply\"} 1")
        );
        assert!(text.contains("troupe_operator_reconciles_total{result=\"ok\"} 1"));
        assert!(text.contains("troupe_operator_namespace_writes_total{namespace=\"shop\"} 1"));
    }
}
