//! What happens in one simulated run: a schedule of faults drawn from the seed.
//!
//! Events are drawn up front as (time, kind, duration, pick); the pod a fault hits is
//! resolved when it applies (the `pick` indexes the pods eligible at that instant), and a
//! fault with a duration queues its own end then. So the schedule is a pure function of
//! the seed, and what it did is in the run's trace.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::rng::Rng;

/// The kinds of fault a schedule can contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// The node process dies (dropped, no leave); its container restarts after a while
    /// with the same pod name and a new incarnation.
    Crash,
    /// The pod is deleted (gone from the pod list) and the node dies; it is recreated with
    /// the same name after a while.
    DeletePod,
    /// The node's process stops (SIGSTOP, a long GC): its tasks make no progress and it
    /// answers no probe; it resumes after a while with its timers all due at once.
    Pause,
    /// The node can reach no peer and no peer can reach it.
    Partition,
    /// Probes from one node to another fail; the other direction works.
    OneWay,
    /// Extra latency on every probe to or from a node.
    NetDelay,
    /// Random latency on every probe (replies overtake each other).
    Reorder,
    /// One node cannot reach the store.
    StoreCut,
    /// Nobody can reach the store.
    StoreDown,
    /// Every store call answers late.
    StoreSlow,
    /// The store watch delivers records late.
    WatchLag,
    /// The Lease (record) is deleted.
    LeaseDeleted,
    /// The Lease's member-table annotation is removed; the record stays.
    LeaseStripped,
    /// A new pod joins.
    ScaleUp,
    /// A pod leaves gracefully and is deleted.
    ScaleDown,
    /// Rolling replacement: a new pod starts, then an old one leaves.
    Replace,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [Self; 16] = [
        Self::Crash,
        Self::DeletePod,
        Self::Pause,
        Self::Partition,
        Self::OneWay,
        Self::NetDelay,
        Self::Reorder,
        Self::StoreCut,
        Self::StoreDown,
        Self::StoreSlow,
        Self::WatchLag,
        Self::LeaseDeleted,
        Self::LeaseStripped,
        Self::ScaleUp,
        Self::ScaleDown,
        Self::Replace,
    ];

    /// The kind's name in schedules and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Crash => "crash",
            Self::DeletePod => "delete-pod",
            Self::Pause => "pause",
            Self::Partition => "partition",
            Self::OneWay => "one-way",
            Self::NetDelay => "net-delay",
            Self::Reorder => "reorder",
            Self::StoreCut => "store-cut",
            Self::StoreDown => "store-down",
            Self::StoreSlow => "store-slow",
            Self::WatchLag => "watch-lag",
            Self::LeaseDeleted => "lease-deleted",
            Self::LeaseStripped => "lease-stripped",
            Self::ScaleUp => "scale-up",
            Self::ScaleDown => "scale-down",
            Self::Replace => "replace",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown fault kind {s:?}"))
    }
}

/// One fault, as drawn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// When it starts, in simulated milliseconds.
    pub at_ms: u64,
    /// What it is.
    pub kind: FaultKind,
    /// How long it lasts (ignored by instant kinds).
    pub duration_ms: u64,
    /// A size: the delay of the latency kinds, in milliseconds.
    pub amount_ms: u64,
    /// Which eligible pod (or pair) it hits: an index taken modulo their number.
    pub pick: u64,
    /// A second pick (the other end of a one-way cut).
    pub pick2: u64,
}

/// How a run is shaped.
#[derive(Clone, Debug)]
pub struct Shape {
    /// Faults are drawn in `[faults_from_ms, heal_at_ms)`.
    pub faults_from_ms: u64,
    /// When every fault heals.
    pub heal_at_ms: u64,
    /// How long after healing every live node must be serving in one table.
    pub settle_ms: u64,
    /// At most this many faults.
    pub max_faults: u64,
    /// At most this many pods at once.
    pub max_pods: usize,
    /// The kinds to draw from.
    pub kinds: BTreeSet<FaultKind>,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            faults_from_ms: 5_000,
            heal_at_ms: 60_000,
            settle_ms: 30_000,
            max_faults: 16,
            max_pods: 7,
            kinds: FaultKind::ALL.into_iter().collect(),
        }
    }
}

/// The whole plan of one run.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// The seed it was drawn from.
    pub seed: u64,
    /// Pods at the start.
    pub initial_pods: usize,
    /// When each initial pod starts (all at 0 on a cold start).
    pub start_ms: Vec<u64>,
    /// The faults, by start time.
    pub faults: Vec<Fault>,
}

impl Schedule {
    /// Draws the schedule of `seed`; `rng` continues to serve the run (network jitter).
    pub fn draw(seed: u64, shape: &Shape, rng: &mut Rng) -> Self {
        let initial_pods = usize::try_from(rng.range(3, 5)).unwrap_or(3);
        let cold = rng.percent(50);
        let start_ms = (0..initial_pods)
            .map(|_| if cold { 0 } else { rng.range(0, 3_000) })
            .collect();
        let kinds: Vec<FaultKind> = shape.kinds.iter().copied().collect();
        let mut faults = Vec::new();
        if !kinds.is_empty() {
            let n = rng.range(1, shape.max_faults.max(1));
            for _ in 0..n {
                let pick_kind = usize::try_from(rng.next_u64() % kinds.len() as u64).unwrap_or(0);
                faults.push(Fault {
                    at_ms: rng.range(shape.faults_from_ms, shape.heal_at_ms.saturating_sub(1)) / 10
                        * 10,
                    kind: kinds[pick_kind],
                    duration_ms: rng.range(500, 10_000) / 10 * 10,
                    amount_ms: rng.range(50, 1_500) / 10 * 10,
                    pick: rng.next_u64(),
                    pick2: rng.next_u64(),
                });
            }
        }
        faults.sort_by_key(|f| f.at_ms);
        Self {
            seed,
            initial_pods,
            start_ms,
            faults,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_draws_one_schedule_within_the_shape() {
        let shape = Shape::default();
        let a = Schedule::draw(42, &shape, &mut Rng::new(42));
        let b = Schedule::draw(42, &shape, &mut Rng::new(42));
        assert_eq!(a.faults, b.faults);
        assert_eq!(a.start_ms, b.start_ms);
        assert!((3..=5).contains(&a.initial_pods));
        for f in &a.faults {
            assert!(
                f.at_ms >= shape.faults_from_ms && f.at_ms < shape.heal_at_ms,
                "{f:?}"
            );
        }
        let only = Shape {
            kinds: [FaultKind::Pause].into_iter().collect(),
            ..Shape::default()
        };
        let c = Schedule::draw(42, &only, &mut Rng::new(42));
        assert!(c.faults.iter().all(|f| f.kind == FaultKind::Pause));
    }

    #[test]
    fn kinds_parse_from_their_names() {
        for k in FaultKind::ALL {
            assert_eq!(k.as_str().parse::<FaultKind>(), Ok(k));
        }
        assert!("nonsense".parse::<FaultKind>().is_err());
    }
}
