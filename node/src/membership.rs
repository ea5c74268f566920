//! The membership loop: the one task per node that talks to the store and keeps the
//! node's [`MembershipView`] up to date. All decisions are delegated to the pure modules;
//! this module only does I/O and bookkeeping.
//!
//! ```text
//!   store.changes() ─┐                       ┌─► view (watch) ─► /ready, /cluster/*, actors
//!   pod watch ───────┼─► Driver::step() ─────┤
//!   probe replies ───┤   election::decide     └─► CAS writes: join, renew, promote/down/
//!   tick, Leave ─────┘   coordinator::plan         remove, leave
//!   (prober task) ◄── view: probes every member, replies come back as probe replies
//! ```
//!
//! Every write is a compare-and-swap on the record last read; on a conflict the loop
//! re-reads and decides again. A failed store call changes nothing.
//!
//! **One history.** The node follows one cluster (`MemberTable::cluster`) and moves only
//! forward in it (`MemberTable::is_newer_than`, by `(epoch, version)`):
//! * a table of another cluster id is never adopted over ours: read from the store it means
//!   our cluster's Lease was replaced, so the node stops serving, drops its table and joins
//!   that cluster as a new incarnation; from a peer it is ignored (that peer counts neither
//!   as reached nor as store contact);
//! * a Lease found **absent** (deleted) or **stripped** (no table) is not store contact:
//!   a node that follows a cluster stops serving and **restores** its last table into it
//!   with `epoch + 1` (create, or CAS over the stripped record: one restorer wins, the
//!   others adopt the higher epoch); a fresh node forms a new cluster only on a cold start,
//!   or after a restore grace with the Lease still missing;
//! * after adopting a later epoch a node waits `isolation_timeout` before serving it, so
//!   that whoever still served the previous epoch has stopped.
//!
//! **Freshness.** Store contact is stamped with the time a read (or write) was *sent*, and
//! only from a table not older than the one held; watch events bring news (tables to
//! adopt, a reason to read) but never contact, because they may lag.
//!
//! **Leaving.** The drain runs beside the loop: while the handover future runs, the node
//! keeps reading the store, following the watch and probing, so the table it publishes to
//! the actor runtime stays current.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use std::cmp::Ordering;
use std::future::Future;

use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};
use troupe_contract::{MemberStatus, MemberTable};

use crate::coordinator::{self, Change};
use crate::discovery::PodSet;
use crate::election::{self, Eligibility, LeaseObserver, Role};
use crate::failure_detector::{FailureDetector, MemberKey, quorum};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::probe::{PingReply, Prober};
use crate::seams::{self, Sources};
use crate::store::{ChangeStream, Found, LeaseRecord, MemberStore, StoreError, Stored};
use crate::timing::Timing;
use crate::view::{BootstrapState, MembershipView, serving_until};

/// Who this node is.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The pod's name.
    pub pod: String,
    /// The address other members probe: the pod IP (or `ip:port` on loopback).
    pub address: String,
}

/// A request to the membership loop.
pub(crate) enum Command {
    /// Leave gracefully, running `handover` between Leaving and removal.
    Leave {
        handover: BoxFuture<'static, ()>,
        deadline: Instant,
        done: oneshot::Sender<LeaveReport>,
    },
}

/// How a graceful leave went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaveReport {
    /// The node was marked Leaving in the table.
    pub marked_leaving: bool,
    /// The node removed itself from the table.
    pub removed: bool,
    /// How long the leave took.
    pub took: Duration,
}

/// A fresh random incarnation id (16 hex digits), from real randomness. The driver itself
/// draws its ids from its [`Sources`].
pub fn new_incarnation() -> String {
    crate::seams::random_id()
}

/// One probe's outcome, sent from the prober task to the loop.
#[derive(Debug)]
pub(crate) struct ProbeResult {
    key: MemberKey,
    sent_at: Instant,
    reply: Option<PingReply>,
}

/// What the store held at the last read (or watch event).
#[derive(Clone, Debug, PartialEq, Eq)]
enum LeaseState {
    /// Nothing read yet (or a peer's later epoch made the last read moot).
    Unknown,
    /// No record.
    Absent,
    /// A record without a table.
    Stripped(Stored),
    /// A record with a table: [`Driver::stored`].
    Table,
}

