//! Activations: the live actors of one node, their directory, and the task that runs each.
//!
//! ```text
//!  TypeEntry (one per actor type)
//!   ├─ shards: id → Arc<Activation>     the directory (an id is in it from activation until
//!   │                                   its state is parked, so a new activation of the same
//!   │                                   id can never miss that state)
//!   └─ parked: id → (generation, state) state of actors that passivated or moved away
//!  Occupancy (one per node, shared)     activations + kept states of every type, against
//!                                       RuntimeConfig::max_actors
//!
//!  Generation = (epoch, version, counter): the table order at which its lineage was
//!  activated, then a counter bumped per activation on the same lineage. An activation
//!  started under table order O gets the successor of max(its state, (O, 0)), so a state
//!  that forked off under an older table (its owner was downed while alive) is always older
//!  than one activated later without it: a stale lineage never silently wins. Epochs start
//!  at the cluster's formation time (`MemberTable::first_epoch_at`), so the lineages of a
//!  later life of the ActorCluster are above every one a durable store kept from before.
//!
//!  Activation lifecycle (one task each):
//!   Claiming ──claimed──► Active ──idle / handed over / drained──► Closing ──► Gone
//!      └──────── aborted (a newer owner claimed it) ──────────────────────────► Gone
//! ```
//!
//! **Bounded.** A node holds at most `max_actors` actors in memory, activations and kept
//! states together ([`Occupancy`]). [`TypeEntry::get_or_insert`] refuses a new activation
//! at the bound, except of an actor whose state is kept here (it takes its state's place);
//! keeping a state is never refused — a passivating actor's, or one handed over by another
//! node, even above the bound: refusing it would lose an acknowledged state. The runtime
//! decides what to do at the bound (drop kept states the durable store has, or refuse).
//!
//! The task handles one message at a time, catches handler panics (the failed message is
//! answered with an error, the actor restarted after a [`Backoff`]), and passivates the actor
//! after the idle time. Routing and the claim protocol are the runtime's; this module only
//! runs what it is given.
//!
//! With a durable store ([`RunSettings::store`]) the task loads the state after the claim,
//! writes every turn's changed state through before sending its reply
//! (`write_through`), rebuilds the actor from the last written state after a panic or a
//! refused write, and parks nothing when it closes: the store has the state, so
//! passivation and hand-over carry none.

use std::{
    cell::Cell,
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::Notify;

use crate::{
    behavior::{Actor, ActorType, Step},
    config::{MailboxConfig, SupervisionConfig},
    error::{ActorError, DeliveryError},
    hashing::HashMap,
    mailbox::{Envelope, Mailbox},
    message::Reply,
    metrics::TypeStats,
    placement::{TableOrder, key_hash},
    store::StateStore,
    supervision::Backoff,
    write_through::{self, Outcome},
};

/// The generation of an actor state, ordered across forks (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Generation {
    /// Epoch of the table under which its lineage was activated.
    pub epoch: u64,
    /// Version of that table.
    pub version: u64,
    /// Activations on that lineage since.
    pub counter: u64,
}

impl Generation {
    /// The generation of an activation started under `order` on `state`'s generation.
    pub fn next(state: Option<Generation>, order: TableOrder) -> Generation {
        let floor = Generation {
            epoch: order.0,
            version: order.1,
            counter: 0,
        };
        let base = state.filter(|g| *g >= floor).unwrap_or(floor);
        Generation {
            counter: base.counter.saturating_add(1),
            ..base
        }
    }
}

/// A state with its generation.
pub type State = (Generation, Bytes);

/// Phase of an activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Asking the previous owners to release the actor; messages queue meanwhile.
    Claiming = 0,
    /// Handling messages.
    Active = 1,
    /// Mailbox closed; finishing queued messages, then parking the state.
    Closing = 2,
    /// Done; no longer in the directory.
    Gone = 3,
}

/// One live actor on this node.
#[derive(Debug)]
pub struct Activation {
    /// Its mailbox.
    pub mailbox: Mailbox,
    phase: AtomicU8,
    /// Generation of this activation ([`Generation::next`] of the state it started on).
    generation: Mutex<Generation>,
    /// Set when a newer owner claimed the actor while it was still claiming.
    pub aborted: AtomicBool,
    /// Set by [`Activation::stop_now`]: [`STOP_KEEP`] or [`STOP_DROP`].
    stop: AtomicU8,
    gone: Notify,
}

