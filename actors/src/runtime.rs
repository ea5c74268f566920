//! The runtime: routing, the ownership protocol, rebalancing and draining.
//!
//! ```text
//!  client API / in-process ask, tell ─┐        ┌─ transport: Deliver from a peer
//!                                     ▼        ▼
//!                       serving deadline passed? ──yes──► 503 (NotAccepting)
//!                                  deliver(type, id, message)
//!                                     │ active here? ──yes──► push into its mailbox
//!                                     │ owner (rendezvous over Up members) is me?
//!                                     │   yes ─► activate: claim from previous holders, then run
//!                                     │   no  ─► forward to the owner (hop count, table order)
//! ```
//!
//! **Tables.** Member tables are ordered with [`MemberTable::compare`]: by `(epoch,
//! version)` within one cluster id. A table of another cluster id replaces the placement
//! history (its versions say nothing about ours); a node that held actors under the old
//! cluster is *evicted* (below), and a claim carrying another cluster id is refused, so no
//! claim ever crosses cluster ids.
//!
//! **One activation at a time.** A node activates an actor only when it owns it under its
//! member table, and first *claims* it from every member that may hold it:
//! - every member that owned it under the tables it remembers ([`PlacementHistory`]) and
//!   is still in the current table with the same incarnation (Down ones included);
//! - the member its own tombstone points at (it gave the actor away before);
//! - when its first table already made it the owner (it never saw the table before), the
//!   member that would own the actor in that table without it;
//! - and every member a claimed node names in a `Moved` answer: a node that no longer
//!   holds the actor answers where it went (the `(order, pod)` of the claim that took it),
//!   so the claim follows the chain A → B → C even when this node skipped the table in
//!   which B owned it (at most [`MAX_CLAIM_CHAIN`] members).
//!
//! A claimed node closes its activation, lets it finish every queued message, parks its
//! state and answers with it; it records a tombstone (the claim's order, pod, address) and
//! forwards new messages to the claimant while its own table is older than the claim's. A
//! claim from a node with an older table than the claimed node's, or than a claim it
//! already granted, is refused (`Conflict`): the claimant drops its pending activation and
//! routes its messages again once its table is newer. Messages that reach an activation
//! while it is being claimed queue in its mailbox.
//!
//! **Claims fail closed.** A previous holder that does not answer (connection refused,
//! timeout, broken link) is waited for while it is Joining, Up or Leaving in the
//! claimant's table; after about 10 s the claim is abandoned and the messages rerouted,
//! never activated without it. Only a holder gone from the table (or replaced by another
//! incarnation), or one Down for at least `down_grace` (the time a downed node may still
//! serve before it notices: isolation timeout plus feed delay), is given up: the actor
//! activates without its state, counted in `troupe_handovers_missed_total`.
//!
//! **Eviction.** A node that learns it is Down, replaced by a new incarnation, removed
//! without a graceful leave, or that gets a table of another cluster, stops every
//! activation at once (the message in hand finishes; queued asks answer 503, queued
//! tells are counted as `aborted` dead letters), drops every kept state and tombstone:
//! other nodes activate its actors without them, and a stale copy must not come back.
//!
//! **Serving deadline.** The host feeds the deadline until which this node may serve
//! ([`ActorRuntime::set_serving_until`]). Every client, in-process, [`ActorRef`] and peer
//! delivery checks it; when it passes every activation stops at once like above, but keeps
//! its state (the node may come back without being downed). A draining node is not
//! stopped by the deadline (it is Leaving, so it has none); its peers' forwards are taken.
//!
//! **State follows the actor.** A state carries a [`Generation`] `(epoch, version,
//! counter)`: an activation under table order O runs on the successor of max(its state,
//! (O, 0)). Copies that travel twice (claimed, and pushed by a leaving node) are told
//! apart, and a state of a lineage that forked off under an older table (an owner downed
//! while alive) is older than any activation started after the fork: a stale copy never
//! overwrites a newer one ([`TypeEntry::park`], [`TypeEntry::offer_handoff`],
//! [`TypeEntry::begin`]). On every table change a node closes the actors it no longer
//! owns and pushes their parked states to the new owners (`HandOff`). A state or reply
//! that would not fit in one frame is refused at the source (`kv` puts answer 413) or
//! never sent (the claimed node keeps it and answers `TooLarge`).
//!
//! **Lost states are counted once.** Without a durable store a killed node's states are
//! gone. Every activation swaps a marker `(holder, incarnation, generation)` at the actor's
//! *witness* (the Up member that would own it without the holder) and takes the one the
//! witness had (and any it keeps itself: it may have been the witness before). When that
//! marker names a holder that is not alive in the current table and a generation newer
//! than the state the activation starts on, the state is lost:
//! `troupe_actor_states_lost_total{actor_type}` rises by one on the activating node. The
//! swap is atomic at the witness, and a lineage restarted under a later table has a higher
//! generation than any older marker, so one loss is never counted twice. Exact for a
//! killed pod that restarts with the same name or is replaced while the other members
//! stay. Not counted (under-count): a cluster of one member (no witness); a witness that
//! died too, or that changed between the holder's activation and the next one (members
//! joined or left meanwhile: markers do not move with rebalancing); a marker swap that
//! failed (best effort, after activation). Counted although nothing was lost (over-count):
//! an actor whose state was empty when its holder died (the marker is set at activation).
//!
//! **Draining** (graceful leave): stop taking client work, wait until the member table no
//! longer makes this node an owner, close every actor (each finishes its mailbox), push
//! every parked state to its new owner, and wait for in-flight requests to finish.
//!
//! Assumptions: a node that is cut off stops serving (its deadline passes) before the
//! coordinator may down it, and `down_grace` covers the time until it notices; clocks are
//! monotonic per node. Not covered: a chain of holders longer than [`MAX_CLAIM_CHAIN`], and
//! tombstones forgotten under pressure ([`MAX_TOMBSTONES`]).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::sync::watch;
use troupe_contract::{MemberStatus, MemberTable};

use crate::{
    activation::{
        self, Activation, Claimed, Generation, HandOffOutcome, RunSettings, State, TypeEntry,
        newest,
    },
    behavior::ActorType,
    builtin::{CounterType, EchoType, KvType, LoadType},
    config::RuntimeConfig,
    error::{DeliveryError, Error},
    mailbox::{Envelope, Push, retry_after},
    message::{Answer, Message, valid_name},
    metrics::RuntimeMetrics,
    placement::{PlacedMember, Placement, PlacementHistory, Pushed, TableOrder},
    sidecar::{SidecarApp, SidecarType},
    transport::{self, Peers, TransportError},
    wire::{Marker, Request, Response},
};

/// Most nodes a message may visit before it is refused as a routing loop.
const MAX_HOPS: u8 = 8;
/// Most times one message is routed again on one node (closed mailboxes, fresh activations).
const MAX_ATTEMPTS: usize = 64;
/// Most actor types a node serves (sidecar types are created on first use).
const MAX_TYPES: usize = 256;
/// How long a routing decision waits for a newer member table.
const TABLE_WAIT: Duration = Duration::from_secs(2);
/// Most owners one claim asks, following [`Response::Moved`] answers included.
const MAX_CLAIM_CHAIN: usize = 16;
/// Most tombstones a node keeps (one per actor claimed away from it).
const MAX_TOMBSTONES: usize = 64 * 1024;
/// Most witness markers a node keeps (one per actor it witnesses).
const MAX_MARKERS: usize = 1 << 20;

