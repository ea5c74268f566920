//! The actor half of a run: the client workload, its ledger, and the actor oracles as
//! pure functions over what the world samples.
//!
//! **Workload.** Each seed draws a few `counter` actors (the built-in type, `c0`, `c1`, …)
//! and a stream of `add` asks sent through `ActorRuntime::ask` on a random running node.
//! The [`Ledger`] counts, per counter, the increments *sent* (the ask was started) and
//! *acknowledged* (the ask answered `Ok`); an ask whose node died before it answered, or
//! that failed, may or may not have been applied.
//!
//! **Oracle (a), one activation at a time** ([`double_activations`]), after every step: no
//! actor is *active* on two node processes at once, where an activation is active when
//! it can still change the actor's state: phase `Active` or `Closing` (a claimed or
//! passivating actor finishing its mailbox before it parks its state), not stopped at
//! once (`stopping`: serving lapsed or evicted, it handles nothing after the message in
//! hand), not aborted, on a process that runs (a paused process's activations are frozen;
//! they count again from the first step it runs, by which time its lapsed deadline has
//! stopped them). A `Claiming` activation holds no state and handles nothing yet: it does
//! not count (its claim is what keeps it from running beside the previous holder).
//!
//! **Oracle (b), no acknowledged update lost without a failure that can lose it**
//! ([`losses`]), at the end, after the settle period and a final read of every counter:
//! * `value ≤ sent` (no increment is applied twice; the runtime never re-sends a
//!   forwarded message);
//! * `value ≥ acknowledged` for every counter not *exposed*; a counter is exposed when a
//!   node process that held it (active, closing or parked, sampled every step) crashed,
//!   was downed (Down in some node's table), was evicted (the runtime's eviction count
//!   rose: downed, replaced, removed, or another cluster id), or left with it still held;
//!   when a process crashed while claiming it (the holder's answer carries the state and
//!   may have been on its way), or crashed after handing it to a claim that was still in
//!   progress (the answer with the state may not have arrived); or when a process that held it was cut off from every
//!   peer (paused or partitioned) for at least the down grace while another process ran
//!   it (a member cut off that long is treated as dead, whether a Down or a restore left
//!   it out): the design's ways of losing state without a durable store.
//! * For exposed counters the loss metric (`troupe_actor_states_lost_total{actor_type=
//!   "counter"}`, summed over every node process of the run, sampled when a process dies)
//!   is reported against the counters found short. It cannot be checked for equality:
//!   the metric's documented gaps (no witness in a one-member cluster, a witness that
//!   died or changed, a state lost by eviction rather than a crash, a failed marker swap)
//!   under-count, and an empty state of a dead holder over-counts. So only the sound
//!   direction is an oracle, and the figures go to the run's summary.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use troupe_actors::HeldActivation;
use troupe_actors::activation::Phase;

/// Per counter: increments sent and acknowledged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Asks started.
    pub sent: u64,
    /// Asks answered `Ok`.
    pub acked: u64,
}

/// The workload's record, shared with the ask tasks on the nodes' runtimes.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    inner: Arc<Mutex<BTreeMap<String, Tally>>>,
}

impl Ledger {
    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Tally>) -> R) -> R {
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g)
    }

    /// An ask to `id` is sent.
    pub fn sent(&self, id: &str) {
        self.with(|m| m.entry(id.to_owned()).or_default().sent += 1);
    }

    /// An ask to `id` was acknowledged.
    pub fn acked(&self, id: &str) {
        self.with(|m| m.entry(id.to_owned()).or_default().acked += 1);
    }

    /// A copy of the tallies.
    pub fn snapshot(&self) -> BTreeMap<String, Tally> {
        self.with(|m| m.clone())
    }
}

/// Whether `a` can change its actor's state now (oracle (a), see the module docs).
pub fn is_active(a: &HeldActivation) -> bool {
    matches!(a.phase, Phase::Active | Phase::Closing) && !a.stopping && !a.aborted
}

