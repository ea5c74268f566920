//! The runtime's Prometheus metrics.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `troupe_mailbox_depth` | gauge | `actor_type` |
//! | `troupe_node_mailbox_depth` | gauge (the HPA's per-pod metric) | — |
//! | `troupe_mailbox_depth_total` | gauge, **deprecated** name of the one above, removed at v1 | — |
//! | `troupe_messages_processed_total` | counter | `actor_type` |
//! | `troupe_processing_seconds` | histogram (sampled) | `actor_type` |
//! | `troupe_mailbox_wait_seconds` | histogram (sampled) | `actor_type` |
//! | `troupe_dead_letters_total` | counter | `actor_type`, `reason` (`dropped_oldest`, `dropped_newest`, `undeliverable`, `aborted`: accepted, then its activation was stopped at once) |
//! | `troupe_rejected_total` | counter | `actor_type`, `reason` |
//! | `troupe_active_actors` | gauge | `actor_type` |
//! | `troupe_parked_actor_states` | gauge (states kept on this node for actors not active here) | `actor_type` |
//! | `troupe_max_actors` | gauge (the node's bound on activations plus kept states, `TROUPE_MAX_ACTORS`) | — |
//! | `troupe_activations_refused_total` | counter (a new activation refused: the node held `troupe_max_actors`) | `actor_type` |
//! | `troupe_actor_restarts_total` | counter | `actor_type` |
//! | `troupe_forwarded_total` | counter | — |
//! | `troupe_handovers_total` | counter | `direction` (`out`, `in`) |
//! | `troupe_handovers_missed_total` | counter (previous owner gone: its state, if any, is lost) | — |
//! | `troupe_actor_states_lost_total` | counter (an actor activated again without the state its last holder had: the holder died) | `actor_type` |
//! | `troupe_transport_errors_total` | counter | `kind` |
//!
//! Mailbox depth costs nothing per message: a custom collector walks the activations and
//! sums their queue lengths when Prometheus scrapes (per type, and the total the HPA
//! reads). Everything else on the per-message path is resolved once per type
//! ([`TypeStats`]).

use std::sync::{Arc, RwLock};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
    core::{Collector, Desc},
    proto::MetricFamily,
};
use troupe_contract::metrics::{MAILBOX_DEPTH, MAILBOX_DEPTH_TOTAL, NODE_MAILBOX_DEPTH};

use crate::error::Error;

/// Metrics of one actor type, resolved once.
#[derive(Debug)]
pub struct TypeStats {
    /// Messages handled.
    pub processed: IntCounter,
    /// Handler time (sampled).
    pub processing: Histogram,
    /// Time in mailbox (sampled).
    pub waiting: Histogram,
    /// Live activations.
    pub active: IntGauge,
    /// States kept for actors not active here.
    pub parked: IntGauge,
    /// New activations refused at the node's bound.
    pub refused_at_capacity: IntCounter,
    /// Restarts after a panic.
    pub restarts: IntCounter,
    /// Dropped by drop-oldest.
    pub dropped_oldest: IntCounter,
    /// Dropped by drop-newest.
    pub dropped_newest: IntCounter,
    /// Lost with a failed hand-over or an unreachable owner.
    pub undeliverable: IntCounter,
    /// Accepted tells dropped because their activation was stopped at once (the node
    /// stopped serving or was downed).
    pub aborted: IntCounter,
    /// States lost with a dead holder (counted by the node activating the actor again).
    pub states_lost: IntCounter,
    /// Refused: reject policy.
    pub rejected_full: IntCounter,
    /// Refused: backpressure timeout.
    pub rejected_backpressure: IntCounter,
    /// Durable store: states written through.
    pub state_writes: IntCounter,
    /// Durable store: time from a turn's end to its write being durable.
    pub state_write_seconds: Histogram,
    /// Durable store: fenced writes (or loads) refused because another activation wrote.
    pub state_conflicts: IntCounter,
    /// Durable store: calls that failed because the store was unavailable.
    pub state_unavailable: IntCounter,
    /// Durable store: states refused as larger than the store takes.
    pub state_too_large: IntCounter,
}

/// All metrics of one runtime.
#[derive(Debug, Clone)]
pub struct RuntimeMetrics {
    depth: DepthCollector,
    processed: IntCounterVec,
    processing: HistogramVec,
    waiting: HistogramVec,
    dead_letters: IntCounterVec,
    rejected: IntCounterVec,
    active: IntGaugeVec,
    parked: IntGaugeVec,
    refused_at_capacity: IntCounterVec,
    /// The node's bound on activations plus kept states.
    pub max_actors: IntGauge,
    restarts: IntCounterVec,
    /// Messages forwarded to another node.
    pub forwarded: IntCounter,
    /// Actor states handed out to a new owner.
    pub handovers_out: IntCounter,
    /// Actor states received from a former owner.
    pub handovers_in: IntCounter,
    /// Activations whose previous owner was gone (hard kill): whatever state and queued
    /// messages it held are lost. Counted, not hidden.
    pub handovers_missed: IntCounter,
    /// Malformed frames and lost connections.
    pub transport_errors: IntCounterVec,
    states_lost: IntCounterVec,
    state_writes: IntCounterVec,
    state_write_seconds: HistogramVec,
    state_errors: IntCounterVec,
}