/// What woke the loop up.
enum Event {
    Leave {
        handover: BoxFuture<'static, ()>,
        deadline: Instant,
        done: oneshot::Sender<LeaveReport>,
    },
    Stop,
    News,
}

pub(crate) struct Driver<S> {
    identity: Identity,
    timing: Timing,
    sources: Sources,
    store: S,
    me: MemberKey,
    started: Instant,
    /// The record with a table last read from the store (the base of every CAS), if any.
    stored: Option<Stored>,
    /// What the store held when last read.
    lease: LeaseState,
    /// The latest table of our cluster, from the store or from a peer.
    table: MemberTable,
    /// This node follows a cluster: it adopted a stored table (of `table.cluster`).
    following: bool,
    /// Send times of the first and of the latest read that found the Lease absent or
    /// stripped, since the last read that found a table.
    lost: Option<(Instant, Instant)>,
    /// After adopting a later epoch, serving waits until then.
    epoch_hold: Option<Instant>,
    observer: LeaseObserver,
    fd: FailureDetector,
    pods: watch::Receiver<PodSet>,
    pods_open: bool,
    /// Last store contact, direct or through a peer (when the confirming call was sent).
    store_contact: Option<Instant>,
    last_direct_contact: Option<Instant>,
    last_read_attempt: Option<Instant>,
    last_renew: Option<Instant>,
    need_read: bool,
    was_member: bool,
    formed: bool,
    up_after: Option<Duration>,
    leaving: Option<BootstrapState>,
    forbidden_warned: bool,
    waiting_for_restore_logged: bool,
    health: Health,
    metrics: Metrics,
    view: watch::Sender<MembershipView>,
    table_tx: watch::Sender<MemberTable>,
    probes: mpsc::Receiver<ProbeResult>,
    changes: Option<ChangeStream>,
    resubscribe_at: Instant,
}

