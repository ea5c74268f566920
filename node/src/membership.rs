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

use std::collections::HashSet;
use std::time::{Duration, Instant};

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
use crate::store::{ChangeStream, LeaseRecord, MemberStore, StoreError, Stored};
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

pub(crate) struct Driver<S> {
    identity: Identity,
    timing: Timing,
    sources: Sources,
    store: S,
    me: MemberKey,
    started: Instant,
    /// The record last read from the store (the base of every CAS), if any.
    stored: Option<Stored>,
    /// The store answered that no record exists.
    absent: bool,
    /// The latest table, from the store or from a peer (highest version wins).
    table: MemberTable,
    observer: LeaseObserver,
    fd: FailureDetector,
    pods: watch::Receiver<PodSet>,
    pods_open: bool,
    /// Last store contact, direct or through a peer.
    store_contact: Option<Instant>,
    last_direct_contact: Option<Instant>,
    last_read_attempt: Option<Instant>,
    last_renew: Option<Instant>,
    need_read: bool,
    was_member: bool,
    formed: bool,
    up_after: Option<Duration>,
    leaving: Option<BootstrapState>,
    health: Health,
    metrics: Metrics,
    view: watch::Sender<MembershipView>,
    table_tx: watch::Sender<MemberTable>,
    probes: mpsc::Receiver<ProbeResult>,
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
            absent: false,
            table: MemberTable::default(),
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
            health,
            metrics,
            view,
            table_tx,
            probes,
        }
    }

    fn my_id(&self) -> String {
        election::identity(&self.me.pod, &self.me.incarnation)
    }

    /// Runs until a leave completes or the node is dropped.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(self.timing.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut changes: Option<ChangeStream> = None;
        let mut resubscribe_at = seams::now();
        loop {
            if changes.is_none() && seams::now() >= resubscribe_at {
                changes = Some(self.store.changes());
            }
            tokio::select! {
                biased;
                cmd = commands.recv() => match cmd {
                    Some(Command::Leave { handover, deadline, done }) => {
                        let report = self.leave(handover, deadline).await;
                        let _ = done.send(report);
                        return;
                    }
                    None => return,
                },
                ev = next_change(&mut changes) => match ev {
                    Some(Ok(Some(stored))) => self.on_stored(stored, seams::now()),
                    Some(Ok(None)) => self.on_absent(seams::now()),
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "member store watch broke; re-reading");
                        self.metrics.store_error(e.metric_label());
                        changes = None;
                        resubscribe_at = seams::now() + self.timing.store_refresh;
                        self.need_read = true;
                    }
                    None => {
                        changes = None;
                        resubscribe_at = seams::now() + self.timing.store_refresh;
                        self.need_read = true;
                    }
                },
                Some(r) = self.probes.recv() => {
                    self.on_probe(r);
                    while let Ok(r) = self.probes.try_recv() {
                        self.on_probe(r);
                    }
                }
                changed = self.pods.changed(), if self.pods_open => {
                    if changed.is_err() {
                        self.pods_open = false;
                    }
                }
                _ = tick.tick() => {}
            }
            self.step().await;
        }
    }

    fn on_stored(&mut self, stored: Stored, now: Instant) {
        self.store_contact = Some(now);
        self.last_direct_contact = Some(now);
        self.absent = false;
        self.observer.observe(&stored.record, now);
        let table = stored.record.table.clone();
        self.stored = Some(stored);
        if table.version >= self.table.version {
            self.adopt(table, now);
        }
        self.publish(now);
    }

    fn on_absent(&mut self, now: Instant) {
        self.store_contact = Some(now);
        self.last_direct_contact = Some(now);
        self.stored = None;
        self.absent = true;
        self.publish(now);
    }

    fn on_probe(&mut self, r: ProbeResult) {
        let now = seams::now();
        let Some(reply) = r.reply else {
            self.fd.record(&r.key, false, r.sent_at);
            return;
        };
        self.fd.record(&r.key, true, r.sent_at);
        if let Some(age) = reply.store_age_ms {
            let contact = r.sent_at.checked_sub(Duration::from_millis(age));
            if contact > self.store_contact {
                self.store_contact = contact;
            }
        }
        if reply.table.version > self.table.version {
            tracing::debug!(from = %r.key, version = reply.table.version, "newer member table from a peer");
            self.adopt(reply.table, now);
        }
        self.publish(now);
    }

    /// Makes `table` the node's table, and notices whether this incarnation was evicted.
    fn adopt(&mut self, table: MemberTable, now: Instant) {
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

    fn publish(&mut self, now: Instant) {
        let status = self
            .table
            .members
            .iter()
            .find(|m| self.me.is(m))
            .map(|m| m.status);
        let serving_until = if self.leaving.is_none() {
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
            (None, _) if self.stored.is_none() && !self.absent => BootstrapState::Starting,
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
            if v.serving != view.serving
                || v.serving_until != view.serving_until
                || v.state != view.state
                || v.table != view.table
                || v.me != view.me
                || v.coordinator != view.coordinator
                || v.status != view.status
                || v.store_contact != view.store_contact
                || v.up_after != view.up_after
            {
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
        let now = seams::now();
        self.last_read_attempt = Some(now);
        self.need_read = false;
        match tokio::time::timeout(self.timing.store_timeout(), self.store.read()).await {
            Ok(Ok(Some(stored))) => {
                self.on_stored(stored, seams::now());
                true
            }
            Ok(Ok(None)) => {
                self.on_absent(seams::now());
                true
            }
            Ok(Err(e)) => {
                self.store_failed(&e);
                false
            }
            Err(_) => {
                self.store_failed(&StoreError::Unavailable("timed out".into()));
                false
            }
        }
    }

    fn store_failed(&mut self, e: &StoreError) {
        self.metrics.store_error(e.metric_label());
        tracing::debug!(error = %e, "member store call failed; keeping what we know");
    }

    /// One round: refresh from the store when due, then make at most a few CAS writes.
    async fn step(&mut self) {
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
        let Some(stored) = self.stored.clone() else {
            if !self.absent {
                return WriteOutcome::Nothing;
            }
            return self.create(now).await;
        };
        let Some((record, applied)) = self.desired(&stored, now) else {
            return WriteOutcome::Nothing;
        };
        let res = tokio::time::timeout(
            self.timing.store_timeout(),
            self.store.replace(&stored.resource_version, &record),
        )
        .await
        .unwrap_or_else(|_| Err(StoreError::Unavailable("timed out".into())));
        match res {
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
                        Change::Promote(k) => tracing::info!(member = %k, "member promoted to Up"),
                        Change::Remove(k) => tracing::info!(member = %k, "member removed"),
                    }
                }
                if stored.record.holder != new.record.holder && self.is_holder(&new.record) {
                    tracing::info!(me = %self.me, "took over the coordinator lease");
                }
                self.on_stored(new, seams::now());
                WriteOutcome::Wrote
            }
            Err(StoreError::Conflict) => WriteOutcome::Conflict,
            Err(e) => {
                self.store_failed(&e);
                WriteOutcome::Failed
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
        let eligibility = Eligibility {
            up_with_quorum: my_status == Some(MemberStatus::Up)
                && quorum(
                    &self.table,
                    &self.me,
                    &self.fd,
                    now,
                    self.timing.isolation_timeout,
                ),
            table_has_no_up: {
                let pods = self.pods.borrow();
                record
                    .table
                    .up_members()
                    .all(|m| coordinator::pod_gone(m, &pods, &self.fd, now, &self.timing))
            },
        };
        let my_id = self.my_id();
        let role = election::decide(
            &record,
            &my_id,
            self.observer.expired_for(&record, now),
            eligibility,
        );
        let mut applied = Vec::new();
        if role != Role::Follower {
            let pods = self.pods.borrow().clone();
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

    async fn create(&mut self, now: Instant) -> WriteOutcome {
        let mut table = MemberTable {
            // A new cluster gets a new random id, so that its versions are never compared
            // with those of another life of the Lease.
            cluster: self.sources.id(),
            epoch: 0,
            version: self.table.version,
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
        let res = tokio::time::timeout(self.timing.store_timeout(), self.store.create(&record))
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("timed out".into())));
        match res {
            Ok(stored) => {
                tracing::info!(me = %self.me, "formed a new cluster");
                self.formed = true;
                self.last_renew = Some(now);
                self.on_stored(stored, seams::now());
                WriteOutcome::Wrote
            }
            Err(StoreError::Conflict) => WriteOutcome::Conflict,
            Err(e) => {
                self.store_failed(&e);
                WriteOutcome::Failed
            }
        }
    }

    /// Graceful leave: Leaving (and release the lease), hand over, remove, done.
    async fn leave(&mut self, handover: BoxFuture<'static, ()>, deadline: Instant) -> LeaveReport {
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
        let remaining = deadline.saturating_duration_since(seams::now());
        if tokio::time::timeout(remaining, handover).await.is_err() {
            tracing::warn!("actor handover did not finish before the leave deadline");
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
            let res = tokio::time::timeout(
                self.timing.store_timeout(),
                self.store.replace(&stored.resource_version, &record),
            )
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("timed out".into())));
            match res {
                Ok(new) => {
                    self.on_stored(new, seams::now());
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

async fn next_change(
    changes: &mut Option<ChangeStream>,
) -> Option<Result<Option<Stored>, StoreError>> {
    match changes {
        Some(s) => s.next().await,
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
