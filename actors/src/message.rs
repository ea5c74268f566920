//! Messages and replies as the runtime carries them.
//!
//! A [`Message`] is a method name and an opaque payload (JSON by convention for the built-in
//! types and the client API, any bytes for the transport). A [`Reply`] is the handler's answer.
//! The runtime never interprets payloads; actor types do.

use std::borrow::Cow;

use bytes::Bytes;

use crate::error::{ActorError, DeliveryError};

/// One message to an actor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// What the sender asks for (`add`, `get`, ...); `default` when the client gave none.
    pub method: Cow<'static, str>,
    /// The argument, opaque to the runtime.
    pub payload: Bytes,
}

impl Message {
    /// A message with a static method name (no allocation).
    pub fn new(method: &'static str, payload: impl Into<Bytes>) -> Self {
        Self {
            method: Cow::Borrowed(method),
            payload: payload.into(),
        }
    }

    /// A message with a method name known only at run time.
    pub fn owned(method: String, payload: Bytes) -> Self {
        Self {
            method: Cow::Owned(method),
            payload,
        }
    }
}

/// A handler's answer.
pub type Reply = Result<Bytes, ActorError>;

/// What the sender of an `ask` gets: the reply, or why there is none.
pub type Answer = Result<Bytes, DeliveryError>;

/// Validates an actor type, id or method name taken from the network: 1 to 256 bytes, no
/// control characters and no `/`.
pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && !s.chars().any(|c| c.is_control() || c == '/')
}
