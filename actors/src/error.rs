//! Errors of the runtime: [`Error`] for setting it up and serving, [`DeliveryError`] for one
//! message that could not be delivered or answered, [`ActorError`] for what a handler returns.
//!
//! Every variant says what the caller can do about it; [`DeliveryError::http_status`] maps
//! delivery failures to the status codes of the client API (see `API.md`).

use std::time::Duration;

/// Failure to build or run the runtime itself.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid; the message names the setting to fix.
    #[error("invalid runtime configuration: {0}")]
    Config(String),
    /// A metric could not be registered (usually: registered twice in the same registry).
    #[error(
        "could not register the actor metrics (is a runtime already registered in this registry?): {0}"
    )]
    Metrics(#[from] prometheus::Error),
    /// A socket operation failed.
    #[error("transport I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// What an actor handler returns when it cannot answer a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ActorError {
    /// The message was malformed or not understood by the actor (client's fault).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The handler failed (it panicked, or the sidecar application failed).
    #[error("actor failed: {0}")]
    Failed(String),
    /// The request would make the actor's state or reply larger than allowed; nothing was
    /// changed (413).
    #[error("too large: {0}")]
    TooLarge(String),
}

/// Why a message could not be delivered or answered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// No actor type of this name exists; check the type in the URL.
    #[error("unknown actor type {0:?}")]
    UnknownType(String),
    /// The actor id or the method is not acceptable (empty, too long, bad characters).
    #[error("invalid address: {0}")]
    InvalidAddress(String),
    /// The mailbox is full and its policy refused the message; retry after the given time.
    #[error("mailbox of {actor} is full; retry later")]
    MailboxFull {
        /// `type/id` of the actor.
        actor: String,
        /// Suggested wait before retrying.
        retry_after: Duration,
    },
    /// The message was accepted and later dropped by the mailbox policy (drop-oldest /
    /// drop-newest) or lost with its actor; retrying is safe only for idempotent messages.
    #[error("message to {0} was dropped by the mailbox overflow policy")]
    Dropped(String),
    /// This node takes no new work (not Ready, or draining); retry on another node.
    #[error("node is not accepting work (not ready or draining); retry on another node")]
    NotAccepting,
    /// No member can take the message right now (no Up member, owner unreachable).
    #[error("actor unavailable: {0}; retry later")]
    Unavailable(String),
    /// The node holds as many actors in memory as it may (`RuntimeConfig::max_actors`:
    /// activations and kept states together), so it refuses to activate one more. Idle
    /// actors passivate and make room; retry later, or raise the bound or add replicas.
    /// Peers receive it as [`DeliveryError::Unavailable`] with this text (the wire has no
    /// code of its own for it, so that nodes of the previous version keep their links).
    #[error(
        "node {pod} holds its limit of {limit} actors (activations and kept states); retry later, or set TROUPE_MAX_ACTORS higher or run more replicas"
    )]
    AtCapacity {
        /// The refusing node.
        pod: String,
        /// Its bound.
        limit: usize,
    },
    /// No reply arrived in time; the message may still be processed.
    #[error("no reply within {0:?}; the message may still be processed")]
    Timeout(Duration),
    /// The message, the reply or the actor's state would exceed the size limit
    /// (`max_frame_bytes` less the frame overhead); nothing was changed.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The actor answered with an error.
    #[error(transparent)]
    Actor(#[from] ActorError),
}

impl DeliveryError {
    /// The HTTP status the client API answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::UnknownType(_) => 404,
            Self::InvalidAddress(_) => 400,
            Self::TooLarge(_) => 413,
            Self::MailboxFull { .. } => 429,
            Self::Dropped(_)
            | Self::NotAccepting
            | Self::Unavailable(_)
            | Self::AtCapacity { .. } => 503,
            Self::Timeout(_) => 504,
            Self::Actor(ActorError::BadRequest(_)) => 400,
            Self::Actor(ActorError::Failed(_)) => 500,
            Self::Actor(ActorError::TooLarge(_)) => 413,
        }
    }

    /// The `Retry-After` (seconds) the client API sends, when retrying makes sense.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::MailboxFull { retry_after, .. } => Some(retry_after.as_secs().max(1)),
            Self::Dropped(_)
            | Self::NotAccepting
            | Self::Unavailable(_)
            | Self::AtCapacity { .. } => Some(1),
            _ => None,
        }
    }
}
