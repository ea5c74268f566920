//! Test doubles for the multi-node tests on loopback: an in-memory [`MemberStore`] with
//! the same compare-and-swap semantics as the Lease, and a [`Network`] that cuts nodes off.
//!
//! **Not for production.** The end-to-end tests run against real Kubernetes; this module
//! exists so that five nodes can form, join, leave, die and be partitioned in one test
//! process in well under a second.
//!
//! ```text
//!   MemoryStore (shared record + version) ◄── handle() per node, each with its own
//!                                             "cut" switch (store unreachable)
//!   Network (set of cut pods) ◄── NetProber: a probe fails if either end is cut
//! ```

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::watch;
use troupe_contract::{Member, MemberTable};

use crate::probe::{PingReply, ProbeError, Prober};
use crate::store::{ChangeStream, Found, LeaseRecord, MemberStore, StoreError, Stored};

/// The stored record: its version, the record, and whether its table was stripped.
#[derive(Debug)]
struct Entry {
    version: u64,
    record: LeaseRecord,
    stripped: bool,
}

#[derive(Debug)]
struct Shared {
    record: Mutex<Option<Entry>>,
    changed: watch::Sender<u64>,
    next_version: AtomicU64,
    writes: AtomicU64,
}

/// An in-memory member store. Clones share the record and the cut switch; [`handle`]
/// makes a handle with its own switch.
///
/// [`handle`]: MemoryStore::handle
#[derive(Clone, Debug)]
pub struct MemoryStore {
    shared: Arc<Shared>,
    cut: Arc<AtomicBool>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                record: Mutex::new(None),
                changed: watch::Sender::new(0),
                next_version: AtomicU64::new(1),
                writes: AtomicU64::new(0),
            }),
            cut: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Another handle on the same record, with its own cut switch.
    pub fn handle(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            cut: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Cuts this handle off the store (every call fails) or reconnects it.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
        self.shared.changed.send_modify(|v| *v += 1);
    }

    /// The stored record, whatever the cut switch says (a stripped one with an empty
    /// table).
    pub fn snapshot(&self) -> Option<Stored> {
        match self.found() {
            Found::Absent => None,
            Found::Stripped(s) | Found::Table(s) => Some(s),
        }
    }

    /// What a read finds, whatever the cut switch says.
    pub fn found(&self) -> Found {
        let Ok(guard) = self.shared.record.lock() else {
            return Found::Absent;
        };
        match guard.as_ref() {
            None => Found::Absent,
            Some(e) => {
                let stored = Stored {
                    resource_version: e.version.to_string(),
                    record: e.record.clone(),
                };
                if e.stripped {
                    Found::Stripped(Stored {
                        record: LeaseRecord {
                            table: MemberTable::default(),
                            ..stored.record
                        },
                        ..stored
                    })
                } else {
                    Found::Table(stored)
                }
            }
        }
    }

    /// Deletes the record (what `kubectl delete lease` does).
    pub fn delete(&self) {
        if let Ok(mut g) = self.shared.record.lock() {
            *g = None;
        }
        self.shared.changed.send_modify(|c| *c += 1);
    }

    /// Removes the member table from the record and keeps the rest (what removing the
    /// Lease annotation does).
    pub fn strip(&self) {
        if let Ok(mut g) = self.shared.record.lock()
            && let Some(e) = g.as_mut()
        {
            e.version = self.shared.next_version.fetch_add(1, Ordering::SeqCst);
            e.record.table = MemberTable::default();
            e.stripped = true;
        }
        self.shared.changed.send_modify(|c| *c += 1);
    }

    /// The stored member table; `None` when the record is absent or has no table.
    pub fn table(&self) -> Option<MemberTable> {
        match self.found() {
            Found::Table(s) => Some(s.record.table),
            Found::Absent | Found::Stripped(_) => None,
        }
    }

    /// Successful writes so far (creates and replaces).
    pub fn writes(&self) -> u64 {
        self.shared.writes.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.cut.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("cut off (test partition)".into()))
        } else {
            Ok(())
        }
    }

    fn write(&self, expected: Option<&str>, record: &LeaseRecord) -> Result<Stored, StoreError> {
        self.check()?;
        let mut guard = self
            .shared
            .record
            .lock()
            .map_err(|_| StoreError::Unavailable("poisoned".into()))?;
        match (expected, guard.as_ref()) {
            (None, Some(_)) => return Err(StoreError::Conflict),
            (Some(_), None) => return Err(StoreError::Conflict),
            (Some(rv), Some(e)) if rv != e.version.to_string() => {
                return Err(StoreError::Conflict);
            }
            _ => {}
        }
        let v = self.shared.next_version.fetch_add(1, Ordering::SeqCst);
        *guard = Some(Entry {
            version: v,
            record: record.clone(),
            stripped: false,
        });
        drop(guard);
        self.shared.writes.fetch_add(1, Ordering::SeqCst);
        self.shared.changed.send_modify(|c| *c += 1);
        Ok(Stored {
            resource_version: v.to_string(),
            record: record.clone(),
        })
    }
}

impl MemberStore for MemoryStore {
    async fn read(&self) -> Result<Found, StoreError> {
        self.check()?;
        Ok(self.found())
    }

