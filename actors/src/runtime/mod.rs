//! The runtime: routing, the ownership protocol, rebalancing and draining.
//!
//! This module is the facade ([`ActorRuntime`], the shared state, the serving gate and
//! table feed); the jobs live in `routing` (a pure `decide()` and the drivers that queue
//! or forward), `ownership` (claims, hand-offs, eviction rules, lost-state witnesses),
//! `handover` (rebalance and drain), `peer` (transport handlers) and `actor_ref`.
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
//! forwards new messages to the claimant while its own table is older than the claim's
//! (and holds them until its table catches up when it does not know the claimant yet: by
//! its older table it might own the actor again). An answer can be lost (the claim timed
//! out, its link was replaced, the claimant gave up): the claimed node keeps what it handed
//! for a while (`Handed`, bounded), sends it again to the same claim, counts it among the
//! candidates when it claims the actor itself, and pushes it to the owner when it drains;
//! generations make every extra copy lose to a newer state. A pushed state (a hand-off)
//! leaves the same pointer at its sender, and a node that keeps a pushed state it does
//! not own pushes it on at once; a sender keeps its copy when a table that came meanwhile
//! made it the owner, and only the owner acknowledges the very same state offered twice
//! (two nodes pushing one state to each other must not both drop it). A
//! node that holds nothing and already points elsewhere answers `Moved` and keeps its
//! pointer (a claimant that cannot reach that holder must not erase the chain); one that
//! holds nothing and points nowhere answers `Moved` to the owner before it in its own
//! history (a table made it the owner but it never claimed: the state is still where that
//! owner left it, parked by a claim that aborted, say). A
//! claim from a node with an older table than the claimed node's, or than a claim it
//! already granted, is refused (`Conflict`): the claimant drops its pending activation and
//! routes its messages again once its table is newer. Messages that reach an activation
//! while it is being claimed queue in its mailbox.
//!
//! **Claims fail closed.** A previous holder that does not answer (connection refused,
//! timeout, broken link) is waited for while it is Joining, Up or Leaving in the
//! claimant's table; after twice the ask timeout (10 s) the claim is abandoned and the
//! messages rerouted, never activated without it. Only a holder gone from the table (or
//! replaced by another incarnation), or one Down for at least `down_grace` (the time a
//! downed node may still serve before it notices: isolation timeout plus feed delay), is
//! given up — except a member that a restore left out of the table: it rejoins as a new
//! incarnation keeping its states, so its pod is claimed whatever its incarnation, and it
//! is waited for `restore_grace` (10 s) rather than the down grace. A given-up holder's
//! actor activates without its state, counted in
//! `troupe_handovers_missed_total` (and in `troupe_actor_states_lost_total` if it had one).
//!
//! **Eviction.** A node that learns it is Down, replaced by a new incarnation, removed
//! without a graceful leave, or that gets a table of another cluster, stops every
//! activation at once (the message in hand finishes; queued asks answer 503, queued
//! tells are counted as `aborted` dead letters), drops every kept state and tombstone:
//! other nodes activate its actors without them, and a stale copy must not come back.
//! A *restore* (a later epoch of the same cluster: the Lease was deleted or stripped, and
//! its restorer starts the epoch alone, every other member rejoining as a new incarnation)
//! is not an eviction: nobody was downed by it. Every node keeps its states and hands them
//! to the restored epoch's owners like on any table change; a stale copy (its holder was
//! downed in a version the store lost) has an older generation than its next holder's and
//! loses to it.
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
//! **Durable store** ([`crate::store`], `RuntimeConfig::state_store`). With one, the
//! claim protocol still decides who runs an actor, but the state comes from the store: an
//! activation loads it after its claim, writes every changed state through before the
//! reply (or `tell` acknowledgement, which then waits for the turn) leaves the node, and
//! parks nothing when it closes, so claims and hand-overs carry no state and lost-state
//! accounting (below) is off. Every write is fenced by the version the activation read and
//! its generation: a second activation of the same actor (the windows the claim protocol
//! leaves) cannot overwrite what the other acknowledged; its refused write answers 503 and
//! stops it. Without a store everything below applies unchanged.
//!
//! **Lost states are counted once.** Without a durable store a killed node's states are
//! gone. Every activation swaps a marker `(holder, incarnation, generation)` at the actor's
//! *witness* (the Up member that would own it without the holder) and takes the one the
//! witness had (and any it keeps itself: it may have been the witness before). When that
//! marker names a holder that is not alive in the current table and a generation newer
//! than the state the activation starts on, the state is lost:
//! `troupe_actor_states_lost_total{actor_type}` rises by one on the activating node. The
//! swap is atomic at the witness, and a lineage restarted under a later table has a higher
//! generation than any older marker, so one loss is never counted twice. Markers move
//! with the membership: after every table change a holder tells the current witness of
//! each actor it holds (running or parked) again when that witness changed — it restarted
//! and its markers died with it, was replaced, or members joined or left — so kills one
//! after another are counted too (`refresh_markers`). Not counted (under-count): a
//! cluster of one member (no witness until a second joins); holder and witness dying
//! before the holder's next table change; a marker swap that failed (best effort, after
//! activation; retried on the next table change only for a refresh). Counted although
//! nothing was lost (over-count): an actor whose state was empty when its holder died
//! (the marker is set at activation).
//!
//! **Bounded memory** (`RuntimeConfig::max_actors`, [`activation::Occupancy`]). A node
//! holds at most that many actors, activations and kept states of every type together. A
//! new activation at the bound is refused ([`DeliveryError::AtCapacity`]: 503 with
//! `Retry-After`, counted in `troupe_activations_refused_total`); with a durable store the
//! oldest kept states are dropped from memory first (the store has them). In memory mode a
//! kept state is never dropped. An actor whose state is kept here always activates (it
//! takes its state's place), and a state arriving by claim or hand-off is always taken,
//! even above the bound (losing it would be worse). Refusing is safe for the protocol: it
//! happens before the claim, so no holder gave anything up.
//!
//! **Draining** (graceful leave): stop taking client work, wait until the member table no
//! longer makes this node an owner, close every actor (each finishes its mailbox), push
//! every parked state to its new owner, and wait for in-flight requests to finish.
//!
//! **Determinism seams** (the simulation in `sim/` runs this runtime unchanged): links to
//! peers are made by a [`transport::Connector`] ([`ActorRuntime::with_connector`]; TCP in
//! production) and peers' connections can be served one by one
//! ([`ActorRuntime::serve_transport_connection`]); every instant the runtime measures is
//! tokio's ([`crate::time`]), so paused time drives it; maps hash with a fixed seed on a
//! thread that asks for it ([`crate::hashing`]), so iteration order replays; and
//! [`ActorRuntime::activations`], [`ActorRuntime::parked_states`] and
//! [`ActorRuntime::evictions`] are read-only views for the simulation's oracles.
//!
//! Assumptions: a node that is cut off stops serving (its deadline passes) before the
//! coordinator may down it, and `down_grace` covers the time until it notices; clocks are
//! monotonic per node. Not covered: a chain of holders longer than [`MAX_CLAIM_CHAIN`], and
//! tombstones forgotten under pressure ([`MAX_TOMBSTONES`]).

