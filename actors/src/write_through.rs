//! Write-through of one activation's state to a durable [`StateStore`] (the output gate).
//!
//! The activation task (`activation::run`) owns one [`WriteThrough`] when the runtime has
//! a store: [`load`] at activation, [`WriteThrough::commit`] after every turn, before the
//! reply is sent. The turn's reply leaves only with its state durable; a turn whose write
//! fails is answered with an error and either rolled back (the actor is rebuilt from the
//! last state written) or ends the activation (a fenced conflict, or a store that failed
//! in a way that leaves unknown what it wrote: the next activation loads what is stored).
//!
//! ```text
//!  turn ─► turn_state() ─► unchanged ─────────────────────────► Kept (reply)
//!                     └──► changed ─► over the limit? ─yes──────► RolledBack(413)
//!                                       └ write(v, owner) ─ Ok ─► Kept (v + 1)
//!                                              ├ Conflict ──────► Stop(503)
//!                                              ├ TooLarge ──────► RolledBack(413)
//!                                              └ Unavailable ───► Stop(503, Retry-After)
//! ```
//!
//! [`generation`] is the pure rule for the generation an activation runs on under a store.

use std::sync::Arc;

use bytes::Bytes;

use crate::{
    activation::Generation,
    behavior::{Actor, TurnState},
    error::DeliveryError,
    metrics::TypeStats,
    placement::TableOrder,
    store::{Conflict, StateStore, StateWrite, StoreError},
};

/// The last state of one activation known durable, and where to write the next.
#[derive(Debug)]
pub(crate) struct WriteThrough {
    store: Arc<dyn StateStore>,
    actor_type: Arc<str>,
    id: Arc<str>,
    /// Version stored by the last write (or load); 0: none.
    version: u64,
    /// This activation's generation, the owner of its writes.
    owner: Generation,
    /// The state at `version` (empty: none).
    committed: Bytes,
}

/// What became of a turn's state.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Durable (or unchanged): send the reply.
    Kept,
    /// Not written, nothing changed in the store: answer this error and rebuild the actor
    /// from [`WriteThrough::committed`].
    RolledBack(DeliveryError),
    /// Not written, or not known: answer this error and end the activation.
    Stop(DeliveryError),
}

/// The generation an activation under table `order` runs on, given the newest in-memory
/// state it was handed (`start`) and the stored owner: the successor of the newer of the
/// two, like [`Generation::next`]. A stored owner activated under a newer table than
/// `order` means a newer owner wrote the state: this node's table is behind, refuse.
pub fn generation(
    start: Option<Generation>,
    stored_owner: Option<Generation>,
    order: TableOrder,
) -> Result<Generation, Generation> {
    if let Some(o) = stored_owner
        && (o.epoch, o.version) > order
    {
        return Err(o);
    }
    Ok(Generation::next(start.max(stored_owner), order))
}

/// Loads the state of `(actor_type, id)` for an activation under `order`: its write-through
/// handle, the state to activate with, and the activation's generation.
pub(crate) async fn load(
    store: Arc<dyn StateStore>,
    actor_type: Arc<str>,
    id: Arc<str>,
    start: Option<Generation>,
    order: TableOrder,
) -> Result<(WriteThrough, Option<Bytes>, Generation), StoreError> {
    let stored = store.load(&actor_type, &id).await?;
    let owner = generation(start, stored.as_ref().map(|s| s.owner), order).map_err(|o| {
        StoreError::Conflict(Conflict {
            stored_version: stored.as_ref().map_or(0, |s| s.version),
            stored_owner: Some(o),
        })
    })?;
    let (version, committed) = stored.map_or((0, Bytes::new()), |s| (s.version, s.state));
    let state = (!committed.is_empty()).then(|| committed.clone());
    Ok((
        WriteThrough {
            store,
            actor_type,
            id,
            version,
            owner,
            committed,
        },
        state,
        owner,
    ))
}

/// The client's error for a store failure.
pub(crate) fn delivery_error(actor: &str, e: &StoreError) -> DeliveryError {
    match e {
        StoreError::TooLarge { .. } => DeliveryError::TooLarge(format!("{actor}: {e}")),
        StoreError::Conflict(_) => DeliveryError::Unavailable(format!(
            "{actor} is being moved to another node ({e}); nothing was changed"
        )),
        StoreError::Unavailable { .. } => {
            DeliveryError::Unavailable(format!("{actor}: {e}; nothing was acknowledged"))
        }
    }
}