/// Oracle (a): `holdings` is, per running node process, its activations; the actors
/// active on more than one, described.
pub fn double_activations(holdings: &[(&str, &[HeldActivation])]) -> Option<String> {
    let mut by_actor: BTreeMap<(&str, &str), Vec<(&str, &HeldActivation)>> = BTreeMap::new();
    for (pod, acts) in holdings {
        for a in acts.iter().filter(|a| is_active(a)) {
            by_actor
                .entry((a.actor_type.as_str(), a.id.as_str()))
                .or_default()
                .push((pod, a));
        }
    }
    let mut out = String::new();
    for ((ty, id), on) in by_actor.iter().filter(|(_, on)| on.len() > 1) {
        let _ = write!(out, "{ty}/{id} active on");
        for (pod, a) in on {
            let g = a.generation;
            let _ = write!(
                out,
                " {pod} ({:?} gen {}.{}.{})",
                a.phase, g.epoch, g.version, g.counter
            );
        }
        out.push('\n');
    }
    (!out.is_empty()).then_some(out)
}

/// What oracle (b) found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LossReport {
    /// Counters whose value is below their acknowledged increments.
    pub short: u64,
    /// Acknowledged increments missing from them, in all.
    pub missing: u64,
    /// The loss metric's rise over the run (every node process).
    pub counted: u64,
    /// Broken promises: unexposed losses and increments applied twice.
    pub violations: Vec<String>,
}

/// Oracle (b): `values` read at the end, `tallies` from the [`Ledger`], `exposed` the
/// counters a failure may have lost, `counted` the loss metric's rise.
pub fn losses(
    values: &BTreeMap<String, i64>,
    tallies: &BTreeMap<String, Tally>,
    exposed: &BTreeSet<String>,
    counted: u64,
) -> LossReport {
    let mut r = LossReport {
        counted,
        ..LossReport::default()
    };
    for (id, t) in tallies {
        let v = values.get(id).copied().unwrap_or(0);
        let v = u64::try_from(v).unwrap_or(0);
        if v > t.sent {
            r.violations.push(format!(
                "counter {id} is {v}, above the {} increments ever sent (one applied twice)",
                t.sent
            ));
        }
        if v < t.acked {
            r.short += 1;
            r.missing += t.acked - v;
            if !exposed.contains(id) {
                r.violations.push(format!(
                    "counter {id} is {v}, below its {} acknowledged increments, and no node \
                     that held it crashed, was downed, evicted or left holding it",
                    t.acked
                ));
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_actors::activation::Generation;

    fn held(id: &str, phase: Phase, stopping: bool) -> HeldActivation {
        HeldActivation {
            actor_type: "counter".into(),
            id: id.into(),
            generation: Generation::default(),
            phase,
            stopping,
            aborted: false,
        }
    }

    #[test]
    fn two_running_activations_of_one_actor_break_oracle_a() {
        let a = [
            held("x", Phase::Active, false),
            held("y", Phase::Active, false),
        ];
        let b = [held("x", Phase::Closing, false)];
        let found = double_activations(&[("p0", &a), ("p1", &b)]);
        assert!(
            found.as_deref().is_some_and(|f| f.contains("counter/x")),
            "{found:?}"
        );
        assert!(!found.unwrap_or_default().contains("counter/y"));
    }

    #[test]
    fn claiming_stopped_or_gone_activations_do_not_count() {
        let a = [held("x", Phase::Active, false)];
        let b = [
            held("x", Phase::Claiming, false),
            held("x", Phase::Gone, false),
            held("x", Phase::Active, true),
        ];
        assert_eq!(double_activations(&[("p0", &a), ("p1", &b)]), None);
    }

    #[test]
    fn a_short_counter_is_a_violation_only_when_unexposed() {
        let tallies: BTreeMap<String, Tally> = [
            ("a".to_owned(), Tally { sent: 5, acked: 4 }),
            ("b".to_owned(), Tally { sent: 5, acked: 4 }),
            ("c".to_owned(), Tally { sent: 2, acked: 2 }),
        ]
        .into();
        let values: BTreeMap<String, i64> = [
            ("a".to_owned(), 1),
            ("b".to_owned(), 1),
            ("c".to_owned(), 3),
        ]
        .into();
        let exposed: BTreeSet<String> = ["a".to_owned()].into();
        let r = losses(&values, &tallies, &exposed, 1);
        assert_eq!((r.short, r.missing, r.counted), (2, 6, 1));
        assert_eq!(r.violations.len(), 2, "{:?}", r.violations);
        assert!(r.violations.iter().any(|v| v.contains("counter b")));
        assert!(r.violations.iter().any(|v| v.contains("applied twice")));
    }
}
