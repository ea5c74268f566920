//! The actor runtime in the simulation, through the `troupe-sim` binary (the one place the
//! virtual clock is installed): the workload runs and replays, graceful membership changes
//! lose no acknowledged increment, and crashes that do lose some are seen and counted.
//!
//! `SIM_ACTOR_TEST_SEEDS` sets how many seeds each batch runs (default 12).

mod common;

use common::{sim, text};

fn seeds() -> String {
    std::env::var("SIM_ACTOR_TEST_SEEDS").unwrap_or_else(|_| "12".into())
}

/// The numbers of the batch summary's actor line: (runs checked, runs short, counters
/// short, increments missing, loss metric).
fn losses(t: &str) -> (u64, u64, u64, u64, u64) {
    let line = t
        .lines()
        .find(|l| l.starts_with("actor state losses"))
        .unwrap_or_else(|| panic!("no actor summary in:\n{t}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    match nums[..] {
        [a, b, c, d, e, ..] => (a, b, c, d, e),
        _ => panic!("unexpected actor summary: {line}"),
    }
}

#[test]
fn the_workload_runs_and_replays_exactly() {
    let a = text(&sim(&[("SEED", "5")]));
    let b = text(&sim(&[("SEED", "5")]));
    let line = a
        .lines()
        .find(|l| l.contains("] actors: "))
        .unwrap_or_else(|| panic!("no final counter reads:\n{a}"));
    let acked: u64 = line
        .split("acked ")
        .skip(1)
        .filter_map(|s| s.split(',').next()?.parse::<u64>().ok())
        .sum();
    assert!(acked > 50, "hardly any increment acknowledged: {line}");
    assert_eq!(a, b, "seed 5 did not replay exactly");
}

#[test]
fn graceful_membership_changes_lose_no_acknowledged_increment() {
    let n = seeds();
    let out = sim(&[("SEEDS", &n), ("SIM_FAULTS", "scale-up,scale-down,replace")]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let (checked, short_runs, short, _, _) = losses(&t);
    assert_eq!(checked.to_string(), n, "{t}");
    assert_eq!((short_runs, short), (0, 0), "{t}");
}

#[test]
fn crashes_that_lose_state_are_exposed_and_counted() {
    let out = sim(&[("SEEDS", &seeds()), ("SIM_FAULTS", "crash,delete-pod")]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let (checked, short_runs, short, missing, counted) = losses(&t);
    assert!(checked > 0, "{t}");
    assert!(
        short_runs > 0 && short > 0 && missing > 0,
        "no crash lost anything:\n{t}"
    );
    assert!(counted > 0, "losses were never counted by the metric:\n{t}");
}

/// Seed 289 (found by `make simulate`): pod-0 is partitioned while it can still reach the
/// store, so it serves on; the coordinator downs it and removes it one second later
/// (`down_linger`). pod-1 activated counter c5 under the table without pod-0 at once,
/// without claiming it (previous owners gone from the table were taken to hold nothing),
/// while pod-0 still ran it. A member removed without a leave is now claimed, and waited
/// for, until the down grace has passed since it was first seen Down or gone.
#[test]
fn a_holder_removed_right_after_its_down_is_claimed_before_the_actor_moves() {
    let t = text(&sim(&[("SEED", "289")]));
    assert!(!t.contains("one activation at a time"), "{t}");
    assert!(
        t.contains("] actors: "),
        "the run did not reach the final reads:\n{t}"
    );
}

/// Open finding (seed 850, also 2083 and 4064): acknowledged increments of a counter go
/// missing although no process that held it crashed, was downed, evicted or left holding
/// it. Shrunk (`SEED=850 SHRINK=1 make simulate`): pod-1 partitioned 8.5 s, pod-2 slowed,
/// the Lease deleted (a new cluster id forms), pod-0 scaled down, pod-2 deleted and
/// recreated, pod-3 scaled up; c5 ends 4 below its acknowledged 94. Not yet diagnosed: a
/// hand-off refused as `Conflict` while the leaving pod-0 drained into the new cluster is
/// the first suspect; or a gap in the oracle's exposure sampling (once per step).
#[test]
#[ignore = "open: acknowledged increments lost without a crash (seed 850), see the doc comment"]
fn a_lease_deletion_and_a_leave_lose_no_acknowledged_increment() {
    let t = text(&sim(&[("SEED", "850")]));
    assert!(!t.contains("no acknowledged update lost"), "{t}");
}

/// Open finding (seed 121 of the sweep, see `OPEN_SEEDS` in tests/simulate.rs; shrunk with
/// `SEED=121 SHRINK=1 make simulate` to 6 faults): pod-3 and pod-0 are deleted and come
/// back, pod-2 is partitioned for 8.2 s, and the Lease is deleted during the partition.
/// pod-2 cannot be downed (pod-1 alone is no majority of the live Up members), so nothing
/// marks its counters exposed; the restored epoch leaves it out, and the restorer gives it
/// up after the down grace and activates its counters without their states (c0 ends 72
/// below its acknowledged 114). It is the rule for a member cut off past the grace, here
/// reached through a restore rather than a Down; the oracle does not count it as
/// exposure, and whether it should (or the restorer should wait for a member it cannot
/// reach) is open. (Seed 25, once beside it, was an oracle gap: a process downed under
/// the incarnation it got from a restore was not recognised; fixed in `world.rs`.)
#[test]
#[ignore = "open: a holder partitioned during a Lease deletion loses its states unexposed (seed 121)"]
fn a_holder_cut_off_during_a_restore_loses_no_acknowledged_increment() {
    let t = text(&sim(&[("SEED", "121")]));
    assert!(!t.contains("no acknowledged update lost"), "seed 121:\n{t}");
}
