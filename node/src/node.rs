//! [`Node`]: one running membership — the loop, the prober, the health flags, the metrics
//! registry — and the handles other components subscribe to.
//!
//! ```text
//!                 Node::start(identity, timing, store, prober, pods, registry)
//!                     │ spawns
//!        ┌────────────┴─────────────┐
//!   membership loop            prober task
//!        │ publishes
//!        ├─► watch<MembershipView>  (node.view())    ─► /cluster/*, actor runtime
//!        ├─► watch<MemberTable>     (node.members()) ─► placement
//!        └─► Health                 (node.health())  ─► /ready
//! ```
//!
//! The registry is passed in so that the actor runtime can register its metrics in the
//! same one. [`Node::leave`] is the graceful exit (SIGTERM); dropping a node stops it
//! without leaving (what a SIGKILL does).

use std::future::Future;
use std::time::Duration;

use axum::Router;
use futures::FutureExt;
use prometheus::Registry;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use troupe_contract::MemberTable;

use crate::discovery::PodSet;
use crate::health::Health;
use crate::http::{self, Management};
use crate::member_key::MemberKey;
use crate::membership::{self, Command, Driver, Identity, LeaveReport};
use crate::metrics::Metrics;
use crate::probe::Prober;
use crate::seams::{self, Sources};
use crate::store::MemberStore;
use crate::timing::{Timing, TimingError};
use crate::view::MembershipView;

/// Why a node could not start or leave.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The timing settings break the safety argument.
    #[error("invalid membership timing: {0}")]
    Timing(#[from] TimingError),
    /// The metrics could not be registered (a name is already taken in the registry).
    #[error("cannot register membership metrics: {0}; is another component using the same names?")]
    Metrics(#[from] prometheus::Error),
    /// The membership loop is gone (it panicked or was stopped).
    #[error("the membership loop has stopped")]
    Stopped,
}

/// A running member of a cluster.
#[derive(Debug)]
pub struct Node {
    health: Health,
    registry: Registry,
    view: watch::Receiver<MembershipView>,
    members: watch::Receiver<MemberTable>,
    commands: mpsc::Sender<Command>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Leave { deadline, .. } => {
                f.debug_struct("Leave").field("deadline", deadline).finish()
            }
        }
    }
}

impl Node {
    /// Starts membership for `identity`, registering its metrics in `registry`, with real
    /// randomness and the system clock ([`Sources::default`]).
    pub fn start<S: MemberStore, P: Prober>(
        identity: Identity,
        timing: Timing,
        store: S,
        prober: P,
        pods: watch::Receiver<PodSet>,
        registry: Registry,
    ) -> Result<Self, NodeError> {
        Self::start_with(
            identity,
            timing,
            store,
            prober,
            pods,
            registry,
            Sources::default(),
        )
    }

    /// [`Node::start`] with the node's ids (incarnations, cluster id) and wall clock drawn
    /// from `sources`: a simulation passes [`Sources::seeded`] to replay a run exactly.
    pub fn start_with<S: MemberStore, P: Prober>(
        identity: Identity,
        timing: Timing,
        store: S,
        prober: P,
        pods: watch::Receiver<PodSet>,
        registry: Registry,
        sources: Sources,
    ) -> Result<Self, NodeError> {
        timing.validate()?;
        let metrics = Metrics::register(&registry)?;
        let health = Health::default();
        let me = MemberKey::new(identity.pod.clone(), sources.id());
        let (view_tx, view_rx) = watch::channel(MembershipView::starting(me, sources.wall()));
        let (table_tx, table_rx) = watch::channel(MemberTable::default());
        let (probe_tx, probe_rx) = mpsc::channel(1024);
        let (cmd_tx, cmd_rx) = mpsc::channel(4);
        let (survey_tx, survey_rx) = watch::channel(Vec::new());
        let driver = Driver::new(
            identity,
            timing,
            sources,
            store,
            pods,
            health.clone(),
            metrics,
            view_tx,
            table_tx,
            probe_rx,
            survey_tx,
        );
        let tasks = vec![
            tokio::spawn(driver.run(cmd_rx)),
            tokio::spawn(membership::probe_loop(
                prober,
                view_rx.clone(),
                survey_rx,
                probe_tx,
                timing,
            )),
        ];
        Ok(Self {
            health,
            registry,
            view: view_rx,
            members: table_rx,
            commands: cmd_tx,
            tasks,
        })
    }

    /// The health flags behind `/alive` and `/ready`.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The node's one metrics registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The member table, as this node follows it.
    pub fn members(&self) -> watch::Receiver<MemberTable> {
        self.members.clone()
    }

    /// This node's view of its membership (table, own status, serving, coordinator).
    pub fn view(&self) -> watch::Receiver<MembershipView> {
        self.view.clone()
    }

    /// What this node answers to `GET /cluster/ping` right now (see [`http::ping_reply`]).
    pub fn ping_reply(&self) -> crate::probe::PingReply {
        http::ping_reply(&self.view.borrow(), seams::now())
    }

    /// The management routes (`/alive`, `/ready`, `/metrics`, `/cluster/*`, `/admin/*`).
    pub fn router(&self) -> Router {
        http::router(Management {
            health: self.health.clone(),
            view: self.view.clone(),
            registry: self.registry.clone(),
        })
    }

    /// Leaves gracefully: not Ready at once, Leaving in the table (releasing the
    /// coordinator lease), then `handover` (the actor runtime hands its actors over), then
    /// out of the table — all within `timeout`.
    pub async fn leave<F>(self, handover: F, timeout: Duration) -> Result<LeaveReport, NodeError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.health.set_draining(true);
        let (done, report) = oneshot::channel();
        self.commands
            .send(Command::Leave {
                handover: handover.boxed(),
                deadline: seams::now() + timeout,
                done,
            })
            .await
            .map_err(|_| NodeError::Stopped)?;
        report.await.map_err(|_| NodeError::Stopped)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