mod actor_ref;
mod handover;
mod ownership;
mod peer;
mod routing;

pub use actor_ref::ActorRef;
use ownership::{Standing, TableChange, standing};
use routing::settle;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::sync::watch;
use troupe_contract::{MemberStatus, MemberTable};

use crate::{
    activation::{
        self, Activation, Claimed, Generation, HandOffOutcome, Occupancy, RunSettings, State,
        TypeEntry, newest,
    },
    behavior::ActorType,
    builtin::{BuiltinType, CounterType, EchoType, KvType, LoadType},
    config::RuntimeConfig,
    error::{DeliveryError, Error},
    hashing::HashMap,
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
/// Most sidecar actor types one node may declare (`TROUPE_APP_TYPES`).
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

/// One activation a runtime holds ([`ActorRuntime::activations`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldActivation {
    /// Its actor type.
    pub actor_type: String,
    /// Its actor id.
    pub id: String,
    /// The generation it runs on (the default while claiming).
    pub generation: Generation,
    /// Claiming (holds no state yet, handles nothing), active, closing (finishing its
    /// mailbox before it parks its state) or gone.
    pub phase: activation::Phase,
    /// Stopped at once (serving lapsed, or evicted): it handles nothing after the message
    /// in hand.
    pub stopping: bool,
    /// Its claim was given up (another owner claimed the actor first, or it was closed
    /// while claiming): it never runs.
    pub aborted: bool,
}

