//! What an actor type is: the [`ActorType`] factory and the [`Actor`] it activates.
//!
//! Handlers are synchronous by default ([`Step::Done`]) so the hot path allocates nothing;
//! a handler that must wait (a sleep, an HTTP call to the sidecar) returns
//! [`Step::Later`] with a `'static` future, and the runtime awaits it before the next
//! message: one message at a time per actor either way.
//!
//! State that must survive passivation and hand-over is what [`Actor::deactivate`]
//! returns; it is given back to [`ActorType::activate`] on the next activation, wherever
//! in the cluster that is. With a durable store (`store`), the runtime also asks for the
//! state after every turn ([`Actor::turn_state`]) and writes it through before the reply.

use std::{future::Future, pin::Pin};

use bytes::Bytes;

use crate::message::{Message, Reply};

/// A future answer.
pub type ReplyFuture = Pin<Box<dyn Future<Output = Reply> + Send + 'static>>;

/// A handler's answer: now, or later.
pub enum Step {
    /// The answer is ready.
    Done(Reply),
    /// The answer needs waiting for; the actor takes no other message meanwhile.
    Later(ReplyFuture),
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Done(r) => f.debug_tuple("Done").field(r).finish(),
            Self::Later(_) => f.write_str("Later(..)"),
        }
    }
}

/// What a turn did to the actor's state ([`Actor::turn_state`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TurnState {
    /// The state is what it was before the turn.
    Unchanged,
    /// The state after the turn (empty: no state).
    Changed(Bytes),
    /// The actor does not track it: the runtime takes a snapshot with
    /// [`Actor::deactivate`] and compares it with the last state written.
    Unknown,
}

/// One live actor: its state and its handler.
pub trait Actor: Send + 'static {
    /// Handles one message. A panic here is caught: the message is answered with
    /// [`crate::ActorError::Failed`] and the actor is restarted with backoff.
    fn handle(&mut self, message: &Message) -> Step;

    /// Called when the actor passivates or is handed over; the bytes (empty: no state)
    /// are given to the next activation.
    fn deactivate(&mut self) -> Step {
        Step::Done(Ok(Bytes::new()))
    }

    /// With a durable store, called after every turn: the state to write through before
    /// the reply leaves the node. Must be cheap when nothing changed; the default leaves
    /// it to a snapshot ([`TurnState::Unknown`]).
    fn turn_state(&mut self) -> TurnState {
        TurnState::Unknown
    }
}

/// A kind of actor, addressed by its [`name`](ActorType::name).
pub trait ActorType: Send + Sync + 'static {
    /// The type name used in addresses (`counter`, `kv`, ...).
    fn name(&self) -> &str;

    /// Activates the actor `id`, with the state its last activation left, if any.
    fn activate(&self, id: &str, state: Option<Bytes>) -> Box<dyn Actor>;
}
