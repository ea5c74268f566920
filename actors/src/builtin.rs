//! The built-in actor types that make a bare node useful: `counter`, `kv`, `echo`, `load`.
//! A node serves the ones in `RuntimeConfig::builtin_types` ([`BuiltinType`]; by default
//! all but `load`, which burns CPU on request and is for load tests).
//!
//! | type | methods (payload → reply, JSON) |
//! |---|---|
//! | `counter` | `add` (`{"by": n}`, empty = 1) → `{"value": v}`; `get` / `default` → `{"value": v}` |
//! | `kv` | `put` (`{"key": k, "value": any}`) → `{"ok": true}`; `get` (`{"key": k}`) → `{"value": any\|null}`; `delete` (`{"key": k}`) → `{"deleted": bool}`; `keys` → `{"keys": [..]}` |
//! | `echo` | any → the payload itself |
//! | `load` | any (`{"sleep_us": n, "spin_us": n}`, empty = the node's default) → `{"slept_us": n, "spun_us": n}` |
//!
//! `counter` and `kv` hand their state over on passivation and rebalancing.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    behavior::{Actor, ActorType, Step, TurnState},
    error::ActorError,
    message::{Message, Reply},
};

/// A built-in actor type a node can serve ([`crate::RuntimeConfig::builtin_types`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BuiltinType {
    /// [`CounterType`].
    Counter,
    /// [`KvType`].
    Kv,
    /// [`EchoType`].
    Echo,
    /// [`LoadType`]: CPU and sleep on request, for load tests; off unless listed.
    Load,
}

impl BuiltinType {
    /// Every built-in type.
    pub const ALL: [BuiltinType; 4] = [Self::Counter, Self::Kv, Self::Echo, Self::Load];
    /// What a node serves unless told otherwise: everything but `load`.
    pub const DEFAULT: [BuiltinType; 3] = [Self::Counter, Self::Kv, Self::Echo];

    /// The type's name, as in the client API's URLs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Kv => "kv",
            Self::Echo => "echo",
            Self::Load => "load",
        }
    }
}

impl std::str::FromStr for BuiltinType {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, crate::Error> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                crate::Error::Config(format!(
                    "{} names an unknown built-in actor type {s:?}; the built-in types are {}",
                    troupe_contract::env::BUILTIN_TYPES,
                    Self::ALL.map(Self::name).join(", ")
                ))
            })
    }
}

impl std::fmt::Display for BuiltinType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn json_reply(v: &Value) -> Reply {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| ActorError::Failed(e.to_string()))
}

fn parse<T: for<'de> Deserialize<'de> + Default>(payload: &[u8]) -> Result<T, ActorError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(payload).map_err(|e| ActorError::BadRequest(format!("payload: {e}")))
}

fn unknown_method(ty: &str, m: &Message) -> Step {
    Step::Done(Err(ActorError::BadRequest(format!(
        "{ty} has no method {:?}",
        m.method
    ))))
}

/// `counter`: a 64-bit signed counter.
#[derive(Debug, Default, Clone, Copy)]
pub struct CounterType;

/// One counter.
#[derive(Debug)]
pub struct Counter {
    value: i64,
    changed: bool,
}

#[derive(Deserialize)]
struct AddArgs {
    by: i64,
}

impl Default for AddArgs {
    fn default() -> Self {
        Self { by: 1 }
    }
}

impl Actor for Counter {
    fn handle(&mut self, m: &Message) -> Step {
        match &*m.method {
            "add" | "increment" => match parse::<AddArgs>(&m.payload) {
                Ok(a) => {
                    self.value = self.value.wrapping_add(a.by);
                    self.changed = true;
                    Step::Done(json_reply(&json!({ "value": self.value })))
                }
                Err(e) => Step::Done(Err(e)),
            },
            "get" | "default" => Step::Done(json_reply(&json!({ "value": self.value }))),
            _ => unknown_method("counter", m),
        }
    }

    fn deactivate(&mut self) -> Step {
        Step::Done(Ok(Bytes::copy_from_slice(&self.value.to_le_bytes())))
    }

    fn turn_state(&mut self) -> TurnState {
        if std::mem::take(&mut self.changed) {
            TurnState::Changed(Bytes::copy_from_slice(&self.value.to_le_bytes()))
        } else {
            TurnState::Unchanged
        }
    }
}

