//! [`SimStore`]: the simulated Lease — one record changed only by compare-and-swap on a
//! resource version, a watch, and the faults the schedule injects (store down, one node
//! cut from it, slow answers, a lagging watch, the record deleted or stripped of its table). It also keeps, for the
//! invariants, when the store first said that a member incarnation was Down or removed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use troupe_contract::{MemberStatus, MemberTable};
use troupe_node::store::{ChangeStream, Found, LeaseRecord, MemberStore, StoreError, Stored};

use crate::clock;

/// How long every store call takes without faults (an API server round trip).
const BASE_LATENCY: Duration = Duration::from_millis(2);

/// A member incarnation of one cluster: (cluster id, pod, incarnation).
pub type Incarnation = (String, String, String);

#[derive(Debug, Default)]
struct State {
    /// The record: version, content, and whether its table annotation was stripped.
    record: Option<(u64, LeaseRecord, bool)>,
    next_version: u64,
    down: bool,
    cut: BTreeSet<String>,
    delay: Duration,
    watch_lag: Duration,
    /// When (simulated time) the store first held a table in which the incarnation was
    /// Down, or from which it was removed.
    evicted: BTreeMap<Incarnation, Duration>,
    /// Writes since the world last drained them, for the trace.
    log: Vec<String>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

/// The store as one node sees it (`pod` names that node, for per-node cuts).
#[derive(Clone, Debug)]
pub struct SimStore {
    shared: Arc<Shared>,
    pod: String,
}

/// A short description of a table for traces and reports.
pub fn describe(t: &MemberTable) -> String {
    let members: Vec<String> = t
        .members
        .iter()
        .map(|m| format!("{}/{}:{}", m.pod, short(&m.incarnation), m.status))
        .collect();
    format!(
        "cluster={} epoch={} v{} [{}]",
        short(&t.cluster),
        t.epoch,
        t.version,
        members.join(" ")
    )
}

/// The first 6 characters of an id.
pub fn short(id: &str) -> &str {
    id.get(..6).unwrap_or(id)
}

impl SimStore {
    /// An empty store (no record yet).
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    next_version: 1,
                    ..State::default()
                }),
                changed: watch::Sender::new(0),
            }),
            pod: String::new(),
        }
    }

    /// The same store, seen from `pod`.
    pub fn for_pod(&self, pod: &str) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            pod: pod.to_owned(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic elsewhere in the simulation; its state is still
        // the best we have.
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bump(&self) {
        self.shared.changed.send_modify(|c| *c += 1);
    }

    /// Nobody reaches the store (`true`) or everybody does again.
    pub fn set_down(&self, down: bool) {
        self.state().down = down;
        self.bump();
    }

    /// `pod` cannot reach the store (`true`) or can again.
    pub fn set_cut(&self, pod: &str, cut: bool) {
        {
            let mut s = self.state();
            if cut {
                s.cut.insert(pod.to_owned());
            } else {
                s.cut.remove(pod);
            }
        }
        self.bump();
    }

    /// Every call answers `delay` late (it takes effect at once).
    pub fn set_delay(&self, delay: Duration) {
        self.state().delay = delay;
    }

    /// The watch delivers each record `lag` after it was written.
    pub fn set_watch_lag(&self, lag: Duration) {
        self.state().watch_lag = lag;
    }

    /// Deletes the record (someone ran `kubectl delete lease`).
    pub fn delete(&self) {
        {
            let mut s = self.state();
            s.record = None;
            s.log.push("record deleted".to_owned());
        }
        self.bump();
    }

    /// Removes the member table and keeps the record (someone removed the annotation);
    /// the record gets a new version, as any change does.
    pub fn strip(&self) {
        {
            let mut s = self.state();
            let v = s.next_version;
            if let Some((version, record, stripped)) = s.record.as_mut() {
                *version = v;
                record.table = MemberTable::default();
                *stripped = true;
                s.next_version += 1;
                s.log.push(format!("record stripped rv={v}"));
            }
        }
        self.bump();
    }

    /// The record as it is now, if it holds a table.
    pub fn snapshot(&self) -> Option<Stored> {
        match found(&self.state()) {
            Found::Table(s) => Some(s),
            Found::Absent | Found::Stripped(_) => None,
        }
    }

    /// When the store first held a table that downed or removed `key`.
    pub fn evicted_at(&self, key: &Incarnation) -> Option<Duration> {
        self.state().evicted.get(key).copied()
    }

    /// The writes since the last call.
    pub fn drain_log(&self) -> Vec<String> {
        std::mem::take(&mut self.state().log)
    }

    fn reachable(&self, s: &State) -> Result<(), StoreError> {
        if s.down || s.cut.contains(&self.pod) {
            Err(StoreError::Unavailable("simulated store outage".into()))
        } else {
            Ok(())
        }
    }

    async fn call<T>(
        &self,
        op: impl FnOnce(&mut State, &str) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // A slow store answers late: the call takes effect at once, its answer arrives
        // `delay` later (the worst case for whoever trusts the answer as fresh).
        let delay = BASE_LATENCY + self.state().delay;
        let res = {
            let mut s = self.state();
            self.reachable(&s).and_then(|()| op(&mut s, &self.pod))
        };
        tokio::time::sleep(delay).await;
        res
    }

    fn write(
        &self,
        s: &mut State,
        who: &str,
        expected: Option<&str>,
        record: &LeaseRecord,
    ) -> Result<Stored, StoreError> {
        match (expected, s.record.as_ref()) {
            (None, Some(_)) | (Some(_), None) => return Err(StoreError::Conflict),
            (Some(rv), Some((v, _, _))) if rv != v.to_string() => return Err(StoreError::Conflict),
            _ => {}
        }
        let now = clock::elapsed().unwrap_or_default();
        let before = s
            .record
            .as_ref()
            .filter(|(_, _, stripped)| !stripped)
            .map(|(_, r, _)| r.table.clone());
        note_evictions(&mut s.evicted, before.as_ref(), &record.table, now);
        let v = s.next_version;
        s.next_version += 1;
        s.record = Some((v, record.clone(), false));
        s.log.push(format!(
            "write rv={v} by {who} holder={} {}",
            record.holder.as_deref().map(short).unwrap_or("-"),
            describe(&record.table)
        ));
        Ok(Stored {
            resource_version: v.to_string(),
            record: record.clone(),
        })
    }
}

