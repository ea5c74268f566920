//! `troupe-node`: one actor node of a Troupe cluster — the membership half.
//!
//! ```text
//!   Kubernetes API                                  other nodes
//!   ├─ Lease <cluster>-members ◄─ CAS ─┐        ┌─► GET /cluster/ping (probes, gossip)
//!   └─ pods (watch) ───► PodSet ──┐    │        │
//!                                 ▼    │        │
//!   k8s::{LeaseStore, watch_pods} ─► membership loop ──► MembershipView (watch)
//!     (edges: I/O)                 (election, coordinator, ├─► Health ─► /ready
//!                                   failure_detector, view:└─► /metrics, /cluster/members
//!                                   pure)                      (http)
//! ```
//!
//! * Pure logic, tested without I/O: the node's decisions (`membership/state.rs`),
//!   [`election`], [`coordinator`], [`failure_detector`], [`view`], [`discovery`],
//!   [`timing`]; the table itself is `troupe_contract::MemberTable`.
//! * Determinism: [`seams`] (ids, wall clock, tokio's clock) for replayable simulation.
//! * Seams: [`store::MemberStore`] (compare-and-swap record) and [`probe::Prober`];
//!   Kubernetes behind them in [`k8s`], test doubles in [`memory`].
//! * [`node::Node`] ties it together; [`http`] serves it.
//!
//! The guarantee: the member table lives in one store object changed only by
//! compare-and-swap, so there is exactly one table, hence one cluster; and a node is Ready
//! only while it is Up in the latest table it read and its knowledge is fresh.

pub mod coordinator;
pub mod discovery;
pub mod election;
pub mod failure_detector;
pub mod guard;
pub mod health;
pub mod host;
pub mod http;
pub mod k8s;
pub mod member_key;
pub mod membership;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod probe;
pub mod seams;
pub mod store;
pub mod timing;
pub mod view;

pub use discovery::PodSet;
pub use member_key::MemberKey;
pub use membership::{Identity, LeaveReport};
pub use node::{Node, NodeError};
pub use seams::Sources;
pub use timing::Timing;
pub use view::{BootstrapState, MembershipView};
