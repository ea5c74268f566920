//! The graceful leave (SIGTERM): Leaving in the table (releasing the coordinator lease),
//! then the handover future *beside* the loop — the node keeps reading the store,
//! following the watch and probing, so the table it publishes to the actor runtime stays
//! current while it drains — then out of the table.

use std::time::Instant;

use futures::future::BoxFuture;
use troupe_contract::MemberStatus;

use super::LeaveReport;
use super::driver::Driver;
use crate::seams;
use crate::store::{LeaseRecord, MemberStore, StoreError};
use crate::view::BootstrapState;

impl<S: MemberStore> Driver<S> {
    /// Graceful leave: Leaving (and release the lease), hand over while still following
    /// the table, remove, done — within `deadline`.
    pub(super) async fn leave(
        &mut self,
        mut handover: BoxFuture<'static, ()>,
        deadline: Instant,
        tick: &mut tokio::time::Interval,
    ) -> LeaveReport {
        let start = seams::now();
        self.health.set_draining(true);
        self.state.leaving = Some(BootstrapState::Leaving);
        self.publish();
        tracing::info!(me = %self.state.me, "leaving the cluster");
        let me = self.state.me.clone();
        let my_id = self.state.my_id();
        let wall = self.state.sources.wall_ms.clone();
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
                dirty | release_lease(record, &my_id, wall())
            })
            .await;
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
            self.publish();
        }
        let removed = self
            .cas_until(deadline, |record| {
                let dirty = record.table.remove(&me.pod, &me.incarnation);
                dirty | release_lease(record, &my_id, wall())
            })
            .await;
        self.state.leaving = Some(BootstrapState::Left);
        self.publish();
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
        let tick = self.timing().tick;
        while seams::now() < deadline {
            if (self.state.stored.is_none() || self.state.need_read) && !self.read().await {
                tokio::time::sleep(tick).await;
                continue;
            }
            let Some(stored) = self.state.stored.clone() else {
                return true;
            };
            let mut record = stored.record.clone();
            if !change(&mut record) {
                return true;
            }
            let sent = seams::now();
            let store = self.store.clone();
            match self
                .call(store.replace(&stored.resource_version, &record))
                .await
            {
                Ok(new) => {
                    self.on_written(new, sent);
                    return true;
                }
                Err(StoreError::Conflict) => self.state.need_read = true,
                Err(e) => {
                    self.store_failed(&e);
                    self.state.need_read = true;
                    tokio::time::sleep(tick).await;
                }
            }
        }
        false
    }
}

/// Releases the coordinator lease in `record` if `my_id` holds it (stamped `now_ms`, so
/// observers see the change); returns whether the record changed.
fn release_lease(record: &mut LeaseRecord, my_id: &str, now_ms: i64) -> bool {
    if record.holder.as_deref() != Some(my_id) {
        return false;
    }
    record.holder = None;
    record.renew_ms = now_ms;
    true
}