impl Default for SimStore {
    fn default() -> Self {
        Self::new()
    }
}

/// What a read finds in `s`.
fn found(s: &State) -> Found {
    match s.record.as_ref() {
        None => Found::Absent,
        Some((v, r, stripped)) => {
            let stored = Stored {
                resource_version: v.to_string(),
                record: r.clone(),
            };
            if *stripped {
                Found::Stripped(stored)
            } else {
                Found::Table(stored)
            }
        }
    }
}

/// Records, at `now`, every incarnation that `after` downs or that it drops from `before`
/// (same cluster only: another cluster's table says nothing about this one's members).
fn note_evictions(
    evicted: &mut BTreeMap<Incarnation, Duration>,
    before: Option<&MemberTable>,
    after: &MemberTable,
    now: Duration,
) {
    for m in &after.members {
        if m.status == MemberStatus::Down {
            evicted
                .entry((after.cluster.clone(), m.pod.clone(), m.incarnation.clone()))
                .or_insert(now);
        }
    }
    if let Some(b) = before.filter(|b| b.cluster == after.cluster) {
        for m in &b.members {
            let kept = after
                .members
                .iter()
                .any(|n| n.pod == m.pod && n.incarnation == m.incarnation);
            if !kept {
                evicted
                    .entry((b.cluster.clone(), m.pod.clone(), m.incarnation.clone()))
                    .or_insert(now);
            }
        }
    }
}

