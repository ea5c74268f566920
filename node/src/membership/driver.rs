//! The membership driver: the select loop that feeds [`MemberState`] with store answers,
//! watch events, probe replies, pod changes and ticks, carries out the writes it asks for
//! (each store call through [`Driver::call`]: within the store timeout, taking in probe
//! replies meanwhile), and publishes its view. No decisions here.

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use troupe_contract::{Member, MemberStatus, MemberTable};

use super::state::{MemberState, Write};
use super::{Command, Identity, ProbeResult};
use crate::coordinator::Change;
use crate::discovery::PodSet;
use crate::health::Health;
use crate::member_key::MemberKey;
use crate::metrics::Metrics;
use crate::probe::Prober;
use crate::seams::{self, Sources};
use crate::store::{ChangeStream, Found, MemberStore, StoreError, Stored};
use crate::timing::Timing;
use crate::view::{BootstrapState, MembershipView};

/// What woke the loop up.
pub(super) enum Event {
    Leave {
        handover: futures::future::BoxFuture<'static, ()>,
        deadline: Instant,
        done: tokio::sync::oneshot::Sender<super::LeaveReport>,
    },
    Stop,
    News,
}

pub(crate) struct Driver<S> {
    pub(super) state: MemberState,
    pub(super) store: S,
    pods: watch::Receiver<PodSet>,
    pods_open: bool,
    forbidden_warned: bool,
    pub(super) health: Health,
    metrics: Metrics,
    view: watch::Sender<MembershipView>,
    table_tx: watch::Sender<MemberTable>,
    probes: mpsc::Receiver<ProbeResult>,
    survey: watch::Sender<Vec<Member>>,
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
        survey: watch::Sender<Vec<Member>>,
    ) -> Self {
        let now = seams::now();
        let (me, started_at_ms) = {
            let v = view.borrow();
            (v.me.clone(), v.started_at_ms)
        };
        metrics.set_state(BootstrapState::Starting);
        Self {
            state: MemberState::new(identity, timing, sources, me, now, started_at_ms),
            store,
            pods,
            pods_open: true,
            forbidden_warned: false,
            health,
            metrics,
            view,
            table_tx,
            probes,
            survey,
            changes: None,
            resubscribe_at: now,
        }
    }

    pub(super) fn timing(&self) -> Timing {
        self.state.timing
    }

    /// Runs until a leave completes or the node is dropped.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(self.timing().tick);
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
    pub(super) async fn next_event(
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
                let now = seams::now();
                self.on_probe(r, now);
                while let Ok(r) = self.probes.try_recv() {
                    self.on_probe(r, now);
                }
                self.publish();
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

    fn on_probe(&mut self, r: ProbeResult, now: Instant) {
        if r.survey {
            self.state
                .on_survey(&r.key.pod, r.reply.as_ref(), r.sent_at);
        } else {
            self.state.on_probe(r, now);
        }
    }

    /// A watch event: news, never store contact (it may lag). A missing table is a
    /// reason to read, not yet a fact to act on.
    fn on_change(&mut self, ev: Option<Result<Found, StoreError>>) {
        match ev {
            Some(Ok(Found::Table(stored))) => {
                self.state.on_stored(stored, None, seams::now());
                self.publish();
            }
            Some(Ok(Found::Absent | Found::Stripped(_))) => self.state.need_read = true,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "member store watch broke; re-reading");
                self.metrics.store_error(e.metric_label());
                self.changes = None;
                self.resubscribe_at = seams::now() + self.timing().store_refresh;
                self.state.need_read = true;
            }
            None => {
                self.changes = None;
                self.resubscribe_at = seams::now() + self.timing().store_refresh;
                self.state.need_read = true;
            }
        }
    }

    /// The answer of a store call sent at `sent` that returned a record with a table.
    pub(super) fn on_written(&mut self, stored: Stored, sent: Instant) {
        self.state.on_stored(stored, Some(sent), seams::now());
        self.publish();
    }

    pub(super) fn publish(&mut self) {
        let now = seams::now();
        let was_up = self.state.up_after.is_some();
        let view = self.state.view(now);
        if let Some(took) = view.up_after
            && !was_up
        {
            self.metrics
                .observe_join(self.state.formed, took.as_secs_f64());
            tracing::info!(
                pod = %view.me.pod,
                incarnation = %view.me.incarnation,
                took_ms = took.as_millis() as u64,
                formed = self.state.formed,
                members = view.table.count(MemberStatus::Up),
                "member is Up"
            );
        }
        self.health
            .set_member_up_until(view.serving, view.serving_until);
        self.metrics.set_table(&view.table);
        self.metrics.set_state(view.state);
        self.metrics.set_coordinator(view.coordinator);
        let table = view.table.clone();
        self.view.send_if_modified(|v| {
            if *v != view {
                *v = view;
                true
            } else {
                false
            }
        });
        self.table_tx.send_if_modified(|t| {
            if *t != table {
                *t = table;
                true
            } else {
                false
            }
        });
    }

    pub(super) async fn read(&mut self) -> bool {
        let sent = seams::now();
        self.state.reading(sent);
        let store = self.store.clone();
        match self.call(store.read()).await {
            Ok(Found::Table(stored)) => self.on_written(stored, sent),
            Ok(Found::Absent) => {
                self.state.on_absent(None, sent);
                self.publish();
            }
            Ok(Found::Stripped(stored)) => {
                self.state.on_absent(Some(stored), sent);
                self.publish();
            }
            Err(e) => {
                self.store_failed(&e);
                return false;
            }
        }
        true
    }

    pub(super) fn store_failed(&mut self, e: &StoreError) {
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
    pub(super) async fn read_if_due(&mut self) {
        if self.state.read_due(seams::now()) {
            self.read().await;
        }
    }

    /// One round: refresh from the store when due, then make at most a few CAS writes.
    async fn step(&mut self) {
        self.read_if_due().await;
        if self.state.leaving.is_none() {
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
        let targets = self.state.survey(&self.pods.borrow());
        self.survey.send_if_modified(|t| {
            if *t != targets {
                *t = targets;
                true
            } else {
                false
            }
        });
        self.publish();
    }

    /// Makes the write the state wants now.
    async fn write_once(&mut self) -> WriteOutcome {
        let now = seams::now();
        let pods = self.pods.borrow().clone();
        let store = self.store.clone();
        let sent = seams::now();
        let (res, what) = match self.state.desired(now, &pods) {
            Write::Nothing => return WriteOutcome::Nothing,
            Write::Replace {
                base,
                record,
                applied,
            } => {
                let res = self
                    .call(store.replace(&base.resource_version, &record))
                    .await;
                (res, Written::Replace { base, applied })
            }
            Write::Restore { base, record, me } => {
                let res = match &base {
                    None => self.call(store.create(&record)).await,
                    Some(rv) => self.call(store.replace(rv, &record)).await,
                };
                (res, Written::Restore(me))
            }
            Write::Form { base, record } => {
                let res = match &base {
                    None => self.call(store.create(&record)).await,
                    Some(rv) => self.call(store.replace(rv, &record)).await,
                };
                (res, Written::Form)
            }
        };
        let new = match res {
            Ok(new) => new,
            Err(StoreError::Conflict) => return WriteOutcome::Conflict,
            Err(e) => {
                self.store_failed(&e);
                return WriteOutcome::Failed;
            }
        };
        let t = &new.record.table;
        match what {
            Written::Replace { base, applied } => {
                if self.state.is_holder(&new.record) {
                    self.state.last_renew = Some(now);
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
                if base.record.holder != new.record.holder {
                    if self.state.is_holder(&new.record) {
                        tracing::info!(me = %self.state.me, "took over the coordinator lease");
                    } else if self.state.is_holder(&base.record) {
                        tracing::info!(me = %self.state.me, "released the coordinator lease: no majority reachable");
                    }
                }
            }
            Written::Restore(me) => {
                tracing::warn!(cluster = %t.cluster, epoch = t.epoch, version = t.version, "restored the cluster into the Lease");
                self.state.restored_as(me, now);
            }
            Written::Form => {
                tracing::info!(me = %self.state.me, cluster = %t.cluster, "formed a new cluster");
                self.state.formed = true;
                self.state.last_renew = Some(now);
            }
        }
        self.on_written(new, sent);
        WriteOutcome::Wrote
    }
}

/// What a successful write was, for its logs and bookkeeping.
enum Written {
    Replace { base: Stored, applied: Vec<Change> },
    Restore(MemberKey),
    Form,
}

enum WriteOutcome {
    Wrote,
    Nothing,
    Conflict,
    Failed,
}

impl<S: MemberStore> Driver<S> {
    /// Runs one store call within the store timeout (a timeout is a failure like any
    /// other), taking in probe replies meanwhile: a store that hangs must not hold up the
    /// peers' answers, which keep the node fresh (and Ready) while the API server is gone.
    pub(super) async fn call<T>(
        &mut self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let call = timed(self.timing().store_timeout(), call);
        tokio::pin!(call);
        loop {
            tokio::select! {
                biased;
                res = &mut call => return res,
                Some(r) = self.probes.recv() => {
                    let now = seams::now();
                    self.on_probe(r, now);
                    while let Ok(r) = self.probes.try_recv() {
                        self.on_probe(r, now);
                    }
                    self.publish();
                }
            }
        }
    }
}

/// Runs one store call within `timeout`; a timeout is a failure like any other.
pub(super) async fn timed<T>(
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
    survey: watch::Receiver<Vec<Member>>,
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
        if all {
            let targets = survey.borrow().clone();
            for member in targets {
                let prober = prober.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let sent_at = seams::now();
                    let reply = prober.probe(&member).await.ok();
                    let _ = tx
                        .send(ProbeResult {
                            key: MemberKey::new(member.pod, String::new()),
                            sent_at,
                            reply,
                            survey: true,
                        })
                        .await;
                });
            }
        }
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
                // Another incarnation's answer is passed on too: it is no answer of the
                // member probed, but its table is news (a restored epoch, say).
                let reply = match prober.probe(&member).await {
                    Ok(r) => Some(r),
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
                        survey: false,
                    })
                    .await;
            });
        }
    }
}