impl ActorType for CounterType {
    fn name(&self) -> &str {
        "counter"
    }
    fn activate(&self, _id: &str, state: Option<Bytes>) -> Box<dyn Actor> {
        let value = state
            .and_then(|s| <[u8; 8]>::try_from(&s[..]).ok())
            .map(i64::from_le_bytes)
            .unwrap_or(0);
        Box::new(Counter {
            value,
            changed: false,
        })
    }
}

/// `kv`: a small key-value map per actor. A `put` that would make the map's encoded
/// state larger than `max_state_bytes` is refused (413) and changes nothing: a state above
/// the frame limit could never be handed over.
#[derive(Debug, Clone, Copy)]
pub struct KvType {
    /// Largest encoded state of one map (bytes).
    pub max_state_bytes: usize,
}

impl Default for KvType {
    fn default() -> Self {
        Self {
            max_state_bytes: 8 * 1024 * 1024 - crate::wire::FRAME_OVERHEAD,
        }
    }
}

/// One key-value map.
#[derive(Debug, Default)]
pub struct Kv {
    map: BTreeMap<String, Value>,
    /// Encoded size of `map` as its state (JSON object), kept up to date.
    size: usize,
    max_state_bytes: usize,
    /// Changed since the last [`Actor::turn_state`].
    changed: bool,
}

/// Bytes one entry adds to the JSON state: `"key":value,`.
fn entry_size(key: &str, value: &Value) -> usize {
    serde_json::to_string(key).map_or(0, |k| k.len()) + value.to_string().len() + 2
}

#[derive(Deserialize, Default)]
struct KvArgs {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: Value,
}

impl Actor for Kv {
    fn handle(&mut self, m: &Message) -> Step {
        let args = match parse::<KvArgs>(&m.payload) {
            Ok(a) => a,
            Err(e) => return Step::Done(Err(e)),
        };
        let reply = match &*m.method {
            "put" => {
                let old = self
                    .map
                    .get(&args.key)
                    .map_or(0, |v| entry_size(&args.key, v));
                let size = self.size - old + entry_size(&args.key, &args.value);
                if size + 2 > self.max_state_bytes {
                    return Step::Done(Err(ActorError::TooLarge(format!(
                        "the map would be {size} bytes, above its limit of {} bytes",
                        self.max_state_bytes
                    ))));
                }
                self.size = size;
                self.map.insert(args.key, args.value);
                self.changed = true;
                json!({ "ok": true })
            }
            "get" | "default" => json!({ "value": self.map.get(&args.key) }),
            "delete" => {
                let removed = self.map.remove(&args.key);
                if let Some(v) = &removed {
                    self.size -= entry_size(&args.key, v);
                    self.changed = true;
                }
                json!({ "deleted": removed.is_some() })
            }
            "keys" => json!({ "keys": self.map.keys().collect::<Vec<_>>() }),
            _ => return unknown_method("kv", m),
        };
        Step::Done(json_reply(&reply))
    }

    fn deactivate(&mut self) -> Step {
        if self.map.is_empty() {
            return Step::Done(Ok(Bytes::new()));
        }
        Step::Done(
            serde_json::to_vec(&self.map)
                .map(Bytes::from)
                .map_err(|e| ActorError::Failed(e.to_string())),
        )
    }

    fn turn_state(&mut self) -> TurnState {
        if !std::mem::take(&mut self.changed) {
            return TurnState::Unchanged;
        }
        if self.map.is_empty() {
            return TurnState::Changed(Bytes::new());
        }
        match serde_json::to_vec(&self.map) {
            Ok(v) => TurnState::Changed(Bytes::from(v)),
            // Cannot happen for a map of JSON values; the snapshot reports it.
            Err(_) => TurnState::Unknown,
        }
    }
}

impl ActorType for KvType {
    fn name(&self) -> &str {
        "kv"
    }
    fn activate(&self, _id: &str, state: Option<Bytes>) -> Box<dyn Actor> {
        let map: BTreeMap<String, Value> = state
            .and_then(|s| serde_json::from_slice(&s).ok())
            .unwrap_or_default();
        let size = map.iter().map(|(k, v)| entry_size(k, v)).sum();
        Box::new(Kv {
            map,
            size,
            max_state_bytes: self.max_state_bytes,
            changed: false,
        })
    }
}

/// `echo`: answers with the payload.
#[derive(Debug, Default, Clone, Copy)]
pub struct EchoType;

/// One echo actor (stateless).
#[derive(Debug)]
pub struct Echo;

impl Actor for Echo {
    fn handle(&mut self, m: &Message) -> Step {
        Step::Done(Ok(m.payload.clone()))
    }