const TIME_BUCKETS: &[f64] = &[
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
];

impl RuntimeMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, Error> {
        let by_type = &["actor_type"];
        let m = Self {
            depth: DepthCollector::default(),
            processed: IntCounterVec::new(
                Opts::new(
                    "troupe_messages_processed_total",
                    "Messages handled by actors.",
                ),
                by_type,
            )?,
            processing: HistogramVec::new(
                HistogramOpts::new(
                    "troupe_processing_seconds",
                    "Time an actor spent handling one message (sampled).",
                )
                .buckets(TIME_BUCKETS.to_vec()),
                by_type,
            )?,
            waiting: HistogramVec::new(
                HistogramOpts::new(
                    "troupe_mailbox_wait_seconds",
                    "Time a message waited in its mailbox (sampled).",
                )
                .buckets(TIME_BUCKETS.to_vec()),
                by_type,
            )?,
            dead_letters: IntCounterVec::new(
                Opts::new(
                    "troupe_dead_letters_total",
                    "Accepted messages that were never handled (dropped by policy, or undeliverable).",
                ),
                &["actor_type", "reason"],
            )?,
            rejected: IntCounterVec::new(
                Opts::new(
                    "troupe_rejected_total",
                    "Messages refused because a mailbox was full.",
                ),
                &["actor_type", "reason"],
            )?,
            active: IntGaugeVec::new(
                Opts::new(
                    "troupe_active_actors",
                    "Live actor activations on this node.",
                ),
                by_type,
            )?,
            parked: IntGaugeVec::new(
                Opts::new(
                    "troupe_parked_actor_states",
                    "Actor states kept on this node for actors not active here (passivated, moved away, handed over).",
                ),
                by_type,
            )?,
            refused_at_capacity: IntCounterVec::new(
                Opts::new(
                    "troupe_activations_refused_total",
                    "New activations refused (503) because the node held its bound of actors (troupe_max_actors).",
                ),
                by_type,
            )?,
            max_actors: IntGauge::new(
                "troupe_max_actors",
                "Most actors (activations plus kept states) this node holds in memory.",
            )?,
            restarts: IntCounterVec::new(
                Opts::new(
                    "troupe_actor_restarts_total",
                    "Actor restarts after a handler panic.",
                ),
                by_type,
            )?,
            forwarded: IntCounter::new(
                "troupe_forwarded_total",
                "Messages forwarded to the node that owns their actor.",
            )?,
            handovers_out: IntCounter::with_opts(
                Opts::new("troupe_handovers_total", "Actor states handed over.")
                    .const_label("direction", "out"),
            )?,
            handovers_in: IntCounter::with_opts(
                Opts::new("troupe_handovers_total", "Actor states handed over.")
                    .const_label("direction", "in"),
            )?,
            handovers_missed: IntCounter::new(
                "troupe_handovers_missed_total",
                "Activations whose previous owner was gone (killed): any state it held is lost.",
            )?,
            transport_errors: IntCounterVec::new(
                Opts::new(
                    "troupe_transport_errors_total",
                    "Node-to-node transport errors.",
                ),
                &["kind"],
            )?,
            states_lost: IntCounterVec::new(
                Opts::new(
                    "troupe_actor_states_lost_total",
                    "Actors activated again without the state their last holder had (it died): each lost state counted once, by the node that activates the actor again.",
                ),
                by_type,
            )?,
            state_writes: IntCounterVec::new(
                Opts::new(
                    "troupe_state_writes_total",
                    "Actor states written through to the durable store before the reply.",
                ),
                by_type,
            )?,
            state_write_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "troupe_state_write_seconds",
                    "Time from the end of a turn until its state write was durable.",
                )
                .buckets(TIME_BUCKETS.to_vec()),
                by_type,
            )?,
            state_errors: IntCounterVec::new(
                Opts::new(
                    "troupe_state_errors_total",
                    "Durable store calls that failed, by kind: conflict (a fenced write refused: another activation wrote; that activation stopped), unavailable (503 to the client), too_large (413).",
                ),
                &["actor_type", "kind"],
            )?,
        };
        registry.register(Box::new(m.depth.clone()))?;
        registry.register(Box::new(m.processed.clone()))?;
        registry.register(Box::new(m.processing.clone()))?;
        registry.register(Box::new(m.waiting.clone()))?;
        registry.register(Box::new(m.dead_letters.clone()))?;
        registry.register(Box::new(m.rejected.clone()))?;
        registry.register(Box::new(m.active.clone()))?;
        registry.register(Box::new(m.parked.clone()))?;
        registry.register(Box::new(m.refused_at_capacity.clone()))?;
        registry.register(Box::new(m.max_actors.clone()))?;
        registry.register(Box::new(m.restarts.clone()))?;
        registry.register(Box::new(m.forwarded.clone()))?;
        registry.register(Box::new(m.handovers_out.clone()))?;
        registry.register(Box::new(m.handovers_in.clone()))?;
        registry.register(Box::new(m.handovers_missed.clone()))?;
        registry.register(Box::new(m.states_lost.clone()))?;
        registry.register(Box::new(m.transport_errors.clone()))?;
        registry.register(Box::new(m.state_writes.clone()))?;
        registry.register(Box::new(m.state_write_seconds.clone()))?;
        registry.register(Box::new(m.state_errors.clone()))?;
        Ok(m)
    }

    /// The per-type metrics of `actor_type` (call once per type and keep them).
    pub fn for_type(&self, actor_type: &str) -> TypeStats {
        let l = &[actor_type];
        TypeStats {
            processed: self.processed.with_label_values(l),
            processing: self.processing.with_label_values(l),
            waiting: self.waiting.with_label_values(l),
            active: self.active.with_label_values(l),
            parked: self.parked.with_label_values(l),
            refused_at_capacity: self.refused_at_capacity.with_label_values(l),
            restarts: self.restarts.with_label_values(l),
            dropped_oldest: self
                .dead_letters
                .with_label_values(&[actor_type, "dropped_oldest"]),
            dropped_newest: self
                .dead_letters
                .with_label_values(&[actor_type, "dropped_newest"]),
            undeliverable: self
                .dead_letters
                .with_label_values(&[actor_type, "undeliverable"]),
            aborted: self
                .dead_letters
                .with_label_values(&[actor_type, "aborted"]),
            states_lost: self.states_lost.with_label_values(l),
            rejected_full: self
                .rejected
                .with_label_values(&[actor_type, "mailbox_full"]),
            rejected_backpressure: self
                .rejected
                .with_label_values(&[actor_type, "backpressure_timeout"]),
            state_writes: self.state_writes.with_label_values(l),
            state_write_seconds: self.state_write_seconds.with_label_values(l),
            state_conflicts: self
                .state_errors
                .with_label_values(&[actor_type, "conflict"]),
            state_unavailable: self
                .state_errors
                .with_label_values(&[actor_type, "unavailable"]),
            state_too_large: self
                .state_errors
                .with_label_values(&[actor_type, "too_large"]),
        }
    }

    /// Sets where the mailbox depth per type is read from at scrape time.
    pub fn set_depth_source(&self, source: DepthSource) {
        *self.depth.source.write().unwrap_or_else(|p| p.into_inner()) = Some(source);
    }

    /// The current total mailbox depth of the node.
    pub fn total_depth(&self) -> i64 {
        self.depth.read().iter().map(|(_, d)| *d).sum()
    }
}

