//! The runtime: routing, the ownership protocol, rebalancing and draining.
//!
//! ```text
//!  client API / in-process ask, tell ─┐        ┌─ transport: Deliver from a peer
//!                                     ▼        ▼
//!                                  deliver(type, id, message)
//!                                     │ active here? ──yes──► push into its mailbox
//!                                     │ owner (rendezvous over Up members) is me?
//!                                     │   yes ─► activate: claim from previous owners, then run
//!                                     │   no  ─► forward to the owner (hop count, table version)
//! ```
//!
//! **One activation at a time.** A node activates an actor only when it owns it under its
//! member table, and first *claims* it from every alive member that owned it under the
//! tables it remembers ([`PlacementHistory`]). A claimed node closes its activation, lets
//! it finish every queued message, parks its state and answers with it; it then forwards
//! new messages to the claimant (a tombstone covers the time until its own table catches
//! up). A claim from a node with an older table is refused (`Conflict`): the claimant
//! drops its pending activation and routes its messages again once its table is newer.
//! Messages that reach an activation while it is being claimed queue in its mailbox.
//!
//! **State follows the actor.** States carry a generation (bumped per activation), so that
//! copies that travel twice (claimed, and pushed by a leaving node) are told apart and a
//! stale copy never overwrites a newer one. On every table change a node closes the actors
//! it no longer owns and pushes their parked states to the new owners (`HandOff`).
//!
//! **Draining** (graceful leave): stop taking client work, wait until the member table no
//! longer makes this node an owner, close every actor (each finishes its mailbox), push
//! every parked state to its new owner, and wait for in-flight requests to finish.
//!
//! Assumption: every node sees every member-table version (they may lag, not skip more
//! than [`crate::placement::HISTORY_LEN`] versions), and a member that cannot be reached is
//! waited for until it answers, refuses connections (process gone) or leaves the table.

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
use troupe_contract::MemberTable;

use crate::{
    activation::{self, Activation, Claimed, HandOffOutcome, RunSettings, TypeEntry, newest},
    behavior::ActorType,
    builtin::{CounterType, EchoType, KvType, LoadType},
    config::RuntimeConfig,
    error::{DeliveryError, Error},
    mailbox::{Envelope, Push, retry_after},
    message::{Answer, Message, valid_name},
    metrics::RuntimeMetrics,
    placement::{PlacedMember, Placement, PlacementHistory},
    sidecar::{SidecarApp, SidecarType},
    transport::{self, Peers, TransportError},
    wire::{Request, Response},
};

/// Most nodes a message may visit before it is refused as a routing loop.
const MAX_HOPS: u8 = 8;
/// Most times one message is routed again on one node (closed mailboxes, fresh activations).
const MAX_ATTEMPTS: usize = 64;
/// Most actor types a node serves (sidecar types are created on first use).
const MAX_TYPES: usize = 256;
/// How long a routing decision waits for a newer member table.
const TABLE_WAIT: Duration = Duration::from_secs(2);

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

/// `(type, id)` → (table version, pod) of a claim from a node with a newer table: until
/// this node's table catches up, messages for that actor go to that pod.
type Tombstones = Mutex<HashMap<(Arc<str>, Box<str>), (u64, Arc<str>)>>;

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: RuntimeConfig,
    pub(crate) metrics: RuntimeMetrics,
    types: RwLock<HashMap<Arc<str>, Arc<TypeEntry>, foldhash::fast::RandomState>>,
    sidecar: Option<SidecarApp>,
    view: RwLock<PlacementHistory>,
    version: watch::Sender<u64>,
    accepting: AtomicBool,
    draining: AtomicBool,
    peers: Peers,
    tombstones: Tombstones,
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
    Forward(PlacedMember, u64),
    NoOwner(u64),
}

