//! One simulated run: the production [`Node`]s of several pods under one seeded schedule
//! and the virtual clock, with the invariants checked after every step.
//!
//! Each node gets its own current-thread tokio runtime with paused time, and the world
//! drives them one after the other on this thread, in a fixed order, `step` of simulated
//! time at a time (advance the virtual clock, then advance each runtime's clock by the
//! same amount and let its tasks run). A paused node's runtime is simply not driven: its
//! tasks freeze as a stopped process's would, and on resume its clock jumps, so every
//! timer is due at once. A crash drops the node and its runtime.
//!
//! Beside each node runs the production actor runtime (`troupe_actors::ActorRuntime`), fed
//! by the same glue as the binary (`troupe_node::host`: draining, member table, serving
//! deadline; a graceful leave drains it as the hand-over), its transport links on the
//! simulated network ([`crate::transport`]), and a client workload of counter increments
//! ([`crate::actors`]). Actor oracles: (a) one activation at a time, after every step;
//! (b) no acknowledged increment lost without a failure that can lose it, at the end
//! (both defined in [`crate::actors`]), and every counter readable after the settle period.
//!
//! Invariants (checked after every step, `W = isolation_timeout + probe_interval`):
//! 1. **one epoch serves**: every node serving at that instant follows the same
//!    `(cluster, epoch)`;
//! 2. **serving means admitted**: a serving node is Up in its own table, and no serving
//!    incarnation was Down in, or removed from, a table of its cluster that the store
//!    held at least `W` before. (The design's claim, `node/ARCHITECTURE.md`: a node cut off
//!    stops serving before the coordinator may down it, and a node learns any table within
//!    a probe interval of a peer that has it. "Its table is not older than the store's"
//!    would not be a property of the design: a majority cut off from the store serves on
//!    peers' word while the store's version moves on with joiners.)
//! 3. **liveness**: `settle` after every fault healed, every live node is serving, Up, in
//!    one `(cluster, epoch)` that is the store's, and Up in the store's table.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::Registry;
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use troupe_actors::activation::Phase;
use troupe_actors::store::InMemoryStore;
use troupe_actors::{ActorRuntime, Message, RuntimeConfig};
use troupe_contract::MemberStatus;
use troupe_node::discovery::{PodInfo, PodSet};
use troupe_node::seams::Sources;
use troupe_node::{Identity, LeaveReport, MembershipView, Node, NodeError, Timing};

use crate::actors::{Ledger, LossReport, double_activations, is_active, losses};
use crate::clock;
use crate::invariants;
use crate::net::{SimNet, SimProber};
use crate::rng::Rng;
use crate::schedule::{Fault, FaultKind, Schedule, Shape};
use crate::store::{SimStore, describe, short};
use crate::transport::{SimConnector, accept_loop};

/// Task polls per runtime per step (each lets every ready task run once).
const YIELDS_PER_STEP: usize = 2;
/// How long a graceful leave may take.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The actor type of the workload.
const COUNTER: &str = "counter";
/// The loss metric.
const STATES_LOST: &str = "troupe_actor_states_lost_total";
/// How long the final reads of the counters may take after the settle period.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How runs are made.
#[derive(Clone, Debug)]
pub struct Config {
    /// The schedule's shape.
    pub shape: Shape,
    /// The nodes' timing (the production defaults unless a test wants otherwise).
    pub timing: Timing,
    /// Simulated time per step.
    pub step: Duration,
    /// Trace every change of what the processes hold of each counter.
    pub trace_holdings: bool,
    /// Actor states in a durable store shared by every node process (the runtime's
    /// fenced [`InMemoryStore`], standing for the cluster's PostgreSQL): then nothing
    /// acknowledged may be lost, whatever failed.
    pub durable: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            shape: Shape::default(),
            timing: Timing::default(),
            step: Duration::from_millis(10),
            trace_holdings: false,
            durable: false,
        }
    }
}

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Simulated time of the step that broke it.
    pub at: Duration,
    /// Which invariant.
    pub invariant: &'static str,
    /// What the nodes and the store held.
    pub detail: String,
}

/// What one run did.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// The drawn schedule.
    pub schedule: Schedule,
    /// Everything that happened, in order: events applied, store writes, view changes.
    pub trace: Vec<String>,
    /// Faults applied, by kind.
    pub faults: BTreeMap<FaultKind, u64>,
    /// The first broken invariant, if any.
    pub violation: Option<Violation>,
    /// The environment that draws the same schedule (`SIM_FAULTS=… ` when not every kind).
    pub replay_env: String,
    /// What oracle (b) found, when the run got that far.
    pub losses: Option<LossReport>,
}

impl Outcome {
    /// The report printed for a failing seed: seed, schedule, step, invariant, state.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "seed {} (replay: {}SEED={} make simulate)",
            self.seed, self.replay_env, self.seed
        );
        let _ = writeln!(
            out,
            "schedule: {} pods, starts at {:?} ms",
            self.schedule.initial_pods, self.schedule.start_ms
        );
        let _ = writeln!(out, "events applied:");
        for line in self.trace.iter().filter(|l| l.contains("] event ")) {
            let _ = writeln!(out, "  {line}");
        }
        if let Some(v) = &self.violation {
            let _ = writeln!(
                out,
                "VIOLATION at {:.3}s: {}\n{}",
                v.at.as_secs_f64(),
                v.invariant,
                v.detail
            );
        }
        out
    }
}

#[derive(Debug)]
enum Life {
    Running,
    Paused { since: Duration },
    Leaving(JoinHandle<Result<LeaveReport, NodeError>>),
}

