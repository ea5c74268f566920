//! Configuration of a runtime: identity, mailboxes, timeouts, sidecar.
//!
//! [`RuntimeConfig::from_env`] reads the variables the operator sets
//! (`troupe_contract::env`); everything else has defaults that suit a pod.

use std::{collections::HashMap, fmt, str::FromStr, sync::Arc, time::Duration};

use crate::{behavior::ActorType, builtin::BuiltinType, error::Error, store::StateStore};

/// Default of [`RuntimeConfig::max_actors`]: at about 1 KiB per actor (an activation's
/// task, mailbox and directory entry, or a small kept state) 100 000 actors are about
/// 100 MiB, within the memory a node pod is usually given, and far more than one node can
/// keep busy at once. Raise it for many small, mostly idle actors on a large pod.
pub const DEFAULT_MAX_ACTORS: usize = 100_000;

/// What a full mailbox does with one more message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OverflowPolicy {
    /// The sender waits for room, up to [`MailboxConfig::backpressure_timeout`]; then the
    /// message is refused (HTTP 503 with `Retry-After`).
    #[default]
    Backpressure,
    /// The new message is dropped and counted as a dead letter; a `tell` still reads as
    /// accepted, an `ask` gets [`crate::DeliveryError::Dropped`].
    DropNewest,
    /// The oldest queued message is dropped (dead letter; its asker gets `Dropped`) and the
    /// new one is queued.
    DropOldest,
    /// The new message is refused at once (HTTP 429 with `Retry-After`).
    Reject,
}

impl FromStr for OverflowPolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "backpressure" => Ok(Self::Backpressure),
            "dropnewest" => Ok(Self::DropNewest),
            "dropoldest" => Ok(Self::DropOldest),
            "reject" => Ok(Self::Reject),
            _ => Err(Error::Config(format!(
                "mailbox overflow policy {s:?} is not one of Backpressure, DropNewest, DropOldest, Reject"
            ))),
        }
    }
}

impl fmt::Display for OverflowPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Capacity and overflow policy of the mailboxes of one actor type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MailboxConfig {
    /// Messages that may wait in one actor's mailbox (> 0).
    pub capacity: usize,
    /// What happens when it is full.
    pub overflow: OverflowPolicy,
    /// How long a [`OverflowPolicy::Backpressure`] sender waits for room.
    pub backpressure_timeout: Duration,
}

impl Default for MailboxConfig {
    fn default() -> Self {
        Self {
            capacity: 1000,
            overflow: OverflowPolicy::Backpressure,
            backpressure_timeout: Duration::from_secs(1),
        }
    }
}

/// Restart policy after a handler panic: exponential backoff between `min` and `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SupervisionConfig {
    /// Delay before the first restart.
    pub min_backoff: Duration,
    /// Upper bound of the delay.
    pub max_backoff: Duration,
    /// A run without panic this long resets the backoff.
    pub reset_after: Duration,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        Self {
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(5),
            reset_after: Duration::from_secs(10),
        }
    }
}