impl<S: MemberStore> Driver<S> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        identity: Identity,
        timing: Timing,
        sources: Sources,
        store: S,
        pods: watch::Receiver<PodSet>,
        health: Health,
        metrics: Metrics,
        view: watch::Sender<MembershipView>,
        table_tx: watch::Sender<MemberTable>,
        probes: mpsc::Receiver<ProbeResult>,
    ) -> Self {
        let now = seams::now();
        let me = view.borrow().me.clone();
        metrics.set_state(BootstrapState::Starting);
        Self {
            identity,
            timing,
            sources,
            store,
            me,
            started: now,
            stored: None,
            lease: LeaseState::Unknown,
            table: MemberTable::default(),
            following: false,
            lost: None,
            epoch_hold: None,
            observer: LeaseObserver::new(now),
            fd: FailureDetector::default(),
            pods,
            pods_open: true,
            store_contact: None,
            last_direct_contact: None,
            last_read_attempt: None,
            last_renew: None,
            need_read: true,
            was_member: false,
            formed: false,
            up_after: None,
            leaving: None,
            forbidden_warned: false,
            waiting_for_restore_logged: false,
            health,
            metrics,
            view,
            table_tx,
            probes,
            changes: None,
            resubscribe_at: now,
        }
    }

    fn my_id(&self) -> String {
        election::identity(&self.me.pod, &self.me.incarnation)
    }

    /// Runs until a leave completes or the node is dropped.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(self.timing.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            match self.next_event(Some(&mut commands), &mut tick).await {
                Event::Leave {
                    handover,
                    deadline,
                    done,
                } => {
                    let report = self.leave(handover, deadline, &mut tick).await;
                    let _ = done.send(report);
                    return;
                }
                Event::Stop => return,
                Event::News => {}
            }
            self.step().await;
        }
    }

    /// Waits for the next thing to react to and takes in what it says.
    async fn next_event(
        &mut self,
        commands: Option<&mut mpsc::Receiver<Command>>,
        tick: &mut tokio::time::Interval,
    ) -> Event {
        if self.changes.is_none() && seams::now() >= self.resubscribe_at {
            self.changes = Some(self.store.changes());
        }
        tokio::select! {
            biased;
            cmd = next_command(commands) => match cmd {
                Some(Command::Leave { handover, deadline, done }) => {
                    Event::Leave { handover, deadline, done }
                }
                None => Event::Stop,
            },
            ev = next_change(&mut self.changes) => {
                self.on_change(ev);
                Event::News
            }
            Some(r) = self.probes.recv() => {
                self.on_probe(r);
                while let Ok(r) = self.probes.try_recv() {
                    self.on_probe(r);
                }
                Event::News
            }
            changed = self.pods.changed(), if self.pods_open => {
                if changed.is_err() {
                    self.pods_open = false;
                }
                Event::News
            }
            _ = tick.tick() => Event::News,
        }
    }

    /// A watch event: news, never store contact (it may lag). A missing table is a
    /// reason to read, not yet a fact to act on.
    fn on_change(&mut self, ev: Option<Result<Found, StoreError>>) {
        match ev {
            Some(Ok(Found::Table(stored))) => self.on_table(stored, None),
            Some(Ok(Found::Absent | Found::Stripped(_))) => self.need_read = true,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "member store watch broke; re-reading");
                self.metrics.store_error(e.metric_label());
                self.changes = None;
                self.resubscribe_at = seams::now() + self.timing.store_refresh;
                self.need_read = true;
            }
            None => {
                self.changes = None;
                self.resubscribe_at = seams::now() + self.timing.store_refresh;
                self.need_read = true;
            }
        }
    }

    /// The answer to a read sent at `sent`.
    fn on_read(&mut self, found: Found, sent: Instant) {
        match found {
            Found::Table(stored) => self.on_table(stored, Some(sent)),
            Found::Absent => self.on_lost(LeaseState::Absent, sent),
            Found::Stripped(stored) => self.on_lost(LeaseState::Stripped(stored), sent),
        }
    }

    /// A record with a table. `contact` is when the call that returned it was sent (a
    /// read or a write), `None` for a watch event.
    fn on_table(&mut self, stored: Stored, contact: Option<Instant>) {
        let now = seams::now();
        let table = stored.record.table.clone();
        if self.following && table.compare(&self.table).is_none() {
            self.switch_cluster(&table);
        }
        let order = if self.following {
            table.compare(&self.table)
        } else {
            Some(Ordering::Greater)
        };
        let not_older = order.is_some_and(|o| o != Ordering::Less);
        if let Some(sent) = contact
            && not_older
        {
            self.store_contact = self.store_contact.max(Some(sent));
            self.last_direct_contact = self.last_direct_contact.max(Some(sent));
        }
        let base_older = self
            .stored
            .as_ref()
            .is_none_or(|b| stored.record.table.compare(&b.record.table) != Some(Ordering::Less));
        if base_older || contact.is_some() {
            self.observer.observe(&stored.record, now);
            self.stored = Some(stored);
        }
        if self.lost.take().is_some() && self.following {
            tracing::info!(cluster = %table.cluster, epoch = table.epoch, "the member table is back in the Lease");
        }
        self.lease = LeaseState::Table;
        if not_older {
            self.adopt(table, now);
        }
        self.publish(now);
    }

    /// The Lease was found absent or stripped by a read sent at `sent`: not store contact.
    fn on_lost(&mut self, state: LeaseState, sent: Instant) {
        if self.lost.is_none() && self.following {
            let what = match state {
                LeaseState::Absent => "deleted",
                _ => "stripped of its member table",
            };
            tracing::warn!(cluster = %self.table.cluster, epoch = self.table.epoch, version = self.table.version, "the member Lease was {what}; not serving until this node's table is restored into it");
        }
        let first = self.lost.map_or(sent, |(first, _)| first);
        self.lost = Some((first, sent));
        self.stored = None;
        self.lease = state;
        self.publish(seams::now());
    }

    /// Our cluster's Lease now holds another cluster: stop serving, drop everything we
    /// knew, and join that cluster as a new node.
    fn switch_cluster(&mut self, theirs: &MemberTable) {
        tracing::warn!(ours = %self.table.cluster, theirs = %theirs.cluster, "the member Lease holds another cluster's table; dropping ours and joining it as a new incarnation");
        let old = self.me.clone();
        if self.leaving.is_none() {
            self.me = MemberKey::new(self.identity.pod.clone(), self.sources.id());
            tracing::warn!(old = %old, new = %self.me, "rejoining as a new incarnation");
        }
        self.table = MemberTable::default();
        self.following = false;
        self.was_member = false;
        self.stored = None;
        self.store_contact = None;
        self.epoch_hold = None;
        self.fd = FailureDetector::default();
        self.last_renew = None;
    }

    fn on_probe(&mut self, r: ProbeResult) {
        let now = seams::now();
        let Some(reply) = r.reply else {
            self.fd.record(&r.key, false, r.sent_at);
            return;
        };
        let Some(order) = reply.table.compare(&self.table) else {
            // Another cluster's node (or one that dropped its table): it tells us nothing
            // about ours, and does not count towards a majority.
            tracing::debug!(from = %r.key, cluster = %reply.table.cluster, "a peer follows another cluster");
            self.fd.record(&r.key, false, r.sent_at);
            return;
        };
        self.fd.record(&r.key, true, r.sent_at);
        if order != Ordering::Less
            && let Some(age) = reply.store_age_ms
        {
            let contact = r.sent_at.checked_sub(Duration::from_millis(age));
            if contact > self.store_contact {
                self.store_contact = contact;
            }
        }
        if order == Ordering::Greater {
            tracing::debug!(from = %r.key, epoch = reply.table.epoch, version = reply.table.version, "newer member table from a peer");
            if reply.table.epoch > self.table.epoch && self.lost.is_some() {
                // Somebody restored the Lease: read it before writing.
                self.lost = None;
                self.lease = LeaseState::Unknown;
                self.need_read = true;
            }
            self.adopt(reply.table, now);
        }
        self.publish(now);
    }

    /// Makes `table` (of our cluster, not older) the node's table, and notices whether
    /// this incarnation was evicted.
    fn adopt(&mut self, table: MemberTable, now: Instant) {
        if self.following && table.epoch > self.table.epoch {
            tracing::info!(cluster = %table.cluster, epoch = table.epoch, version = table.version, "following a restored member table");
            self.epoch_hold = Some(now + self.timing.isolation_timeout);
        }
        self.following = true;
        self.table = table;
        self.fd.track(&self.table, now);
        let mine = self.table.members.iter().find(|m| self.me.is(m));
        match mine {
            Some(m) if m.status == MemberStatus::Down => self.evicted("downed"),
            Some(_) => self.was_member = true,
            None if self.was_member && self.leaving.is_none() => self.evicted("removed"),
            None => {}
        }
    }

    /// This incarnation is out of the cluster: it may no longer serve. It rejoins as a
    /// new incarnation so that nobody confuses it with the one that was downed.
    fn evicted(&mut self, how: &str) {
        if self.leaving.is_some() {
            return;
        }
        let old = self.me.clone();
        self.me = MemberKey::new(self.identity.pod.clone(), self.sources.id());
        self.was_member = false;
        tracing::warn!(old = %old, new = %self.me, how, "this node was taken out of the cluster; rejoining as a new incarnation");
    }

    /// The Lease is gone or stripped while this node follows a cluster.
    fn lease_lost(&self) -> bool {
        self.following && matches!(self.lease, LeaseState::Absent | LeaseState::Stripped(_))
    }

    fn publish(&mut self, now: Instant) {
        let status = self
            .table
            .members
            .iter()
            .find(|m| self.me.is(m))
            .map(|m| m.status);
        let held = self.lease_lost() || self.epoch_hold.is_some_and(|h| now < h);
        let serving_until = if self.leaving.is_none() && !held {
            serving_until(
                &self.table,
                &self.me,
                self.store_contact,
                &self.fd,
                self.timing.isolation_timeout,
            )
        } else {
            None
        };
        let is_serving = serving_until.is_some_and(|u| now <= u);
        let coordinator = self
            .stored
            .as_ref()
            .is_some_and(|s| s.record.holder.as_deref() == Some(self.my_id().as_str()));
        let state = match (self.leaving, status) {
            (Some(s), _) => s,
            (None, _) if is_serving => BootstrapState::Up,
            (None, Some(MemberStatus::Up)) => BootstrapState::Isolated,
            (None, _) if self.lease == LeaseState::Unknown && !self.following => {
                BootstrapState::Starting
            }
            (None, _) => BootstrapState::Joining,
        };
        if is_serving && self.up_after.is_none() {
            let took = now.saturating_duration_since(self.started);
            self.up_after = Some(took);
            self.metrics.observe_join(self.formed, took.as_secs_f64());
            tracing::info!(
                pod = %self.me.pod,
                incarnation = %self.me.incarnation,
                took_ms = took.as_millis() as u64,
                formed = self.formed,
                members = self.table.count(MemberStatus::Up),
                "member is Up"
            );
        }
        self.health.set_member_up_until(is_serving, serving_until);
        self.metrics.set_table(&self.table);
        self.metrics.set_state(state);
        self.metrics.set_coordinator(coordinator);
        let view = MembershipView {
            me: self.me.clone(),
            table: self.table.clone(),
            status,
            serving: is_serving,
            serving_until,
            coordinator,
            state,
            store_contact: self.store_contact,
            up_after: self.up_after,
            started_at_ms: self.view.borrow().started_at_ms,
        };
        self.view.send_if_modified(|v| {
            if *v != view {
                *v = view;
                true
            } else {
                false
            }
        });
        let table = self.table.clone();
        self.table_tx.send_if_modified(|t| {
            if *t != table {
                *t = table;
                true
            } else {
                false
            }
        });
    }

    async fn read(&mut self) -> bool {
        let sent = seams::now();
        self.last_read_attempt = Some(sent);
        self.need_read = false;
        match timed(self.timing.store_timeout(), self.store.read()).await {
            Ok(found) => {
                self.on_read(found, sent);
                true
            }
            Err(e) => {
                self.store_failed(&e);
                false
            }
        }
    }

    fn store_failed(&mut self, e: &StoreError) {
        self.metrics.store_error(e.metric_label());
        match e {
            StoreError::Forbidden { .. } if !self.forbidden_warned => {
                self.forbidden_warned = true;
                tracing::warn!(error = %e, "the node may not use its member Lease");
            }
            _ => tracing::debug!(error = %e, "member store call failed; keeping what we know"),
        }
    }

    /// Reads the store when asked to or when nothing was heard from it for a while.
    async fn read_if_due(&mut self) {
        let now = seams::now();
        let due = self
            .last_direct_contact
            .is_none_or(|t| now.saturating_duration_since(t) >= self.timing.store_refresh);
        let attempted_recently = self
            .last_read_attempt
            .is_some_and(|t| now.saturating_duration_since(t) < self.timing.store_refresh);
        if self.need_read || (due && !attempted_recently) {
            self.read().await;
        }
    }

    /// One round: refresh from the store when due, then make at most a few CAS writes.
    async fn step(&mut self) {
        self.read_if_due().await;
        if self.leaving.is_none() {
            for _ in 0..4 {
                match self.write_once().await {
                    WriteOutcome::Conflict => {
                        if !self.read().await {
                            break;
                        }
                    }
                    WriteOutcome::Wrote | WriteOutcome::Nothing | WriteOutcome::Failed => break,
                }
            }
        }
        self.publish(seams::now());
    }

    /// Decides the next write and makes it.
    async fn write_once(&mut self) -> WriteOutcome {
        let now = seams::now();
        match self.lease.clone() {
            LeaseState::Unknown => WriteOutcome::Nothing,
            LeaseState::Absent if self.following => self.restore(None, now).await,
            LeaseState::Stripped(s) if self.following => {
                self.restore(Some(s.resource_version), now).await
            }
            LeaseState::Absent => self.form(None, now).await,
            LeaseState::Stripped(s) => self.form(Some(s.resource_version), now).await,
            LeaseState::Table => {
                let Some(stored) = self.stored.clone() else {
                    return WriteOutcome::Nothing;
                };
                let Some((record, applied)) = self.desired(&stored, now) else {
                    return WriteOutcome::Nothing;
                };
                let sent = seams::now();
                match timed(
                    self.timing.store_timeout(),
                    self.store.replace(&stored.resource_version, &record),
                )
                .await
                {
                    Ok(new) => {
                        if new.record.holder.as_deref() == Some(self.my_id().as_str()) {
                            self.last_renew = Some(now);
                        }
                        for c in &applied {
                            match c {
                                Change::Down(k, reason) => {
                                    self.metrics.failure_detected(*reason);
                                    tracing::warn!(member = %k, reason = reason.as_str(), "member downed");
                                }
                                Change::Promote(k) => {
                                    tracing::info!(member = %k, "member promoted to Up")
                                }
                                Change::Remove(k) => tracing::info!(member = %k, "member removed"),
                            }
                        }
                        if stored.record.holder != new.record.holder {
                            if self.is_holder(&new.record) {
                                tracing::info!(me = %self.me, "took over the coordinator lease");
                            } else if self.is_holder(&stored.record) {
                                tracing::info!(me = %self.me, "released the coordinator lease: no majority reachable");
                            }
                        }
                        self.on_table(new, Some(sent));
                        WriteOutcome::Wrote
                    }
                    Err(StoreError::Conflict) => WriteOutcome::Conflict,
                    Err(e) => {
                        self.store_failed(&e);
                        WriteOutcome::Failed
                    }
                }
            }
        }
    }

    fn is_holder(&self, record: &LeaseRecord) -> bool {
        record.holder.as_deref() == Some(self.my_id().as_str())
    }

    /// The record this node wants to write over `stored`, with the coordinator changes it
    /// contains; `None` when nothing needs writing.
    fn desired(&self, stored: &Stored, now: Instant) -> Option<(LeaseRecord, Vec<Change>)> {
        let mut record = stored.record.clone();
        let mut dirty = false;
        if !record.table.members.iter().any(|m| self.me.is(m)) {
            dirty |= record
                .table
                .join(&self.me.pod, &self.me.incarnation, &self.identity.address);
        }
        let my_status = self
            .table
            .members
            .iter()
            .find(|m| self.me.is(m))
            .map(|m| m.status);
        let pods = self.pods.borrow().clone();
        let table_has_no_up = record
            .table
            .up_members()
            .all(|m| coordinator::pod_gone(m, &pods, &self.fd, now, &self.timing));
        // A coordinator must reach a majority of the live Up members (itself counted), or
        // the table must have no live Up member at all: otherwise it changes nothing and
        // only keeps the majority from electing one that can (M5).
        let live = coordinator::live_members(&self.table, &pods, &self.fd, now, &self.timing);
        let may_coordinate = table_has_no_up
            || quorum(
                &live,
                &self.me,
                &self.fd,
                now,
                self.timing.isolation_timeout,
            );
        let eligibility = Eligibility {
            up_with_quorum: my_status == Some(MemberStatus::Up)
                && quorum(
                    &self.table,
                    &self.me,
                    &self.fd,
                    now,
                    self.timing.isolation_timeout,
                ),
            table_has_no_up,
        };
        let my_id = self.my_id();
        let role = election::decide(
            &record,
            &my_id,
            self.observer.expired_for(&record, now),
            eligibility,
        );
        let mut applied = Vec::new();
        if role == Role::Coordinator && !may_coordinate {
            record.holder = None;
            record.renew_ms = self.sources.wall().max(record.renew_ms.saturating_add(1));
            return Some((record, applied));
        }
        if role != Role::Follower && may_coordinate {
            let changes = coordinator::plan(coordinator::Inputs {
                table: &record.table,
                me: &self.me,
                fd: &self.fd,
                pods: &pods,
                now,
                timing: &self.timing,
            });
            applied = coordinator::apply(&mut record.table, &changes);
            let renew_due = self
                .last_renew
                .is_none_or(|t| now.saturating_duration_since(t) >= self.timing.renew_interval);
            if role == Role::Candidate || renew_due || !applied.is_empty() || dirty {
                record.holder = Some(my_id);
                record.renew_ms = self.sources.wall().max(record.renew_ms.saturating_add(1));
                record.lease_duration_s = lease_seconds(self.timing.lease_duration);
                dirty = true;
            }
        }
        dirty.then_some((record, applied))
    }

    /// How long a fresh node waits for the followers of a cluster to restore a missing
    /// table before it forms a new cluster: time for them to read the loss and write.
    fn restore_grace(&self) -> Duration {
        self.timing.store_refresh + self.timing.store_timeout()
    }

    /// A fresh node may form a new cluster on a missing table at once on a cold start (no
    /// other pod's node started clearly before this one), otherwise only once the table
    /// stayed missing for the restore grace.
    fn may_form(&mut self) -> bool {
        let grace = self.restore_grace();
        let cold = {
            let pods = self.pods.borrow();
            let mine = pods
                .pods
                .get(&self.identity.pod)
                .and_then(|p| p.started_at_ms)
                .unwrap_or(self.view.borrow().started_at_ms);
            let margin = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
            !pods.peer_started_before(&self.identity.pod, mine, margin)
        };
        if cold {
            return true;
        }
        let waited = self
            .lost
            .is_some_and(|(first, last)| last.saturating_duration_since(first) >= grace);
        if !waited && !self.waiting_for_restore_logged {
            self.waiting_for_restore_logged = true;
            tracing::info!(
                grace_ms = grace.as_millis() as u64,
                "no member table in the Lease, and other pods ran before this one: waiting for them to restore it"
            );
        }
        waited
    }

    /// Writes `record` as a new record (`base` `None`) or over the stripped record `base`.
    async fn put(
        &mut self,
        base: Option<String>,
        record: &LeaseRecord,
    ) -> Result<Stored, StoreError> {
        match base {
            None => timed(self.timing.store_timeout(), self.store.create(record)).await,
            Some(rv) => timed(self.timing.store_timeout(), self.store.replace(&rv, record)).await,
        }
    }

    /// Restores this node's last table into a deleted (`base` `None`) or stripped Lease,
    /// one epoch later.
    async fn restore(&mut self, base: Option<String>, now: Instant) -> WriteOutcome {
        let table = MemberTable {
            epoch: self.table.epoch + 1,
            version: self.table.version + 1,
            ..self.table.clone()
        };
        let record = LeaseRecord {
            holder: None,
            renew_ms: self.sources.wall(),
            lease_duration_s: lease_seconds(self.timing.lease_duration),
            table,
        };
        let sent = seams::now();
        match self.put(base, &record).await {
            Ok(stored) => {
                tracing::warn!(me = %self.me, cluster = %record.table.cluster, epoch = record.table.epoch, version = record.table.version, "restored the member table into the Lease");
                self.on_table(stored, Some(sent));
                let _ = now;
                WriteOutcome::Wrote
            }
            Err(StoreError::Conflict) => WriteOutcome::Conflict,
            Err(e) => {
                self.store_failed(&e);
                WriteOutcome::Failed
            }
        }
    }

    /// Forms a new cluster (a new random id, epoch 0) with this node Up and holding the
    /// coordinator lease.
    async fn form(&mut self, base: Option<String>, now: Instant) -> WriteOutcome {
        if !self.may_form() {
            return WriteOutcome::Nothing;
        }
        let mut table = MemberTable {
            // A new cluster gets a new random id, so that its versions are never compared
            // with those of another life of the Lease.
            cluster: self.sources.id(),
            epoch: 0,
            version: 0,
            members: Vec::new(),
        };
        table.join(&self.me.pod, &self.me.incarnation, &self.identity.address);
        table
            .transition(&self.me.pod, &self.me.incarnation, MemberStatus::Up)
            .ok();
        let record = LeaseRecord {
            holder: Some(self.my_id()),
            renew_ms: self.sources.wall(),
            lease_duration_s: lease_seconds(self.timing.lease_duration),
            table,
        };
        let sent = seams::now();
        match self.put(base, &record).await {
            Ok(stored) => {
                tracing::info!(me = %self.me, cluster = %record.table.cluster, "formed a new cluster");
                self.formed = true;
                self.last_renew = Some(now);
                self.on_table(stored, Some(sent));
                WriteOutcome::Wrote
            }
            Err(StoreError::Conflict) => WriteOutcome::Conflict,
            Err(e) => {
                self.store_failed(&e);
                WriteOutcome::Failed
            }
        }
    }

    /// Graceful leave: Leaving (and release the lease), hand over while still following
    /// the table, remove, done.
    async fn leave(
        &mut self,
        mut handover: BoxFuture<'static, ()>,
        deadline: Instant,
        tick: &mut tokio::time::Interval,
    ) -> LeaveReport {
        let start = seams::now();
        self.health.set_draining(true);
        self.leaving = Some(BootstrapState::Leaving);
        self.publish(start);
        tracing::info!(me = %self.me, "leaving the cluster");
        let me = self.me.clone();
        let my_id = self.my_id();
        let wall = self.sources.wall_ms.clone();
        let marked_leaving = self
            .cas_until(deadline, |record| {
                let mut dirty = false;
                if let Some(m) = record.table.members.iter().find(|m| me.is(m))
                    && matches!(m.status, MemberStatus::Joining | MemberStatus::Up)
                {
                    dirty |= record
                        .table
                        .transition(&me.pod, &me.incarnation, MemberStatus::Leaving)
                        .unwrap_or(false);
                }
                if record.holder.as_deref() == Some(my_id.as_str()) {
                    record.holder = None;
                    record.renew_ms = wall();
                    dirty = true;
                }
                dirty
            })
            .await;
        // The handover runs beside the loop: the node keeps following the store, the
        // watch and its peers, so the table it publishes stays current (M4).
        let out_of_time = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline));
        tokio::pin!(out_of_time);
        loop {
            tokio::select! {
                biased;
                () = &mut handover => break,
                () = &mut out_of_time => {
                    tracing::warn!("actor handover did not finish before the leave deadline");
                    break;
                }
                _ = self.next_event(None, tick) => {}
            }
            self.read_if_due().await;
            self.publish(seams::now());
        }
        let removed = self
            .cas_until(deadline, |record| {
                let mut dirty = record.table.remove(&me.pod, &me.incarnation);
                if record.holder.as_deref() == Some(my_id.as_str()) {
                    record.holder = None;
                    record.renew_ms = wall();
                    dirty = true;
                }
                dirty
            })
            .await;
        self.leaving = Some(BootstrapState::Left);
        self.publish(seams::now());
        let took = seams::now().saturating_duration_since(start);
        tracing::info!(
            took_ms = took.as_millis() as u64,
            removed,
            "left the cluster"
        );
        LeaveReport {
            marked_leaving,
            removed,
            took,
        }
    }

    /// Applies `change` to the stored record with CAS until it sticks, there is nothing
    /// to change, or `deadline` passes. Returns whether the record now reflects it.
    async fn cas_until(
        &mut self,
        deadline: Instant,
        mut change: impl FnMut(&mut LeaseRecord) -> bool,
    ) -> bool {
        while seams::now() < deadline {
            if (self.stored.is_none() || self.need_read) && !self.read().await {
                tokio::time::sleep(self.timing.tick).await;
                continue;
            }
            let Some(stored) = self.stored.clone() else {
                return true;
            };
            let mut record = stored.record.clone();
            if !change(&mut record) {
                return true;
            }
            let sent = seams::now();
            match timed(
                self.timing.store_timeout(),
                self.store.replace(&stored.resource_version, &record),
            )
            .await
            {
                Ok(new) => {
                    self.on_table(new, Some(sent));
                    return true;
                }
                Err(StoreError::Conflict) => self.need_read = true,
                Err(e) => {
                    self.store_failed(&e);
                    self.need_read = true;
                    tokio::time::sleep(self.timing.tick).await;
                }
            }
        }
        false
    }
}

