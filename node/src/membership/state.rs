//! [`MemberState`]: every membership decision of one node, as plain data and functions of
//! their inputs — what the store answered (and when the call was sent), what a peer
//! answered, the pods, and the time. No I/O, no async: the driver (`driver.rs`) feeds it
//! and carries out the writes it asks for.
//!
//! The rules it keeps are in the module docs of [`crate::membership`]: one history per
//! node (cluster id, then `(epoch, version)`), freshness stamped when a call was sent, no
//! serving without a table, restores one epoch later, and a coordinator only with a
//! majority.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use troupe_contract::{Member, MemberStatus, MemberTable};

use crate::coordinator::{self, Change};
use crate::discovery::PodSet;
use crate::election::{self, Eligibility, LeaseObserver, Role};
use crate::failure_detector::{FailureDetector, quorum};
use crate::member_key::MemberKey;
use crate::membership::{Identity, ProbeResult};
use crate::probe::PingReply;
use crate::seams::Sources;
use crate::store::{LeaseRecord, Stored};
use crate::timing::Timing;
use crate::view::{BootstrapState, MembershipView, serving_until};

/// What the store held at the last read (or watch event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LeaseState {
    /// Nothing read yet (or a peer's later epoch made the last read moot).
    Unknown,
    /// No record.
    Absent,
    /// A record without a table.
    Stripped(Stored),
    /// A record with a table: [`MemberState::stored`].
    Table,
}

/// The write the node wants to make next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Write {
    /// Nothing to write.
    Nothing,
    /// Replace the record read (`base`) with `record`; `applied` are the coordinator
    /// changes it contains.
    Replace {
        base: Stored,
        record: LeaseRecord,
        applied: Vec<Change>,
    },
    /// Restore the cluster into the Lease one epoch later (create when `base` is `None`,
    /// CAS over the stripped record otherwise), with this node as the new incarnation
    /// `me`, alone and Up; everybody else rejoins.
    Restore {
        base: Option<String>,
        record: LeaseRecord,
        me: MemberKey,
    },
    /// Form a new cluster (create, or CAS over the stripped record `base`).
    Form {
        base: Option<String>,
        record: LeaseRecord,
    },
}

/// One node's membership knowledge and decisions.
pub(crate) struct MemberState {
    pub(crate) identity: Identity,
    pub(crate) timing: Timing,
    pub(crate) sources: Sources,
    pub(crate) me: MemberKey,
    started: Instant,
    started_at_ms: i64,
    /// The record with a table last read from the store (the base of every CAS), if any.
    pub(crate) stored: Option<Stored>,
    /// What the store held when last read.
    pub(crate) lease: LeaseState,
    /// The latest table of our cluster, from the store or from a peer.
    pub(crate) table: MemberTable,
    /// This node follows a cluster: it adopted a stored table (of `table.cluster`).
    following: bool,
    /// Send times of the first and of the latest read that found the Lease absent or
    /// stripped, since the last read that found a table.
    lost: Option<(Instant, Instant)>,
    /// After adopting a later epoch, serving waits until then.
    epoch_hold: Option<Instant>,
    /// When this node, Up in its table, last lost its freshness, until store contact
    /// (direct or relayed) from a call sent since then: meanwhile its peers' answers do
    /// not make it serve (it may have been downed while cut off, and nobody told them).
    lapsed: Option<Instant>,
    /// When a peer pod last answered (a fresh node's survey) that it follows a cluster.
    follower_seen: Option<Instant>,
    /// Per peer pod, when the latest survey probe that came back (answered or failed)
    /// was sent.
    surveyed: BTreeMap<String, Instant>,
    observer: LeaseObserver,
    fd: FailureDetector,
    /// Last store contact, direct or through a peer (when the confirming call was sent).
    store_contact: Option<Instant>,
    last_direct_contact: Option<Instant>,
    last_read_attempt: Option<Instant>,
    pub(crate) last_renew: Option<Instant>,
    pub(crate) need_read: bool,
    was_member: bool,
    pub(crate) formed: bool,
    pub(crate) up_after: Option<Duration>,
    pub(crate) leaving: Option<BootstrapState>,
    waiting_for_restore_logged: bool,
}

impl MemberState {
    /// A node that has read nothing yet, started at `now` (`started_at_ms` on the wall
    /// clock), as incarnation `me`.
    pub(crate) fn new(
        identity: Identity,
        timing: Timing,
        sources: Sources,
        me: MemberKey,
        now: Instant,
        started_at_ms: i64,
    ) -> Self {
        Self {
            identity,
            timing,
            sources,
            me,
            started: now,
            started_at_ms,
            stored: None,
            lease: LeaseState::Unknown,
            table: MemberTable::default(),
            following: false,
            lost: None,
            epoch_hold: None,
            lapsed: None,
            follower_seen: None,
            surveyed: BTreeMap::new(),
            observer: LeaseObserver::new(now),
            fd: FailureDetector::default(),
            store_contact: None,
            last_direct_contact: None,
            last_read_attempt: None,
            last_renew: None,
            need_read: true,
            was_member: false,
            formed: false,
            up_after: None,
            leaving: None,
            waiting_for_restore_logged: false,
        }
    }

