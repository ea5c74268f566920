//! Leader election through a `coordination.k8s.io` Lease (kube-lease-manager), so that two
//! operator replicas never reconcile at once.
//!
//! ```text
//!  standby ──(lease acquired)──► leading: controller runs ──(lease lost)──► standby
//!     │                                  │
//!     └──────────── SIGTERM ─────────────┴──► release the lease, exit
//! ```
//!
//! This module only decides *when* this replica may reconcile; [`crate::controller`] does it.

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Seconds a leader holds the Lease without renewing it; a dead leader is replaced after this.
pub const LEASE_SECONDS: u64 = 15;
/// Seconds before expiry at which the leader renews.
pub const RENEW_GRACE_SECONDS: u64 = 5;

/// A running election: `changes` says whether this replica leads.
#[derive(Debug)]
pub struct Election {
    /// `true` while this replica holds the Lease.
    pub changes: watch::Receiver<bool>,
    task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

impl Election {
    /// Joins the election for the Lease `name` in `namespace` as `identity`.
    pub async fn join(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
    ) -> Result<Self, LeaseManagerError> {
        let manager = LeaseManagerBuilder::new(client, name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(LEASE_SECONDS)
            .with_grace(RENEW_GRACE_SECONDS)
            .with_field_manager(format!("{}-leader", crate::controller::FIELD_MANAGER))
            .build()
            .await?;
        let (changes, task) = manager.watch().await;
        Ok(Self { changes, task })
    }

    /// Waits until this replica leads. Returns `false` if the election ended instead.
    pub async fn until_leading(&mut self) -> bool {
        self.changes.wait_for(|leading| *leading).await.is_ok()
    }

    /// Waits until this replica no longer leads (or the election ended).
    pub async fn until_lost(changes: &mut watch::Receiver<bool>) {
        let _ = changes.wait_for(|leading| !*leading).await;
    }

    /// Leaves the election, releasing the Lease if held, so a standby takes over at once.
    pub async fn leave(self) {
        drop(self.changes);
        match self.task.await {
            Ok(Ok(_)) => tracing::info!("leader lease released"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not release the leader lease"),
            Err(e) => tracing::warn!(error = %e, "leader election task failed"),
        }
    }
}