impl ActorRuntime {
    /// A runtime with the built-in types (`counter`, `kv`, `echo`, `load`), the types in
    /// `config.actor_types`, and the sidecar's types when `config.app_url` is set. Its
    /// metrics are registered in `registry`. It owns no actor until
    /// [`update_members`](Self::update_members) makes it an Up member, and its client API
    /// answers 503 until [`set_accepting(true)`](Self::set_accepting).
    ///
    /// Must be called inside a Tokio runtime.
    pub fn new(config: RuntimeConfig, registry: &prometheus::Registry) -> Result<Self, Error> {
        config.validate()?;
        let metrics = RuntimeMetrics::register(registry)?;
        let sidecar = config.app_url.as_deref().map(SidecarApp::new);
        let mut factories: Vec<Arc<dyn ActorType>> = vec![
            Arc::new(CounterType),
            Arc::new(KvType),
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
                version: watch::Sender::new(0),
                accepting: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                peers,
                tombstones: Mutex::default(),
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

    /// Feeds a new member table (call on every change). Older or equal versions are
    /// ignored. Actors this node no longer owns are closed and their state handed over.
    pub fn update_members(&self, table: &MemberTable) {
        let port = self.inner.config.transport_port;
        let placement = Placement::from_table(table, |a| transport_addr(a, port));
        let version = placement.version;
        if !write(&self.inner.view).push(Arc::new(placement)) {
            return;
        }
        lock(&self.inner.tombstones).retain(|_, (v, _)| *v > version);
        self.inner.version.send_replace(version);
        let inner = self.inner.clone();
        tokio::spawn(async move { inner.rebalance().await });
    }

    /// Whether the client API takes work (the node is Ready). Starts `false`.
    pub fn set_accepting(&self, accepting: bool) {
        self.inner.accepting.store(accepting, Ordering::Release);
    }

    /// See [`set_accepting`](Self::set_accepting).
    pub fn is_accepting(&self) -> bool {
        self.inner.accepting.load(Ordering::Acquire) && !self.inner.draining.load(Ordering::Acquire)
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
        self.inner.deliver(actor_type, id, message, true, 0).await
    }

    /// Sends `message` to `(actor_type, id)`; `Ok` once it is accepted into a mailbox.
    pub async fn tell(
        &self,
        actor_type: &str,
        id: &str,
        message: Message,
    ) -> Result<(), DeliveryError> {
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

    /// The member-table version this runtime routes by.
    pub fn members_version(&self) -> u64 {
        *self.inner.version.borrow()
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

impl Inner {
    pub(crate) fn inflight(&self) -> InFlight<'_> {
        InFlight::new(&self.inflight)
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

    async fn wait_for_version(&self, version: u64, timeout: Duration) -> bool {
        let mut rx = self.version.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|v| *v >= version))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn decide(&self, entry: &TypeEntry, id: &str) -> Decision {
        let Some(p) = self.current() else {
            return Decision::NoOwner(0);
        };
        {
            let tombstones = lock(&self.tombstones);
            if !tombstones.is_empty()
                && let Some((v, pod)) = tombstones.get(&(entry.name.clone(), Box::from(id)))
                && *v > p.version
                && let Some(m) = p.alive_member(pod)
            {
                return Decision::Forward(m.clone(), *v);
            }
        }
        match p.owner(&entry.name, id) {
            None => Decision::NoOwner(p.version),
            Some(m) if *m.pod == *self.config.pod => Decision::Local,
            Some(m) => Decision::Forward(m.clone(), p.version),
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
                Decision::Forward(member, version) => {
                    return self.forward(&member, entry, id, env, version, hops).await;
                }
                Decision::NoOwner(version) => {
                    if !self.wait_for_version(version + 1, TABLE_WAIT).await {
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
        version: u64,
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
            version,
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

    /// The claim protocol, run by a new activation before it handles anything.
    async fn claim(self: &Arc<Self>, entry: &TypeEntry, id: &str, act: &Activation) -> Claimed {
        let (candidates, version) = {
            let view = read(&self.view);
            (
                view.previous_owners(&entry.name, id, &self.config.pod),
                view.current().map_or(0, |p| p.version),
            )
        };
        let mut best = None;
        let mut abort = false;
        if !candidates.is_empty() {
            let results = futures::future::join_all(
                candidates
                    .iter()
                    .map(|c| self.claim_from(c, version, entry, id)),
            )
            .await;
            for r in results {
                match r {
                    Ok(state) => {
                        if state.is_some() {
                            self.metrics.handovers_in.inc();
                        }
                        best = newest(best, state);
                    }
                    Err(()) => abort = true,
                }
            }
        }
        if abort || act.aborted.load(Ordering::Acquire) {
            if let Some((g, s)) = best {
                entry.park(id, g, s);
            }
            return Claimed::Abort;
        }
        Claimed::Activate(best)
    }

    async fn claim_from(
        &self,
        member: &PlacedMember,
        version: u64,
        entry: &TypeEntry,
        id: &str,
    ) -> Result<Option<(u64, Bytes)>, ()> {
        let give_up = Instant::now() + Duration::from_secs(10);
        loop {
            let request = Request::Claim {
                version,
                claimant: self.config.pod.clone(),
                actor_type: entry.name.to_string(),
                id: id.to_owned(),
            };
            match self
                .peers
                .request(&member.transport_addr, request, self.config.ask_timeout * 3)
                .await
            {
                Ok(Response::Claimed(state)) => return Ok(state),
                Ok(Response::Conflict { version: theirs }) => {
                    self.wait_for_version(theirs, TABLE_WAIT).await;
                    return Err(());
                }
                Ok(other) => {
                    tracing::debug!(peer = %member.pod, answer = ?other, "claim not granted");
                    return Err(());
                }
                Err(TransportError::Refused(_)) => {
                    self.metrics.handovers_missed.inc();
                    tracing::warn!(peer = %member.pod, actor_type = %entry.name, id, "previous owner is gone; activating without its state");
                    return Ok(None);
                }
                Err(e) => {
                    let alive = self
                        .current()
                        .is_some_and(|p| p.is_alive(&member.pod, &member.incarnation));
                    if !alive {
                        self.metrics.handovers_missed.inc();
                        return Ok(None);
                    }
                    if Instant::now() > give_up {
                        tracing::warn!(peer = %member.pod, error = %e, "previous owner unreachable; not activating");
                        return Err(());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Answers a forwarded tell to an actor active here without waiting; anything else is
    /// given back for [`Inner::handle_request`].
    fn try_answer_now(&self, request: Request) -> Result<Response, Request> {
        let Request::Deliver {
            ask: false,
            version,
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
            version,
            hops,
            actor_type,
            id,
            method: message.method.into_owned(),
            payload: message.payload,
        };
        let message = Message::owned(method, payload);
        let active = if version <= *self.version.borrow() {
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
                version,
                hops,
                actor_type,
                id,
                method,
                payload,
            } => {
                let _inflight = self.inflight();
                if version > *self.version.borrow() {
                    self.wait_for_version(version, TABLE_WAIT).await;
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
                version,
                claimant,
                actor_type,
                id,
            } => self.handle_claim(version, claimant, &actor_type, &id).await,
            Request::HandOff {
                generation,
                actor_type,
                id,
                state,
            } => self.handle_handoff(generation, &actor_type, &id, state),
        }
    }

    async fn handle_claim(
        &self,
        version: u64,
        claimant: String,
        actor_type: &str,
        id: &str,
    ) -> Response {
        let Ok(entry) = self.type_entry(actor_type) else {
            return Response::Claimed(None);
        };
        let (mine, owner_is_claimant) = match self.current() {
            Some(p) => (
                p.version,
                p.owner(actor_type, id).is_some_and(|m| *m.pod == *claimant),
            ),
            None => (0, false),
        };
        if version < mine && !owner_is_claimant {
            return Response::Conflict { version: mine };
        }
        if version > mine {
            lock(&self.tombstones)
                .insert((entry.name.clone(), id.into()), (version, claimant.into()));
        }
        if let Some(act) = entry.get(id) {
            act.close();
            if !act.wait_gone(self.config.ask_timeout * 2).await {
                return Response::Failed(DeliveryError::Unavailable(format!(
                    "{actor_type}/{id} is still finishing its mailbox"
                )));
            }
        }
        let state = entry.take_parked(id);
        if state.is_some() {
            self.metrics.handovers_out.inc();
        }
        Response::Claimed(state)
    }

    fn handle_handoff(
        self: &Arc<Self>,
        generation: u64,
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
            HandOffOutcome::Kept => self.metrics.handovers_in.inc(),
            HandOffOutcome::Superseded => {}
            HandOffOutcome::Conflict => {
                entry.stats.undeliverable.inc();
                tracing::error!(
                    actor_type,
                    id,
                    generation,
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
                version = p.version,
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
        let mut rx = self.version.subscribe();
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
