//! Durable actor state: the [`StateStore`] seam and its fencing rule.
//!
//! Without a store (the `memory` mode, the default) an actor's state lives only in its
//! node's memory and follows the actor by hand-over; a crash loses it (counted). With a
//! store, every turn that changes an actor's state is written through before its reply
//! (or `tell` acknowledgement) leaves the node, and every activation loads the state:
//!
//! ```text
//!  activation ─► load(type, id) ─► StoredState { version v, owner g₀, state }
//!      │             (owner's table ahead of ours? ─► stop: a newer owner wrote it)
//!      ▼
//!  turn n: handle ─► state changed? ─► write(expected v, owner g, state') ─► reply
//!                                          ├ Ok           v := v + 1
//!                                          ├ Conflict     reply 503, stop the activation
//!                                          ├ TooLarge     reply 413, roll the actor back
//!                                          └ Unavailable  reply 503 + Retry-After, stop
//! ```
//!
//! **Fencing.** Every stored state carries its `version` (1 for the first write, + 1 for
//! each one after) and the [`Generation`] of the activation that wrote it (its *owner*:
//! the member-table epoch and version it was activated under, then a counter). A write
//! names the version it read and its own generation, and lands only when
//! ([`fence`]): the stored version is still the one it read (no other activation wrote in
//! between), and its generation is not older than the stored owner's (an owner that lost
//! the actor to a newer one cannot write after it). A refused write means another
//! activation exists or existed: the writer stops (its state is in the store, written by
//! the other) and the conflict is counted (`troupe_state_errors_total{kind="conflict"}`). Two
//! activations of one actor can therefore never both have a write acknowledged on the same
//! version: double activation may fail requests, never lose an acknowledged one.
//!
//! This module owns the trait, the pure fencing rule and [`InMemoryStore`], which applies
//! exactly that rule without I/O or time (unit tests, the deterministic simulation). The
//! PostgreSQL store lives in the node (`troupe-node`, `pg_store`), which is an edge.
//! Not here: when to write (the activation task, `activation`), group commit (a store's
//! own business).

use std::{
    collections::BTreeMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;

use crate::activation::Generation;

/// A boxed future returned by a [`StateStore`].
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A state as stored: its bytes, its version and the generation of the activation that
/// wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredState {
    /// Writes so far (1 after the first).
    pub version: u64,
    /// The writer's generation.
    pub owner: Generation,
    /// The actor's state (may be empty).
    pub state: Bytes,
}

/// One conditional write ([`StateStore::write`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateWrite {
    /// Actor type.
    pub actor_type: Arc<str>,
    /// Actor id.
    pub id: Arc<str>,
    /// The version the writer read (0: none stored); the write stores `expected + 1`.
    pub expected: u64,
    /// The writer's generation.
    pub owner: Generation,
    /// The new state.
    pub state: Bytes,
}

/// Why a write found the stored state changed under it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The version stored now (0: none).
    pub stored_version: u64,
    /// The stored owner, if any.
    pub stored_owner: Option<Generation>,
}

/// Why a store call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The fence refused the write: another activation wrote, or a newer owner did.
    #[error(
        "fenced write refused: stored version {} (owner {:?}); another activation of this actor wrote it",
        .0.stored_version, .0.stored_owner
    )]
    Conflict(Conflict),
    /// The state is larger than the store takes; nothing was written.
    #[error("state of {size} bytes is over the store's limit of {limit} bytes")]
    TooLarge {
        /// Bytes of the refused state.
        size: usize,
        /// The store's limit.
        limit: usize,
    },
    /// The store cannot be reached or is too slow, or its queue is full; nothing is known
    /// to be written. Retry after the given time.
    #[error("state store unavailable: {reason}; retry later")]
    Unavailable {
        /// What failed, for the log and the client.
        reason: String,
        /// Suggested wait before retrying.
        retry_after: Duration,
    },
}

/// The fencing rule every store applies to a write, given what it stores now
/// (`(version, owner)`, `None`: nothing): the stored version must be the one the writer
/// read, and the writer must not be older than the stored owner.
pub fn fence(
    stored: Option<(u64, Generation)>,
    expected: u64,
    owner: Generation,
) -> Result<(), Conflict> {
    let (version, stored_owner) = match stored {
        Some((v, o)) => (v, Some(o)),
        None => (0, None),
    };
    if version == expected && stored_owner.is_none_or(|o| o <= owner) {
        Ok(())
    } else {
        Err(Conflict {
            stored_version: version,
            stored_owner,
        })
    }
}