    pub(crate) fn my_id(&self) -> String {
        election::identity(&self.me.pod, &self.me.incarnation)
    }

    pub(crate) fn is_holder(&self, record: &LeaseRecord) -> bool {
        record.holder.as_deref() == Some(self.my_id().as_str())
    }

    /// Whether a read is due at `now`: asked for, or nothing heard from the store for
    /// `store_refresh` and no read tried that recently.
    pub(crate) fn read_due(&self, now: Instant) -> bool {
        let due = self
            .last_direct_contact
            .is_none_or(|t| now.saturating_duration_since(t) >= self.timing.store_refresh);
        let attempted_recently = self
            .last_read_attempt
            .is_some_and(|t| now.saturating_duration_since(t) < self.timing.store_refresh);
        self.need_read || (due && !attempted_recently)
    }

    /// A read is sent at `sent`.
    pub(crate) fn reading(&mut self, sent: Instant) {
        self.last_read_attempt = Some(sent);
        self.need_read = false;
    }

    /// A record with a table. `contact` is when the call that returned it was sent (a
    /// read or a write), `None` for a watch event (news, never contact: it may lag).
    pub(crate) fn on_stored(&mut self, stored: Stored, contact: Option<Instant>, now: Instant) {
        self.note_lapse(now);
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
        let not_behind_base = self
            .stored
            .as_ref()
            .is_none_or(|b| stored.record.table.compare(&b.record.table) != Some(Ordering::Less));
        if not_behind_base || contact.is_some() {
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
    }

    /// A read sent at `sent` found the Lease absent or stripped: not store contact.
    pub(crate) fn on_absent(&mut self, stripped: Option<Stored>, sent: Instant) {
        if self.lost.is_none() && self.following {
            let what = if stripped.is_some() {
                "stripped of its member table"
            } else {
                "deleted"
            };
            tracing::warn!(cluster = %self.table.cluster, epoch = self.table.epoch, version = self.table.version, "the member Lease was {what}; not serving until this node's table is restored into it");
        }
        let first = self.lost.map_or(sent, |(first, _)| first);
        self.lost = Some((first, sent));
        self.stored = None;
        self.lease = match stripped {
            Some(s) => LeaseState::Stripped(s),
            None => LeaseState::Absent,
        };
    }

    /// Our cluster's Lease now holds another cluster: stop serving, drop everything we
    /// knew, and join that cluster as a new node.
    fn switch_cluster(&mut self, theirs: &MemberTable) {
        tracing::warn!(ours = %self.table.cluster, theirs = %theirs.cluster, "the member Lease holds another cluster's table; dropping ours and joining it as a new incarnation");
        if self.leaving.is_none() {
            let old = self.me.clone();
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

    /// A probe's outcome. A peer of another cluster counts neither as reached nor as
    /// store contact, and its table is never adopted.
    pub(crate) fn on_probe(&mut self, r: ProbeResult, now: Instant) {
        self.note_lapse(now);
        let Some(reply) = r.reply else {
            self.fd.record(&r.key, false, r.sent_at);
            return;
        };
        let Some(order) = reply.table.compare(&self.table) else {
            tracing::debug!(from = %r.key, cluster = %reply.table.cluster, "a peer follows another cluster");
            self.fd.record(&r.key, false, r.sent_at);
            return;
        };
        if reply.pod != r.key.pod || reply.incarnation != r.key.incarnation {
            // Another incarnation runs there: the member probed did not answer. A later
            // table of our cluster it follows is news all the same — after a restore the
            // members of the earlier epoch rejoin as new incarnations, and their answers
            // are how the others learn of the restored epoch.
            tracing::debug!(member = %r.key, answered = %reply.incarnation, "another incarnation answered");
            self.fd.record(&r.key, false, r.sent_at);
            if order == Ordering::Greater {
                self.adopt_from_peer(reply.table, now);
            }
            return;
        }
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
            self.adopt_from_peer(reply.table, now);
        }
    }

    /// A later table of our cluster from a peer.
    fn adopt_from_peer(&mut self, table: MemberTable, now: Instant) {
        if table.epoch > self.table.epoch && self.lost.is_some() {
            // Somebody restored the Lease: read it before writing.
            self.lost = None;
            self.lease = LeaseState::Unknown;
            self.need_read = true;
        }
        self.adopt(table, now);
    }

    /// The pods a fresh node asks, while the Lease holds no table, whether they follow a
    /// cluster: every peer pod but itself. Empty otherwise.
    pub(crate) fn survey(&self, pods: &PodSet) -> Vec<Member> {
        if self.following || !matches!(self.lease, LeaseState::Absent | LeaseState::Stripped(_)) {
            return Vec::new();
        }
        pods.peers()
            .filter(|(name, _)| *name != self.identity.pod)
            .map(|(name, ip)| Member {
                pod: name.to_owned(),
                incarnation: String::new(),
                address: ip.to_owned(),
                status: MemberStatus::Up,
                since_version: 0,
            })
            .collect()
    }

    /// The outcome of a survey probe (see [`MemberState::survey`]) of `pod`, sent at
    /// `sent_at`: its answer, or `None` when it did not answer.
    pub(crate) fn on_survey(&mut self, pod: &str, reply: Option<&PingReply>, sent_at: Instant) {
        let follows =
            reply.is_some_and(|r| !r.table.cluster.is_empty() && !r.table.members.is_empty());
        if follows {
            self.follower_seen = self.follower_seen.max(Some(sent_at));
        }
        let last = self.surveyed.entry(pod.to_owned()).or_insert(sent_at);
        *last = (*last).max(sent_at);
    }

    /// Whether every peer pod was asked, since `since`, whether it follows a cluster, and
    /// the probe came back (answered or failed).
    fn surveyed_since(&self, since: Instant, pods: &PodSet) -> bool {
        pods.peers()
            .filter(|(name, _)| *name != self.identity.pod)
            .all(|(name, _)| self.surveyed.get(name).is_some_and(|t| *t >= since))
    }

    /// Makes `table` (of our cluster, not older) the node's table, and notices whether
    /// this incarnation was evicted.
    fn adopt(&mut self, table: MemberTable, now: Instant) {
        if table.epoch > self.table.epoch && table.is_restored() {
            // A later epoch (also the first table of a fresh node, if restored): whoever
            // still serves the previous epoch stops within the isolation timeout. A
            // cluster's first epoch had no previous one.
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

    /// The view to publish at `now`; notes the first Up.
    pub(crate) fn view(&mut self, now: Instant) -> MembershipView {
        let status = self
            .table
            .members
            .iter()
            .find(|m| self.me.is(m))
            .map(|m| m.status);
        self.note_lapse(now);
        let serving_until = self.serving_until(now);
        let serving = serving_until.is_some_and(|u| now <= u);
        let coordinator = self
            .stored
            .as_ref()
            .is_some_and(|s| self.is_holder(&s.record));
        let state = match (self.leaving, status) {
            (Some(s), _) => s,
            (None, _) if serving => BootstrapState::Up,
            (None, Some(MemberStatus::Up)) => BootstrapState::Isolated,
            (None, _) if self.lease == LeaseState::Unknown && !self.following => {
                BootstrapState::Starting
            }
            (None, _) => BootstrapState::Joining,
        };
        if serving && self.up_after.is_none() {
            self.up_after = Some(now.saturating_duration_since(self.started));
        }
        MembershipView {
            me: self.me.clone(),
            table: self.table.clone(),
            status,
            serving,
            serving_until,
            coordinator,
            state,
            store_contact: self.store_contact,
            up_after: self.up_after,
            started_at_ms: self.started_at_ms,
        }
    }

    /// Until when this node may serve, as of `now` (`None`: not at all): Up in its table,
    /// not leaving, not held (Lease lost, or a later epoch just adopted), and fresh. After
    /// a lapse of freshness only store contact since the lapse counts: a node cut off
    /// long enough may have been downed meanwhile, and its peers need not know it (the
    /// coordinator's write may have taken although its answer never came back).
    fn serving_until(&self, now: Instant) -> Option<Instant> {
        let held = self.lease_lost() || self.epoch_hold.is_some_and(|h| now < h);
        if self.leaving.is_some() || held {
            return None;
        }
        let iso = self.timing.isolation_timeout;
        match self.lapsed {
            Some(t) if self.store_contact.is_none_or(|c| c < t) => None,
            _ => serving_until(&self.table, &self.me, self.store_contact, &self.fd, iso),
        }
    }

    /// Notes, before taking in news at `now`, whether this node's freshness has lapsed
    /// (see [`MemberState::serving_until`]), and clears a lapse that store contact since
    /// then ended.
    fn note_lapse(&mut self, now: Instant) {
        if let Some(t) = self.lapsed {
            if self.store_contact.is_some_and(|c| c >= t) {
                self.lapsed = None;
            }
            return;
        }
        let up = self
            .table
            .members
            .iter()
            .any(|m| self.me.is(m) && m.status == MemberStatus::Up);
        if !up {
            return;
        }
        if let Some(u) = self.serving_until(now)
            && u < now
        {
            tracing::info!(
                lapsed_ms = now.saturating_duration_since(u).as_millis() as u64,
                "freshness lapsed; serving again only after store contact"
            );
            self.lapsed = Some(u);
        }
    }

    /// The next write at `now`, given the pods.
    pub(crate) fn desired(&mut self, now: Instant, pods: &PodSet) -> Write {
        match self.lease.clone() {
            LeaseState::Unknown => Write::Nothing,
            LeaseState::Absent if self.following => self.restore(None),
            LeaseState::Stripped(s) if self.following => self.restore(Some(s.resource_version)),
            LeaseState::Absent => self.form(None, now, pods),
            LeaseState::Stripped(s) => self.form(Some(s.resource_version), now, pods),
            LeaseState::Table => {
                let Some(base) = self.stored.clone() else {
                    return Write::Nothing;
                };
                match self.replacement(&base, now, pods) {
                    Some((record, applied)) => Write::Replace {
                        base,
                        record,
                        applied,
                    },
                    None => Write::Nothing,
                }
            }
        }
    }

    /// The record this node wants to write over `stored`, with the coordinator changes it
    /// contains; `None` when nothing needs writing.
    fn replacement(
        &self,
        stored: &Stored,
        now: Instant,
        pods: &PodSet,
    ) -> Option<(LeaseRecord, Vec<Change>)> {
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
        let table_has_no_up = record
            .table
            .up_members()
            .all(|m| coordinator::pod_gone(m, pods, &self.fd, now, &self.timing));
        // A coordinator must reach a majority of the live Up members (itself counted), or
        // the table must have no live Up member at all: otherwise it changes nothing and
        // only keeps the majority from electing one that can.
        let live = coordinator::live_members(&self.table, pods, &self.fd, now, &self.timing);
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
                pods,
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

    /// The cluster one epoch later, for a deleted or stripped Lease: the same cluster id,
    /// `epoch + 1`, a version above ours, and as its only member this node as a **new
    /// incarnation**, Up and holding the coordinator lease. Nobody is carried over: this
    /// node's table may be behind the one the store lost (a member downed or removed in
    /// the lost versions), so no incarnation of an earlier epoch is ever Up again — every
    /// other node finds itself out of the restored table and rejoins as a new incarnation.
    fn restore(&self, base: Option<String>) -> Write {
        let me = MemberKey::new(self.identity.pod.clone(), self.sources.id());
        let mut table = MemberTable {
            epoch: self.table.epoch + 1,
            version: self.table.version + 1,
            members: Vec::new(),
            ..self.table.clone()
        };
        table.join(&me.pod, &me.incarnation, &self.identity.address);
        table
            .transition(&me.pod, &me.incarnation, MemberStatus::Up)
            .ok();
        Write::Restore {
            base,
            record: LeaseRecord {
                holder: Some(election::identity(&me.pod, &me.incarnation)),
                renew_ms: self.sources.wall(),
                lease_duration_s: lease_seconds(self.timing.lease_duration),
                table,
            },
            me,
        }
    }

    /// A restore this node wrote took: it is now the new incarnation `me`, the first
    /// member of the restored epoch, and holds the coordinator lease.
    pub(crate) fn restored_as(&mut self, me: MemberKey, now: Instant) {
        tracing::warn!(old = %self.me, new = %me, "restored the cluster one epoch later as a new incarnation; the other members rejoin");
        self.me = me;
        self.was_member = false;
        self.last_renew = Some(now);
    }

    /// How long a fresh node waits for the followers of a cluster to restore a missing
    /// table before it forms a new cluster: time for them to read the loss and write.
    pub(crate) fn restore_grace(&self) -> Duration {
        self.timing.store_refresh + self.timing.store_timeout()
    }

    /// A fresh node may form a new cluster on a missing table at once on a cold start (no
    /// other pod's node started clearly before this one), otherwise only once the table
    /// stayed missing for the restore grace.
    fn may_form(&mut self, now: Instant, pods: &PodSet) -> bool {
        let grace = self.restore_grace();
        let Some((first_lost, last_lost)) = self.lost else {
            return false;
        };
        if !self.surveyed_since(first_lost, pods) {
            // Not every peer pod was asked yet whether it follows a cluster (its answer
            // is what keeps a fresh node from forming beside a serving one).
            return false;
        }
        if self
            .follower_seen
            .is_some_and(|t| now.saturating_duration_since(t) < grace)
        {
            // Somebody still follows a cluster (it cannot reach the store, or has not yet
            // read the loss): it will restore the table; forming now would split.
            if !self.waiting_for_restore_logged {
                self.waiting_for_restore_logged = true;
                tracing::info!(
                    "no member table in the Lease, but a peer follows a cluster: waiting for it to restore the table"
                );
            }
            return false;
        }
        let mine = pods
            .pods
            .get(&self.identity.pod)
            .and_then(|p| p.started_at_ms)
            .unwrap_or(self.started_at_ms);
        let margin = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        if !pods.peer_started_before(&self.identity.pod, mine, margin) {
            return true;
        }
        let waited = last_lost.saturating_duration_since(first_lost) >= grace;
        if !waited && !self.waiting_for_restore_logged {
            self.waiting_for_restore_logged = true;
            tracing::info!(
                grace_ms = grace.as_millis() as u64,
                "no member table in the Lease, and other pods ran before this one: waiting for them to restore it"
            );
        }
        waited
    }

    /// A new cluster (a new random id, its first epoch the wall-clock time,
    /// [`MemberTable::first_epoch_at`]) with this node Up and holding the
    /// coordinator lease — if this node may form one now.
    fn form(&mut self, base: Option<String>, now: Instant, pods: &PodSet) -> Write {
        if !self.may_form(now, pods) {
            return Write::Nothing;
        }
        // Above every epoch of an earlier life of this ActorCluster, whose owners a
        // durable store may still name.
        let first_epoch = MemberTable::first_epoch_at(self.sources.wall());
        let mut table = MemberTable {
            // A new cluster gets a new random id, so that its versions are never compared
            // with those of another life of the Lease.
            cluster: self.sources.id(),
            first_epoch,
            epoch: first_epoch,
            version: 0,
            members: Vec::new(),
        };
        table.join(&self.me.pod, &self.me.incarnation, &self.identity.address);
        table
            .transition(&self.me.pod, &self.me.incarnation, MemberStatus::Up)
            .ok();
        Write::Form {
            base,
            record: LeaseRecord {
                holder: Some(self.my_id()),
                renew_ms: self.sources.wall(),
                lease_duration_s: lease_seconds(self.timing.lease_duration),
                table,
            },
        }
    }
}

pub(crate) fn lease_seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::PodInfo;

    const MS: Duration = Duration::from_millis(1);

    fn state(pod: &str, t0: Instant) -> MemberState {
        MemberState::new(
            Identity {
                pod: pod.into(),
                address: "10.0.0.1".into(),
            },
            Timing::fast(),
            Sources::seeded(1, 1_000),
            MemberKey::new(pod, "i-1"),
            t0,
            1_000,
        )
    }

    /// A table of cluster "c" with `pods` Up (incarnation "i-1").
    fn table(epoch: u64, pods: &[&str]) -> MemberTable {
        let mut t = MemberTable {
            cluster: "c".into(),
            epoch,
            ..MemberTable::default()
        };
        for p in pods {
            t.join(p, "i-1", "10.0.0.1");
            t.transition(p, "i-1", MemberStatus::Up).ok();
        }
        t
    }

    fn stored(rv: &str, table: MemberTable) -> Stored {
        Stored {
            resource_version: rv.into(),
            record: LeaseRecord {
                holder: None,
                renew_ms: 1,
                lease_duration_s: 1,
                table,
            },
        }
    }

    fn reply(from: &str, table: MemberTable, at: Instant) -> ProbeResult {
        ProbeResult {
            key: MemberKey::new(from, "i-1"),
            sent_at: at,
            reply: Some(PingReply {
                pod: from.into(),
                incarnation: "i-1".into(),
                table,
                store_age_ms: Some(0),
            }),
            survey: false,
        }
    }

    #[test]
    fn a_lone_member_serves_on_a_read_stamped_when_it_was_sent() {
        let t0 = Instant::now();
        let mut s = state("a", t0);
        // The read was sent at t0 and answered 800 ms later.
        s.on_stored(stored("1", table(0, &["a"])), Some(t0), t0 + 800 * MS);
        let v = s.view(t0 + 800 * MS);
        assert!(v.serving);
        assert_eq!(v.serving_until, Some(t0 + Timing::fast().isolation_timeout));
    }

    #[test]
    fn a_watch_event_is_adopted_but_is_not_store_contact() {
        let t0 = Instant::now();
        let mut s = state("a", t0);
        s.on_stored(stored("1", table(0, &["a"])), None, t0);
        assert_eq!(s.table.members.len(), 1);
        assert!(!s.view(t0).serving, "served on a watch event alone");
    }

    #[test]
    fn an_older_table_read_gives_no_contact() {
        let t0 = Instant::now();
        let mut s = state("a", t0);
        let mut newer = table(0, &["a"]);
        s.on_stored(stored("2", newer.clone()), Some(t0), t0);
        newer.version -= 1;
        s.on_stored(stored("1", newer), Some(t0 + 900 * MS), t0 + 900 * MS);
        assert_eq!(
            s.view(t0 + 900 * MS).serving_until,
            Some(t0 + Timing::fast().isolation_timeout)
        );
    }

    #[test]
    fn a_follower_that_finds_the_lease_deleted_stops_serving_and_restores_one_epoch_later() {
        let t0 = Instant::now();
        let mut s = state("a", t0);
        s.on_stored(stored("1", table(0, &["a"])), Some(t0), t0);
        assert!(s.view(t0).serving);
        s.on_absent(None, t0 + 10 * MS);
        assert!(!s.view(t0 + 10 * MS).serving);
        let Write::Restore { base, record, me } = s.desired(t0 + 10 * MS, &PodSet::default())
        else {
            panic!("no restore");
        };
        assert_eq!(base, None);
        assert_eq!(record.table.cluster, "c");
        assert_eq!(record.table.epoch, 1);
        assert!(record.table.version > s.table.version);
        assert_eq!(
            record.holder,
            Some(election::identity("a", &me.incarnation))
        );
        s.restored_as(me.clone(), t0 + 20 * MS);
        s.on_stored(stored("2", record.table), Some(t0 + 10 * MS), t0 + 20 * MS);
        assert_eq!(s.me, me);
        assert_eq!(s.view(t0 + 20 * MS).status, Some(MemberStatus::Up));
        // Stripped: a CAS over the stripped record.
        s.on_absent(Some(stored("9", MemberTable::default())), t0 + 20 * MS);
        assert!(matches!(
            s.desired(t0 + 20 * MS, &PodSet::default()),
            Write::Restore { base: Some(rv), .. } if rv == "9"
        ));
    }

    #[test]
    fn a_restore_from_a_stale_table_admits_no_incarnation_of_an_earlier_epoch() {
        // Seed 1187: the coordinator downed a (epoch 1), the Lease was stripped, and b,
        // which had not seen the Down, restored its older table with a Up as epoch 2; a,
        // which had not seen its Down either, served again.
        let t0 = Instant::now();
        let iso = Timing::fast().isolation_timeout;
        let stale = table(1, &["a", "b", "c"]);
        let mut b = state("b", t0);
        b.on_stored(stored("1", stale.clone()), Some(t0), t0);
        let t1 = t0 + 100 * MS;
        b.on_absent(Some(stored("9", MemberTable::default())), t1);
        let Write::Restore { record, me, .. } = b.desired(t1, &PodSet::default()) else {
            panic!("no restore");
        };
        assert_ne!(
            me.incarnation, "i-1",
            "the restorer kept its old incarnation"
        );
        let earlier: Vec<String> = record
            .table
            .members
            .iter()
            .filter(|m| m.incarnation == "i-1")
            .map(|m| m.pod.clone())
            .collect();
        assert!(
            earlier.is_empty(),
            "the restored table carries incarnations of the earlier epoch: {earlier:?}"
        );
        // a never saw its Down: it adopts the restored epoch, finds itself out of it, and
        // rejoins as a new incarnation; the old one never serves again.
        let mut a = state("a", t0);
        a.on_stored(stored("1", stale), Some(t0), t0);
        let t2 = t1 + 100 * MS;
        a.on_stored(stored("10", record.table), Some(t2), t2);
        assert_ne!(a.me.incarnation, "i-1");
        assert!(!a.view(t2 + iso).serving);
        assert!(matches!(
            a.desired(t2, &PodSet::default()),
            Write::Replace { record, .. }
            if record.table.get("a").is_some_and(|m| m.status == MemberStatus::Joining)
        ));
    }

    #[test]
    fn a_node_that_lost_its_freshness_serves_again_only_after_store_contact() {
        // Seed 9214: pod-1 was cut from its peers (net delay) while the store answered
        // too late for everybody; the coordinator downed it (the write took, its answer
        // timed out). When the delay healed, pod-1 served again on its peers' word, whose
        // tables all predated the Down.
        let t0 = Instant::now();
        let mut s = state("a", t0);
        let t = table(0, &["a", "b", "c"]);
        s.on_stored(stored("1", t.clone()), Some(t0), t0);
        assert!(s.view(t0).serving);
        let t1 = t0 + 1500 * MS;
        assert!(!s.view(t1).serving, "still fresh without store or peers");
        let no_store = |at: Instant| {
            let mut r = reply("b", t.clone(), at);
            if let Some(p) = r.reply.as_mut() {
                p.store_age_ms = None;
            }
            r
        };
        s.on_probe(no_store(t1), t1);
        assert!(
            !s.view(t1).serving,
            "served again on its peers' word after its freshness lapsed"
        );
        // A read sent after the lapse: serving again, and peers count again.
        let t2 = t1 + 10 * MS;
        s.on_stored(stored("1", t.clone()), Some(t2), t2);
        assert!(s.view(t2).serving);
        s.on_probe(no_store(t2 + 900 * MS), t2 + 900 * MS);
        assert!(s.view(t2 + 1500 * MS).serving, "a majority answered");
    }

    #[test]
    fn a_later_epoch_is_served_only_after_the_isolation_timeout() {
        let t0 = Instant::now();
        let iso = Timing::fast().isolation_timeout;
        let mut s = state("a", t0);
        s.on_stored(stored("1", table(0, &["a"])), Some(t0), t0);
        let t1 = t0 + 100 * MS;
        s.on_stored(stored("2", table(1, &["a"])), Some(t1), t1);
        assert_eq!(s.table.epoch, 1);
        assert!(!s.view(t1).serving);
        assert!(s.view(t1 + iso).serving);
    }

    #[test]
    fn another_clusters_table_in_the_store_drops_ours_and_rejoins_as_a_new_incarnation() {
        let t0 = Instant::now();
        let mut s = state("a", t0);
        s.on_stored(stored("1", table(0, &["a"])), Some(t0), t0);
        let mut theirs = table(0, &["z"]);
        theirs.cluster = "other".into();
        theirs.version = 1;
        s.on_stored(stored("2", theirs), Some(t0), t0);
        assert_eq!(s.table.cluster, "other");
        assert_ne!(s.me.incarnation, "i-1");
        assert!(!s.view(t0).serving);
        assert!(
            matches!(s.desired(t0, &PodSet::default()), Write::Replace { record, .. }
            if record.table.get("a").is_some_and(|m| m.status == MemberStatus::Joining))
        );
    }

    #[test]
    fn a_peer_of_another_cluster_is_neither_reached_nor_adopted() {
        let t0 = Instant::now();
        let mut s = state("a", t0);
        s.on_stored(stored("1", table(0, &["a", "b", "c"])), Some(t0), t0);
        let mut theirs = table(0, &["a", "b", "c"]);
        theirs.cluster = "other".into();
        theirs.version = 99;
        let t1 = t0 + 1500 * MS; // store contact lapsed
        s.on_probe(reply("b", theirs.clone(), t1), t1);
        s.on_probe(reply("c", theirs, t1), t1);
        assert_eq!(s.table.cluster, "c");
        assert!(!s.view(t1).serving, "served on answers of another cluster");
        s.on_probe(reply("b", table(0, &["a", "b", "c"]), t1), t1);
        assert!(s.view(t1).serving, "a majority of our own cluster answered");
    }

    /// Pods `d` (this node, started at 1 000 ms) and `a`, started at `a_started_ms`
    /// (`None`: unknown).
    fn two_pods(a_started_ms: Option<i64>) -> PodSet {
        let mut pods = PodSet {
            synced: true,
            ..PodSet::default()
        };
        let a = match a_started_ms {
            Some(t) => PodInfo::running_since("10.0.0.1", t),
            None => PodInfo::running("10.0.0.1"),
        };
        pods.pods.insert("a".into(), a);
        pods.pods
            .insert("d".into(), PodInfo::running_since("10.0.0.4", 1_000));
        pods
    }

    #[test]
    fn a_fresh_node_forms_at_once_on_a_cold_start_and_waits_for_restorers_otherwise() {
        let t0 = Instant::now();
        let grace = Timing::fast().store_refresh + Timing::fast().store_timeout();
        let mut cold = state("d", t0);
        cold.on_absent(None, t0);
        let pods = two_pods(Some(900));
        assert_eq!(cold.desired(t0, &pods), Write::Nothing, "formed unasked");
        cold.on_survey("a", None, t0);
        assert!(matches!(
            cold.desired(t0, &pods),
            Write::Form { base: None, .. }
        ));

        let mut late = state("d", t0);
        let pods = two_pods(Some(-10_000));
        late.on_absent(None, t0);
        late.on_survey("a", None, t0);
        assert_eq!(late.desired(t0, &pods), Write::Nothing);
        late.on_absent(None, t0 + grace / 2);
        assert_eq!(late.desired(t0 + grace / 2, &pods), Write::Nothing);
        late.on_absent(None, t0 + grace);
        assert!(matches!(
            late.desired(t0 + grace, &pods),
            Write::Form { .. }
        ));
    }

    #[test]
    fn a_cluster_formed_anew_starts_above_every_epoch_of_an_earlier_life() {
        // Durable seeds 29 and 422: every pod died while the Lease was deleted; the fresh
        // cluster began again at epoch 0, below the owners (epoch 5) the store kept from
        // the earlier life, and every activation of their actors was refused for good.
        let t0 = Instant::now();
        let mut s = state("d", t0);
        s.on_absent(None, t0);
        s.on_survey("a", None, t0);
        let Write::Form { record, .. } = s.desired(t0, &two_pods(Some(900))) else {
            panic!("did not form on a cold start");
        };
        // `state` runs on a wall clock at 1,000 ms; an earlier life formed before it and
        // was restored a few times.
        assert_eq!(
            (record.table.first_epoch, record.table.epoch),
            (1_000, 1_000)
        );
        assert!(!record.table.is_restored());
        assert!(record.table.epoch > MemberTable::first_epoch_at(990) + 5);
    }

    #[test]
    fn a_fresh_node_that_does_not_know_when_its_peers_started_is_not_on_a_cold_start() {
        // Seeds 308 and 336: a pod (scaled up, or restarted) that came up just after the
        // Lease was deleted formed a second cluster at once beside the old members, which
        // still served on reads sent before the deletion.
        let t0 = Instant::now();
        let grace = Timing::fast().store_refresh + Timing::fast().store_timeout();
        let pods = two_pods(None);
        let mut s = state("d", t0);
        s.on_absent(None, t0);
        s.on_survey("a", None, t0);
        assert_eq!(
            s.desired(t0, &pods),
            Write::Nothing,
            "formed at once beside a pod that may have run for long"
        );
        s.on_absent(None, t0 + grace);
        assert!(matches!(s.desired(t0 + grace, &pods), Write::Form { .. }));
    }

    #[test]
    fn a_fresh_node_never_forms_while_a_peer_follows_a_cluster() {
        let t0 = Instant::now();
        let pods = two_pods(Some(1_000));
        let mut s = state("d", t0);
        s.on_absent(None, t0);
        let targets = s.survey(&pods);
        let asked: Vec<&str> = targets.iter().map(|m| m.pod.as_str()).collect();
        assert_eq!(asked, ["a"]);
        let answer = reply("a", table(0, &["a"]), t0);
        s.on_survey("a", answer.reply.as_ref(), t0);
        assert_eq!(
            s.desired(t0, &pods),
            Write::Nothing,
            "formed beside a follower"
        );

        let mut s = state("d", t0);
        s.on_absent(None, t0);
        let fresh = reply("a", MemberTable::default(), t0);
        s.on_survey("a", fresh.reply.as_ref(), t0);
        assert!(matches!(s.desired(t0, &pods), Write::Form { .. }));
    }

    /// A settled cluster at rest costs the API server at most one write per
    /// `renew_interval`: with the default timing, ≤ 0.5 writes/s (issue 13), while a
    /// crashed coordinator is replaced within 5 s (its lease, plus a tick).
    #[test]
    fn a_settled_coordinator_writes_at_most_half_a_time_per_second_at_rest() {
        let t0 = Instant::now();
        let timing = Timing::default();
        let mut s = MemberState::new(
            Identity {
                pod: "a".into(),
                address: "10.0.0.1".into(),
            },
            timing,
            Sources::seeded(1, 1_000),
            MemberKey::new("a", "i-1"),
            t0,
            1_000,
        );
        let mut st = stored("1", table(0, &["a"]));
        st.record.holder = Some(s.my_id());
        st.record.lease_duration_s = lease_seconds(timing.lease_duration);
        s.on_stored(st.clone(), Some(t0), t0);
        s.last_renew = Some(t0);
        let pods = PodSet::from_list([("a", "1")]);
        let (mut writes, mut rv) = (0u32, 1u64);
        let secs = 60;
        let mut now = t0;
        while now < t0 + Duration::from_secs(secs) {
            now += timing.tick;
            if let Write::Replace { record, .. } = s.desired(now, &pods) {
                assert_eq!(record.holder, Some(s.my_id()), "lost the lease at rest");
                writes += 1;
                rv += 1;
                s.on_stored(
                    Stored {
                        resource_version: rv.to_string(),
                        record,
                    },
                    Some(now),
                    now,
                );
                s.last_renew = Some(now);
            }
        }
        let per_second = f64::from(writes) / secs as f64;
        assert!(
            per_second <= 0.5,
            "{writes} writes in {secs} s at rest ({per_second:.2}/s): the renewal is too eager"
        );
        assert!(writes > 0, "never renewed: the lease would expire");
        let takeover = timing.lease_duration + timing.tick;
        assert!(
            takeover <= Duration::from_secs(5),
            "a crashed coordinator is replaced only after {takeover:?}"
        );
    }

    #[test]
    fn a_coordinator_without_a_majority_releases_the_lease() {
        let t0 = Instant::now();
        let mut s = state("a", t0);
        let mut st = stored("1", table(0, &["a", "b", "c"]));
        st.record.holder = Some(s.my_id());
        s.on_stored(st, Some(t0), t0);
        let pods = PodSet::from_list([("a", "1"), ("b", "2"), ("c", "3")]);
        // b and c answered once, then nothing for longer than the isolation timeout.
        s.on_probe(reply("b", s.table.clone(), t0), t0);
        s.on_probe(reply("c", s.table.clone(), t0), t0);
        let Write::Replace { record, .. } = s.desired(t0 + 10 * MS, &pods) else {
            panic!("no renewal");
        };
        assert_eq!(record.holder, Some(s.my_id()), "renews with a majority");
        let late = t0 + Timing::fast().isolation_timeout + 10 * MS;
        let Write::Replace {
            record, applied, ..
        } = s.desired(late, &pods)
        else {
            panic!("kept the lease silently");
        };
        assert_eq!(record.holder, None, "renewed without a majority");
        assert!(applied.is_empty());
    }
}