/// The non-empty, trimmed names of a comma-separated list.
fn names(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Everything a runtime needs to know.
#[derive(Clone)]
pub struct RuntimeConfig {
    /// This node's pod name, as in the member table.
    pub pod: String,
    /// This node process's incarnation, as in the member table.
    pub incarnation: String,
    /// Mailbox settings for every type without an override.
    pub mailbox: MailboxConfig,
    /// Per-type mailbox overrides, by type name.
    pub mailbox_overrides: HashMap<String, MailboxConfig>,
    /// An actor idle this long (checked once per period, so up to twice this) is passivated;
    /// its state is kept on the node.
    pub passivate_after: Duration,
    /// Restart backoff after a panic.
    pub supervision: SupervisionConfig,
    /// How long the client API and remote asks wait for a reply.
    pub ask_timeout: Duration,
    /// Largest client request body (bytes); larger ones get 413.
    pub max_body_bytes: usize,
    /// Largest node-to-node frame (bytes); larger ones close the connection. Actor
    /// states and replies must stay [`crate::wire::FRAME_OVERHEAD`] below it.
    pub max_frame_bytes: usize,
    /// How long a claimant waits, after it first sees a previous owner Down, before it
    /// activates the actor without that owner's state when the owner does not answer.
    /// Must cover the time a downed node may still serve before it notices (the
    /// membership's isolation timeout plus the feed delay).
    pub down_grace: Duration,
    /// How long a claimant waits for a member that a restore left out of the table (the
    /// Lease was deleted or stripped; every member but the restorer rejoins as a new
    /// incarnation, keeping its states) to rejoin and answer, before it activates the
    /// actor without that member's state. Longer than [`Self::down_grace`]: nobody downed
    /// it, it only has to notice the restore and rejoin.
    pub restore_grace: Duration,
    /// Port peers listen on when a member's address carries no port.
    pub transport_port: u16,
    /// Base URL of the sidecar application (`TROUPE_APP_URL`), if any.
    pub app_url: Option<String>,
    /// Actor types served by the sidecar. Empty: every type that is not built in.
    pub app_types: Vec<String>,
    /// Default work of the `load` actor per message (`sleep_us`, `spin_us`).
    pub load_work: (u64, u64),
    /// The built-in actor types this node serves (`TROUPE_BUILTIN_TYPES`; default
    /// [`BuiltinType::DEFAULT`]: `counter`, `kv`, `echo`). `load` burns CPU on request, so
    /// it is served only when listed. A type left out answers like any unknown type (404),
    /// or goes to the sidecar application when one serves every other type.
    pub builtin_types: Vec<BuiltinType>,
    /// Most actors this node holds in memory: activations and kept (parked) states of
    /// every type together (`TROUPE_MAX_ACTORS`, > 0; default [`DEFAULT_MAX_ACTORS`]).
    /// At the bound a new activation is refused (503 with `Retry-After`) — after dropping
    /// the oldest kept states from memory when a durable store holds them anyway; in
    /// memory mode a kept state is never dropped to make room. An actor whose state is
    /// kept here may always activate (it takes its state's place), and a state handed over
    /// by another node is always taken, even above the bound: refusing it would lose it.
    pub max_actors: usize,
    /// Extra actor types, added to the built-in ones (tests, embedding programs).
    pub actor_types: Vec<Arc<dyn ActorType>>,
    /// One message in this many has its mailbox and processing time recorded (≥ 1).
    pub timing_sample_every: u32,
    /// The durable store of actor states (`None`, the default: memory mode, states live
    /// in the node and a crash loses them, counted). With a store every changed state is
    /// written through before the reply or `tell` acknowledgement (see `store`).
    pub state_store: Option<Arc<dyn StateStore>>,
}

impl fmt::Debug for RuntimeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeConfig")
            .field("pod", &self.pod)
            .field("incarnation", &self.incarnation)
            .field("mailbox", &self.mailbox)
            .field("mailbox_overrides", &self.mailbox_overrides)
            .field("passivate_after", &self.passivate_after)
            .field("ask_timeout", &self.ask_timeout)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("down_grace", &self.down_grace)
            .field("restore_grace", &self.restore_grace)
            .field("app_url", &self.app_url)
            .field("app_types", &self.app_types)
            .field("builtin_types", &self.builtin_types)
            .field("max_actors", &self.max_actors)
            .field(
                "actor_types",
                &self
                    .actor_types
                    .iter()
                    .map(|t| t.name())
                    .collect::<Vec<_>>(),
            )
            .field("state_store", &self.state_store.as_ref().map(|s| s.kind()))
            .finish_non_exhaustive()
    }
}

impl RuntimeConfig {
    /// Defaults for a node called `pod` with `incarnation`.
    pub fn new(pod: impl Into<String>, incarnation: impl Into<String>) -> Self {
        Self {
            pod: pod.into(),
            incarnation: incarnation.into(),
            mailbox: MailboxConfig::default(),
            mailbox_overrides: HashMap::new(),
            passivate_after: Duration::from_secs(120),
            supervision: SupervisionConfig::default(),
            ask_timeout: Duration::from_secs(5),
            down_grace: Duration::from_secs(3),
            restore_grace: Duration::from_secs(10),
            max_body_bytes: 1 << 20,
            max_frame_bytes: 8 << 20,
            transport_port: troupe_contract::ports::TRANSPORT,
            app_url: None,
            app_types: Vec::new(),
            load_work: (0, 100),
            builtin_types: BuiltinType::DEFAULT.to_vec(),
            max_actors: DEFAULT_MAX_ACTORS,
            actor_types: Vec::new(),
            timing_sample_every: 8,
            state_store: None,
        }
    }