/// Where actor states are kept durably. Implementations must apply [`fence`] atomically
/// with the write, and must not answer `Ok` before the write is durable.
pub trait StateStore: Send + Sync + fmt::Debug + 'static {
    /// The stored state of `(actor_type, id)`, if any.
    fn load(
        &self,
        actor_type: &str,
        id: &str,
    ) -> StoreFuture<Result<Option<StoredState>, StoreError>>;

    /// Writes `w.state` as version `w.expected + 1` if [`fence`] allows it.
    fn write(&self, w: StateWrite) -> StoreFuture<Result<(), StoreError>>;

    /// Deletes the state of `(actor_type, id)` if it still is `expected` and `owner` passes
    /// the fence (`expected` 0: nothing to delete, `Ok`).
    fn delete(
        &self,
        actor_type: &str,
        id: &str,
        expected: u64,
        owner: Generation,
    ) -> StoreFuture<Result<(), StoreError>>;

    /// Largest state it takes (bytes).
    fn max_state_bytes(&self) -> usize;

    /// A short name for logs and metrics (`memory`, `postgres`).
    fn kind(&self) -> &'static str;
}

/// A store in this process's memory with exactly the fencing of a durable one: no I/O, no
/// clock, deterministic. For tests and the deterministic simulation (it survives a
/// runtime dropped and rebuilt, like a database survives a pod). It can be made
/// unavailable ([`InMemoryStore::set_available`]) to exercise the fault paths.
#[derive(Clone, Debug)]
pub struct InMemoryStore {
    inner: Arc<Mutex<MemoryInner>>,
    max_state_bytes: usize,
}

#[derive(Debug, Default)]
struct MemoryInner {
    rows: BTreeMap<(Box<str>, Box<str>), StoredState>,
    unavailable: bool,
    writes: u64,
}

impl InMemoryStore {
    /// An empty store taking states up to `max_state_bytes`.
    pub fn new(max_state_bytes: usize) -> Self {
        Self {
            inner: Arc::default(),
            max_state_bytes,
        }
    }

    /// Makes every call fail with [`StoreError::Unavailable`] (`false`) or work again.
    pub fn set_available(&self, available: bool) {
        crate::sync::lock(&self.inner).unavailable = !available;
    }

    /// The stored state of `(actor_type, id)` (a synchronous read for tests and oracles).
    pub fn get(&self, actor_type: &str, id: &str) -> Option<StoredState> {
        crate::sync::lock(&self.inner)
            .rows
            .get(&(actor_type.into(), id.into()))
            .cloned()
    }

    /// Writes that landed so far.
    pub fn writes(&self) -> u64 {
        crate::sync::lock(&self.inner).writes
    }

    fn unavailable() -> StoreError {
        StoreError::Unavailable {
            reason: "the in-memory store was made unavailable".into(),
            retry_after: Duration::from_secs(1),
        }
    }

    fn apply(&self, w: StateWrite) -> Result<(), StoreError> {
        if w.state.len() > self.max_state_bytes {
            return Err(StoreError::TooLarge {
                size: w.state.len(),
                limit: self.max_state_bytes,
            });
        }
        let mut inner = crate::sync::lock(&self.inner);
        if inner.unavailable {
            return Err(Self::unavailable());
        }
        let key = (Box::from(&*w.actor_type), Box::from(&*w.id));
        let stored = inner.rows.get(&key).map(|s| (s.version, s.owner));
        fence(stored, w.expected, w.owner).map_err(StoreError::Conflict)?;
        inner.rows.insert(
            key,
            StoredState {
                version: w.expected + 1,
                owner: w.owner,
                state: w.state,
            },
        );
        inner.writes += 1;
        Ok(())
    }
}

impl StateStore for InMemoryStore {
    fn load(
        &self,
        actor_type: &str,
        id: &str,
    ) -> StoreFuture<Result<Option<StoredState>, StoreError>> {
        let inner = crate::sync::lock(&self.inner);
        let r = if inner.unavailable {
            Err(Self::unavailable())
        } else {
            Ok(inner.rows.get(&(actor_type.into(), id.into())).cloned())
        };
        Box::pin(std::future::ready(r))
    }

    fn write(&self, w: StateWrite) -> StoreFuture<Result<(), StoreError>> {
        Box::pin(std::future::ready(self.apply(w)))
    }