/// A virtual-actor runtime. Cheap to clone: every clone is the same runtime.
#[derive(Clone, Debug)]
pub struct ActorRuntime {
    inner: Arc<Inner>,
}

/// A state this node handed to a claimant, kept for a short while: when the answer that
/// carried it is lost (the claimant timed out, or its link was replaced), the claimant asks
/// again under the same table order and gets the same state, instead of nothing.
#[derive(Debug)]
struct Handed {
    claimant: Arc<str>,
    order: TableOrder,
    state: activation::State,
    at: Instant,
}

/// Most handed states kept for a repeated claim, by count and by bytes.
const MAX_HANDED: usize = 4096;
const MAX_HANDED_BYTES: usize = 64 << 20;

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

#[derive(Debug)]
struct Inner {
    config: RuntimeConfig,
    metrics: RuntimeMetrics,
    types: RwLock<HashMap<Arc<str>, Arc<TypeEntry>>>,
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
    /// `(pod, incarnation)` → when a restore left it out of the table (it may rejoin
    /// holding its states: claims wait for it up to `restore_grace`).
    restored_away: Mutex<HashMap<PodKey, Instant>>,
    /// States handed to claimants lately, for a claim repeated after a lost answer.
    handed: Mutex<HashMap<ActorKey, Handed>>,
    /// Markers of the actors this node witnesses: who holds each, at which generation.
    markers: Mutex<HashMap<ActorKey, Marker>>,
    /// The witness `(pod, incarnation)` this node gave its marker for each actor it holds
    /// (`None`: it had none to tell), so that a changed witness is told again.
    told: Mutex<HashMap<ActorKey, Option<PodKey>>>,
    inflight: AtomicUsize,
    settings: RunSettings,
    /// Times this node was evicted ([`Inner::evict`]).
    evictions: AtomicU64,
    /// Activations and kept states of every type, against `config.max_actors`.
    occupancy: Arc<Occupancy>,
    /// When a refusal at the bound was last logged (one warning per [`FULL_WARN_EVERY`]).
    full_warned: Mutex<Option<Instant>>,
}

/// Least time between two warnings that the node refuses activations at its bound.
const FULL_WARN_EVERY: Duration = Duration::from_secs(10);

pub(crate) use crate::sync::{lock, read, write};

