//! `troupe-actors`: the actor runtime of a Troupe node.
//!
//! Virtual actors addressed by `(type, id)`: activated by their first message, one message
//! at a time, bounded mailboxes with a per-type overflow policy, a per-node bound on the
//! actors held in memory, supervision with restart backoff, passivation after idle time,
//! placement by rendezvous hashing over the Up members, forwarding, hand-over on
//! membership change without ever running one actor on two nodes, a pipelined
//! node-to-node transport, a client HTTP API and a sidecar mode.
//!
//! ```text
//!            client API (axum, :8080)          transport (TCP, :25520)
//!                      │                                 │
//!                      ▼                                 ▼
//!                ┌──────────── ActorRuntime (runtime) ─────────────┐
//!  MemberTable ─►│ Placement (rendezvous) · claims · hand-over     │──► Peers (transport)
//!                │ TypeEntry → Activation → Mailbox → Actor        │
//!                └─────────────────────────────────────────────────┘
//!                           metrics (prometheus::Registry)
//! ```
//!
//! # Wiring it into a node
//!
//! ```no_run
//! # async fn node(table_updates: tokio::sync::watch::Receiver<troupe_contract::MemberTable>)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use troupe_actors::{ActorRuntime, RuntimeConfig};
//! use troupe_contract::ports;
//! let registry = prometheus::Registry::new();
//! let config = RuntimeConfig::from_env("pod-a", "incarnation-1", |k| std::env::var(k).ok())?;
//! let rt = ActorRuntime::new(config, &registry)?;
//! // Node-to-node transport.
//! let transport = tokio::net::TcpListener::bind(("0.0.0.0", ports::TRANSPORT)).await?;
//! tokio::spawn({ let rt = rt.clone(); async move { rt.serve_transport(transport).await } });
//! // Client API.
//! let client = tokio::net::TcpListener::bind(("0.0.0.0", ports::CLIENT)).await?;
//! tokio::spawn(axum::serve(client, rt.client_router()).into_future());
//! // Every member-table change, then readiness.
//! let mut updates = table_updates;
//! rt.update_members(&updates.borrow_and_update());
//! rt.set_accepting(true); // when the node is Up and Ready
//! // On SIGTERM: not Ready, become Leaving in the table, feed it, then:
//! rt.set_accepting(false);
//! let report = rt.drain(std::time::Duration::from_secs(20)).await;
//! # let _ = report; Ok(()) }
//! ```
//!
//! In-process senders use [`ActorRuntime::ask`] / [`ActorRuntime::tell`], or an
//! [`ActorRef`] handle ([`ActorRuntime::actor_ref`]) that skips the type and directory
//! lookups while the actor is active on this node.
//!
//! Modules: [`mailbox`] (bounded queue, policies), [`behavior`] (the actor traits),
//! [`builtin`] (counter, kv, echo, load), [`sidecar`] (application over HTTP),
//! [`activation`] (running actors, supervision, passivation), [`placement`] (rendezvous),
//! [`runtime`] (routing, claims, hand-over, drain), [`wire`] and [`transport`]
//! (node-to-node), [`client_api`] (HTTP), [`metrics`], [`supervision`] (backoff),
//! [`config`], [`error`], [`message`]; [`store`] (durable state: the [`StateStore`] seam,
//! its fencing rule, an in-memory store) and `write_through` (the output gate of one
//! activation); [`time`] and [`hashing`] (the runtime's clock and map hasher, seams for
//! deterministic simulation).

pub mod activation;
pub mod behavior;
pub mod builtin;
pub mod client_api;
pub mod config;
pub mod error;
pub mod hashing;
pub mod mailbox;
pub mod message;
pub mod metrics;
pub mod placement;
pub mod runtime;
pub mod sidecar;
pub mod store;
pub mod supervision;
mod sync;
pub mod time;
pub mod tls;
pub mod transport;
pub mod wire;
mod write_through;

pub use behavior::{Actor, ActorType, ReplyFuture, Step, TurnState};
pub use builtin::BuiltinType;
pub use config::{MailboxConfig, OverflowPolicy, RuntimeConfig, SupervisionConfig};
pub use error::{ActorError, DeliveryError, Error};
pub use message::{Answer, Message, Reply};
pub use runtime::{ActorRef, ActorRuntime, DrainReport, HeldActivation};
pub use store::{InMemoryStore, StateStore, StoreError};