#[derive(Debug)]
struct SimNode {
    rt: Runtime,
    node: Option<Node>,
    view: watch::Receiver<MembershipView>,
    life: Life,
    summary: String,
    serving: bool,
    actors: ActorRuntime,
    registry: Registry,
    /// Every member incarnation this process has had: it starts as one and rejoins as a
    /// new one after an eviction or a restore (the runtime lives on across them).
    incarnations: BTreeSet<String>,
    /// Counters this process held (active, closing or parked) at the last sample.
    held: BTreeSet<String>,
    /// Its runtime's eviction count at the last sample.
    evictions: u64,
}

/// The client workload of one run (see [`crate::actors`]).
#[derive(Debug)]
struct Workload {
    rng: Rng,
    counters: Vec<String>,
    next_at_ms: u64,
    stop_at_ms: u64,
    ledger: Ledger,
    /// Counters a failure may have lost (oracle (b)).
    exposed: BTreeSet<String>,
    /// Incarnations seen Down in some table: whatever they hold is exposed.
    doomed: BTreeSet<String>,
    /// Pods cut off from every peer (paused or partitioned), since when.
    cut_since: BTreeMap<String, Duration>,
    /// The loss metric of node processes that are gone.
    lost_gone: u64,
}

/// A concrete action at a point of simulated time.
#[derive(Clone, Debug)]
enum Action {
    Fault(Fault),
    Start(String),
    Resume(String),
    Unisolate(String),
    OneWayHeal(String, String),
    NetDelayHeal(String),
    JitterHeal,
    StoreCutHeal(String),
    StoreUp,
    StoreFast,
    WatchLagHeal,
    Leave(String),
    HealAll,
}

impl Action {
    /// Actions that undo a fault (all run at once when everything heals).
    fn is_heal(&self) -> bool {
        !matches!(
            self,
            Self::Fault(_) | Self::HealAll | Self::Start(_) | Self::Leave(_)
        )
    }
}

struct World {
    cfg: Config,
    /// The durable state store, when `cfg.durable`.
    states: Option<InMemoryStore>,
    /// The last `holdings` trace line (`Config::trace_holdings`).
    last_holdings: String,
    store: SimStore,
    net: SimNet,
    pods: watch::Sender<PodSet>,
    nodes: BTreeMap<String, SimNode>,
    addresses: BTreeMap<String, String>,
    next_pod: usize,
    queue: BTreeMap<(u64, u64), Action>,
    seq: u64,
    trace: Vec<String>,
    faults: BTreeMap<FaultKind, u64>,
    healed: bool,
    sources: Sources,
    work: Workload,
    next_process: u64,
    /// The counters' values read at the end.
    values: BTreeMap<String, i64>,
}

/// Runs `seed` under `cfg`.
pub fn run(seed: u64, cfg: &Config) -> Outcome {
    let mut rng = Rng::new(seed);
    let schedule = Schedule::draw(seed, &cfg.shape, &mut rng);
    run_schedule(schedule, rng, cfg)
}

/// Runs `schedule` (drawn from a seed, perhaps with faults taken out); `rng` is what the
/// seed's generator had left after drawing it (ids, network jitter).
pub fn run_schedule(schedule: Schedule, rng: Rng, cfg: &Config) -> Outcome {
    clock::start();
    let outcome = if clock::installed() {
        clock::start();
        run_started(schedule, rng, cfg)
    } else {
        Outcome {
            seed: schedule.seed,
            schedule,
            trace: Vec::new(),
            faults: BTreeMap::new(),
            replay_env: String::new(),
            losses: None,
            violation: Some(Violation {
                at: Duration::ZERO,
                invariant: "setup: virtual clock",
                detail: "std::time::Instant does not read the virtual clock; invoke \
                         troupe_sim::install_virtual_clock!() in the binary"
                    .into(),
            }),
        }
    };
    clock::stop();
    Outcome {
        replay_env: replay_env(cfg),
        ..outcome
    }
}

fn replay_env(cfg: &Config) -> String {
    if cfg.shape.kinds.len() == FaultKind::ALL.len() {
        return String::new();
    }
    let kinds: Vec<&str> = cfg.shape.kinds.iter().map(|k| k.as_str()).collect();
    format!("SIM_FAULTS={} ", kinds.join(","))
}

/// For a failing `seed`: the run of a schedule with as few faults as still break the same
/// invariant (greedy: take each fault out in turn, keep it out if the failure stays).
/// `None` when the seed does not fail.
pub fn shrink(seed: u64, cfg: &Config) -> Option<Outcome> {
    let mut rng = Rng::new(seed);
    let mut schedule = Schedule::draw(seed, &cfg.shape, &mut rng);
    let mut best = run_schedule(schedule.clone(), rng.clone(), cfg);
    let invariant = best.violation.as_ref()?.invariant;
    let mut i = 0;
    while i < schedule.faults.len() {
        let mut fewer = schedule.clone();
        fewer.faults.remove(i);
        let out = run_schedule(fewer.clone(), rng.clone(), cfg);
        if out
            .violation
            .as_ref()
            .is_some_and(|v| v.invariant == invariant)
        {
            schedule = fewer;
            best = out;
        } else {
            i += 1;
        }
    }
    Some(best)
}

fn run_started(schedule: Schedule, mut rng: Rng, cfg: &Config) -> Outcome {
    // Every map the actor runtimes create on this thread iterates in one order.
    troupe_actors::hashing::set_deterministic(true);
    let outcome = run_world(schedule, &mut rng, cfg);
    troupe_actors::hashing::set_deterministic(false);
    outcome
}

