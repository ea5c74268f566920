//! The glue between membership and the actor runtime that hosts it, shared by the
//! `troupe-node` binary and the deterministic simulation: one feeding loop and one
//! hand-over, so both run exactly the same sequence.

use std::time::Duration;

use tokio::sync::watch;
use troupe_actors::{ActorRuntime, DrainReport};

use crate::MembershipView;
use crate::health::Health;

/// Feeds every membership change to `actors` until membership stops (the node leaves):
/// the draining flag first (a Leaving node has no serving deadline, and its actors must
/// finish their mailboxes rather than stop at once), then the member table, then the
/// serving deadline (the runtime checks it on every delivery and stops its actors when it
/// passes). Draining is set outside membership, so the loop looks again at least every
/// second.
pub async fn feed_actors(
    mut view: watch::Receiver<MembershipView>,
    health: Health,
    actors: ActorRuntime,
) {
    loop {
        {
            let v = view.borrow_and_update();
            actors.set_draining(health.is_draining());
            actors.update_members(&v.table);
            actors.set_serving_until(v.serving_until.filter(|_| v.serving));
        }
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(1), view.changed()).await {
            break; // membership stopped: the node is leaving
        }
    }
}

/// The hand-over of a graceful leave (`Node::leave`'s `handover`): stop taking client
/// work, then drain within `leave_timeout` less two seconds (the rest is for leaving the
/// table).
pub async fn hand_over(actors: ActorRuntime, leave_timeout: Duration) -> DrainReport {
    actors.set_accepting(false);
    actors
        .drain(leave_timeout.saturating_sub(Duration::from_secs(2)))
        .await
}