/// The result of [`ActorRuntime::drain`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Whether everything was handed over and finished before the deadline.
    pub complete: bool,
    /// Whether the member table stopped making this node an owner before the deadline.
    pub left_ownership: bool,
    /// Activations closed (each finished its mailbox first).
    pub actors_closed: usize,
    /// Activations still running at the deadline.
    pub actors_left: usize,
    /// Actor states pushed to their new owners.
    pub states_handed_over: usize,
    /// Actor states that could not be handed over (no owner, or unreachable).
    pub states_left: usize,
    /// Requests this node was still serving at the deadline.
    pub requests_left: usize,
    /// Time taken.
    pub elapsed: Duration,
}

/// A virtual-actor runtime. Cheap to clone: every clone is the same runtime.
#[derive(Clone, Debug)]
pub struct ActorRuntime {
    pub(crate) inner: Arc<Inner>,
}

/// Where an actor went when it was claimed away from this node.
#[derive(Clone, Debug)]
struct Tombstone {
    /// The claimant's table order.
    order: TableOrder,
    /// The claimant.
    pod: Arc<str>,
    /// Its transport address.
    address: Arc<str>,
}

/// `(type, id)` → the claim that took the actor away. While the claim's table is newer
/// than this node's, messages for that actor go to the claimant; and a later claimant is
/// told where the actor went ([`Response::Moved`]), so claims follow the actor even when
/// a node skipped table versions.
type Tombstones = Mutex<HashMap<ActorKey, Tombstone>>;

/// `(actor type, id)`.
type ActorKey = (Arc<str>, Box<str>);
/// `(pod, incarnation)`.
type PodKey = (Arc<str>, Arc<str>);

/// What a claimant does about a previous owner that does not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unanswered {
    /// Keep trying (it may still run the actor): never activate without its state.
    Wait,
    /// It holds nothing any more (gone from the table, or Down for longer than the grace
    /// period): activate without its state, counted as a missed hand-over.
    Gone,
}

/// The fail-open rule of a claim, as a pure function: `status` is the previous owner's
/// status in the claimant's current table (`None`: not in it, or another incarnation),
/// `down_for` how long the claimant has seen it Down.
pub(crate) fn unanswered(
    status: Option<MemberStatus>,
    down_for: Option<Duration>,
    grace: Duration,
) -> Unanswered {
    match status {
        None => Unanswered::Gone,
        Some(MemberStatus::Down) if down_for.is_some_and(|d| d >= grace) => Unanswered::Gone,
        Some(_) => Unanswered::Wait,
    }
}

/// Whether an activation lost a state, as a pure function: `previous` is the marker its
/// witness had (the last holder and the generation it ran), `me` this node's `(pod,
/// incarnation)`, `alive` whether a `(pod, incarnation)` is Joining, Up or Leaving in the
/// current table, `state` the generation of the state the activation starts on.
pub(crate) fn state_lost(
    previous: Option<&Marker>,
    me: (&str, &str),
    alive: impl Fn(&str, &str) -> bool,
    state: Option<Generation>,
) -> bool {
    let Some(m) = previous else { return false };
    if (m.holder.as_str(), m.incarnation.as_str()) == me || alive(&m.holder, &m.incarnation) {
        return false;
    }
    state.is_none_or(|g| g < m.generation)
}

/// How a node stands in a new table compared with the one before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Nothing changed for what it may hold.
    Member,
    /// Downed, replaced by a new incarnation, removed without leaving, or the table is
    /// of another cluster: its activations and states are stale; stop at once.
    Evicted,
}