/// Counts a request as in flight until dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::AcqRel);
        Self(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A deadline "for ever" for [`ActorRuntime::set_accepting`].
fn far_future() -> Instant {
    let now = crate::time::now();
    now.checked_add(Duration::from_secs(10 * 365 * 86_400))
        .unwrap_or(now + Duration::from_secs(86_400))
}

impl ActorRuntime {
    /// A runtime with the built-in types of `config.builtin_types` (by default `counter`,
    /// `kv`, `echo`; `load` only when listed), the types in `config.actor_types`, and the
    /// sidecar's declared types (`config.app_types`, required) when `config.app_url` is set. Its
    /// metrics are registered in `registry`. It owns no actor until
    /// [`update_members`](Self::update_members) makes it an Up member, and it serves
    /// nothing (503) until [`set_serving_until`](Self::set_serving_until) (or
    /// [`set_accepting(true)`](Self::set_accepting)).
    ///
    /// Must be called inside a Tokio runtime.
    pub fn new(config: RuntimeConfig, registry: &prometheus::Registry) -> Result<Self, Error> {
        Self::with_connector(config, registry, Arc::new(transport::TcpConnector))
    }

    /// Like [`new`](Self::new), with links to peers made by `connector` (the deterministic
    /// simulation's in-memory network; [`new`](Self::new) uses TCP). Serve the peers'
    /// connections with [`serve_transport_connection`](Self::serve_transport_connection).
    pub fn with_connector(
        config: RuntimeConfig,
        registry: &prometheus::Registry,
        connector: Arc<dyn transport::Connector>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let metrics = RuntimeMetrics::register(registry)?;
        let sidecar = config.app_url.as_deref().map(SidecarApp::new);
        let mut factories: Vec<Arc<dyn ActorType>> = Vec::new();
        for t in &config.builtin_types {
            if factories.iter().any(|f| f.name() == t.name()) {
                continue;
            }
            factories.push(match t {
                BuiltinType::Counter => Arc::new(CounterType),
                BuiltinType::Kv => Arc::new(KvType {
                    max_state_bytes: config
                        .max_frame_bytes
                        .saturating_sub(crate::wire::FRAME_OVERHEAD),
                }),
                BuiltinType::Echo => Arc::new(EchoType),
                BuiltinType::Load => Arc::new(LoadType {
                    sleep_us: config.load_work.0,
                    spin_us: config.load_work.1,
                }),
            });
        }
        factories.extend(config.actor_types.iter().cloned());
        if let Some(app) = &sidecar {
            if config.app_types.is_empty() {
                return Err(Error::Config(format!(
                    "a sidecar application ({}) needs the actor types it serves: set {} \
                     (comma-separated; the operator sets it from spec.app.types)",
                    troupe_contract::env::APP_URL,
                    troupe_contract::env::APP_TYPES
                )));
            }
            if config.app_types.len() > MAX_TYPES {
                return Err(Error::Config(format!(
                    "{} lists {} actor types; at most {MAX_TYPES}",
                    troupe_contract::env::APP_TYPES,
                    config.app_types.len()
                )));
            }
            for t in &config.app_types {
                if !valid_name(t) {
                    return Err(Error::Config(format!(
                        "sidecar actor type {t:?} is not a valid name"
                    )));
                }
                factories.push(Arc::new(SidecarType::new(t, app.clone())));
            }
        }
        let occupancy = Occupancy::new(config.max_actors);
        metrics.max_actors.set(config.max_actors as i64);
        let mut types = HashMap::default();
        for f in factories {
            let name: Arc<str> = f.name().into();
            let entry = TypeEntry::new(
                f,
                config.mailbox_for(&name),
                metrics.for_type(&name),
                occupancy.clone(),
            );
            // Later registrations (tests, sidecar) replace built-ins of the same name.
            types.insert(name, Arc::new(entry));
        }
        let settings = RunSettings {
            passivate_after: config.passivate_after,
            supervision: config.supervision,
            store: config.state_store.clone(),
        };
        let peers = Peers::with_connector(
            config.max_frame_bytes,
            metrics.transport_errors.clone(),
            connector,
        );
        let rt = Self {
            inner: Arc::new(Inner {
                config,
                metrics,
                types: RwLock::new(types),
                view: RwLock::new(PlacementHistory::default()),
                order: watch::Sender::new(("".into(), (0, 0))),
                serving_until: watch::Sender::new(None),
                draining: AtomicBool::new(false),
                peers,
                tombstones: Mutex::default(),
                down_since: Mutex::default(),
                restored_away: Mutex::default(),
                markers: Mutex::default(),
                handed: Mutex::default(),
                told: Mutex::default(),
                inflight: AtomicUsize::new(0),
                settings,
                evictions: AtomicU64::new(0),
                occupancy,
                full_warned: Mutex::new(None),
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
        self.serve_transport_with(listener, Arc::new(transport::PlainAcceptor))
            .await
    }

    /// Like [`serve_transport`](Self::serve_transport), accepting peers through `acceptor`
    /// (mutual TLS in production: [`crate::tls::TransportTls::acceptor`]).
    pub async fn serve_transport_with(
        &self,
        listener: tokio::net::TcpListener,
        acceptor: Arc<dyn transport::Acceptor>,
    ) -> Result<(), Error> {
        let (fast, handler) = self.transport_handlers();
        transport::serve(
            listener,
            acceptor,
            fast,
            handler,
            self.inner.config.max_frame_bytes,
            self.inner.metrics.transport_errors.clone(),
        )
        .await?;
        Ok(())
    }

    /// Serves one peer connection accepted by other means than
    /// [`serve_transport`](Self::serve_transport) (the simulation's in-memory network),
    /// until it closes; `peer` names it in logs.
    pub async fn serve_transport_connection(
        &self,
        r: transport::ReadHalf,
        w: transport::WriteHalf,
        peer: String,
    ) {
        let (fast, handler) = self.transport_handlers();
        transport::serve_connection(
            r,
            w,
            peer,
            fast,
            handler,
            self.inner.config.max_frame_bytes,
            self.inner.metrics.transport_errors.clone(),
        )
        .await;
    }

    fn transport_handlers(&self) -> (transport::FastPath, transport::Handler) {
        let fast_inner = self.inner.clone();
        // The request comes back by value (no allocation on the fast path).
        #[allow(clippy::result_large_err)]
        let fast: transport::FastPath = Arc::new(move |req| fast_inner.try_answer_now(req));
        let inner = self.inner.clone();
        let handler: transport::Handler = Arc::new(move |req| {
            let inner = inner.clone();
            Box::pin(async move { inner.handle_request(req).await })
        });
        (fast, handler)
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
        let (pushed, before, previous) = {
            let mut view = write(&self.inner.view);
            let previous = view.current().cloned();
            let before = previous
                .as_ref()
                .and_then(|p| p.member(&pod).map(|(m, s)| (m.incarnation.clone(), *s)));
            (view.push(placement.clone()), before, previous)
        };
        if !pushed.recorded() {
            return;
        }
        let after = placement
            .member(&pod)
            .map(|(m, s)| (m.incarnation.clone(), *s));
        let change = match pushed {
            Pushed::OtherCluster => TableChange::OtherCluster,
            _ if previous
                .as_ref()
                .is_some_and(|p| p.order.0 < placement.order.0) =>
            {
                TableChange::Restored
            }
            _ => TableChange::Later,
        };
        let verdict = standing(
            before.as_ref().map(|(i, s)| (&**i, *s)),
            after.as_ref().map(|(i, s)| (&**i, *s)),
            change,
        );
        {
            let now = crate::time::now();
            let grace = self.inner.config.down_grace;
            let mut down = lock(&self.inner.down_since);
            // Down, or gone from the table without a leave (and not replaced by a new
            // incarnation, whose start means the old process is dead) for less than the
            // grace: it may still serve (`ownership::unanswered`).
            let gone = |p: &str| placement.member(p).is_none();
            down.retain(|(p, i), since| match placement.status_of(p, i) {
                Some(MemberStatus::Down) => true,
                Some(_) => false,
                None => gone(p) && crate::time::since(*since) < grace,
            });
            let mut away = lock(&self.inner.restored_away);
            let restore_grace = self.inner.config.restore_grace;
            away.retain(|(p, _), since| gone(p) && crate::time::since(*since) < restore_grace);
            if pushed != Pushed::OtherCluster
                && let Some(prev) = &previous
            {
                for (m, s) in &prev.members {
                    if *s != MemberStatus::Leaving && gone(&m.pod) {
                        let key = (m.pod.clone(), m.incarnation.clone());
                        if change == TableChange::Restored {
                            away.entry(key).or_insert(now);
                        } else if !away.contains_key(&key) {
                            down.entry(key).or_insert(now);
                        }
                    }
                }
            }
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
                // Claimants gone from the table hold nothing to follow; one that claimed
                // under a newer table than this one may not be in it yet.
                t.retain(|_, s| placement.member(&s.pod).is_some() || s.order > placement.order);
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

    /// Sends `message` to `(actor_type, id)` and waits for the reply. Answers
    /// [`DeliveryError::NotAccepting`] at once while not serving or draining; counts as in
    /// flight for [`drain`](Self::drain) meanwhile.
    pub async fn ask(&self, actor_type: &str, id: &str, message: Message) -> Answer {
        if !self.inner.accepting_clients() {
            return Err(DeliveryError::NotAccepting);
        }
        let _inflight = self.inner.inflight();
        self.inner.deliver(actor_type, id, message, true, 0).await
    }

    /// Largest client request body the client API takes (bytes).
    pub fn max_body_bytes(&self) -> usize {
        self.inner.config.max_body_bytes
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
        let _inflight = self.inner.inflight();
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

    /// Every activation this node holds now, in any phase, sorted by type and id: a
    /// read-only view for observers (the simulation's "one activation at a time" oracle).
    pub fn activations(&self) -> Vec<HeldActivation> {
        let mut out: Vec<HeldActivation> = self
            .inner
            .entries()
            .iter()
            .filter(|e| e.active_count() > 0)
            .flat_map(|e| {
                e.activations().into_iter().map(|(id, a)| HeldActivation {
                    actor_type: e.name.to_string(),
                    id: id.to_string(),
                    generation: a.generation(),
                    phase: a.phase(),
                    stopping: a.stopping(),
                    aborted: a.aborted.load(Ordering::Acquire),
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.actor_type, &a.id).cmp(&(&b.actor_type, &b.id)));
        out
    }

    /// Every state this node keeps for an actor not active here (passivated, moved away,
    /// handed to it), as `(type, id, generation)`, sorted.
    pub fn parked_states(&self) -> Vec<(String, String, Generation)> {
        let mut out: Vec<(String, String, Generation)> = self
            .inner
            .entries()
            .iter()
            .flat_map(|e| {
                e.parked()
                    .into_iter()
                    .map(|(id, g, _)| (e.name.to_string(), id.to_string(), g))
            })
            .collect();
        out.sort();
        out
    }

    /// Every state this node handed to a claimant lately and keeps a copy of (`Handed`),
    /// as `(type, id, claimant pod)`, sorted: a read-only view for observers (the
    /// simulation exposes a counter whose holder dies while its claimant still waits).
    pub fn handed_states(&self) -> Vec<(String, String, String)> {
        let mut out: Vec<(String, String, String)> = lock(&self.inner.handed)
            .iter()
            .map(|((t, id), h)| (t.to_string(), id.to_string(), h.claimant.to_string()))
            .collect();
        out.sort();
        out
    }

    /// How many times this node was evicted (downed, replaced, removed without a leave,
    /// or moved to another cluster), each time dropping every kept state.
    pub fn evictions(&self) -> u64 {
        self.inner.evictions.load(Ordering::Acquire)
    }

    /// Actors this node holds in memory, activations and kept states of every type: what
    /// `max_actors` bounds (a handed-over state may take it above).
    pub fn held_count(&self) -> usize {
        self.inner.occupancy.held()
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

    /// Names of the actor types known now (sidecar types are the declared ones).
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
    fn inflight(&self) -> InFlight<'_> {
        InFlight::new(&self.inflight)
    }

    /// Whether the serving deadline has not passed.
    pub(super) fn serving_now(&self) -> bool {
        self.serving_until
            .borrow()
            .is_some_and(|u| crate::time::now() <= u)
    }

    /// Whether client and in-process work is taken.
    fn accepting_clients(&self) -> bool {
        self.serving_now() && !self.draining.load(Ordering::Acquire)
    }

    /// Whether peers' forwarded messages are taken.
    pub(super) fn accepting_peers(&self) -> bool {
        self.serving_now() || self.draining.load(Ordering::Acquire)
    }

    /// Stops every activation at once; returns how many.
    pub(super) fn stop_all(&self, keep_state: bool) -> usize {
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
    pub(super) fn evict(&self, placement: &Placement) {
        self.evictions.fetch_add(1, Ordering::AcqRel);
        let stopped = self.stop_all(false);
        let dropped: usize = self.entries().iter().map(|e| e.drop_parked()).sum();
        lock(&self.tombstones).clear();
        lock(&self.markers).clear();
        lock(&self.told).clear();
        tracing::warn!(
            order = ?placement.order,
            cluster = %placement.cluster,
            stopped,
            dropped,
            "this node is no longer a member of the cluster it ran actors for: activations stopped at once, kept states dropped"
        );
    }

    pub(super) fn current(&self) -> Option<Arc<Placement>> {
        read(&self.view).current().cloned()
    }

    fn type_entry(&self, actor_type: &str) -> Result<Arc<TypeEntry>, DeliveryError> {
        if let Some(e) = read(&self.types).get(actor_type) {
            return Ok(e.clone());
        }
        // Sidecar types are declared (TROUPE_APP_TYPES) and registered at start: a client
        // naming any other type never reaches the application.
        Err(DeliveryError::UnknownType(actor_type.to_owned()))
    }

    /// Waits until the table order reaches `order` (or the cluster id changes).
    pub(super) async fn wait_for_order(&self, order: TableOrder, timeout: Duration) -> bool {
        let mut rx = self.order.subscribe();
        let cluster = rx.borrow().0.clone();
        tokio::time::timeout(timeout, rx.wait_for(|(c, o)| *c != cluster || *o >= order))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits for any newer table.
    pub(super) async fn wait_for_newer_table(&self, timeout: Duration) -> bool {
        let mut rx = self.order.subscribe();
        rx.borrow_and_update();
        tokio::time::timeout(timeout, rx.changed())
            .await
            .is_ok_and(|r| r.is_ok())
    }
    pub(super) fn entries(&self) -> Vec<Arc<TypeEntry>> {
        read(&self.types).values().cloned().collect()
    }

    /// The activation of `id` of `entry`, made unless the node holds its bound of actors
    /// (`RuntimeConfig::max_actors`); with whether it is new. At the bound, with a durable
    /// store, the oldest kept states are dropped from memory to make room (the store has
    /// them, and an activation loads its state from there anyway); in memory mode a kept
    /// state is the only copy, so the activation is refused ([`DeliveryError::AtCapacity`],
    /// counted in `troupe_activations_refused_total`). Idle actors passivate and make room.
    pub(super) fn activation_for(
        &self,
        entry: &TypeEntry,
        id: &str,
    ) -> Result<(Arc<Activation>, bool), DeliveryError> {
        if let Some(found) = entry.get_or_insert(id) {
            return Ok(found);
        }
        if self.settings.store.is_some() {
            let dropped = activation::drop_oldest_kept(&self.entries(), &self.occupancy);
            if dropped > 0 {
                tracing::debug!(
                    dropped,
                    "at the actor bound: kept states dropped from memory (the durable store has them)"
                );
            }
            if let Some(found) = entry.get_or_insert(id) {
                return Ok(found);
            }
        }
        entry.stats.refused_at_capacity.inc();
        let limit = self.occupancy.limit();
        {
            let now = crate::time::now();
            let mut last = lock(&self.full_warned);
            if last.is_none_or(|t| now.saturating_duration_since(t) >= FULL_WARN_EVERY) {
                *last = Some(now);
                tracing::warn!(
                    limit,
                    held = self.occupancy.held(),
                    actor_type = %entry.name,
                    id,
                    "this node holds its bound of actors: new activations are refused (503) until idle ones passivate; raise {} or add replicas",
                    troupe_contract::env::MAX_ACTORS
                );
            }
        }
        Err(DeliveryError::AtCapacity {
            pod: self.config.pod.clone(),
            limit,
        })
    }
}