fn run_world(schedule: Schedule, rng: &mut Rng, cfg: &Config) -> Outcome {
    let seed = schedule.seed;
    let mut w = World {
        last_holdings: String::new(),
        states: cfg.durable.then(|| InMemoryStore::new(1 << 20)),
        cfg: cfg.clone(),
        store: SimStore::new(),
        net: SimNet::new(Rng::new(rng.next_u64())),
        pods: watch::Sender::new(PodSet {
            synced: true,
            pods: BTreeMap::new(),
        }),
        nodes: BTreeMap::new(),
        addresses: BTreeMap::new(),
        next_pod: 0,
        queue: BTreeMap::new(),
        seq: 0,
        trace: Vec::new(),
        faults: BTreeMap::new(),
        healed: false,
        sources: seeded_sources(Rng::new(rng.next_u64())),
        work: Workload::draw(Rng::new(rng.next_u64()), &cfg.shape),
        next_process: 0,
        values: BTreeMap::new(),
    };
    for at in &schedule.start_ms {
        let pod = w.new_pod_name();
        w.push(*at, Action::Start(pod));
    }
    for f in &schedule.faults {
        w.push(f.at_ms, Action::Fault(f.clone()));
    }
    w.push(cfg.shape.heal_at_ms, Action::HealAll);
    let mut violation = w.run_all();
    let mut found = None;
    if violation.is_none() {
        match w.final_reads() {
            Ok(report) => {
                if let Some(v) = report.violations.first() {
                    violation = Some(w.violation("actors: no acknowledged update lost", v.clone()));
                }
                found = Some(report);
            }
            Err(v) => violation = Some(v),
        }
    }
    for (_, n) in std::mem::take(&mut w.nodes) {
        drop(n.node);
        drop(n.rt);
    }
    Outcome {
        seed,
        schedule,
        trace: w.trace,
        faults: w.faults,
        violation,
        replay_env: String::new(),
        losses: found,
    }
}

impl Workload {
    /// A few counters, and asks every 20–200 ms from when the first faults may strike
    /// until half-way through the settle period (so that every ask has ended, one way or
    /// the other, before the final reads).
    fn draw(mut rng: Rng, shape: &Shape) -> Self {
        let n = rng.range(3, 8);
        Self {
            counters: (0..n).map(|i| format!("c{i}")).collect(),
            next_at_ms: shape.faults_from_ms.saturating_sub(2_000),
            stop_at_ms: shape.heal_at_ms + shape.settle_ms / 2,
            rng,
            ledger: Ledger::default(),
            exposed: BTreeSet::new(),
            doomed: BTreeSet::new(),
            cut_since: BTreeMap::new(),
            lost_gone: 0,
        }
    }
}

/// The counters `actors` holds now: active or closing (oracle (a)'s sense), or parked.
fn counters_held(actors: &ActorRuntime) -> BTreeSet<String> {
    held_of(actors, &actors.activations())
}

/// [`counters_held`] with the activations already listed.
fn held_of(actors: &ActorRuntime, acts: &[troupe_actors::HeldActivation]) -> BTreeSet<String> {
    let mut held: BTreeSet<String> = acts
        .iter()
        .filter(|a| a.actor_type == COUNTER && is_active(a))
        .map(|a| a.id.clone())
        .collect();
    held.extend(
        actors
            .parked_states()
            .into_iter()
            .filter(|(t, _, _)| t == COUNTER)
            .map(|(_, id, _)| id),
    );
    held
}

/// `troupe_actor_states_lost_total{actor_type="counter"}` in `registry`.
fn states_lost(registry: &Registry) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == STATES_LOST)
        .flat_map(|f| f.get_metric())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "actor_type" && l.value() == COUNTER)
        })
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// The `value` of a counter's reply.
fn counter_value(reply: &[u8]) -> Option<i64> {
    serde_json::from_slice::<serde_json::Value>(reply)
        .ok()?
        .get("value")?
        .as_i64()
}