const STOP_NONE: u8 = 0;
/// Stop at once and park the state (serving lapsed: the node may come back).
const STOP_KEEP: u8 = 1;
/// Stop at once and drop the state (the node was downed or evicted: the state is stale).
const STOP_DROP: u8 = 2;

impl Activation {
    fn new(config: MailboxConfig) -> Self {
        Self {
            mailbox: Mailbox::new(config),
            phase: AtomicU8::new(Phase::Claiming as u8),
            generation: Mutex::new(Generation::default()),
            aborted: AtomicBool::new(false),
            stop: AtomicU8::new(STOP_NONE),
            gone: Notify::new(),
        }
    }

    /// Its phase.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Claiming,
            1 => Phase::Active,
            2 => Phase::Closing,
            _ => Phase::Gone,
        }
    }

    fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Release);
    }

    /// The generation this activation runs on (default while claiming).
    pub fn generation(&self) -> Generation {
        *lock(&self.generation)
    }

    /// Whether [`stop_now`](Self::stop_now) was called: it handles no message after the
    /// one in hand.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire) != STOP_NONE
    }

    /// Stops the actor at once: the message being handled finishes, queued asks are
    /// answered `Unavailable` (503), queued tells are counted as aborted dead letters. Its
    /// state is parked when `keep_state`, dropped otherwise.
    pub fn stop_now(&self, keep_state: bool) {
        let how = if keep_state { STOP_KEEP } else { STOP_DROP };
        let _ = self
            .stop
            .compare_exchange(STOP_NONE, how, Ordering::AcqRel, Ordering::Acquire);
        if how == STOP_DROP {
            self.stop.store(STOP_DROP, Ordering::Release);
        }
        if self.phase() == Phase::Claiming {
            self.aborted.store(true, Ordering::Release);
        }
        self.mailbox.close();
    }

    /// Asks the actor to finish its queued messages, park its state and go.
    pub fn close(&self) {
        if self.phase() == Phase::Claiming {
            self.aborted.store(true, Ordering::Release);
        }
        self.mailbox.close();
    }

    /// Waits until the activation is gone, at most `timeout`; returns whether it is.
    pub async fn wait_gone(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let n = self.gone.notified();
                tokio::pin!(n);
                n.as_mut().enable();
                if self.phase() == Phase::Gone {
                    return;
                }
                n.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

/// How many actors one node holds in memory — activations and kept states of every type
/// — against its bound (`RuntimeConfig::max_actors`). Shared by every [`TypeEntry`].
#[derive(Debug)]
pub struct Occupancy {
    limit: usize,
    held: AtomicUsize,
    /// Stamps kept states in the order they were kept: the oldest go first.
    stamps: AtomicU64,
}

impl Occupancy {
    /// Nothing held, at most `limit`.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: AtomicUsize::new(0),
            stamps: AtomicU64::new(0),
        })
    }

    /// The bound.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Activations and kept states held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Whether one more activation would go above the bound.
    pub fn full(&self) -> bool {
        self.held() >= self.limit
    }

    /// Takes room for one more actor unless the bound is reached.
    fn try_take(&self) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Takes room for one more actor, above the bound if need be.
    fn take(&self) {
        self.held.fetch_add(1, Ordering::AcqRel);
    }

    fn give_back(&self, n: usize) {
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                Some(h.saturating_sub(n))
            });
    }

    fn stamp(&self) -> u64 {
        self.stamps.fetch_add(1, Ordering::AcqRel)
    }
}

/// A kept state and when it was kept ([`Occupancy`] stamp).
#[derive(Debug)]
struct Kept {
    state: State,
    stamp: u64,
}

type KeptStates = HashMap<Box<str>, Kept>;

const SHARDS: usize = 16;

type Shard = RwLock<HashMap<Box<str>, Arc<Activation>>>;

/// Everything a node keeps about one actor type.
pub struct TypeEntry {
    /// The type's name.
    pub name: Arc<str>,
    /// Its factory.
    pub factory: Arc<dyn ActorType>,
    /// Its mailbox settings.
    pub mailbox: MailboxConfig,
    /// Its metrics.
    pub stats: TypeStats,
    shards: Box<[Shard]>,
    parked: Mutex<KeptStates>,
    occupancy: Arc<Occupancy>,
}