/// Reads the mailbox depth of each actor type, by name.
pub type DepthSource = Box<dyn Fn() -> Vec<(Arc<str>, i64)> + Send + Sync>;

/// Reads the mailbox depths at scrape time.
#[derive(Clone)]
struct DepthCollector {
    source: Arc<RwLock<Option<DepthSource>>>,
    descs: Vec<Desc>,
}

impl std::fmt::Debug for DepthCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DepthCollector").finish_non_exhaustive()
    }
}

const NODE_DEPTH_HELP: &str = "Messages waiting in all mailboxes of this node (the HPA's metric).";
const DEPRECATED_DEPTH_HELP: &str =
    "Deprecated (removed at v1): troupe_node_mailbox_depth under its old name.";

impl Default for DepthCollector {
    fn default() -> Self {
        let descs = [
            Desc::new(
                MAILBOX_DEPTH.into(),
                "Messages waiting in mailboxes, by actor type.".into(),
                vec!["actor_type".into()],
                Default::default(),
            ),
            Desc::new(
                NODE_MAILBOX_DEPTH.into(),
                NODE_DEPTH_HELP.into(),
                vec![],
                Default::default(),
            ),
            Desc::new(
                MAILBOX_DEPTH_TOTAL.into(),
                DEPRECATED_DEPTH_HELP.into(),
                vec![],
                Default::default(),
            ),
        ]
        .into_iter()
        .filter_map(Result::ok)
        .collect();
        Self {
            source: Arc::default(),
            descs,
        }
    }
}

impl DepthCollector {
    fn read(&self) -> Vec<(Arc<str>, i64)> {
        self.source
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|f| f())
            .unwrap_or_default()
    }
}

impl Collector for DepthCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out = Vec::with_capacity(2);
        let by_type = match IntGaugeVec::new(
            Opts::new(
                MAILBOX_DEPTH,
                "Messages waiting in mailboxes, by actor type.",
            ),
            &["actor_type"],
        ) {
            Ok(v) => v,
            Err(_) => return out,
        };
        let depths = self.read();
        let total: i64 = depths.iter().map(|(_, d)| *d).sum();
        for (name, d) in &depths {
            by_type.with_label_values(&[&**name]).set(*d);
        }
        out.extend(by_type.collect());
        for (name, help) in [
            (NODE_MAILBOX_DEPTH, NODE_DEPTH_HELP),
            (MAILBOX_DEPTH_TOTAL, DEPRECATED_DEPTH_HELP),
        ] {
            if let Ok(g) = IntGauge::new(name, help) {
                g.set(total);
                out.extend(g.collect());
            }
        }
        out
    }
}