    async fn create(&self, record: &LeaseRecord) -> Result<Stored, StoreError> {
        self.write(None, record)
    }

    async fn replace(
        &self,
        resource_version: &str,
        record: &LeaseRecord,
    ) -> Result<Stored, StoreError> {
        self.write(Some(resource_version), record)
    }

    fn changes(&self) -> ChangeStream {
        let rx = self.shared.changed.subscribe();
        let me = self.clone();
        futures::stream::unfold((rx, me, true), |(mut rx, me, first)| async move {
            if !first && rx.changed().await.is_err() {
                return None;
            }
            rx.borrow_and_update();
            if let Err(e) = me.check() {
                // A broken watch ends; the caller re-reads and subscribes again.
                return Some((Err(e), (rx, me, false)));
            }
            Some((Ok(me.found()), (rx, me, false)))
        })
        .take_while(|r| futures::future::ready(r.is_ok()))
        .chain(futures::stream::once(futures::future::ready(Err(
            StoreError::Unavailable("watch ended".into()),
        ))))
        .boxed()
    }
}

/// The set of pods cut off from their peers, shared by the [`NetProber`]s of a test.
#[derive(Clone, Debug, Default)]
pub struct Network {
    cut: Arc<Mutex<HashSet<String>>>,
}

impl Network {
    /// Cuts `pod` off (or reconnects it): probes from or to it fail.
    pub fn set_cut(&self, pod: &str, cut: bool) {
        if let Ok(mut g) = self.cut.lock() {
            if cut {
                g.insert(pod.to_owned());
            } else {
                g.remove(pod);
            }
        }
    }

    fn is_cut(&self, pod: &str) -> bool {
        self.cut.lock().map(|g| g.contains(pod)).unwrap_or(false)
    }
}

/// A [`Prober`] that fails when either end is cut off in its [`Network`].
#[derive(Clone, Debug)]
pub struct NetProber<P> {
    inner: P,
    me: String,
    network: Network,
}

impl<P> NetProber<P> {
    /// Wraps `inner` for the node of pod `me`.
    pub fn new(inner: P, me: impl Into<String>, network: Network) -> Self {
        Self {
            inner,
            me: me.into(),
            network,
        }
    }
}

impl<P: Prober> Prober for NetProber<P> {
    async fn probe(&self, target: &Member) -> Result<PingReply, ProbeError> {
        if self.network.is_cut(&self.me) || self.network.is_cut(&target.pod) {
            return Err(ProbeError::NoAnswer {
                addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                reason: "cut off (test partition)".into(),
            });
        }
        self.inner.probe(target).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn compare_and_swap_semantics() {
        let store = MemoryStore::new();
        let a = store.handle();
        let b = store.handle();
        assert!(matches!(a.read().await, Ok(Found::Absent)));
        let created = a.create(&LeaseRecord::default()).await;
        let Ok(created) = created else {
            panic!("create failed: {created:?}");
        };
        assert!(matches!(
            b.create(&LeaseRecord::default()).await,
            Err(StoreError::Conflict)
        ));
        let rec = LeaseRecord {
            holder: Some("b".into()),
            ..LeaseRecord::default()
        };
        let replaced = b.replace(&created.resource_version, &rec).await;
        assert!(replaced.is_ok());
        assert!(matches!(
            a.replace(&created.resource_version, &rec).await,
            Err(StoreError::Conflict)
        ));
        b.set_cut(true);
        assert!(matches!(b.read().await, Err(StoreError::Unavailable(_))));
        assert!(a.read().await.is_ok());
        assert_eq!(store.writes(), 2);
    }

    #[tokio::test]
    async fn a_stripped_record_exists_and_is_restored_by_compare_and_swap() {
        let store = MemoryStore::new();
        assert!(store.create(&LeaseRecord::default()).await.is_ok());
        store.strip();
        let Ok(Found::Stripped(s)) = store.read().await else {
            panic!("not stripped: {:?}", store.found());
        };
        assert!(matches!(
            store.create(&LeaseRecord::default()).await,
            Err(StoreError::Conflict)
        ));
        assert!(store.replace(&s.resource_version, &s.record).await.is_ok());
        assert!(matches!(store.read().await, Ok(Found::Table(_))));
        store.delete();
        assert!(matches!(store.read().await, Ok(Found::Absent)));
        assert!(store.create(&LeaseRecord::default()).await.is_ok());
    }

    #[tokio::test]
    async fn changes_start_with_the_current_record_and_follow_writes() {
        let store = MemoryStore::new();
        let mut changes = store.changes();
        assert!(matches!(changes.next().await, Some(Ok(Found::Absent))));
        assert!(store.create(&LeaseRecord::default()).await.is_ok());
        assert!(matches!(changes.next().await, Some(Ok(Found::Table(_)))));
        store.strip();
        assert!(matches!(changes.next().await, Some(Ok(Found::Stripped(_)))));
        store.delete();
        assert!(matches!(changes.next().await, Some(Ok(Found::Absent))));
        store.set_cut(true);
        assert!(matches!(changes.next().await, Some(Err(_))));
        assert!(changes.next().await.is_none());
    }
}