/// Ids from the run's generator, and the virtual wall clock.
fn seeded_sources(rng: Rng) -> Sources {
    let rng = Arc::new(Mutex::new(rng));
    Sources {
        new_id: Arc::new(move || {
            let n = rng.lock().map(|mut r| r.next_u64()).unwrap_or_default();
            format!("{n:016x}")
        }),
        wall_ms: Arc::new(clock::wall_ms),
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl World {
    fn now(&self) -> Duration {
        clock::elapsed().unwrap_or_default()
    }

    fn log(&mut self, line: String) {
        let t = self.now().as_secs_f64();
        self.trace.push(format!("[{t:8.3}s] {line}"));
    }

    fn push(&mut self, at_ms: u64, action: Action) {
        self.seq += 1;
        self.queue.insert((at_ms, self.seq), action);
    }

    fn push_in(&mut self, after_ms: u64, action: Action) {
        let at = ms(self.now()) + after_ms;
        self.push(at, action);
    }

    fn new_pod_name(&mut self) -> String {
        let pod = format!("pod-{}", self.next_pod);
        self.addresses
            .insert(pod.clone(), format!("127.0.1.{}", self.next_pod + 1));
        self.next_pod += 1;
        pod
    }

    fn run_all(&mut self) -> Option<Violation> {
        let end = Duration::from_millis(self.cfg.shape.heal_at_ms + self.cfg.shape.settle_ms);
        let w = self.cfg.timing.isolation_timeout + self.cfg.timing.probe_interval;
        while self.now() < end {
            if let Some(v) = self.apply_due() {
                return Some(v);
            }
            self.issue_work();
            clock::advance(self.cfg.step);
            if let Some(v) = self.drive_all() {
                return Some(v);
            }
            self.finish_leaves();
            for line in self.store.drain_log() {
                self.log(line);
            }
            self.record_views();
            if let Some(v) = self.check_safety(w) {
                return Some(v);
            }
            if let Some(v) = self.check_actors() {
                return Some(v);
            }
        }
        self.check_liveness()
    }

    fn apply_due(&mut self) -> Option<Violation> {
        let now = ms(self.now());
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let action = entry.remove();
            if let Some(v) = self.apply(action) {
                return Some(v);
            }
        }
        None
    }

    /// Live pods (a node process runs there) in the given lives, sorted by name.
    fn pick(&self, pick: u64, running_only: bool, exclude: Option<&str>) -> Option<String> {
        let eligible: Vec<&String> = self
            .nodes
            .iter()
            .filter(|(p, n)| {
                Some(p.as_str()) != exclude
                    && match n.life {
                        Life::Running => true,
                        Life::Paused { .. } => !running_only,
                        Life::Leaving(_) => false,
                    }
            })
            .map(|(p, _)| p)
            .collect();
        if eligible.is_empty() {
            return None;
        }
        let i = usize::try_from(pick % eligible.len() as u64).unwrap_or(0);
        Some(eligible[i].clone())
    }

    fn count(&mut self, kind: FaultKind, what: String) {
        *self.faults.entry(kind).or_default() += 1;
        self.log(format!("event {kind} {what}"));
    }

    fn apply(&mut self, action: Action) -> Option<Violation> {
        match action {
            Action::Fault(f) => return self.apply_fault(&f),
            Action::Start(pod) => return self.start(&pod),
            Action::Resume(pod) => self.resume(&pod),
            Action::Unisolate(pod) => {
                self.net.set_isolated(&pod, false);
                if !matches!(
                    self.nodes.get(&pod).map(|n| &n.life),
                    Some(Life::Paused { .. })
                ) {
                    self.work.cut_since.remove(&pod);
                }
                self.log(format!("event heal partition {pod}"));
            }
            Action::OneWayHeal(a, b) => {
                self.net.set_one_way(&a, &b, false);
                self.log(format!("event heal one-way {a}->{b}"));
            }
            Action::NetDelayHeal(pod) => {
                self.net.set_delay(&pod, Duration::ZERO);
                self.log(format!("event heal net-delay {pod}"));
            }
            Action::JitterHeal => {
                self.net.set_jitter(Duration::ZERO);
                self.log("event heal reorder".into());
            }
            Action::StoreCutHeal(pod) => {
                self.store.set_cut(&pod, false);
                self.log(format!("event heal store-cut {pod}"));
            }
            Action::StoreUp => {
                self.store.set_down(false);
                self.log("event heal store-down".into());
            }
            Action::StoreFast => {
                self.store.set_delay(Duration::ZERO);
                self.log("event heal store-slow".into());
            }
            Action::WatchLagHeal => {
                self.store.set_watch_lag(Duration::ZERO);
                self.log("event heal watch-lag".into());
            }
            Action::Leave(pod) => self.begin_leave(&pod),
            Action::HealAll => {
                self.healed = true;
                self.log("event heal everything".into());
                let pending: Vec<(u64, u64)> = self
                    .queue
                    .iter()
                    .filter(|(_, a)| {
                        a.is_heal() || matches!(a, Action::Start(_) | Action::Leave(_))
                    })
                    .map(|(k, _)| *k)
                    .collect();
                for k in pending {
                    if let Some(a) = self.queue.remove(&k)
                        && let Some(v) = self.apply(a)
                    {
                        return Some(v);
                    }
                }
                self.net.heal();
                self.work.cut_since.retain(|p, _| {
                    matches!(
                        self.nodes.get(p).map(|n| &n.life),
                        Some(Life::Paused { .. })
                    )
                });
                self.store.set_down(false);
                self.store.set_delay(Duration::ZERO);
                self.store.set_watch_lag(Duration::ZERO);
                let paused: Vec<String> = self
                    .nodes
                    .iter()
                    .filter(|(_, n)| matches!(n.life, Life::Paused { .. }))
                    .map(|(p, _)| p.clone())
                    .collect();
                for p in paused {
                    self.resume(&p);
                }
            }
        }
        None
    }

    fn apply_fault(&mut self, f: &Fault) -> Option<Violation> {
        if self.healed {
            return None;
        }
        let dur = f.duration_ms;
        match f.kind {
            FaultKind::Crash | FaultKind::DeletePod => {
                let pod = self.pick(f.pick, false, None)?;
                self.kill(&pod);
                if f.kind == FaultKind::DeletePod {
                    self.pods.send_modify(|s| {
                        s.pods.remove(&pod);
                    });
                }
                self.count(f.kind, format!("{pod} (back in {dur} ms)"));
                self.push_in(dur, Action::Start(pod));
            }
            FaultKind::Pause => {
                let pod = self.pick(f.pick, true, None)?;
                let now = self.now();
                if let Some(n) = self.nodes.get_mut(&pod) {
                    n.life = Life::Paused { since: now };
                }
                self.work.cut_since.entry(pod.clone()).or_insert(now);
                self.net.set_answering(&pod, false);
                self.count(f.kind, format!("{pod} for {dur} ms"));
                self.push_in(dur, Action::Resume(pod));
            }
            FaultKind::Partition => {
                let pod = self.pick(f.pick, false, None)?;
                self.net.set_isolated(&pod, true);
                let now = self.now();
                self.work.cut_since.entry(pod.clone()).or_insert(now);
                self.count(f.kind, format!("{pod} for {dur} ms"));
                self.push_in(dur, Action::Unisolate(pod));
            }
            FaultKind::OneWay => {
                let a = self.pick(f.pick, false, None)?;
                let b = self.pick(f.pick2, false, Some(&a))?;
                self.net.set_one_way(&a, &b, true);
                self.count(f.kind, format!("{a}->{b} for {dur} ms"));
                self.push_in(dur, Action::OneWayHeal(a, b));
            }
            FaultKind::NetDelay => {
                let pod = self.pick(f.pick, false, None)?;
                self.net.set_delay(&pod, Duration::from_millis(f.amount_ms));
                self.count(f.kind, format!("{pod} +{} ms for {dur} ms", f.amount_ms));
                self.push_in(dur, Action::NetDelayHeal(pod));
            }
            FaultKind::Reorder => {
                let jitter = f.amount_ms / 4;
                self.net.set_jitter(Duration::from_millis(jitter));
                self.count(f.kind, format!("jitter up to {jitter} ms for {dur} ms"));
                self.push_in(dur, Action::JitterHeal);
            }
            FaultKind::StoreCut => {
                let pod = self.pick(f.pick, false, None)?;
                self.store.set_cut(&pod, true);
                self.count(f.kind, format!("{pod} for {dur} ms"));
                self.push_in(dur, Action::StoreCutHeal(pod));
            }
            FaultKind::StoreDown => {
                self.store.set_down(true);
                self.count(f.kind, format!("for {dur} ms"));
                self.push_in(dur, Action::StoreUp);
            }
            FaultKind::StoreSlow => {
                self.store.set_delay(Duration::from_millis(f.amount_ms));
                self.count(f.kind, format!("+{} ms for {dur} ms", f.amount_ms));
                self.push_in(dur, Action::StoreFast);
            }
            FaultKind::WatchLag => {
                self.store.set_watch_lag(Duration::from_millis(f.amount_ms));
                self.count(f.kind, format!("+{} ms for {dur} ms", f.amount_ms));
                self.push_in(dur, Action::WatchLagHeal);
            }
            FaultKind::LeaseDeleted => {
                self.store.delete();
                self.count(f.kind, String::new());
            }
            FaultKind::LeaseStripped => {
                self.store.strip();
                self.count(f.kind, String::new());
            }
            FaultKind::ScaleUp | FaultKind::Replace => {
                if self.pods.borrow().pods.len() >= self.cfg.shape.max_pods {
                    return None;
                }
                let old = if f.kind == FaultKind::Replace {
                    Some(self.pick(f.pick, true, None)?)
                } else {
                    None
                };
                let pod = self.new_pod_name();
                match &old {
                    Some(o) => self.count(f.kind, format!("{pod} starts, {o} leaves in {dur} ms")),
                    None => self.count(f.kind, pod.clone()),
                }
                if let Some(o) = old {
                    self.push_in(dur, Action::Leave(o));
                }
                return self.start(&pod);
            }
            FaultKind::ScaleDown => {
                let live = self
                    .nodes
                    .values()
                    .filter(|n| !matches!(n.life, Life::Leaving(_)))
                    .count();
                if live <= 2 {
                    return None;
                }
                let pod = self.pick(f.pick, true, None)?;
                self.count(f.kind, pod.clone());
                self.begin_leave(&pod);
            }
        }
        None
    }

    fn start(&mut self, pod: &str) -> Option<Violation> {
        if self.nodes.contains_key(pod) {
            return None;
        }
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return Some(self.setup_failed(format!("cannot build a runtime: {e}"))),
        };
        let address = self.addresses.get(pod).cloned().unwrap_or_default();
        let identity = Identity {
            pod: pod.to_owned(),
            address: address.clone(),
        };
        let timing = self.cfg.timing;
        let prober = SimProber::new(&self.net, pod, timing.probe_timeout);
        let store = self.store.for_pod(pod);
        let pods = self.pods.subscribe();
        let started = {
            let _guard = rt.enter();
            Node::start_with(
                identity,
                timing,
                store,
                prober,
                pods,
                Registry::new(),
                self.sources.clone(),
            )
        };
        let node = match started {
            Ok(n) => n,
            Err(e) => return Some(self.setup_failed(format!("Node::start failed: {e}"))),
        };
        let view = node.view();
        let incarnation = view.borrow().me.incarnation.clone();
        let registry = node.registry().clone();
        self.next_process += 1;
        let process = self.next_process;
        let hosted = {
            let _guard = rt.enter();
            self.host_actors(&node, pod, &address, process)
        };
        let actors = match hosted {
            Ok(a) => a,
            Err(e) => return Some(self.setup_failed(format!("ActorRuntime::new failed: {e}"))),
        };
        self.net.attach(pod, view.clone());
        self.pods.send_modify(|s| {
            s.pods.insert(pod.to_owned(), PodInfo::running(address));
        });
        self.log(format!(
            "event start {pod} as {}",
            short(&view.borrow().me.incarnation)
        ));
        self.nodes.insert(
            pod.to_owned(),
            SimNode {
                rt,
                node: Some(node),
                view,
                life: Life::Running,
                summary: String::new(),
                serving: false,
                actors,
                registry,
                incarnations: BTreeSet::from([incarnation]),
                held: BTreeSet::new(),
                evictions: 0,
            },
        );
        None
    }

    /// The actor runtime beside `node`, as the binary hosts it: metrics in the node's
    /// registry, the transport on the simulated network, the membership feed. Call inside
    /// the node's runtime.
    fn host_actors(
        &self,
        node: &Node,
        pod: &str,
        address: &str,
        process: u64,
    ) -> Result<ActorRuntime, troupe_actors::Error> {
        let me = node.view().borrow().me.clone();
        let mut config = RuntimeConfig::new(me.pod.clone(), me.incarnation.clone());
        config.state_store = self
            .states
            .clone()
            .map(|s| Arc::new(s) as Arc<dyn troupe_actors::store::StateStore>);
        let connector = Arc::new(SimConnector::new(&self.net, pod, process));
        let actors = ActorRuntime::with_connector(config, node.registry(), connector)?;
        let (accept, incoming) = tokio::sync::mpsc::unbounded_channel();
        self.net.listen(pod, address, process, accept);
        tokio::spawn(accept_loop(
            self.net.clone(),
            pod.to_owned(),
            process,
            incoming,
            actors.clone(),
        ));
        tokio::spawn(troupe_node::host::feed_actors(
            node.view(),
            node.health().clone(),
            actors.clone(),
        ));
        Ok(actors)
    }

    fn setup_failed(&self, detail: String) -> Violation {
        Violation {
            at: self.now(),
            invariant: "setup",
            detail,
        }
    }

    fn kill(&mut self, pod: &str) {
        self.net.unlisten(pod);
        if !self.net.is_isolated(pod) {
            self.work.cut_since.remove(pod);
        }
        if let Some(n) = self.nodes.remove(pod) {
            self.process_gone(&n);
            drop(n.node);
            drop(n.rt);
        }
        self.net.detach(pod);
    }

    /// A node process ends (killed, or done leaving): what it still held is exposed, and
    /// its loss metric is kept.
    fn process_gone(&mut self, n: &SimNode) {
        let mut held = n.held.clone();
        held.extend(counters_held(&n.actors));
        // A claim of this process may have been answered (the holder parks nothing and
        // sends the state) just before or after it died: the state may die with it.
        for a in n.actors.activations() {
            if a.actor_type == COUNTER && a.phase == Phase::Claiming && !a.aborted {
                held.insert(a.id);
            }
        }
        // A state this process handed to a claim that has not completed (the answer may
        // still be on the wire, or lost): it dies with this process.
        for (t, id, claimant) in n.actors.handed_states() {
            let waiting = t == COUNTER
                && self.nodes.get(&claimant).is_some_and(|c| {
                    c.actors.activations().iter().any(|a| {
                        a.actor_type == COUNTER && a.id == id && a.phase == Phase::Claiming
                    })
                });
            if waiting {
                held.insert(id);
            }
        }
        self.work.exposed.extend(held);
        self.work.lost_gone += states_lost(&n.registry);
    }

    fn resume(&mut self, pod: &str) {
        let now = self.now();
        let Some(n) = self.nodes.get_mut(pod) else {
            return;
        };
        let Life::Paused { since } = n.life else {
            return;
        };
        n.life = Life::Running;
        if !self.net.is_isolated(pod) {
            self.work.cut_since.remove(pod);
        }
        // Catch up on the paused time at once, as a stopped process does.
        let behind = now.saturating_sub(since);
        tracing::info_span!("node", %pod).in_scope(|| {
            n.rt.block_on(async move { tokio::time::advance(behind).await })
        });
        self.net.set_answering(pod, true);
        self.log(format!("event resume {pod} after {} ms", ms(behind)));
    }

    fn begin_leave(&mut self, pod: &str) {
        let Some(n) = self.nodes.get_mut(pod) else {
            return;
        };
        if !matches!(n.life, Life::Running) {
            return;
        }
        let Some(node) = n.node.take() else {
            return;
        };
        let actors = n.actors.clone();
        let handover = async move {
            let _ = troupe_node::host::hand_over(actors, LEAVE_TIMEOUT).await;
        };
        n.life = Life::Leaving(n.rt.spawn(node.leave(handover, LEAVE_TIMEOUT)));
        self.pods.send_modify(|s| {
            if let Some(p) = s.pods.get_mut(pod) {
                p.terminating = true;
            }
        });
        self.log(format!("event leave {pod}"));
    }

    fn finish_leaves(&mut self) {
        let done: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| matches!(&n.life, Life::Leaving(h) if h.is_finished()))
            .map(|(p, _)| p.clone())
            .collect();
        for pod in done {
            let Some(mut n) = self.nodes.remove(&pod) else {
                continue;
            };
            let report = match &mut n.life {
                Life::Leaving(h) => n.rt.block_on(h),
                _ => continue,
            };
            self.net.unlisten(&pod);
            self.process_gone(&n);
            drop(n.rt);
            self.net.detach(&pod);
            self.pods.send_modify(|s| {
                s.pods.remove(&pod);
            });
            self.log(format!("left {pod}: {report:?}"));
        }
    }

    /// Lets every running node's tasks run for one step of simulated time.
    fn drive_all(&mut self) -> Option<Violation> {
        let step = self.cfg.step;
        let mut drift = None;
        for (pod, n) in &self.nodes {
            if matches!(n.life, Life::Paused { .. }) {
                continue;
            }
            // `SIM_LOG`'s events name the node whose tasks logged them.
            let span = tracing::info_span!("node", %pod);
            let in_sync = span.in_scope(|| {
                n.rt.block_on(async move {
                    tokio::time::advance(step).await;
                    for _ in 0..YIELDS_PER_STEP {
                        tokio::task::yield_now().await;
                    }
                    tokio::time::Instant::now().into_std() == Instant::now()
                })
            });
            if !in_sync && drift.is_none() {
                drift = Some(pod.clone());
            }
        }
        drift.map(|pod| {
            self.setup_failed(format!(
                "the runtime of {pod} advanced its clock by itself (tokio auto-advance): the \
                 simulation is no longer in lockstep"
            ))
        })
    }

    /// Starts the client asks that are due, each on a random running node.
    fn issue_work(&mut self) {
        let now = ms(self.now());
        while self.work.next_at_ms <= now && self.work.next_at_ms < self.work.stop_at_ms {
            self.work.next_at_ms += self.work.rng.range(20, 200);
            let running: Vec<&SimNode> = self
                .nodes
                .values()
                .filter(|n| matches!(n.life, Life::Running))
                .collect();
            let pick = self.work.rng.next_u64();
            let which = self.work.rng.next_u64();
            if running.is_empty() || self.work.counters.is_empty() {
                continue;
            }
            let n = running[usize::try_from(pick % running.len() as u64).unwrap_or(0)];
            let id = self.work.counters
                [usize::try_from(which % self.work.counters.len() as u64).unwrap_or(0)]
            .clone();
            self.work.ledger.sent(&id);
            let ledger = self.work.ledger.clone();
            let actors = n.actors.clone();
            n.rt.spawn(async move {
                if actors
                    .ask(COUNTER, &id, Message::new("add", ""))
                    .await
                    .is_ok()
                {
                    ledger.acked(&id);
                }
            });
        }
    }

    /// Samples what every running process holds (for oracle (b)'s exposure) and checks
    /// oracle (a).
    fn check_actors(&mut self) -> Option<Violation> {
        for n in self.nodes.values() {
            for m in &n.view.borrow().table.members {
                if m.status == MemberStatus::Down {
                    self.work.doomed.insert(m.incarnation.clone());
                }
            }
        }
        let mut holdings = Vec::new();
        for (pod, n) in &mut self.nodes {
            if matches!(n.life, Life::Paused { .. }) {
                continue;
            }
            let acts = n.actors.activations();
            let held = held_of(&n.actors, &acts);
            let evictions = n.actors.evictions();
            n.incarnations
                .insert(n.view.borrow().me.incarnation.clone());
            let downed = n.incarnations.iter().any(|i| self.work.doomed.contains(i));
            if evictions > n.evictions || downed {
                self.work.exposed.extend(n.held.iter().cloned());
                self.work.exposed.extend(held.iter().cloned());
            }
            n.evictions = evictions;
            n.held = held;
            holdings.push((pod.clone(), acts));
        }
        self.expose_given_up(&holdings);
        if self.cfg.trace_holdings {
            self.trace_holdings(&holdings);
        }
        let refs: Vec<(&str, &[troupe_actors::HeldActivation])> = holdings
            .iter()
            .map(|(p, a)| (p.as_str(), a.as_slice()))
            .collect();
        let found = double_activations(&refs)?;
        Some(self.violation("actors: one activation at a time", found))
    }

    /// Adds a trace line whenever what some process holds of a counter changes (phase,
    /// generation, parked copies): `SIM_HOLDINGS=1`, for diagnosing a seed.
    fn trace_holdings(&mut self, holdings: &[(String, Vec<troupe_actors::HeldActivation>)]) {
        let mut desc: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (pod, acts) in holdings {
            for a in acts.iter().filter(|a| a.actor_type == COUNTER) {
                let g = a.generation;
                desc.entry(a.id.clone()).or_default().push(format!(
                    "{pod}:{:?}{}{} g={}.{}.{}",
                    a.phase,
                    if a.stopping { "/stop" } else { "" },
                    if a.aborted { "/abort" } else { "" },
                    g.epoch,
                    g.version,
                    g.counter
                ));
            }
            if let Some(n) = self.nodes.get(pod) {
                for (t, id, g) in n.actors.parked_states() {
                    if t == COUNTER {
                        desc.entry(id).or_default().push(format!(
                            "{pod}:parked g={}.{}.{}",
                            g.epoch, g.version, g.counter
                        ));
                    }
                }
            }
        }
        let text = format!("{desc:?}");
        if text != self.last_holdings {
            self.last_holdings.clone_from(&text);
            self.log(format!("holdings {text}"));
        }
    }

    /// A holder cut off from every peer (paused or partitioned) for at least the runtime's
    /// `down_grace` may be given up by a claimant that cannot reach it, as a downed one
    /// is (a restore leaves it out of the table without downing it): what it holds is
    /// exposed once another process runs the actor while it is still cut off.
    fn expose_given_up(&mut self, holdings: &[(String, Vec<troupe_actors::HeldActivation>)]) {
        let now = self.now();
        let grace = RuntimeConfig::new("", "").down_grace;
        for (cut, since) in &self.work.cut_since {
            if now.saturating_sub(*since) < grace {
                continue;
            }
            let Some(n) = self.nodes.get(cut) else {
                continue;
            };
            for id in &n.held {
                let elsewhere = holdings.iter().any(|(p, acts)| {
                    p != cut
                        && acts
                            .iter()
                            .any(|a| a.actor_type == COUNTER && a.id == *id && is_active(a))
                });
                if elsewhere {
                    self.work.exposed.insert(id.clone());
                }
            }
        }
    }

    /// After the settle period: reads every counter through a running node (retrying,
    /// within [`READ_TIMEOUT`], with oracle (a) still checked every step), then oracle (b).
    fn final_reads(&mut self) -> Result<LossReport, Violation> {
        type Reads = Arc<Mutex<BTreeMap<String, Result<i64, String>>>>;
        let reads: Reads = Arc::default();
        let mut pending: BTreeSet<String> = self.work.counters.iter().cloned().collect();
        let mut inflight: BTreeSet<String> = BTreeSet::new();
        let mut attempt = 0usize;
        let until = self.now() + READ_TIMEOUT;
        while !pending.is_empty() {
            if self.now() >= until {
                let last = reads.lock().map(|r| format!("{r:?}")).unwrap_or_default();
                return Err(self.violation(
                    "actors: every counter readable after the settle period",
                    format!("unread after {READ_TIMEOUT:?}: {pending:?}; last answers {last}"),
                ));
            }
            let done: Vec<(String, Result<i64, String>)> = reads
                .lock()
                .map(|mut r| std::mem::take(&mut *r).into_iter().collect())
                .unwrap_or_default();
            for (id, r) in done {
                inflight.remove(&id);
                if let Ok(v) = r {
                    pending.remove(&id);
                    self.values.insert(id, v);
                }
            }
            let running: Vec<&SimNode> = self
                .nodes
                .values()
                .filter(|n| matches!(n.life, Life::Running))
                .collect();
            let idle: Vec<String> = pending.difference(&inflight).cloned().collect();
            for id in &idle {
                if running.is_empty() {
                    break;
                }
                attempt += 1;
                let n = running[attempt % running.len()];
                let (actors, reads, id2) = (n.actors.clone(), reads.clone(), id.clone());
                inflight.insert(id.clone());
                n.rt.spawn(async move {
                    let r = actors.ask(COUNTER, &id2, Message::new("get", "")).await;
                    let v = match r {
                        Ok(b) => counter_value(&b).ok_or_else(|| "not a counter reply".into()),
                        Err(e) => Err(e.to_string()),
                    };
                    if let Ok(mut m) = reads.lock() {
                        m.insert(id2, v);
                    }
                });
            }
            clock::advance(self.cfg.step);
            if let Some(v) = self.drive_all() {
                return Err(v);
            }
            if let Some(v) = self.check_actors() {
                return Err(v);
            }
        }
        let tallies = self.work.ledger.snapshot();
        let counted = self.work.lost_gone
            + self
                .nodes
                .values()
                .map(|n| states_lost(&n.registry))
                .sum::<u64>();
        // With a durable store no failure may lose an acknowledged increment.
        let no_exposure = BTreeSet::new();
        let exposed = if self.cfg.durable {
            &no_exposure
        } else {
            &self.work.exposed
        };
        let report = losses(&self.values, &tallies, exposed, counted);
        let mut line = String::from("actors:");
        for (id, t) in &tallies {
            let v = self.values.get(id).copied().unwrap_or(0);
            let mark = if self.work.exposed.contains(id) {
                "*"
            } else {
                ""
            };
            let _ = write!(line, " {id}{mark}={v} (acked {}, sent {})", t.acked, t.sent);
        }
        let _ = write!(
            line,
            "; short {} missing {} lost-metric {} (* exposed)",
            report.short, report.missing, report.counted
        );
        self.log(line);
        Ok(report)
    }

    fn record_views(&mut self) {
        let now = Instant::now();
        let mut lines = Vec::new();
        for (pod, n) in &mut self.nodes {
            let changed = n.view.has_changed().unwrap_or(false);
            let v = n.view.borrow_and_update();
            let serving = v.serving_at(now);
            if !changed && serving == n.serving {
                continue;
            }
            n.serving = serving;
            let summary = format!(
                "{pod}/{} {} serving={} coord={} {}",
                short(&v.me.incarnation),
                v.state.as_str(),
                serving,
                v.coordinator,
                describe(&v.table)
            );
            drop(v);
            if summary != n.summary {
                lines.push(summary.clone());
                n.summary = summary;
            }
        }
        for l in lines {
            self.log(format!("view {l}"));
        }
    }

    fn state_dump(&self) -> String {
        let now = Instant::now();
        let mut out = String::new();
        for (pod, n) in &self.nodes {
            let v = n.view.borrow();
            let life = match n.life {
                Life::Running => "running",
                Life::Paused { .. } => "paused",
                Life::Leaving(_) => "leaving",
            };
            let _ = writeln!(
                out,
                "  {pod} ({life}) {}/{} state={} serving={} status={:?} coord={} store_age={:?}ms\n    table {}",
                v.me.pod,
                short(&v.me.incarnation),
                v.state.as_str(),
                v.serving_at(now),
                v.status,
                v.coordinator,
                v.store_age_ms(now),
                describe(&v.table)
            );
        }
        let stored = self
            .store
            .snapshot()
            .map(|s| {
                format!(
                    "rv={} holder={} {}",
                    s.resource_version,
                    s.record.holder.as_deref().map(short).unwrap_or("-"),
                    describe(&s.record.table)
                )
            })
            .unwrap_or_else(|| "absent".into());
        let _ = writeln!(out, "  store: {stored}");
        out
    }

    fn violation(&self, invariant: &'static str, what: String) -> Violation {
        Violation {
            at: self.now(),
            invariant,
            detail: format!("{what}\n{}", self.state_dump()),
        }
    }

    fn check_safety(&self, w: Duration) -> Option<Violation> {
        let views: Vec<(&str, watch::Ref<'_, MembershipView>)> = self
            .nodes
            .iter()
            .map(|(p, n)| (p.as_str(), n.view.borrow()))
            .collect();
        let refs: Vec<(&str, &MembershipView)> = views.iter().map(|(p, v)| (*p, &**v)).collect();
        let found = invariants::safety(&refs, Instant::now(), self.now(), w, |k| {
            self.store.evicted_at(k)
        });
        drop(refs);
        drop(views);
        found.map(|b| self.violation(b.invariant, b.what))
    }

    fn check_liveness(&self) -> Option<Violation> {
        let views: Vec<(&str, watch::Ref<'_, MembershipView>)> = self
            .nodes
            .iter()
            .map(|(p, n)| (p.as_str(), n.view.borrow()))
            .collect();
        let refs: Vec<(&str, &MembershipView)> = views.iter().map(|(p, v)| (*p, &**v)).collect();
        let stored = self.store.snapshot().map(|s| s.record.table);
        let found = invariants::liveness(&refs, Instant::now(), stored.as_ref());
        drop(refs);
        drop(views);
        found.map(|b| self.violation(b.invariant, b.what))
    }
}

/// What a batch keeps of one run: the trace only when it failed.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The seed.
    pub seed: u64,
    /// Faults applied, by kind.
    pub faults: BTreeMap<FaultKind, u64>,
    /// The first broken invariant, if any.
    pub violation: Option<Violation>,
    /// The failure report (seed, schedule, step, invariant), when it failed.
    pub report: Option<String>,
    /// What oracle (b) found, when the run got that far.
    pub losses: Option<LossReport>,
}

/// Runs `count` seeds from `first` on `threads` threads (each seed on one thread, with its
/// own virtual clock, so the result of a seed does not depend on the thread count), in
/// seed order.
pub fn run_seeds(first: u64, count: u64, cfg: &Config, threads: usize) -> Vec<Summary> {
    let next = std::sync::atomic::AtomicU64::new(first);
    let end = first.saturating_add(count);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if seed >= end {
                        break;
                    }
                    let out = run(seed, cfg);
                    let summary = Summary {
                        seed,
                        report: out.violation.is_some().then(|| out.report()),
                        faults: out.faults,
                        violation: out.violation,
                        losses: out.losses,
                    };
                    if let Ok(mut r) = results.lock() {
                        r.push(summary);
                    }
                }
            });
        }
    });
    let mut all = results.into_inner().unwrap_or_default();
    all.sort_by_key(|s| s.seed);
    all
}
