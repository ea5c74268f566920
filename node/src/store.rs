//! Where the member table lives: the [`MemberStore`] trait and the record it stores.
//!
//! A store holds one [`LeaseRecord`] per cluster — the coordinator's lease (holder and
//! renew time) and the [`MemberTable`] — and changes it only by **compare-and-swap** on an
//! opaque resource version: [`MemberStore::replace`] succeeds only if nobody wrote since
//! the version that was read, and fails with [`StoreError::Conflict`] otherwise. That one
//! rule makes the store the single arbiter of membership: one record, one table, one
//! cluster.
//!
//! Two implementations exist: [`crate::k8s::LeaseStore`] (the Lease `<cluster>-members`
//! in Kubernetes, the production store) and [`crate::memory::MemoryStore`] (a test double
//! with the same CAS semantics, for the multi-node tests on loopback). This module owns the
//! contract only, no I/O.

use std::future::Future;

use futures::stream::BoxStream;
use troupe_contract::MemberTable;

/// What the store keeps for one cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Identity of the coordinator (`<pod>_<incarnation>`), if any.
    pub holder: Option<String>,
    /// When the holder last renewed, in milliseconds since the Unix epoch as the holder's
    /// clock saw it. Followers never compare it with their own clock: they only notice
    /// whether it changed (see [`crate::election`]).
    pub renew_ms: i64,
    /// How long the lease lasts without renewal, in seconds.
    pub lease_duration_s: i32,
    /// The member table.
    pub table: MemberTable,
}

/// A record as read from (or written to) the store, with the version a CAS must name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// Opaque version of the record; the next [`MemberStore::replace`] must name it.
    pub resource_version: String,
    /// The record.
    pub record: LeaseRecord,
}

/// What a read of the store (or a watch event) found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// No record: it was never created, or it was deleted.
    Absent,
    /// A record without a member table (the Lease exists, its annotation was removed).
    /// The record's `table` is empty and means nothing; the version is what a restoring
    /// CAS must name.
    Stripped(Stored),
    /// A record with its member table.
    Table(Stored),
}

/// Why a store operation failed. Every failure means "no change": the caller keeps what
/// it knew and tries again later.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Someone else wrote first (HTTP 409): re-read and retry.
    #[error("the member record changed since it was read; re-read and retry")]
    Conflict,
    /// The store cannot be reached or failed to answer.
    #[error("member store unavailable: {0}")]
    Unavailable(String),
    /// The store refused the request (HTTP 403): the node lacks the RBAC it needs.
    #[error(
        "the API server refused the request (403 Forbidden): {reason}; check the Role {role} and its RoleBinding to the node's ServiceAccount"
    )]
    Forbidden {
        /// The Role the node needs (`<cluster>-node`).
        role: String,
        /// What the API server said.
        reason: String,
    },
    /// The stored record cannot be understood (e.g. a hand-edited annotation).
    #[error("member record is malformed: {0}; fix the annotation {annotation}, or remove it and the running nodes restore their last table into it", annotation = troupe_contract::coordination::MEMBER_TABLE_ANNOTATION)]
    Malformed(String),
}

impl StoreError {
    /// A short label for the `troupe_store_errors_total` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Conflict => "conflict",
            Self::Unavailable(_) => "unavailable",
            Self::Forbidden { .. } => "forbidden",
            Self::Malformed(_) => "malformed",
        }
    }
}

/// A stream of store changes: what the record is now ([`Found`]), or `Err` when the watch
/// broke (the caller re-reads). Watch events may lag: the membership loop takes them as
/// news, never as proof that the store was reached recently (see `crate::membership`).
pub type ChangeStream = BoxStream<'static, Result<Found, StoreError>>;

/// Compare-and-swap storage for one cluster's [`LeaseRecord`].
pub trait MemberStore: Clone + Send + Sync + 'static {
    /// Reads the record: [`Found::Absent`] when it does not exist, [`Found::Stripped`] when
    /// it exists without a member table. The answer must reflect the store at some time
    /// after the call was made (a quorum read, not a stale cache).
    fn read(&self) -> impl Future<Output = Result<Found, StoreError>> + Send;

    /// Creates the record; [`StoreError::Conflict`] when it already exists (with or
    /// without a table).
    fn create(
        &self,
        record: &LeaseRecord,
    ) -> impl Future<Output = Result<Stored, StoreError>> + Send;

    /// Replaces the record (a stripped one too) if its version still is
    /// `resource_version`; [`StoreError::Conflict`] otherwise.
    fn replace(
        &self,
        resource_version: &str,
        record: &LeaseRecord,
    ) -> impl Future<Output = Result<Stored, StoreError>> + Send;

    /// Follows the record. The stream may end or fail; the caller then re-reads and
    /// subscribes again.
    fn changes(&self) -> ChangeStream;
}