    fn delete(
        &self,
        actor_type: &str,
        id: &str,
        expected: u64,
        owner: Generation,
    ) -> StoreFuture<Result<(), StoreError>> {
        let mut inner = crate::sync::lock(&self.inner);
        let r = if inner.unavailable {
            Err(Self::unavailable())
        } else if expected == 0 {
            Ok(())
        } else {
            let key = (Box::from(actor_type), Box::from(id));
            let stored = inner.rows.get(&key).map(|s| (s.version, s.owner));
            match fence(stored, expected, owner) {
                Ok(()) => {
                    inner.rows.remove(&key);
                    Ok(())
                }
                Err(c) => Err(StoreError::Conflict(c)),
            }
        };
        Box::pin(std::future::ready(r))
    }

    fn max_state_bytes(&self) -> usize {
        self.max_state_bytes
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(version: u64, counter: u64) -> Generation {
        Generation {
            epoch: 0,
            version,
            counter,
        }
    }

    fn write(expected: u64, owner: Generation, s: &'static str) -> StateWrite {
        StateWrite {
            actor_type: "counter".into(),
            id: "a".into(),
            expected,
            owner,
            state: Bytes::from_static(s.as_bytes()),
        }
    }

    fn now<T>(f: StoreFuture<T>) -> T {
        futures::executor::block_on(f)
    }

    #[test]
    fn the_fence_wants_the_version_read_and_an_owner_not_older() {
        let g1 = generation(1, 1);
        let g2 = generation(2, 1);
        assert_eq!(fence(None, 0, g1), Ok(()));
        assert!(
            fence(None, 1, g1).is_err(),
            "nothing stored, version 1 expected"
        );
        assert_eq!(fence(Some((3, g1)), 3, g1), Ok(()));
        assert_eq!(
            fence(Some((3, g1)), 3, g2),
            Ok(()),
            "a newer owner may write"
        );
        assert_eq!(
            fence(Some((3, g2)), 3, g1),
            Err(Conflict {
                stored_version: 3,
                stored_owner: Some(g2)
            }),
            "an owner older than the one stored may not"
        );
        assert!(fence(Some((4, g1)), 3, g1).is_err(), "written in between");
    }

    #[test]
    fn two_activations_on_one_version_cannot_both_write() {
        let store = InMemoryStore::new(1024);
        let (old, new) = (generation(1, 1), generation(2, 1));
        now(store.write(write(0, old, "1"))).expect("first write");
        // Both read version 1; the new owner writes first.
        now(store.write(write(1, new, "2"))).expect("new owner");
        let refused = now(store.write(write(1, old, "2'")));
        assert!(matches!(refused, Err(StoreError::Conflict(_))));
        // The old owner reloads version 2 but is still older than its writer.
        assert!(matches!(
            now(store.write(write(2, old, "3'"))),
            Err(StoreError::Conflict(_))
        ));
        let stored = store.get("counter", "a").expect("stored");
        assert_eq!((stored.version, stored.owner), (2, new));
        assert_eq!(stored.state, Bytes::from_static(b"2"));
        assert_eq!(store.writes(), 2);
    }

    #[test]
    fn too_large_and_unavailable_write_nothing() {
        let store = InMemoryStore::new(2);
        let g = generation(1, 1);
        assert_eq!(
            now(store.write(write(0, g, "abc"))),
            Err(StoreError::TooLarge { size: 3, limit: 2 })
        );
        store.set_available(false);
        assert!(matches!(
            now(store.write(write(0, g, "a"))),
            Err(StoreError::Unavailable { .. })
        ));
        assert!(matches!(
            now(store.load("counter", "a")),
            Err(StoreError::Unavailable { .. })
        ));
        store.set_available(true);
        assert_eq!(now(store.load("counter", "a")), Ok(None));
        now(store.write(write(0, g, "a"))).expect("back");
    }

    #[test]
    fn delete_is_fenced_too() {
        let store = InMemoryStore::new(16);
        let (old, new) = (generation(1, 1), generation(2, 1));
        now(store.write(write(0, new, "x"))).expect("write");
        assert!(now(store.delete("counter", "a", 1, old)).is_err());
        assert!(now(store.delete("counter", "a", 2, new)).is_err());
        now(store.delete("counter", "a", 1, new)).expect("delete");
        assert_eq!(store.get("counter", "a"), None);
    }
}
