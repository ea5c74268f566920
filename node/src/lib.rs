//! `troupe-node`: one actor node of a Troupe cluster.
//!
//! ```text
//!            ┌──────────── management port (8558) ─────────────┐
//!  kubelet ─►│ /alive  /ready  /metrics  /cluster/members       │
//!            └──────────────────────┬───────────────────────────┘
//!                                   │ reads
//!                              NodeState
//! ```
//!
//! [`health`] owns the management HTTP surface.

pub mod health;
