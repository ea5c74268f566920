//! `troupe-operator`: reconciles `ActorCluster` resources into actor-node Deployments and
//! their companions.
//!
//! ```text
//!   watch (ActorCluster, children, member Leases)
//!        │
//!        ▼
//!   controller::reconcile ──► validate (pure) ──► build desired children (pure)
//!        │                                              │
//!        │                      drift: desired ⊆ observed? (pure) ── yes ─► no write
//!        │                                              │ no
//!        │                                              ▼
//!        │                               server-side apply (field manager troupe-operator)
//!        ▼
//!   status::compute (pure) ── changed? ──► patch /status, Event
//! ```
//!
//! Pure modules: [`crd`], [`validate`], [`build`], [`drift`], [`status`], [`reference`] (the
//! ActorCluster reference document rendered from the CRD).
//! Edges: [`controller`] (kube client), [`server`] (HTTP), [`leader`] (Lease election);
//! [`watches`] says how every watch lists and retries (quick recovery after an outage).
//! Autoscaling support (node scraping, the `custom.metrics.k8s.io` API, depth in status and
//! pod deletion costs): [`custom_metrics`].
pub mod build;
pub mod controller;
pub mod crd;
pub mod custom_metrics;
pub mod drift;
pub mod leader;
pub mod member_leases;
pub mod metrics;
pub mod reference;
pub mod server;
pub mod status;
pub mod validate;
pub mod watches;