/// Counts a store failure in the type's metrics.
pub(crate) fn count(stats: &TypeStats, e: &StoreError) {
    match e {
        StoreError::Conflict(_) => stats.state_conflicts.inc(),
        StoreError::TooLarge { .. } => stats.state_too_large.inc(),
        StoreError::Unavailable { .. } => stats.state_unavailable.inc(),
    }
}

impl WriteThrough {
    /// The last durable state (empty: none), to rebuild the actor from after a rollback.
    pub(crate) fn committed(&self) -> Option<Bytes> {
        (!self.committed.is_empty()).then(|| self.committed.clone())
    }

    /// Writes the state the turn left, if it changed (taken with a snapshot when the
    /// actor does not track it, [`TurnState::Unknown`]).
    pub(crate) async fn commit(&mut self, actor: &mut dyn Actor, stats: &TypeStats) -> Outcome {
        let state = match actor.turn_state() {
            TurnState::Unchanged => return Outcome::Kept,
            TurnState::Changed(s) => s,
            TurnState::Unknown => match crate::activation::snapshot(actor).await {
                Ok(s) => s,
                Err(e) => {
                    return Outcome::RolledBack(DeliveryError::Actor(crate::ActorError::Failed(
                        format!("the actor's state could not be read: {e}"),
                    )));
                }
            },
        };
        if state == self.committed {
            return Outcome::Kept;
        }
        let actor_name = format!("{}/{}", self.actor_type, self.id);
        let limit = self.store.max_state_bytes();
        if state.len() > limit {
            let e = StoreError::TooLarge {
                size: state.len(),
                limit,
            };
            count(stats, &e);
            return Outcome::RolledBack(delivery_error(&actor_name, &e));
        }
        let started = crate::time::now();
        let write = StateWrite {
            actor_type: self.actor_type.clone(),
            id: self.id.clone(),
            expected: self.version,
            owner: self.owner,
            state: state.clone(),
        };
        match self.store.write(write).await {
            Ok(()) => {
                stats.state_writes.inc();
                stats
                    .state_write_seconds
                    .observe(crate::time::since(started).as_secs_f64());
                self.version += 1;
                self.committed = state;
                Outcome::Kept
            }
            Err(e) => {
                count(stats, &e);
                match e {
                    StoreError::TooLarge { .. } => {
                        Outcome::RolledBack(delivery_error(&actor_name, &e))
                    }
                    StoreError::Conflict(_) => {
                        tracing::warn!(actor = %actor_name, version = self.version, owner = ?self.owner, error = %e, "fenced write refused: another activation of this actor wrote; this one stops");
                        Outcome::Stop(delivery_error(&actor_name, &e))
                    }
                    StoreError::Unavailable { .. } => {
                        tracing::warn!(actor = %actor_name, error = %e, "state write failed; the activation stops and the next one loads what is stored");
                        Outcome::Stop(delivery_error(&actor_name, &e))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(epoch: u64, version: u64, counter: u64) -> Generation {
        Generation {
            epoch,
            version,
            counter,
        }
    }

    #[test]
    fn an_activation_continues_the_stored_lineage() {
        // Nothing stored: the first generation of the table.
        assert_eq!(generation(None, None, (0, 3)), Ok(g(0, 3, 1)));
        // Stored by an owner under the same table (passivated, activated again).
        assert_eq!(generation(None, Some(g(0, 3, 1)), (0, 3)), Ok(g(0, 3, 2)));
        // Stored under an older table: the new table's first generation, above it.
        assert_eq!(generation(None, Some(g(0, 2, 9)), (0, 3)), Ok(g(0, 3, 1)));
        // A restored epoch is above every version of the one before.
        assert_eq!(generation(None, Some(g(0, 40, 2)), (1, 1)), Ok(g(1, 1, 1)));
    }

    #[test]
    fn a_later_life_of_the_cluster_activates_over_an_earlier_one() {
        // Durable seeds 29 and 422: a fresh cluster ran on epoch 0 under owners of epoch
        // 5 and was refused; a life's first epoch is its formation time, above them.
        let earlier = g(
            troupe_contract::MemberTable::first_epoch_at(1_000) + 5,
            40,
            2,
        );
        let later = (troupe_contract::MemberTable::first_epoch_at(61_000), 1);
        assert_eq!(
            generation(None, Some(earlier), later),
            Ok(g(later.0, later.1, 1))
        );
    }

    #[test]
    fn a_node_behind_the_writer_table_refuses_to_activate() {
        assert_eq!(generation(None, Some(g(0, 5, 1)), (0, 4)), Err(g(0, 5, 1)));
        assert_eq!(
            generation(Some(g(0, 1, 1)), Some(g(1, 1, 1)), (0, 9)),
            Err(g(1, 1, 1))
        );
    }
}