enum WriteOutcome {
    Wrote,
    Nothing,
    Conflict,
    Failed,
}

fn lease_seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// Runs one store call within `timeout`; a timeout is a failure like any other.
async fn timed<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| Err(StoreError::Unavailable("timed out".into())))
}

async fn next_change(changes: &mut Option<ChangeStream>) -> Option<Result<Found, StoreError>> {
    match changes {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

async fn next_command(commands: Option<&mut mpsc::Receiver<Command>>) -> Option<Command> {
    match commands {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}

/// The prober task: probes every other member each probe interval, and new members as
/// soon as they appear; sends the outcomes to the loop.
pub(crate) async fn probe_loop<P: Prober>(
    prober: P,
    mut view: watch::Receiver<MembershipView>,
    tx: mpsc::Sender<ProbeResult>,
    timing: Timing,
) {
    let mut interval = tokio::time::interval(timing.probe_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probed: HashSet<MemberKey> = HashSet::new();
    loop {
        let all = tokio::select! {
            biased;
            _ = interval.tick() => true,
            r = view.changed() => {
                if r.is_err() {
                    return;
                }
                false
            }
        };
        let (me, table) = {
            let v = view.borrow_and_update();
            (v.me.clone(), v.table.clone())
        };
        probed.retain(|k| table.members.iter().any(|m| k.is(m)));
        for m in &table.members {
            let key = MemberKey::of(m);
            if me.is(m) || m.status == MemberStatus::Down || (!all && probed.contains(&key)) {
                continue;
            }
            probed.insert(key.clone());
            let prober = prober.clone();
            let tx = tx.clone();
            let member = m.clone();
            tokio::spawn(async move {
                let sent_at = seams::now();
                let reply = match prober.probe(&member).await {
                    Ok(r) if r.pod == key.pod && r.incarnation == key.incarnation => Some(r),
                    Ok(r) => {
                        tracing::debug!(member = %key, answered = %r.incarnation, "another incarnation answered");
                        None
                    }
                    Err(e) => {
                        tracing::debug!(member = %key, error = %e, "probe failed");
                        None
                    }
                };
                let _ = tx
                    .send(ProbeResult {
                        key,
                        sent_at,
                        reply,
                    })
                    .await;
            });
        }
    }
}