impl MemberStore for SimStore {
    async fn read(&self) -> Result<Found, StoreError> {
        self.call(|s, _| Ok(found(s))).await
    }

    async fn create(&self, record: &LeaseRecord) -> Result<Stored, StoreError> {
        let me = self.clone();
        self.call(move |s, who| me.write(s, who, None, record))
            .await
    }

    async fn replace(
        &self,
        resource_version: &str,
        record: &LeaseRecord,
    ) -> Result<Stored, StoreError> {
        let me = self.clone();
        self.call(move |s, who| me.write(s, who, Some(resource_version), record))
            .await
    }

    fn changes(&self) -> ChangeStream {
        let rx = self.shared.changed.subscribe();
        let me = self.clone();
        futures::stream::unfold((rx, me, true), |(mut rx, me, first)| async move {
            if !first && rx.changed().await.is_err() {
                return None;
            }
            rx.borrow_and_update();
            let (item, lag) = {
                let s = me.state();
                let item = me.reachable(&s).map(|()| found(&s));
                (item, s.watch_lag)
            };
            tokio::time::sleep(lag).await;
            Some((item, (rx, me, false)))
        })
        .take_while(|r| futures::future::ready(r.is_ok()))
        .chain(futures::stream::once(futures::future::ready(Err(
            StoreError::Unavailable("watch ended".into()),
        ))))
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(cluster: &str, members: &[(&str, MemberStatus)]) -> MemberTable {
        let mut t = MemberTable {
            cluster: cluster.into(),
            ..MemberTable::default()
        };
        for (p, s) in members {
            t.join(p, "i", "addr");
            if *s != MemberStatus::Joining {
                t.transition(p, "i", MemberStatus::Up).ok();
            }
            if *s == MemberStatus::Down {
                t.transition(p, "i", MemberStatus::Down).ok();
            }
        }
        t
    }

    #[test]
    fn downs_and_removals_within_one_cluster_are_evictions() {
        let mut ev = BTreeMap::new();
        let a = table("c", &[("a", MemberStatus::Up), ("b", MemberStatus::Up)]);
        let b = table("c", &[("a", MemberStatus::Up), ("b", MemberStatus::Down)]);
        note_evictions(&mut ev, Some(&a), &b, Duration::from_secs(1));
        let c = table("c", &[("b", MemberStatus::Down)]);
        note_evictions(&mut ev, Some(&b), &c, Duration::from_secs(2));
        let other = table("d", &[]);
        note_evictions(&mut ev, Some(&c), &other, Duration::from_secs(3));
        let key = |p: &str| ("c".to_owned(), p.to_owned(), "i".to_owned());
        assert_eq!(ev.get(&key("b")), Some(&Duration::from_secs(1)));
        assert_eq!(ev.get(&key("a")), Some(&Duration::from_secs(2)));
        assert_eq!(ev.len(), 2, "{ev:?}");
    }

    #[tokio::test]
    async fn compare_and_swap_and_outages() {
        let store = SimStore::new();
        let a = store.for_pod("a");
        assert!(matches!(a.read().await, Ok(Found::Absent)));
        let Ok(first) = a.create(&LeaseRecord::default()).await else {
            panic!("create failed");
        };
        assert!(matches!(
            a.create(&LeaseRecord::default()).await,
            Err(StoreError::Conflict)
        ));
        assert!(
            a.replace(&first.resource_version, &LeaseRecord::default())
                .await
                .is_ok()
        );
        assert!(matches!(
            a.replace(&first.resource_version, &LeaseRecord::default())
                .await,
            Err(StoreError::Conflict)
        ));
        store.set_cut("a", true);
        assert!(matches!(a.read().await, Err(StoreError::Unavailable(_))));
        assert!(store.for_pod("b").read().await.is_ok());
        store.strip();
        assert!(matches!(
            store.for_pod("b").read().await,
            Ok(Found::Stripped(_))
        ));
        store.delete();
        assert!(matches!(store.for_pod("b").read().await, Ok(Found::Absent)));
    }
}
