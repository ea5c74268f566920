//! The membership loop: the one task per node that talks to the store and keeps the
//! node's [`crate::MembershipView`] up to date. `state.rs` holds every decision as plain
//! data and functions of their inputs (`MemberState`, unit-tested from `Instant`s);
//! `driver.rs` is the thin async loop that feeds it and carries out its writes; `leave.rs`
//! is the graceful leave, run by the same loop.
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
//!   a node that follows a cluster stops serving and **restores** the cluster with
//!   `epoch + 1` and itself, as a new incarnation, its only member (create, or CAS over
//!   the stripped record: one restorer wins; everybody else finds itself out of the
//!   higher epoch and rejoins as a new incarnation, so no incarnation is ever Up in two
//!   epochs and a Down lost with the old Lease cannot come back); a fresh node never forms
//!   a new cluster before it asked every peer pod whether it follows one, nor while one
//!   does, and otherwise only on a cold start, or after a restore grace with the Lease
//!   still missing;
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

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::oneshot;

mod driver;
mod leave;
mod state;

pub(crate) use driver::{Driver, probe_loop};

use crate::member_key::MemberKey;
use crate::probe::PingReply;

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
/// draws its ids from its [`crate::Sources`].
pub fn new_incarnation() -> String {
    crate::seams::random_id()
}

/// One probe's outcome, sent from the prober task to the loop.
#[derive(Debug)]
pub(crate) struct ProbeResult {
    pub(crate) key: MemberKey,
    pub(crate) sent_at: Instant,
    pub(crate) reply: Option<PingReply>,
    /// A probe of a pod outside the table (a fresh node asking whether anybody follows
    /// a cluster), answered by whatever incarnation runs there.
    pub(crate) survey: bool,
}