    /// Defaults, then `TROUPE_MAILBOX_CAPACITY`, `TROUPE_MAILBOX_OVERFLOW`,
    /// `TROUPE_MAX_ACTORS`, `TROUPE_BUILTIN_TYPES` (comma-separated; empty: none),
    /// `TROUPE_APP_URL` and `TROUPE_APP_TYPES` (comma-separated) from `lookup` (pass
    /// `|k| std::env::var(k).ok()`).
    pub fn from_env(
        pod: impl Into<String>,
        incarnation: impl Into<String>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, Error> {
        use troupe_contract::env;
        let mut c = Self::new(pod, incarnation);
        if let Some(v) = lookup(env::MAILBOX_CAPACITY) {
            c.mailbox.capacity = v.trim().parse().map_err(|_| {
                Error::Config(format!(
                    "{} must be a positive integer, got {v:?}",
                    env::MAILBOX_CAPACITY
                ))
            })?;
        }
        if let Some(v) = lookup(env::MAILBOX_OVERFLOW) {
            c.mailbox.overflow = v.trim().parse()?;
        }
        c.app_url = lookup(env::APP_URL)
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty());
        if let Some(v) = lookup(env::MAX_ACTORS) {
            c.max_actors = v
                .trim()
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    Error::Config(format!(
                        "{} must be a positive integer (the most actors, running and kept, one node holds in memory; unset: {DEFAULT_MAX_ACTORS}), got {v:?}",
                        env::MAX_ACTORS
                    ))
                })?;
        }
        if let Some(v) = lookup(env::BUILTIN_TYPES) {
            c.builtin_types = names(&v).map(str::parse).collect::<Result<_, _>>()?;
        }
        if let Some(v) = lookup(env::APP_TYPES) {
            c.app_types = names(&v).map(str::to_owned).collect();
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks the settings that have no safe meaning when out of range.
    pub fn validate(&self) -> Result<(), Error> {
        let all = std::iter::once(("default", &self.mailbox))
            .chain(self.mailbox_overrides.iter().map(|(k, v)| (k.as_str(), v)));
        for (name, m) in all {
            if m.capacity == 0 {
                return Err(Error::Config(format!(
                    "mailbox capacity of {name} must be > 0"
                )));
            }
        }
        if self.max_actors == 0 {
            return Err(Error::Config(format!(
                "max_actors must be > 0 (set {} to the most actors one node may hold; default {DEFAULT_MAX_ACTORS})",
                troupe_contract::env::MAX_ACTORS
            )));
        }
        if self.pod.is_empty() || self.incarnation.is_empty() {
            return Err(Error::Config(
                "pod and incarnation must not be empty".into(),
            ));
        }
        if self.max_frame_bytes <= 2 * crate::wire::FRAME_OVERHEAD {
            return Err(Error::Config(format!(
                "max_frame_bytes ({}) must leave room for states and replies above the frame overhead of {} bytes",
                self.max_frame_bytes,
                crate::wire::FRAME_OVERHEAD
            )));
        }
        if let Some(u) = &self.app_url
            && !u.starts_with("http://")
        {
            return Err(Error::Config(format!(
                "{} must be an http:// URL, got {u:?}",
                troupe_contract::env::APP_URL
            )));
        }
        Ok(())
    }

    /// The mailbox settings of `actor_type`.
    pub fn mailbox_for(&self, actor_type: &str) -> MailboxConfig {
        self.mailbox_overrides
            .get(actor_type)
            .copied()
            .unwrap_or(self.mailbox)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_contract::env;

    fn from(vars: &[(&str, &str)]) -> Result<RuntimeConfig, Error> {
        RuntimeConfig::from_env("p", "p-1", |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn max_actors_comes_from_the_environment_and_must_be_positive() {
        assert_eq!(
            from(&[]).map(|c| c.max_actors).ok(),
            Some(DEFAULT_MAX_ACTORS)
        );
        assert_eq!(
            from(&[(env::MAX_ACTORS, " 250000 ")])
                .map(|c| c.max_actors)
                .ok(),
            Some(250_000)
        );
        for bad in ["0", "many", "-3", ""] {
            let e = from(&[(env::MAX_ACTORS, bad)]).map(|c| c.max_actors);
            let text = error_text(&e);
            assert!(
                text.contains("TROUPE_MAX_ACTORS") && text.contains("positive integer"),
                "{bad:?}: {e:?}"
            );
        }
    }

    /// The error's text, empty when `r` is not an error.
    fn error_text<T>(r: &Result<T, Error>) -> String {
        r.as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    #[test]
    fn builtin_types_come_from_the_environment_and_unknown_names_are_refused() {
        use BuiltinType::*;
        assert_eq!(
            from(&[]).map(|c| c.builtin_types).ok(),
            Some(vec![Counter, Kv, Echo])
        );
        assert_eq!(
            from(&[(env::BUILTIN_TYPES, "counter, kv,echo,load")])
                .map(|c| c.builtin_types)
                .ok(),
            Some(vec![Counter, Kv, Echo, Load])
        );
        assert_eq!(
            from(&[(env::BUILTIN_TYPES, "")])
                .map(|c| c.builtin_types)
                .ok(),
            Some(vec![])
        );
        let e = from(&[(env::BUILTIN_TYPES, "counter,lod")]).map(|c| c.builtin_types);
        let text = error_text(&e);
        assert!(
            text.contains("TROUPE_BUILTIN_TYPES")
                && text.contains("\"lod\"")
                && text.contains("counter, kv, echo, load"),
            "{e:?}"
        );
    }
}