    fn turn_state(&mut self) -> TurnState {
        TurnState::Unchanged
    }
}

impl ActorType for EchoType {
    fn name(&self) -> &str {
        "echo"
    }
    fn activate(&self, _id: &str, _state: Option<Bytes>) -> Box<dyn Actor> {
        Box::new(Echo)
    }
}

/// `load`: does configurable work per message (sleep, then spin). The spin runs on
/// Tokio's blocking pool, never on a runtime worker: a busy `load` actor must not delay
/// the timers and I/O that membership and health share with the actors. Off unless
/// [`BuiltinType::Load`] is listed.
#[derive(Debug, Clone, Copy)]
pub struct LoadType {
    /// Default microseconds to sleep per message.
    pub sleep_us: u64,
    /// Default microseconds to spin the CPU per message.
    pub spin_us: u64,
}

/// One load actor.
#[derive(Debug)]
pub struct Load {
    defaults: LoadType,
}

#[derive(Deserialize, Default)]
struct LoadArgs {
    sleep_us: Option<u64>,
    spin_us: Option<u64>,
}

/// Longest work one message may ask for (10 s), so a client cannot wedge an actor.
const MAX_WORK_US: u64 = 10_000_000;

fn spin(us: u64) {
    let until = Instant::now() + Duration::from_micros(us);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

impl Actor for Load {
    fn handle(&mut self, m: &Message) -> Step {
        let args = match parse::<LoadArgs>(&m.payload) {
            Ok(a) => a,
            Err(e) => return Step::Done(Err(e)),
        };
        let sleep_us = args
            .sleep_us
            .unwrap_or(self.defaults.sleep_us)
            .min(MAX_WORK_US);
        let spin_us = args
            .spin_us
            .unwrap_or(self.defaults.spin_us)
            .min(MAX_WORK_US);
        let reply = json!({ "slept_us": sleep_us, "spun_us": spin_us });
        if sleep_us == 0 && spin_us == 0 {
            return Step::Done(json_reply(&reply));
        }
        Step::Later(Box::pin(async move {
            if sleep_us > 0 {
                tokio::time::sleep(Duration::from_micros(sleep_us)).await;
            }
            if spin_us > 0 {
                tokio::task::spawn_blocking(move || spin(spin_us))
                    .await
                    .map_err(|e| ActorError::Failed(format!("the spin did not finish: {e}")))?;
            }
            json_reply(&reply)
        }))
    }

    fn turn_state(&mut self) -> TurnState {
        TurnState::Unchanged
    }
}

impl ActorType for LoadType {
    fn name(&self) -> &str {
        "load"
    }
    fn activate(&self, _id: &str, _state: Option<Bytes>) -> Box<dyn Actor> {
        Box::new(Load { defaults: *self })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(s: Step) -> Reply {
        match s {
            Step::Done(r) => r,
            Step::Later(_) => Err(ActorError::Failed("later".into())),
        }
    }

    fn value(r: Reply) -> Value {
        r.ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    #[test]
    fn counter_adds_and_survives_deactivation() {
        let mut c = CounterType.activate("c", None);
        let _ = done(c.handle(&Message::new("add", "")));
        let r = value(done(c.handle(&Message::new("add", r#"{"by":41}"#))));
        assert_eq!(r["value"], 42);
        let state = done(c.deactivate()).ok();
        let mut c = CounterType.activate("c", state);
        assert_eq!(value(done(c.handle(&Message::new("get", ""))))["value"], 42);
        assert!(matches!(
            done(c.handle(&Message::new("add", "nope"))),
            Err(ActorError::BadRequest(_))
        ));
    }

    #[test]
    fn kv_puts_gets_deletes_and_survives_deactivation() {
        let mut kv = KvType::default().activate("k", None);
        let _ = done(kv.handle(&Message::new("put", r#"{"key":"a","value":[1,2]}"#)));
        let state = done(kv.deactivate()).ok();
        let mut kv = KvType::default().activate("k", state);
        assert_eq!(
            value(done(kv.handle(&Message::new("get", r#"{"key":"a"}"#))))["value"],
            json!([1, 2])
        );
        assert_eq!(
            value(done(kv.handle(&Message::new("delete", r#"{"key":"a"}"#))))["deleted"],
            true
        );
        assert_eq!(
            value(done(kv.handle(&Message::new("get", r#"{"key":"a"}"#))))["value"],
            Value::Null
        );
    }
}