/// Pure: `before`/`after` are this pod's (incarnation, status) in the previous and the
/// new table; `other_cluster` whether the new table has another cluster id.
pub(crate) fn standing(
    before: Option<(&str, MemberStatus)>,
    after: Option<(&str, MemberStatus)>,
    other_cluster: bool,
) -> Standing {
    if other_cluster && before.is_some() {
        return Standing::Evicted;
    }
    match (before, after) {
        (Some((_, MemberStatus::Down)), _) | (None, _) => Standing::Member,
        (Some(_), Some((_, MemberStatus::Down))) => Standing::Evicted,
        (Some((a, _)), Some((b, _))) if a != b => Standing::Evicted,
        (Some((_, MemberStatus::Leaving)), None) => Standing::Member,
        (Some(_), None) => Standing::Evicted,
        _ => Standing::Member,
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: RuntimeConfig,
    pub(crate) metrics: RuntimeMetrics,
    types: RwLock<HashMap<Arc<str>, Arc<TypeEntry>, foldhash::fast::RandomState>>,
    sidecar: Option<SidecarApp>,
    view: RwLock<PlacementHistory>,
    /// The cluster id and table order routed by; bumped on every recorded table.
    order: watch::Sender<(Arc<str>, TableOrder)>,
    /// Until when this node may own and run actors ([`ActorRuntime::set_serving_until`]).
    serving_until: watch::Sender<Option<Instant>>,
    draining: AtomicBool,
    peers: Peers,
    tombstones: Tombstones,
    /// `(pod, incarnation)` → when this node first saw it Down.
    down_since: Mutex<HashMap<PodKey, Instant>>,
    /// Markers of the actors this node witnesses: who holds each, at which generation.
    markers: Mutex<HashMap<ActorKey, Marker>>,
    inflight: AtomicUsize,
    settings: RunSettings,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts a request as in flight until dropped.
pub(crate) struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    pub(crate) fn new(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::AcqRel);
        Self(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

enum Decision {
    Local,
    Forward(PlacedMember, TableOrder),
    NoOwner,
}

/// What one previous owner answered to a claim.
enum Grant {
    /// Released, with its state if it had one.
    State(Option<State>),
    /// It does not hold the actor: it went to this member; claim from it too.
    Moved(PlacedMember),
}

/// A deadline "for ever" for [`ActorRuntime::set_accepting`].
fn far_future() -> Instant {
    let now = Instant::now();
    now.checked_add(Duration::from_secs(10 * 365 * 86_400))
        .unwrap_or(now + Duration::from_secs(86_400))
}

impl ActorRuntime {
    /// A runtime with the built-in types (`counter`, `kv`, `echo`, `load`), the types in
    /// `config.actor_types`, and the sidecar's types when `config.app_url` is set. Its
    /// metrics are registered in `registry`. It owns no actor until
    /// [`update_members`](Self::update_members) makes it an Up member, and it serves
    /// nothing (503) until [`set_serving_until`](Self::set_serving_until) (or
    /// [`set_accepting(true)`](Self::set_accepting)).
    ///
    /// Must be called inside a Tokio runtime.
    pub fn new(config: RuntimeConfig, registry: &prometheus::Registry) -> Result<Self, Error> {
        config.validate()?;
        let metrics = RuntimeMetrics::register(registry)?;
        let sidecar = config.app_url.as_deref().map(SidecarApp::new);
        let mut factories: Vec<Arc<dyn ActorType>> = vec![
            Arc::new(CounterType),
            Arc::new(KvType {
                max_state_bytes: config
                    .max_frame_bytes
                    .saturating_sub(crate::wire::FRAME_OVERHEAD),
            }),
            Arc::new(EchoType),
            Arc::new(LoadType {
                sleep_us: config.load_work.0,
                spin_us: config.load_work.1,
            }),
        ];
        factories.extend(config.actor_types.iter().cloned());
        if let Some(app) = &sidecar {
            for t in &config.app_types {
                if !valid_name(t) {
                    return Err(Error::Config(format!(
                        "sidecar actor type {t:?} is not a valid name"
                    )));
                }
                factories.push(Arc::new(SidecarType::new(t, app.clone())));
            }
        }
        let mut types = HashMap::with_hasher(foldhash::fast::RandomState::default());
        for f in factories {
            let name: Arc<str> = f.name().into();
            let entry = TypeEntry::new(f, config.mailbox_for(&name), metrics.for_type(&name));
            // Later registrations (tests, sidecar) replace built-ins of the same name.
            types.insert(name, Arc::new(entry));
        }
        let settings = RunSettings {
            passivate_after: config.passivate_after,
            supervision: config.supervision,
        };
        let peers = Peers::new(config.max_frame_bytes, metrics.transport_errors.clone());
        let rt = Self {
            inner: Arc::new(Inner {
                config,
                metrics,
                types: RwLock::new(types),
                sidecar,
                view: RwLock::new(PlacementHistory::default()),
                order: watch::Sender::new(("".into(), (0, 0))),
                serving_until: watch::Sender::new(None),
                draining: AtomicBool::new(false),
                peers,
                tombstones: Mutex::default(),
                down_since: Mutex::default(),
                markers: Mutex::default(),
                inflight: AtomicUsize::new(0),
                settings,
            }),
        };
        let weak = Arc::downgrade(&rt.inner);
        rt.inner.metrics.set_depth_source(Box::new(move || {
            weak.upgrade()
                .map(|inner| {
                    inner
                        .entries()
                        .iter()
                        .map(|e| (e.name.clone(), e.queued() as i64))
                        .collect()
                })
                .unwrap_or_default()
        }));
        tokio::spawn(stop_when_serving_lapses(
            Arc::downgrade(&rt.inner),
            rt.inner.serving_until.subscribe(),
        ));
        Ok(rt)
    }

    /// The client HTTP API (see `API.md`), to serve on [`troupe_contract::ports::CLIENT`].
    pub fn client_router(&self) -> axum::Router {
        crate::client_api::router(self.clone())
    }

    /// Serves the node-to-node transport on `listener` (bind it to
    /// `0.0.0.0:`[`troupe_contract::ports::TRANSPORT`]); runs until the task is dropped.
    pub async fn serve_transport(&self, listener: tokio::net::TcpListener) -> Result<(), Error> {
        let fast_inner = self.inner.clone();
        // The request comes back by value (no allocation on the fast path).
        #[allow(clippy::result_large_err)]
        let fast: transport::FastPath = Arc::new(move |req| fast_inner.try_answer_now(req));
        let inner = self.inner.clone();
        let handler: transport::Handler = Arc::new(move |req| {
            let inner = inner.clone();
            Box::pin(async move { inner.handle_request(req).await })
        });
        transport::serve(
            listener,
            fast,
            handler,
            self.inner.config.max_frame_bytes,
            self.inner.metrics.transport_errors.clone(),
        )
        .await?;
        Ok(())
    }

    /// Feeds a new member table (call on every change). Tables are ordered with
    /// [`MemberTable::compare`]: older or equal ones of the same cluster are ignored; one of
    /// another cluster id replaces the history. Actors this node no longer owns are closed
    /// and their state handed over. When the table downs this node, replaces its
    /// incarnation, removes it without a leave, or belongs to another cluster, every
    /// activation stops at once and every kept state is dropped (they are stale: other
    /// nodes activate those actors without them).
    pub fn update_members(&self, table: &MemberTable) {
        let port = self.inner.config.transport_port;
        let placement = Arc::new(Placement::from_table(table, |a| transport_addr(a, port)));
        let pod = self.inner.config.pod.clone();
        let (pushed, before) = {
            let mut view = write(&self.inner.view);
            let before = view
                .current()
                .and_then(|p| p.member(&pod).map(|(m, s)| (m.incarnation.clone(), *s)));
            (view.push(placement.clone()), before)
        };
        if !pushed.recorded() {
            return;
        }
        let after = placement
            .member(&pod)
            .map(|(m, s)| (m.incarnation.clone(), *s));
        let verdict = standing(
            before.as_ref().map(|(i, s)| (&**i, *s)),
            after.as_ref().map(|(i, s)| (&**i, *s)),
            pushed == Pushed::OtherCluster,
        );
        {
            let now = Instant::now();
            let mut down = lock(&self.inner.down_since);
            down.retain(|(p, i), _| placement.status_of(p, i) == Some(MemberStatus::Down));
            for (m, s) in &placement.members {
                if *s == MemberStatus::Down {
                    down.entry((m.pod.clone(), m.incarnation.clone()))
                        .or_insert(now);
                }
            }
        }
        {
            let mut t = lock(&self.inner.tombstones);
            if pushed == Pushed::OtherCluster {
                t.clear();
            } else {
                // Claimants gone from the table hold nothing to follow.
                t.retain(|_, s| placement.member(&s.pod).is_some());
            }
        }
        if verdict == Standing::Evicted {
            self.inner.evict(&placement);
        }
        self.inner
            .order
            .send_replace((placement.cluster.clone(), placement.order));
        let inner = self.inner.clone();
        tokio::spawn(async move { inner.rebalance().await });
    }

    /// Until when this node may own and run actors: feed it from the membership view's
    /// serving deadline on every change. Every delivery (client API, in-process `ask`,
    /// `tell`, [`ActorRef`], and transport `Deliver` from peers) is refused with
    /// [`DeliveryError::NotAccepting`] once it passed, and when it passes every activation
    /// stops at once (queued asks answer 503, queued tells are counted as aborted), keeping
    /// its state. While draining, a lapse does not stop activations (they finish their
    /// mailboxes and hand over) and peers' `Deliver` is still taken.
    pub fn set_serving_until(&self, until: Option<Instant>) {
        self.inner.serving_until.send_replace(until);
    }

    /// Tests and standalone mode: `true` serves with no deadline (and ends a drain),
    /// `false` stops taking client work like a leaving node ([`set_draining`](Self::set_draining)).
    pub fn set_accepting(&self, accepting: bool) {
        if accepting {
            self.inner.draining.store(false, Ordering::Release);
            self.set_serving_until(Some(far_future()));
        } else {
            self.set_draining(true);
        }
    }

    /// Marks the node as leaving: the client API and in-process calls answer 503, peers'
    /// forwards are still taken, and activations finish their mailboxes even after the
    /// serving deadline. Call it before the member table marks this node Leaving.
    pub fn set_draining(&self, draining: bool) {
        self.inner.draining.store(draining, Ordering::Release);
    }

    /// Whether the client API takes work: serving now and not draining.
    pub fn is_accepting(&self) -> bool {
        self.inner.accepting_clients()
    }

    /// Graceful leave. Call after the member table marks this node Leaving (or removes it)
    /// and after [`update_members`](Self::update_members) was fed that table: stops taking
    /// client work, closes every actor once the table no longer makes this node an owner
    /// (each finishes the messages it accepted), hands their states to the new owners and
    /// waits for in-flight requests, all within `deadline`.
    pub async fn drain(&self, deadline: Duration) -> DrainReport {
        self.inner.drain(deadline).await
    }

    /// Sends `message` to `(actor_type, id)` and waits for the reply.
    pub async fn ask(&self, actor_type: &str, id: &str, message: Message) -> Answer {
        if !self.inner.accepting_clients() {
            return Err(DeliveryError::NotAccepting);
        }
        self.inner.deliver(actor_type, id, message, true, 0).await
    }

    /// Sends `message` to `(actor_type, id)`; `Ok` once it is accepted into a mailbox.
    pub async fn tell(
        &self,
        actor_type: &str,
        id: &str,
        message: Message,
    ) -> Result<(), DeliveryError> {
        if !self.inner.accepting_clients() {
            return Err(DeliveryError::NotAccepting);
        }
        self.inner
            .deliver(actor_type, id, message, false, 0)
            .await
            .map(|_| ())
    }

    /// A handle to `(actor_type, id)` that skips lookups while the actor is active here.
    pub fn actor_ref(&self, actor_type: &str, id: &str) -> Result<ActorRef, DeliveryError> {
        let entry = self.inner.type_entry(actor_type)?;
        if !valid_name(id) {
            return Err(DeliveryError::InvalidAddress(format!(
                "invalid actor id {id:?}"
            )));
        }
        Ok(ActorRef {
            cached: entry.get(id),
            inner: self.inner.clone(),
            entry,
            id: id.into(),
        })
    }

    /// Ids of the actors of `actor_type` active on this node (claiming, running or closing).
    pub fn active_ids(&self, actor_type: &str) -> Vec<String> {
        read(&self.inner.types)
            .get(actor_type)
            .map(|e| {
                e.activations()
                    .into_iter()
                    .filter(|(_, a)| a.phase() != activation::Phase::Gone)
                    .map(|(id, _)| id.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Actors active on this node, all types.
    pub fn active_count(&self) -> usize {
        read(&self.inner.types)
            .values()
            .map(|e| e.active_count())
            .sum()
    }

    /// Messages waiting in this node's mailboxes (the HPA's metric).
    pub fn mailbox_depth(&self) -> i64 {
        self.inner.metrics.total_depth()
    }

    /// The member-table version this runtime routes by (within its epoch).
    pub fn members_version(&self) -> u64 {
        self.inner.order.borrow().1.1
    }

    /// The `(epoch, version)` of the member table this runtime routes by.
    pub fn members_order(&self) -> TableOrder {
        self.inner.order.borrow().1
    }

    /// Names of the actor types known now (sidecar types appear on first use unless listed).
    pub fn actor_types(&self) -> Vec<String> {
        let mut v: Vec<String> = read(&self.inner.types)
            .keys()
            .map(|k| k.to_string())
            .collect();
        v.sort();
        v
    }
}

/// `ip` → `ip:port`; an address that already has a port is kept.
fn transport_addr(address: &str, port: u16) -> String {
    if let Ok(sa) = address.parse::<SocketAddr>() {
        return sa.to_string();
    }
    if let Ok(ip) = address.parse::<IpAddr>() {
        return SocketAddr::new(ip, port).to_string();
    }
    format!("{address}:{port}")
}

/// What a push means for the sender: `Ok(result)`, or `Err(envelope)` when the mailbox
/// was closed and the message must be routed again.
fn settle(
    entry: &TypeEntry,
    id: &str,
    act: &Activation,
    push: Push,
) -> Result<Result<(), DeliveryError>, Envelope> {
    let dropped = || DeliveryError::Dropped(format!("{}/{id}", entry.name));
    Ok(match push {
        Push::Queued => Ok(()),
        Push::QueuedDroppingOldest(old) => {
            entry.stats.dropped_oldest.inc();
            if let Some(tx) = old.reply {
                let _ = tx.send(Err(dropped()));
            }
            Ok(())
        }
        Push::DroppedNewest(new) => {
            entry.stats.dropped_newest.inc();
            if let Some(tx) = new.reply {
                let _ = tx.send(Err(dropped()));
            }
            Ok(())
        }
        Push::Refused(_) => {
            let config = act.mailbox.config();
            if config.overflow == crate::OverflowPolicy::Backpressure {
                entry.stats.rejected_backpressure.inc();
            } else {
                entry.stats.rejected_full.inc();
            }
            Err(DeliveryError::MailboxFull {
                actor: format!("{}/{id}", entry.name),
                retry_after: retry_after(&config),
            })
        }
        Push::Closed(e) => return Err(e),
    })
}

/// A handle to one virtual actor. While the actor is active on this node, sends go
/// straight to its mailbox (no type or directory lookup); otherwise they are routed like
/// [`ActorRuntime::tell`] / [`ActorRuntime::ask`]. Stays valid across passivation and
/// rebalancing. Obtain one with [`ActorRuntime::actor_ref`].
#[derive(Clone, Debug)]
pub struct ActorRef {
    inner: Arc<Inner>,
    entry: Arc<TypeEntry>,
    id: Arc<str>,
    cached: Option<Arc<Activation>>,
}

impl ActorRef {
    /// The actor's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    async fn send(&mut self, mut env: Envelope) -> Result<(), DeliveryError> {
        if !self.inner.accepting_clients() {
            return Err(DeliveryError::NotAccepting);
        }
        if let Some(act) = &self.cached {
            match settle(&self.entry, &self.id, act, act.mailbox.push(env).await) {
                Ok(done) => return done,
                Err(e) => {
                    env = e;
                    self.cached = None;
                }
            }
        }
        let r = self.inner.route(&self.entry, &self.id, env, 0).await;
        self.cached = self.entry.get(&self.id);
        r
    }

    /// Like [`ActorRuntime::tell`].
    pub async fn tell(&mut self, message: Message) -> Result<(), DeliveryError> {
        let mut env = Envelope::tell(message);
        if activation::sample(self.inner.config.timing_sample_every) {
            env.enqueued = Some(Instant::now());
        }
        self.send(env).await
    }

    /// Like [`ActorRuntime::ask`].
    pub async fn ask(&mut self, message: Message) -> Answer {
        let (mut env, rx) = Envelope::ask(message);
        if activation::sample(self.inner.config.timing_sample_every) {
            env.enqueued = Some(Instant::now());
        }
        self.send(env).await?;
        match tokio::time::timeout(self.inner.config.ask_timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(DeliveryError::Dropped(format!(
                "{}/{}",
                self.entry.name, self.id
            ))),
            Err(_) => Err(DeliveryError::Timeout(self.inner.config.ask_timeout)),
        }
    }
}

/// Stops every activation at once whenever the serving deadline passes (not while
/// draining). Ends with the runtime.
async fn stop_when_serving_lapses(
    inner: std::sync::Weak<Inner>,
    mut rx: watch::Receiver<Option<Instant>>,
) {
    loop {
        let until = *rx.borrow_and_update();
        let lapse = async {
            if let Some(t) = until {
                tokio::time::sleep_until(t.into()).await;
            }
        };
        tokio::select! {
            () = lapse => {
                let Some(inner) = inner.upgrade() else { return };
                if !inner.serving_now() && !inner.draining.load(Ordering::Acquire) {
                    let n = inner.stop_all(true);
                    if n > 0 {
                        tracing::warn!(actors = n, "serving lapsed: every activation stopped at once");
                    }
                }
                drop(inner);
                if rx.changed().await.is_err() {
                    return;
                }
            }
            r = rx.changed() => if r.is_err() { return },
        }
    }
}

impl Inner {
    pub(crate) fn inflight(&self) -> InFlight<'_> {
        InFlight::new(&self.inflight)
    }

    /// Whether the serving deadline has not passed.
    fn serving_now(&self) -> bool {
        self.serving_until
            .borrow()
            .is_some_and(|u| Instant::now() <= u)
    }

    /// Whether client and in-process work is taken.
    pub(crate) fn accepting_clients(&self) -> bool {
        self.serving_now() && !self.draining.load(Ordering::Acquire)
    }

    /// Whether peers' forwarded messages are taken.
    fn accepting_peers(&self) -> bool {
        self.serving_now() || self.draining.load(Ordering::Acquire)
    }

    /// Stops every activation at once; returns how many.
    fn stop_all(&self, keep_state: bool) -> usize {
        let mut n = 0;
        for entry in self.entries() {
            for (_, act) in entry.activations() {
                act.stop_now(keep_state);
                n += 1;
            }
        }
        n
    }

    /// This node was downed, replaced or removed (or the cluster changed): stop every
    /// activation at once and drop every kept state.
    fn evict(&self, placement: &Placement) {
        let stopped = self.stop_all(false);
        let dropped: usize = self.entries().iter().map(|e| e.drop_parked()).sum();
        lock(&self.tombstones).clear();
        lock(&self.markers).clear();
        tracing::warn!(
            order = ?placement.order,
            cluster = %placement.cluster,
            stopped,
            dropped,
            "this node is no longer a member of the cluster it ran actors for: activations stopped at once, kept states dropped"
        );
    }

    fn current(&self) -> Option<Arc<Placement>> {
        read(&self.view).current().cloned()
    }

    pub(crate) fn type_entry(&self, actor_type: &str) -> Result<Arc<TypeEntry>, DeliveryError> {
        if let Some(e) = read(&self.types).get(actor_type) {
            return Ok(e.clone());
        }
        let Some(app) = &self.sidecar else {
            return Err(DeliveryError::UnknownType(actor_type.to_owned()));
        };
        if !self.config.app_types.is_empty() || !valid_name(actor_type) {
            return Err(DeliveryError::UnknownType(actor_type.to_owned()));
        }
        let mut types = write(&self.types);
        if let Some(e) = types.get(actor_type) {
            return Ok(e.clone());
        }
        if types.len() >= MAX_TYPES {
            return Err(DeliveryError::UnknownType(actor_type.to_owned()));
        }
        let entry = Arc::new(TypeEntry::new(
            Arc::new(SidecarType::new(actor_type, app.clone())),
            self.config.mailbox_for(actor_type),
            self.metrics.for_type(actor_type),
        ));
        types.insert(actor_type.into(), entry.clone());
        Ok(entry)
    }

    /// Waits until the table order reaches `order` (or the cluster id changes).
    async fn wait_for_order(&self, order: TableOrder, timeout: Duration) -> bool {
        let mut rx = self.order.subscribe();
        let cluster = rx.borrow().0.clone();
        tokio::time::timeout(timeout, rx.wait_for(|(c, o)| *c != cluster || *o >= order))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits for any newer table.
    async fn wait_for_newer_table(&self, timeout: Duration) -> bool {
        let mut rx = self.order.subscribe();
        rx.borrow_and_update();
        tokio::time::timeout(timeout, rx.changed())
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn decide(&self, entry: &TypeEntry, id: &str) -> Decision {
        let Some(p) = self.current() else {
            return Decision::NoOwner;
        };
        {
            let tombstones = lock(&self.tombstones);
            if !tombstones.is_empty()
                && let Some(t) = tombstones.get(&(entry.name.clone(), Box::from(id)))
                && t.order > p.order
                && let Some(m) = p.alive_member(&t.pod)
            {
                return Decision::Forward(m.clone(), t.order);
            }
        }
        match p.owner(&entry.name, id) {
            None => Decision::NoOwner,
            Some(m) if *m.pod == *self.config.pod => Decision::Local,
            Some(m) => Decision::Forward(m.clone(), p.order),
        }
    }

    /// Delivers one message; for a tell the answer is empty once it is accepted.
    pub(crate) async fn deliver(
        self: &Arc<Self>,
        actor_type: &str,
        id: &str,
        message: Message,
        ask: bool,
        hops: u8,
    ) -> Answer {
        let entry = self.type_entry(actor_type)?;
        if !valid_name(id) {
            return Err(DeliveryError::InvalidAddress(
                "actor id must be 1 to 256 bytes without '/' or control characters".into(),
            ));
        }
        let timed = activation::sample(self.config.timing_sample_every);
        if ask {
            let (mut env, rx) = Envelope::ask(message);
            if timed {
                env.enqueued = Some(Instant::now());
            }
            self.route(&entry, id, env, hops).await?;
            match tokio::time::timeout(self.config.ask_timeout, rx).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => Err(DeliveryError::Dropped(format!("{actor_type}/{id}"))),
                Err(_) => Err(DeliveryError::Timeout(self.config.ask_timeout)),
            }
        } else {
            let mut env = Envelope::tell(message);
            if timed {
                env.enqueued = Some(Instant::now());
            }
            self.route(&entry, id, env, hops)
                .await
                .map(|()| Bytes::new())
        }
    }

    /// Queues `env` here or forwards it. `Ok` means queued here, or forwarded and (for an
    /// ask) its answer sent to `env.reply`.
    async fn route(
        self: &Arc<Self>,
        entry: &Arc<TypeEntry>,
        id: &str,
        mut env: Envelope,
        hops: u8,
    ) -> Result<(), DeliveryError> {
        for _ in 0..MAX_ATTEMPTS {
            if let Some(act) = entry.get(id) {
                match settle(entry, id, &act, act.mailbox.push(env).await) {
                    Ok(done) => return done,
                    Err(e) => {
                        env = e;
                        act.wait_gone(self.config.ask_timeout).await;
                    }
                }
            }
            match self.decide(entry, id) {
                Decision::Local => {
                    let (act, new) = entry.get_or_insert(id);
                    if new {
                        self.spawn_activation(entry.clone(), id.into(), act);
                    }
                }
                Decision::Forward(member, order) => {
                    return self.forward(&member, entry, id, env, order, hops).await;
                }
                Decision::NoOwner => {
                    if !self.wait_for_newer_table(TABLE_WAIT).await {
                        return Err(DeliveryError::Unavailable(
                            "no Up member owns actors yet".into(),
                        ));
                    }
                }
            }
        }
        Err(DeliveryError::Unavailable(format!(
            "{}/{id}: routing did not settle",
            entry.name
        )))
    }

    async fn forward(
        self: &Arc<Self>,
        member: &PlacedMember,
        entry: &TypeEntry,
        id: &str,
        env: Envelope,
        order: TableOrder,
        hops: u8,
    ) -> Result<(), DeliveryError> {
        if hops >= MAX_HOPS {
            return Err(DeliveryError::Unavailable(format!(
                "{}/{id}: routing loop while member tables disagree",
                entry.name
            )));
        }
        if hops >= 2 {
            // Tables disagree; give them a moment to converge.
            tokio::time::sleep(Duration::from_millis(5 * u64::from(hops))).await;
        }
        self.metrics.forwarded.inc();
        let ask = env.reply.is_some();
        let request = Request::Deliver {
            ask,
            order,
            hops: hops + 1,
            actor_type: entry.name.to_string(),
            id: id.to_owned(),
            method: env.message.method.into_owned(),
            payload: env.message.payload,
        };
        let timeout = self.config.ask_timeout + Duration::from_secs(1);
        let answer: Answer = match self
            .peers
            .request(&member.transport_addr, request, timeout)
            .await
        {
            Ok(Response::Reply(b)) => Ok(b),
            Ok(Response::Failed(e)) => Err(e),
            Ok(other) => Err(DeliveryError::Unavailable(format!(
                "unexpected answer from {}: {other:?}",
                member.pod
            ))),
            Err(TransportError::Timeout(_)) => Err(DeliveryError::Timeout(timeout)),
            Err(e @ TransportError::TooLarge(..)) => Err(DeliveryError::TooLarge(e.to_string())),
            Err(e) => Err(DeliveryError::Unavailable(e.to_string())),
        };
        match env.reply {
            Some(tx) => {
                let _ = tx.send(answer);
                Ok(())
            }
            None => answer.map(|_| ()),
        }
    }

    fn spawn_activation(
        self: &Arc<Self>,
        entry: Arc<TypeEntry>,
        id: Arc<str>,
        act: Arc<Activation>,
    ) {
        let claim = {
            let rt = self.clone();
            let (entry, id, act) = (entry.clone(), id.clone(), act.clone());
            async move { rt.claim(&entry, &id, &act).await }
        };
        let reroute = {
            let rt = self.clone();
            let (entry, id) = (entry.clone(), id.clone());
            move |queued: Vec<Envelope>| {
                for env in queued {
                    let (rt, entry, id) = (rt.clone(), entry.clone(), id.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        if let Err(e) = rt.route(&entry, &id, env, 0).await {
                            entry.stats.undeliverable.inc();
                            tracing::warn!(actor_type = %entry.name, id = %id, error = %e, "message lost while its actor moved");
                        }
                    });
                }
            }
        };
        tokio::spawn(activation::run(
            entry,
            id,
            act,
            claim,
            reroute,
            self.settings,
        ));
    }

    /// The claim protocol, run by a new activation before it handles anything: claim from
    /// every previous owner in the history, and from every member a claimed node says the
    /// actor went to ([`Response::Moved`]), so the chain is followed even when this node
    /// skipped table versions.
    async fn claim(self: &Arc<Self>, entry: &TypeEntry, id: &str, act: &Activation) -> Claimed {
        let (mut queue, current) = {
            let view = read(&self.view);
            let Some(current) = view.current().cloned() else {
                return Claimed::Abort;
            };
            (
                {
                    let mut q = std::collections::VecDeque::from(view.previous_owners(
                        &entry.name,
                        id,
                        &self.config.pod,
                    ));
                    if let Some(m) = view.owner_before_history(&entry.name, id, &self.config.pod)
                        && !q.iter().any(|x| x.pod == m.pod)
                    {
                        q.push_back(m);
                    }
                    q
                },
                current,
            )
        };
        let me_addr = current
            .member(&self.config.pod)
            .map(|(m, _)| m.transport_addr.to_string())
            .unwrap_or_default();
        // This node gave the actor away before: the claim that took it is a holder too.
        let pointer = lock(&self.tombstones)
            .get(&(entry.name.clone(), Box::from(id)))
            .map(|t| t.pod.clone());
        if let Some(pod) = pointer
            && *pod != *self.config.pod
            && !queue.iter().any(|q| q.pod == pod)
            && let Some((m, _)) = current.member(&pod)
        {
            queue.push_back(m.clone());
        }
        let mut asked: Vec<Arc<str>> = Vec::new();
        let mut best = None;
        let mut abort = false;
        while let Some(member) = queue.pop_front() {
            if asked.len() >= MAX_CLAIM_CHAIN {
                tracing::warn!(actor_type = %entry.name, id, "claim chain too long; not activating");
                abort = true;
                break;
            }
            asked.push(member.pod.clone());
            match self
                .claim_from(&member, &current, &me_addr, entry, id)
                .await
            {
                Ok(Grant::State(state)) => {
                    if state.is_some() {
                        self.metrics.handovers_in.inc();
                    }
                    best = newest(best, state);
                }
                Ok(Grant::Moved(next)) => {
                    if *next.pod != *self.config.pod
                        && !asked.contains(&next.pod)
                        && !queue.iter().any(|q| q.pod == next.pod)
                    {
                        queue.push_back(next);
                    }
                }
                Err(()) => {
                    abort = true;
                    break;
                }
            }
        }
        if abort || act.aborted.load(Ordering::Acquire) {
            if let Some((g, s)) = best {
                entry.park(id, g, s);
            }
            return Claimed::Abort;
        }
        // The actor is here again: nothing to forward to, nobody to point claimants at.
        lock(&self.tombstones).remove(&(entry.name.clone(), Box::from(id)));
        let start = best
            .as_ref()
            .map(|(g, _)| *g)
            .max(entry.parked_generation(id));
        let order = current.order;
        if let Ok(entry) = self.type_entry(&entry.name) {
            let (rt, id) = (self.clone(), Arc::<str>::from(id));
            tokio::spawn(async move { rt.account(entry, id, start, current).await });
        }
        Claimed::Activate(best, order)
    }

    /// Tells the actor's witness that this node now holds it, and counts the state lost
    /// if the marker it had names a dead holder with a newer state than the one this
    /// activation starts on (`start`). Each marker is swapped atomically at its witness,
    /// so one lost state is counted once.
    async fn account(
        self: Arc<Self>,
        entry: Arc<TypeEntry>,
        id: Arc<str>,
        start: Option<Generation>,
        current: Arc<Placement>,
    ) {
        let Some((me, _)) = current.member(&self.config.pod) else {
            return;
        };
        let mine = Marker {
            holder: self.config.pod.clone(),
            incarnation: me.incarnation.to_string(),
            generation: Generation::next(start, current.order),
        };
        let key = (entry.name.clone(), Box::<str>::from(&*id));
        // This node may have been the witness under the holder's table.
        let local = lock(&self.markers).remove(&key);
        let remote = match current.witness(&entry.name, &id, &self.config.pod) {
            Some(w) => {
                let request = Request::Witness {
                    actor_type: entry.name.to_string(),
                    id: id.to_string(),
                    marker: Some(mine.clone()),
                };
                match self
                    .peers
                    .request(&w.transport_addr, request, Duration::from_secs(5))
                    .await
                {
                    Ok(Response::Witnessed(m)) => m,
                    other => {
                        tracing::debug!(witness = %w.pod, answer = ?other, "witness not updated");
                        None
                    }
                }
            }
            None => None,
        };
        let previous = match (local, remote) {
            (Some(a), Some(b)) => Some(if b.generation > a.generation { b } else { a }),
            (a, b) => a.or(b),
        };
        let alive = |pod: &str, inc: &str| {
            matches!(
                current.status_of(pod, inc),
                Some(MemberStatus::Joining | MemberStatus::Up | MemberStatus::Leaving)
            )
        };
        if state_lost(
            previous.as_ref(),
            (&mine.holder, &mine.incarnation),
            alive,
            start,
        ) {
            entry.stats.states_lost.inc();
            tracing::warn!(actor_type = %entry.name, id = %id, previous = ?previous, "actor activated without the state its last holder had: the holder died, its state is lost");
        }
    }

    /// Keeps `marker` for `(actor_type, id)` and returns the one kept before.
    fn swap_marker(&self, actor_type: &str, id: &str, marker: Option<Marker>) -> Option<Marker> {
        let Ok(entry) = self.type_entry(actor_type) else {
            return None;
        };
        let key = (entry.name.clone(), Box::<str>::from(id));
        let mut markers = lock(&self.markers);
        match marker {
            Some(m) => {
                if markers.len() >= MAX_MARKERS && !markers.contains_key(&key) {
                    tracing::warn!(
                        actor_type,
                        id,
                        "too many witness markers; this one is not kept"
                    );
                    return None;
                }
                markers.insert(key, m)
            }
            None => markers.remove(&key),
        }
    }

    async fn claim_from(
        &self,
        member: &PlacedMember,
        current: &Placement,
        me_addr: &str,
        entry: &TypeEntry,
        id: &str,
    ) -> Result<Grant, ()> {
        let give_up = Instant::now() + Duration::from_secs(10);
        loop {
            let request = Request::Claim {
                cluster: current.cluster.to_string(),
                order: current.order,
                claimant: self.config.pod.clone(),
                claimant_addr: me_addr.to_owned(),
                actor_type: entry.name.to_string(),
                id: id.to_owned(),
            };
            let error = match self
                .peers
                .request(&member.transport_addr, request, self.config.ask_timeout * 3)
                .await
            {
                Ok(Response::Claimed(state)) => return Ok(Grant::State(state)),
                Ok(Response::Moved {
                    order,
                    pod,
                    address,
                }) => {
                    // Resolve through our own table; a pod not in it is gone and holds nothing.
                    let Some((next, _)) = self.current().and_then(|p| p.member(&pod).cloned())
                    else {
                        tracing::debug!(%pod, %address, ?order, "claimed actor went to a pod that is gone");
                        return Ok(Grant::State(None));
                    };
                    return Ok(Grant::Moved(next));
                }
                Ok(Response::Conflict { order: theirs }) => {
                    self.wait_for_order(theirs, TABLE_WAIT).await;
                    return Err(());
                }
                Ok(other) => {
                    tracing::debug!(peer = %member.pod, answer = ?other, "claim not granted");
                    return Err(());
                }
                Err(e) => e,
            };
            // No answer. Fail open only when it cannot hold the actor any more.
            let (status, down_for) = match self.current() {
                Some(p) => {
                    let status = p.status_of(&member.pod, &member.incarnation);
                    let since = lock(&self.down_since)
                        .get(&(member.pod.clone(), member.incarnation.clone()))
                        .copied();
                    (status, since.map(|t| t.elapsed()))
                }
                None => (None, None),
            };
            match unanswered(status, down_for, self.config.down_grace) {
                Unanswered::Gone => {
                    self.metrics.handovers_missed.inc();
                    tracing::warn!(peer = %member.pod, ?status, error = %error, actor_type = %entry.name, id, "previous owner is gone; activating without its state");
                    return Ok(Grant::State(None));
                }
                Unanswered::Wait if Instant::now() > give_up => {
                    tracing::warn!(peer = %member.pod, ?status, error = %error, "previous owner unreachable; not activating");
                    return Err(());
                }
                Unanswered::Wait => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Answers a forwarded tell to an actor active here without waiting; anything else is
    /// given back for [`Inner::handle_request`].
    #[allow(clippy::result_large_err)] // gives the request back by value, unallocated
    fn try_answer_now(&self, request: Request) -> Result<Response, Request> {
        let Request::Deliver {
            ask: false,
            order,
            hops,
            actor_type,
            id,
            method,
            payload,
        } = request
        else {
            return Err(request);
        };
        let rebuild = |message: Message, actor_type: String, id: String| Request::Deliver {
            ask: false,
            order,
            hops,
            actor_type,
            id,
            method: message.method.into_owned(),
            payload: message.payload,
        };
        let message = Message::owned(method, payload);
        let active = if self.accepting_peers() && order <= self.order.borrow().1 {
            read(&self.types)
                .get(actor_type.as_str())
                .and_then(|e| e.get(&id).map(|a| (e.clone(), a)))
        } else {
            None
        };
        let Some((entry, act)) = active else {
            return Err(rebuild(message, actor_type, id));
        };
        let mut env = Envelope::tell(message);
        if activation::sample(self.config.timing_sample_every) {
            env.enqueued = Some(Instant::now());
        }
        match act.mailbox.try_push(env) {
            Push::Refused(e)
                if act.mailbox.config().overflow == crate::OverflowPolicy::Backpressure =>
            {
                Err(rebuild(e.message, actor_type, id))
            }
            push => match settle(&entry, &id, &act, push) {
                Ok(Ok(())) => Ok(Response::Reply(Bytes::new())),
                Ok(Err(e)) => Ok(Response::Failed(e)),
                Err(e) => Err(rebuild(e.message, actor_type, id)),
            },
        }
    }

    pub(crate) async fn handle_request(self: Arc<Self>, request: Request) -> Response {
        match request {
            Request::Deliver {
                ask,
                order,
                hops,
                actor_type,
                id,
                method,
                payload,
            } => {
                if !self.accepting_peers() {
                    return Response::Failed(DeliveryError::NotAccepting);
                }
                let _inflight = self.inflight();
                if order > self.order.borrow().1 {
                    self.wait_for_order(order, TABLE_WAIT).await;
                }
                match self
                    .deliver(&actor_type, &id, Message::owned(method, payload), ask, hops)
                    .await
                {
                    Ok(b) => Response::Reply(b),
                    Err(e) => Response::Failed(e),
                }
            }
            Request::Claim {
                cluster,
                order,
                claimant,
                claimant_addr,
                actor_type,
                id,
            } => {
                self.handle_claim(&cluster, order, claimant, claimant_addr, &actor_type, &id)
                    .await
            }
            Request::HandOff {
                generation,
                actor_type,
                id,
                state,
            } => self.handle_handoff(generation, &actor_type, &id, state),
            Request::Witness {
                actor_type,
                id,
                marker,
            } => Response::Witnessed(self.swap_marker(&actor_type, &id, marker)),
        }
    }

    async fn handle_claim(
        &self,
        cluster: &str,
        order: TableOrder,
        claimant: String,
        claimant_addr: String,
        actor_type: &str,
        id: &str,
    ) -> Response {
        let Ok(entry) = self.type_entry(actor_type) else {
            return Response::Claimed(None);
        };
        let (mine, owner_is_claimant) = match self.current() {
            Some(p) => {
                if *p.cluster != *cluster {
                    // Orders of two clusters say nothing about each other: never grant.
                    return Response::Failed(DeliveryError::Unavailable(format!(
                        "claim from another cluster ({cluster:?}; this node follows {:?})",
                        p.cluster
                    )));
                }
                (
                    p.order,
                    p.owner(actor_type, id).is_some_and(|m| *m.pod == *claimant),
                )
            }
            None => ((0, 0), false),
        };
        if order < mine && !owner_is_claimant {
            return Response::Conflict { order: mine };
        }
        let key = (entry.name.clone(), Box::<str>::from(id));
        let act = entry.get(id);
        let holds = act.is_some() || entry.parked_len(id).is_some();
        let before = {
            let mut t = lock(&self.tombstones);
            let before = t.get(&key).cloned();
            if let Some(b) = &before
                && b.order > order
                && *b.pod != *claimant
            {
                // A claim under a newer table already took it: this claimant is behind.
                return Response::Conflict { order: b.order };
            }
            // Point at the claimant when it takes something from here, or when there is
            // no other holder to point at; a pointer to where the actor went is kept
            // until that holder is claimed (the claimant is sent there: `Moved`).
            if holds || before.as_ref().is_none_or(|b| *b.pod == *claimant) {
                if t.len() >= MAX_TOMBSTONES && !t.contains_key(&key) {
                    // Keep the ones that still route; forget the older pointers.
                    t.retain(|_, s| s.order > mine);
                    if t.len() >= MAX_TOMBSTONES {
                        t.clear();
                    }
                }
                t.insert(
                    key,
                    Tombstone {
                        order,
                        pod: claimant.as_str().into(),
                        address: claimant_addr.into(),
                    },
                );
            }
            before
        };
        if let Some(act) = act {
            act.close();
            if !act.wait_gone(self.config.ask_timeout * 2).await {
                return Response::Failed(DeliveryError::Unavailable(format!(
                    "{actor_type}/{id} is still finishing its mailbox"
                )));
            }
        }
        // Never take a state out before it is known to fit in the answer.
        if let Some(len) = entry.parked_len(id)
            && len + crate::wire::FRAME_OVERHEAD > self.config.max_frame_bytes
        {
            tracing::error!(
                actor_type,
                id,
                len,
                "state too large to hand over; kept here"
            );
            return Response::Failed(DeliveryError::TooLarge(format!(
                "state of {actor_type}/{id} is {len} bytes, above the frame limit"
            )));
        }
        if let Some(state) = entry.take_parked(id) {
            self.metrics.handovers_out.inc();
            return Response::Claimed(Some(state));
        }
        match before {
            Some(b) if !holds && *b.pod != *claimant => Response::Moved {
                order: b.order,
                pod: b.pod.to_string(),
                address: b.address.to_string(),
            },
            _ => Response::Claimed(None),
        }
    }

    fn handle_handoff(
        self: &Arc<Self>,
        generation: Generation,
        actor_type: &str,
        id: &str,
        state: Bytes,
    ) -> Response {
        let Ok(entry) = self.type_entry(actor_type) else {
            return Response::HandOffAck;
        };
        match entry.offer_handoff(id, generation, state) {
            // Kept even when this node does not own the actor under its (maybe older)
            // table: pushing it on at once would bounce it between nodes whose tables
            // disagree. The next table change pushes it on if needed.
            HandOffOutcome::Kept => {
                lock(&self.tombstones).remove(&(entry.name.clone(), Box::from(id)));
                self.metrics.handovers_in.inc();
            }
            HandOffOutcome::Superseded => {}
            HandOffOutcome::Conflict => {
                entry.stats.undeliverable.inc();
                tracing::error!(
                    actor_type,
                    id,
                    ?generation,
                    "handed-over state arrived after the actor started on an older state; it is dropped"
                );
            }
        }
        Response::HandOffAck
    }

    fn entries(&self) -> Vec<Arc<TypeEntry>> {
        read(&self.types).values().cloned().collect()
    }

    /// Closes the actors this node no longer owns and pushes their states onward.
    async fn rebalance(self: Arc<Self>) {
        let Some(p) = self.current() else { return };
        let mut closing = Vec::new();
        for entry in self.entries() {
            for (id, act) in entry.activations() {
                let mine = p
                    .owner(&entry.name, &id)
                    .is_some_and(|m| *m.pod == *self.config.pod);
                if !mine {
                    act.close();
                    closing.push(act);
                }
            }
        }
        if !closing.is_empty() {
            tracing::info!(
                order = ?p.order,
                actors = closing.len(),
                "handing over actors after a membership change"
            );
        }
        for act in closing {
            act.wait_gone(Duration::from_secs(30)).await;
        }
        self.push_parked().await;
    }

    /// Pushes every parked state this node does not own to its owner; returns
    /// (pushed, left).
    async fn push_parked(&self) -> (usize, usize) {
        let Some(p) = self.current() else {
            return (0, 0);
        };
        let (mut pushed, mut left) = (0, 0);
        for entry in self.entries() {
            for (id, generation, state) in entry.parked() {
                let Some(owner) = p.owner(&entry.name, &id) else {
                    left += 1;
                    continue;
                };
                if *owner.pod == *self.config.pod {
                    continue;
                }
                if state.len() + crate::wire::FRAME_OVERHEAD > self.config.max_frame_bytes {
                    tracing::error!(actor_type = %entry.name, id = %id, len = state.len(), "state too large to hand over; kept here");
                    left += 1;
                    continue;
                }
                let request = Request::HandOff {
                    generation,
                    actor_type: entry.name.to_string(),
                    id: id.to_string(),
                    state,
                };
                match self
                    .peers
                    .request(&owner.transport_addr, request, Duration::from_secs(5))
                    .await
                {
                    Ok(Response::HandOffAck) => {
                        entry.remove_parked_if(&id, generation);
                        self.metrics.handovers_out.inc();
                        pushed += 1;
                    }
                    other => {
                        tracing::debug!(owner = %owner.pod, answer = ?other, "hand-off not acknowledged; will retry");
                        left += 1;
                    }
                }
            }
        }
        (pushed, left)
    }

    fn owns_any(&self) -> bool {
        self.current()
            .is_some_and(|p| p.owners.iter().any(|m| *m.pod == *self.config.pod))
    }

    async fn drain(self: &Arc<Self>, deadline: Duration) -> DrainReport {
        let started = Instant::now();
        let until = tokio::time::Instant::now() + deadline;
        self.draining.store(true, Ordering::Release);
        let mut report = DrainReport::default();
        // 1. The member table must stop making this node an owner, or actors would come back.
        let mut rx = self.order.subscribe();
        while self.owns_any() {
            if tokio::time::timeout_at(until, rx.changed()).await.is_err() {
                break;
            }
        }
        report.left_ownership = !self.owns_any();
        if report.left_ownership {
            // 2. Close every actor; each finishes its mailbox and parks its state.
            let acts: Vec<Arc<Activation>> = self
                .entries()
                .iter()
                .flat_map(|e| e.activations().into_iter().map(|(_, a)| a))
                .collect();
            report.actors_closed = acts.len();
            for a in &acts {
                a.close();
            }
            for a in &acts {
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                a.wait_gone(left).await;
            }
            // 3. Push every state to its new owner.
            loop {
                let (pushed, left) = self.push_parked().await;
                report.states_handed_over += pushed;
                report.states_left = left;
                if left == 0 || tokio::time::Instant::now() + Duration::from_millis(200) > until {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        // 4. Finish the requests in flight.
        while self.inflight.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        report.actors_left = self.entries().iter().map(|e| e.active_count()).sum();
        report.requests_left = self.inflight.load(Ordering::Acquire);
        report.elapsed = started.elapsed();
        report.complete = report.left_ownership
            && report.actors_left == 0
            && report.states_left == 0
            && report.requests_left == 0;
        tracing::info!(?report, "drain finished");
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MemberStatus::*;

    #[test]
    fn claims_fail_open_only_for_members_that_cannot_hold_the_actor() {
        let grace = Duration::from_secs(3);
        let s = Duration::from_secs;
        // Refusing connections or silent while Up or Leaving: wait, never activate empty.
        assert_eq!(unanswered(Some(Up), None, grace), Unanswered::Wait);
        assert_eq!(unanswered(Some(Leaving), None, grace), Unanswered::Wait);
        assert_eq!(unanswered(Some(Joining), None, grace), Unanswered::Wait);
        // Down by unreachability may still run: wait out the grace period.
        assert_eq!(unanswered(Some(Down), Some(s(1)), grace), Unanswered::Wait);
        assert_eq!(unanswered(Some(Down), None, grace), Unanswered::Wait);
        assert_eq!(unanswered(Some(Down), Some(s(3)), grace), Unanswered::Gone);
        // Removed from the table, or replaced by a new incarnation: gone.
        assert_eq!(unanswered(None, None, grace), Unanswered::Gone);
    }

    #[test]
    fn a_state_is_lost_only_when_a_dead_holder_had_a_newer_one() {
        let g = |version, counter| Generation {
            epoch: 0,
            version,
            counter,
        };
        let marker = |holder: &str, inc: &str| Marker {
            holder: holder.into(),
            incarnation: inc.into(),
            generation: g(3, 2),
        };
        let dead = |_: &str, _: &str| false;
        let alive = |_: &str, _: &str| true;
        let me = ("p", "p-2");
        assert!(!state_lost(None, me, dead, None), "nobody held it");
        assert!(state_lost(Some(&marker("p", "p-1")), me, dead, None));
        assert!(state_lost(
            Some(&marker("p", "p-1")),
            me,
            dead,
            Some(g(3, 1))
        ));
        assert!(
            !state_lost(Some(&marker("p", "p-1")), me, dead, Some(g(3, 2))),
            "its state arrived (handed over before it died)"
        );
        assert!(!state_lost(Some(&marker("w", "w-1")), me, alive, None));
        assert!(
            !state_lost(Some(&marker("p", "p-2")), me, dead, None),
            "our own"
        );
    }

    #[test]
    fn a_node_is_evicted_when_downed_replaced_removed_or_moved_to_another_cluster() {
        let e = Standing::Evicted;
        let m = Standing::Member;
        assert_eq!(standing(Some(("i1", Up)), Some(("i1", Down)), false), e);
        assert_eq!(
            standing(Some(("i1", Leaving)), Some(("i1", Down)), false),
            e
        );
        assert_eq!(standing(Some(("i1", Up)), Some(("i2", Joining)), false), e);
        assert_eq!(standing(Some(("i1", Up)), None, false), e);
        assert_eq!(standing(Some(("i1", Up)), Some(("i1", Up)), true), e);
        // A graceful leave ends with removal: not an eviction (the drain finishes).
        assert_eq!(standing(Some(("i1", Leaving)), None, false), m);
        assert_eq!(standing(Some(("i1", Joining)), Some(("i1", Up)), false), m);
        assert_eq!(standing(Some(("i1", Up)), Some(("i1", Leaving)), false), m);
        assert_eq!(standing(None, Some(("i1", Joining)), false), m);
        assert_eq!(standing(None, Some(("i1", Joining)), true), m);
        // Already Down: handled when it was downed.
        assert_eq!(standing(Some(("i1", Down)), None, false), m);
    }
}
