//! The membership metrics, registered in the node's one [`prometheus::Registry`].
//!
//! The registry is created by the binary and shared: the actor runtime registers its own
//! metrics in it, and `/metrics` ([`crate::http`]) renders all of them.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `troupe_members` | gauge | `status` (Joining, Up, Leaving, Down) |
//! | `troupe_bootstrap_state` | gauge, 1 for the current state | `state` |
//! | `troupe_member_table_version` | gauge | |
//! | `troupe_coordinator` | gauge, 1 while this node holds the lease | |
//! | `troupe_join_duration_seconds` | histogram: process start → Up | `kind` (formed, joined) |
//! | `troupe_failures_detected_total` | counter, by the coordinator | `reason` |
//! | `troupe_store_errors_total` | counter | `kind` |

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use troupe_contract::{MemberStatus, MemberTable};

use crate::coordinator::DownReason;
use crate::view::BootstrapState;

/// Handles to the membership metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    members: IntGaugeVec,
    bootstrap_state: IntGaugeVec,
    table_version: IntGauge,
    coordinator: IntGauge,
    join_duration: HistogramVec,
    failures: IntCounterVec,
    store_errors: IntCounterVec,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            members: IntGaugeVec::new(
                Opts::new("troupe_members", "Members of the cluster by status, as this node sees the member table."),
                &["status"],
            )?,
            bootstrap_state: IntGaugeVec::new(
                Opts::new("troupe_bootstrap_state", "1 for the bootstrap state this node is in, 0 for the others."),
                &["state"],
            )?,
            table_version: IntGauge::new(
                "troupe_member_table_version",
                "Version of the latest member table this node has seen.",
            )?,
            coordinator: IntGauge::new(
                "troupe_coordinator",
                "1 while this node holds the coordinator lease.",
            )?,
            join_duration: HistogramVec::new(
                HistogramOpts::new(
                    "troupe_join_duration_seconds",
                    "Time from process start to Up: kind=formed when this node formed the cluster, joined otherwise.",
                )
                .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0]),
                &["kind"],
            )?,
            failures: IntCounterVec::new(
                Opts::new("troupe_failures_detected_total", "Members this node downed as coordinator, by reason."),
                &["reason"],
            )?,
            store_errors: IntCounterVec::new(
                Opts::new("troupe_store_errors_total", "Failed calls to the member store (the Lease), by kind."),
                &["kind"],
            )?,
        };
        registry.register(Box::new(m.members.clone()))?;
        registry.register(Box::new(m.bootstrap_state.clone()))?;
        registry.register(Box::new(m.table_version.clone()))?;
        registry.register(Box::new(m.coordinator.clone()))?;
        registry.register(Box::new(m.join_duration.clone()))?;
        registry.register(Box::new(m.failures.clone()))?;
        registry.register(Box::new(m.store_errors.clone()))?;
        Ok(m)
    }

    /// Publishes the counts of `table`.
    pub fn set_table(&self, table: &MemberTable) {
        for s in [
            MemberStatus::Joining,
            MemberStatus::Up,
            MemberStatus::Leaving,
            MemberStatus::Down,
        ] {
            let n = i64::try_from(table.count(s)).unwrap_or(i64::MAX);
            self.members
                .with_label_values(&[s.to_string().as_str()])
                .set(n);
        }
        self.table_version
            .set(i64::try_from(table.version).unwrap_or(i64::MAX));
    }

    /// Publishes the bootstrap state.
    pub fn set_state(&self, state: BootstrapState) {
        for s in BootstrapState::ALL {
            self.bootstrap_state
                .with_label_values(&[s.as_str()])
                .set(i64::from(s == state));
        }
    }

    /// Publishes whether this node coordinates.
    pub fn set_coordinator(&self, yes: bool) {
        self.coordinator.set(i64::from(yes));
    }

    /// Records the time from start to Up.
    pub fn observe_join(&self, formed: bool, seconds: f64) {
        let kind = if formed { "formed" } else { "joined" };
        self.join_duration
            .with_label_values(&[kind])
            .observe(seconds);
    }

    /// Counts one member downed by this node.
    pub fn failure_detected(&self, reason: DownReason) {
        self.failures.with_label_values(&[reason.as_str()]).inc();
    }

    /// Counts one failed store call.
    pub fn store_error(&self, kind: &str) {
        self.store_errors.with_label_values(&[kind]).inc();
    }
}