impl std::fmt::Debug for TypeEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypeEntry")
            .field("name", &self.name)
            .field("mailbox", &self.mailbox)
            .finish_non_exhaustive()
    }
}

use crate::sync::{lock, read, write};

impl TypeEntry {
    /// A type with no activation, counting what it holds in `occupancy` (the node's).
    pub fn new(
        factory: Arc<dyn ActorType>,
        mailbox: MailboxConfig,
        stats: TypeStats,
        occupancy: Arc<Occupancy>,
    ) -> Self {
        Self {
            name: factory.name().into(),
            factory,
            mailbox,
            stats,
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            parked: Mutex::default(),
            occupancy,
        }
    }

    /// Keeps `state` of `id` in `p` (replacing what was kept), counted, whatever the bound.
    fn keep(&self, p: &mut KeptStates, id: &str, state: State) {
        let stamp = self.occupancy.stamp();
        if p.insert(id.into(), Kept { state, stamp }).is_none() {
            self.occupancy.take();
            self.stats.parked.inc();
        }
    }

    /// Takes the kept state of `id` out of `p`.
    fn unkeep(&self, p: &mut KeptStates, id: &str) -> Option<State> {
        let kept = p.remove(id)?;
        self.occupancy.give_back(1);
        self.stats.parked.dec();
        Some(kept.state)
    }

    fn shard(&self, id: &str) -> &Shard {
        &self.shards[(key_hash("", id) % SHARDS as u64) as usize]
    }

    /// The activation of `id`, if any.
    pub fn get(&self, id: &str) -> Option<Arc<Activation>> {
        read(self.shard(id)).get(id).cloned()
    }

    /// The activation of `id`, inserted unless one exists; with whether it is new. `None`
    /// when a new one would go above the node's bound ([`Occupancy`]), except for an actor
    /// whose state is kept here: it takes its state's place, so it always has room.
    pub fn get_or_insert(&self, id: &str) -> Option<(Arc<Activation>, bool)> {
        if let Some(a) = self.get(id) {
            return Some((a, false));
        }
        // Not under the shard's lock: `offer_handoff` takes the two the other way round.
        let kept_here = lock(&self.parked).contains_key(id);
        let mut shard = write(self.shard(id));
        if let Some(a) = shard.get(id) {
            return Some((a.clone(), false));
        }
        if kept_here {
            self.occupancy.take();
        } else if !self.occupancy.try_take() {
            return None;
        }
        let a = Arc::new(Activation::new(self.mailbox));
        shard.insert(id.into(), a.clone());
        self.stats.active.inc();
        Some((a, true))
    }

    fn remove(&self, id: &str, act: &Arc<Activation>) {
        let mut shard = write(self.shard(id));
        if shard.get(id).is_some_and(|a| Arc::ptr_eq(a, act)) {
            shard.remove(id);
        }
    }

    /// Ids and activations on this node.
    pub fn activations(&self) -> Vec<(Arc<str>, Arc<Activation>)> {
        self.shards
            .iter()
            .flat_map(|s| {
                read(s)
                    .iter()
                    .map(|(k, v)| (Arc::from(&**k), v.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Messages waiting in the mailboxes of this type (read at scrape time).
    pub fn queued(&self) -> usize {
        self.shards
            .iter()
            .map(|s| read(s).values().map(|a| a.mailbox.len()).sum::<usize>())
            .sum()
    }

    /// Number of activations.
    pub fn active_count(&self) -> usize {
        self.shards.iter().map(|s| read(s).len()).sum()
    }

    /// Keeps `state` of `id` unless a newer generation is already kept; returns whether
    /// kept. Never refused by the bound: the state would be lost.
    pub fn park(&self, id: &str, generation: Generation, state: Bytes) -> bool {
        let mut p = lock(&self.parked);
        match p.get(id) {
            Some(k) if k.state.0 >= generation => false,
            _ => {
                self.keep(&mut p, id, (generation, state));
                true
            }
        }
    }

    /// Takes the kept state of `id`.
    pub fn take_parked(&self, id: &str) -> Option<State> {
        self.unkeep(&mut lock(&self.parked), id)
    }

    /// Generation of the kept state of `id`, if any.
    pub fn parked_generation(&self, id: &str) -> Option<Generation> {
        lock(&self.parked).get(id).map(|k| k.state.0)
    }

    /// Size in bytes of the kept state of `id`, if any.
    pub fn parked_len(&self, id: &str) -> Option<usize> {
        lock(&self.parked).get(id).map(|k| k.state.1.len())
    }

    /// Drops every kept state; returns how many there were.
    pub fn drop_parked(&self) -> usize {
        let mut p = lock(&self.parked);
        let n = p.len();
        p.clear();
        self.occupancy.give_back(n);
        self.stats.parked.sub(n as i64);
        n
    }

    /// Removes the kept state of `id` if it still is `generation` (after a hand-off).
    pub fn remove_parked_if(&self, id: &str, generation: Generation) {
        let mut p = lock(&self.parked);
        if p.get(id).is_some_and(|k| k.state.0 == generation) {
            self.unkeep(&mut p, id);
        }
    }

    /// `(stamp, id)` of every kept state: the smaller the stamp, the older.
    fn kept_stamps(&self) -> Vec<(u64, Box<str>)> {
        lock(&self.parked)
            .iter()
            .map(|(id, k)| (k.stamp, id.clone()))
            .collect()
    }

    /// Drops the kept state of `id` if it still is the one kept at `stamp`.
    fn drop_kept_if(&self, id: &str, stamp: u64) -> bool {
        let mut p = lock(&self.parked);
        p.get(id).is_some_and(|k| k.stamp == stamp) && self.unkeep(&mut p, id).is_some()
    }

    /// Starts `act` on `state` merged with any state parked meanwhile (a hand-off that
    /// arrived during the claim), atomically with respect to [`TypeEntry::offer_handoff`].
    /// Returns the state to activate with and the activation's generation, which is
    /// [`Generation::next`] of that state under `order` (the table order it activates at).
    pub fn begin(
        &self,
        id: &str,
        act: &Activation,
        state: Option<State>,
        order: TableOrder,
    ) -> (Option<Bytes>, Generation) {
        let mut p = lock(&self.parked);
        let kept = self.unkeep(&mut p, id);
        let state = newest(state, kept);
        let generation = Generation::next(state.as_ref().map(|(g, _)| *g), order);
        *lock(&act.generation) = generation;
        act.set_phase(Phase::Active);
        (state.map(|(_, s)| s), generation)
    }

    /// A state handed over by another node: kept for the next activation unless a running
    /// or kept state is at least as new. Kept (and counted) even above the node's bound
    /// ([`Occupancy`]): the sender drops its copy on our acknowledgement, and losing an
    /// acknowledged state is worse than holding one actor too many.
    pub fn offer_handoff(&self, id: &str, generation: Generation, state: Bytes) -> HandOffOutcome {
        let mut p = lock(&self.parked);
        if let Some(act) = self.get(id)
            && act.phase() != Phase::Claiming
        {
            return if generation < act.generation() {
                HandOffOutcome::Superseded
            } else {
                HandOffOutcome::Conflict
            };
        }
        match p.get(id).map(|k| k.state.0) {
            Some(g) if g == generation => HandOffOutcome::Duplicate,
            Some(g) if g > generation => HandOffOutcome::Superseded,
            _ => {
                self.keep(&mut p, id, (generation, state));
                HandOffOutcome::Kept
            }
        }
    }

    /// Copies of every kept state.
    pub fn parked(&self) -> Vec<(Arc<str>, Generation, Bytes)> {
        lock(&self.parked)
            .iter()
            .map(|(k, kept)| (Arc::from(&**k), kept.state.0, kept.state.1.clone()))
            .collect()
    }
}

/// Drops kept states of `entries` from memory, oldest first, until one more activation
/// fits under their [`Occupancy`]; returns how many. Only for kept states that a durable
/// store also holds: in memory mode a kept state is the only copy.
pub fn drop_oldest_kept(entries: &[Arc<TypeEntry>], occupancy: &Occupancy) -> usize {
    if !occupancy.full() {
        return 0;
    }
    let mut kept: Vec<(u64, usize, Box<str>)> = entries
        .iter()
        .enumerate()
        .flat_map(|(i, e)| {
            e.kept_stamps()
                .into_iter()
                .map(move |(stamp, id)| (stamp, i, id))
        })
        .collect();
    kept.sort_unstable();
    let mut dropped = 0;
    for (stamp, i, id) in kept {
        if !occupancy.full() {
            break;
        }
        if entries[i].drop_kept_if(&id, stamp) {
            dropped += 1;
        }
    }
    dropped
}

/// What became of a handed-over state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandOffOutcome {
    /// Kept for the next activation.
    Kept,
    /// A newer state is already running or kept (or the same one runs).
    Superseded,
    /// The same state (same generation) is already kept here: two nodes whose tables each
    /// name the other as the owner push their copies to each other.
    Duplicate,
    /// The actor already runs on an older state: this one cannot be merged (logged, counted).
    Conflict,
}

/// The newer of two states.
pub fn newest(a: Option<State>, b: Option<State>) -> Option<State> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.0 > x.0 { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

thread_local! {
    static SAMPLE: Cell<u32> = const { Cell::new(0) };
}

/// Whether this message is timed (one in `every`, counted per thread: no shared atomic).
pub fn sample(every: u32) -> bool {
    SAMPLE.with(|c| {
        let n = c.get().wrapping_add(1);
        c.set(n);
        every <= 1 || n % every == 0
    })
}

/// What the claim phase decided.
#[derive(Debug)]
pub enum Claimed {
    /// Activate with this state (generation, bytes), if any, under this table order.
    Activate(Option<State>, TableOrder),
    /// Do not activate: another node owns the actor; route the queued messages again.
    Abort,
}

/// Runs one activation from claim to gone. `claim` runs the claim protocol; `reroute`
/// takes the messages of an aborted activation.
pub async fn run(
    entry: Arc<TypeEntry>,
    id: Arc<str>,
    act: Arc<Activation>,
    claim: impl Future<Output = Claimed>,
    reroute: impl FnOnce(Vec<Envelope>),
    settings: RunSettings,
) {
    let claimed = claim.await;
    let (state, order) = match claimed {
        Claimed::Activate(state, order) if !act.aborted.load(Ordering::Acquire) => (state, order),
        other => {
            if let Claimed::Activate(Some((g, s)), _) = other
                && act.stop.load(Ordering::Acquire) != STOP_DROP
            {
                entry.park(&id, g, s);
            }
            let queued = act.mailbox.close_and_take_all();
            finish(&entry, &id, &act);
            if act.stop.load(Ordering::Acquire) == STOP_NONE {
                reroute(queued);
            } else {
                // Stopped at once while claiming: nothing of it may run anywhere from here.
                for env in queued {
                    abort_envelope(&entry, &id, env);
                }
            }
            return;
        }
    };
    let (state, generation) = entry.begin(&id, &act, state, order);
    let (mut durable, state, generation) = match &settings.store {
        None => (None, state, generation),
        Some(store) => {
            match write_through::load(
                store.clone(),
                entry.name.clone(),
                id.clone(),
                Some(generation),
                order,
            )
            .await
            {
                Ok((d, state, generation)) => {
                    *lock(&act.generation) = generation;
                    (Some(d), state, generation)
                }
                Err(e) => {
                    write_through::count(&entry.stats, &e);
                    tracing::warn!(actor_type = %entry.name, id = %id, error = %e, "actor state could not be loaded; its queued messages are refused");
                    let err = write_through::delivery_error(&format!("{}/{id}", entry.name), &e);
                    act.set_phase(Phase::Closing);
                    for env in act.mailbox.close_and_take_all() {
                        match env.reply {
                            Some(tx) => {
                                let _ = tx.send(Err(err.clone()));
                            }
                            None => entry.stats.aborted.inc(),
                        }
                    }
                    finish(&entry, &id, &act);
                    return;
                }
            }
        }
    };
    // The activation stopped itself after a refused or failed write (durable store).
    let mut write_failed = false;
    let mut actor = activate(&*entry.factory, &id, state);
    let mut backoff = Backoff::new(settings.supervision);
    // One idle timer for the activation's life, re-armed only when it fires: no timer
    // work per message. An actor passivates after one to two idle periods.
    let idle = tokio::time::sleep(settings.passivate_after);
    tokio::pin!(idle);
    let mut handled_since_check = 0u64;
    loop {
        if act.stop.load(Ordering::Acquire) != STOP_NONE {
            break;
        }
        let envelope = match act.mailbox.try_recv() {
            Some(e) => e,
            None => {
                tokio::select! {
                    biased;
                    e = act.mailbox.recv() => match e {
                        Some(e) => e,
                        None => break,
                    },
                    () = &mut idle => {
                        if handled_since_check == 0 {
                            // Idle: close if still empty, then finish what raced in.
                            act.mailbox.close_if_empty();
                        }
                        handled_since_check = 0;
                        idle.as_mut().reset(tokio::time::Instant::now() + settings.passivate_after);
                        continue;
                    }
                }
            }
        };
        if act.stop.load(Ordering::Acquire) != STOP_NONE {
            abort_envelope(&entry, &id, envelope);
            break;
        }
        handled_since_check += 1;
        let started = envelope.enqueued.map(|queued| {
            let now = crate::time::now();
            entry
                .stats
                .waiting
                .observe(now.saturating_duration_since(queued).as_secs_f64());
            now
        });
        let outcome = handle(&mut *actor, &envelope).await;
        entry.stats.processed.inc();
        if let Some(s) = started {
            entry
                .stats
                .processing
                .observe(crate::time::since(s).as_secs_f64());
        }
        match outcome {
            Ok(reply) => {
                let reply = match durable.as_mut() {
                    None => reply.map_err(DeliveryError::Actor),
                    // The output gate: the reply leaves once the turn's state is durable.
                    Some(d) => match d.commit(&mut *actor, &entry.stats).await {
                        Outcome::Kept => reply.map_err(DeliveryError::Actor),
                        Outcome::RolledBack(e) => {
                            actor = activate(&*entry.factory, &id, d.committed());
                            Err(e)
                        }
                        Outcome::Stop(e) => {
                            write_failed = true;
                            act.stop_now(false);
                            Err(e)
                        }
                    },
                };
                if let Some(tx) = envelope.reply {
                    let _ = tx.send(reply);
                }
            }
            Err(panic) => {
                entry.stats.restarts.inc();
                let delay = backoff.on_failure(crate::time::now());
                tracing::warn!(
                    actor_type = %entry.name, id = %id, panic = %panic,
                    restart_in_ms = delay.as_millis() as u64,
                    "actor handler panicked; restarting it"
                );
                if let Some(tx) = envelope.reply {
                    let _ = tx.send(Err(DeliveryError::Actor(ActorError::Failed(format!(
                        "the handler panicked ({panic}); the actor was restarted"
                    )))));
                }
                let state = match &durable {
                    // What the failed turn changed was never written: back to the store's.
                    Some(d) => d.committed(),
                    None => snapshot(&mut *actor).await.ok().filter(|s| !s.is_empty()),
                };
                tokio::time::sleep(delay).await;
                actor = activate(&*entry.factory, &id, state);
            }
        }
    }
    act.set_phase(Phase::Closing);
    let stop = act.stop.load(Ordering::Acquire);
    if stop != STOP_NONE {
        for env in act.mailbox.close_and_take_all() {
            abort_envelope(&entry, &id, env);
        }
    }
    if stop == STOP_DROP {
        if write_failed {
            tracing::info!(actor_type = %entry.name, id = %id, "activation ended after a failed state write; the next one loads the stored state");
        } else {
            tracing::warn!(actor_type = %entry.name, id = %id, "actor stopped at once: this node was downed or left the cluster; its state is dropped");
        }
        finish(&entry, &id, &act);
        return;
    }
    let snap = snapshot(&mut *actor).await;
    if durable.is_none() {
        match snap {
            Ok(s) if !s.is_empty() => {
                entry.park(&id, generation, s);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(actor_type = %entry.name, id = %id, error = %e, "actor state lost at deactivation");
            }
        }
    }
    finish(&entry, &id, &act);
}

/// Answers or counts a message that an activation stopped at once will not handle.
fn abort_envelope(entry: &TypeEntry, id: &str, env: Envelope) {
    match env.reply {
        Some(tx) => {
            let _ = tx.send(Err(DeliveryError::Unavailable(format!(
                "{}/{id} was stopped before handling it: this node stopped serving",
                entry.name
            ))));
        }
        None => entry.stats.aborted.inc(),
    }
}

fn finish(entry: &TypeEntry, id: &str, act: &Arc<Activation>) {
    entry.remove(id, act);
    act.set_phase(Phase::Gone);
    act.gone.notify_waiters();
    entry.stats.active.dec();
    entry.occupancy.give_back(1);
}

/// Settings of the activation task.
#[derive(Clone, Debug)]
pub struct RunSettings {
    /// Idle time before passivation.
    pub passivate_after: Duration,
    /// Restart backoff.
    pub supervision: SupervisionConfig,
    /// The durable store every turn writes through to (`None`: memory mode).
    pub store: Option<Arc<dyn StateStore>>,
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic".to_owned()
    }
}

fn activate(factory: &dyn ActorType, id: &str, state: Option<Bytes>) -> Box<dyn Actor> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| factory.activate(id, state))) {
        Ok(a) => a,
        Err(p) => {
            tracing::error!(id, panic = %panic_text(p), "actor activation panicked; starting it without state");
            factory.activate(id, None)
        }
    }
}

async fn run_step(step: std::thread::Result<Step>) -> Result<Reply, String> {
    match step {
        Ok(Step::Done(r)) => Ok(r),
        Ok(Step::Later(fut)) => AssertUnwindSafe(fut)
            .catch_unwind()
            .await
            .map_err(panic_text),
        Err(p) => Err(panic_text(p)),
    }
}

async fn handle(actor: &mut dyn Actor, envelope: &Envelope) -> Result<Reply, String> {
    run_step(std::panic::catch_unwind(AssertUnwindSafe(|| {
        actor.handle(&envelope.message)
    })))
    .await
}

pub(crate) async fn snapshot(actor: &mut dyn Actor) -> Result<Bytes, String> {
    match run_step(std::panic::catch_unwind(AssertUnwindSafe(|| {
        actor.deactivate()
    })))
    .await
    {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => Err(e.to_string()),
        Err(p) => Err(format!("deactivate panicked: {p}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{builtin::CounterType, metrics::RuntimeMetrics};

    fn entry() -> TypeEntry {
        entry_in(Occupancy::new(1000), "counter")
    }

    fn entry_in(occupancy: Arc<Occupancy>, name: &str) -> TypeEntry {
        let metrics = RuntimeMetrics::register(&prometheus::Registry::new()).expect("metrics");
        TypeEntry::new(
            Arc::new(CounterType),
            MailboxConfig::default(),
            metrics.for_type(name),
            occupancy,
        )
    }

    fn state(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn generations_are_ordered_by_table_then_counter() {
        let first = Generation::next(None, (0, 4));
        assert_eq!(
            first,
            Generation {
                epoch: 0,
                version: 4,
                counter: 1
            }
        );
        // The same lineage activated again under a later table moves up to it, counter 1.
        let later = Generation::next(Some(first), (0, 9));
        assert_eq!(
            later,
            Generation {
                epoch: 0,
                version: 9,
                counter: 1
            }
        );
        assert!(later > first);
        // Activated again under the same table: the counter goes up.
        let again = Generation::next(Some(later), (0, 9));
        assert_eq!(again.counter, 2);
        // A restored table (epoch + 1) is above every version of the epoch before.
        assert!(Generation::next(None, (1, 1)) > Generation::next(None, (0, 1_000_000)));
        // A state from a newer table than the activation's keeps its own place.
        let ahead = Generation {
            epoch: 0,
            version: 12,
            counter: 5,
        };
        assert_eq!(
            Generation::next(Some(ahead), (0, 9)),
            Generation {
                epoch: 0,
                version: 12,
                counter: 6
            }
        );
    }

    /// H3: A ran X through many activations under table 1 (counter 7) and was downed; B
    /// activated X without A's state under table 2 and parked it. A's copy arrives late.
    #[test]
    fn a_stale_lineage_never_wins_over_a_newer_one() {
        let e = entry();
        let stale = Generation {
            epoch: 0,
            version: 1,
            counter: 7,
        };
        let fresh = Generation::next(None, (0, 2));
        assert!(e.park("x", fresh, state("b's")));
        assert_eq!(
            e.offer_handoff("x", stale, state("a's")),
            HandOffOutcome::Superseded
        );
        assert!(
            !e.park("x", stale, state("a's")),
            "park keeps the newer lineage"
        );
        let (act, _) = e.get_or_insert("x").expect("room");
        let (s, g) = e.begin("x", &act, Some((stale, state("a's"))), (0, 3));
        assert_eq!(s.as_deref(), Some(&b"b's"[..]));
        assert_eq!(
            g,
            Generation {
                epoch: 0,
                version: 3,
                counter: 1
            }
        );
        // A running activation on the newer lineage: the stale copy is superseded, not
        // a conflict.
        assert_eq!(
            e.offer_handoff("x", stale, state("a's")),
            HandOffOutcome::Superseded
        );
    }

    #[test]
    fn the_same_state_offered_again_is_a_duplicate_not_superseded() {
        let e = entry();
        let g = Generation::next(None, (0, 2));
        assert!(e.park("x", g, state("s")));
        assert_eq!(
            e.offer_handoff("x", g, state("s")),
            HandOffOutcome::Duplicate
        );
        let older = Generation::next(None, (0, 1));
        assert_eq!(
            e.offer_handoff("x", older, state("s")),
            HandOffOutcome::Superseded
        );
    }

    #[test]
    fn dropping_kept_states_empties_them() {
        let e = entry();
        e.park("x", Generation::next(None, (0, 1)), state("s"));
        e.park("y", Generation::next(None, (0, 1)), state("s"));
        assert_eq!(e.parked_len("x"), Some(1));
        assert_eq!(e.drop_parked(), 2);
        assert!(e.parked().is_empty());
    }

    #[test]
    fn activations_and_kept_states_share_the_bound_and_handed_states_are_always_kept() {
        let room = Occupancy::new(2);
        let e = entry_in(room.clone(), "counter");
        let g = Generation::next(None, (0, 1));
        assert!(e.get_or_insert("a").is_some());
        assert!(e.park("k", g, state("s")));
        assert_eq!(room.held(), 2);
        assert!(e.get_or_insert("b").is_none(), "full");
        assert!(
            e.get_or_insert("a").is_some_and(|(_, new)| !new),
            "still reachable"
        );
        // An actor whose state is kept here takes its state's place.
        let (k, new) = e.get_or_insert("k").expect("room for a kept actor");
        assert!(new);
        let (s, _) = e.begin("k", &k, None, (0, 2));
        assert_eq!(s.as_deref(), Some(&b"s"[..]));
        assert_eq!(room.held(), 2);
        // A handed-over state is kept above the bound, and counted.
        assert_eq!(e.offer_handoff("h", g, state("h")), HandOffOutcome::Kept);
        assert_eq!(room.held(), 3);
        assert_eq!(e.take_parked("h").map(|(_, s)| s), Some(state("h")));
        assert_eq!(room.held(), 2);
        e.park("p", g, state("p"));
        assert_eq!(e.drop_parked(), 1);
        assert_eq!(room.held(), 2);
    }

    #[test]
    fn at_the_bound_the_oldest_kept_states_of_every_type_are_dropped_first() {
        let room = Occupancy::new(4);
        let counters = Arc::new(entry_in(room.clone(), "counter"));
        let kvs = Arc::new(entry_in(room.clone(), "kv"));
        let g = Generation::next(None, (0, 1));
        counters.park("old", g, state("1"));
        kvs.park("older-but-replaced", g, state("2"));
        counters.park("newer", g, state("3"));
        kvs.park("newest", g, state("4"));
        // Kept again with a newer state: it is young again.
        kvs.park(
            "older-but-replaced",
            Generation::next(Some(g), (0, 1)),
            state("5"),
        );
        let entries = [counters.clone(), kvs.clone()];
        assert_eq!(drop_oldest_kept(&entries, &room), 1);
        assert!(counters.parked_len("old").is_none(), "the oldest went");
        assert_eq!(room.held(), 3);
        assert_eq!(drop_oldest_kept(&entries, &room), 0, "room for one already");
        assert!(counters.get_or_insert("x").is_some());
        assert_eq!(drop_oldest_kept(&entries, &room), 1);
        assert!(counters.parked_len("newer").is_none());
        assert!(kvs.parked_len("newest").is_some());
        assert!(kvs.parked_len("older-but-replaced").is_some());
    }
}
