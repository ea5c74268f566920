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

/// Runs `seed` and asserts it reached the final reads with no violation at all.
fn holds(seed: &str) {
    let out = sim(&[("SEED", seed)]);
    let t = text(&out);
    assert!(
        t.contains("] actors: "),
        "seed {seed} did not reach the final reads:\n{t}"
    );
    assert!(out.status.success(), "seed {seed}:\n{t}");
}

/// Seed 850 (also 2083 and 4064; found before the membership fixes were merged): a Lease
/// deletion, a leave and a partition lost acknowledged increments without exposure. It
/// holds on the merged code (re-checked with every fix below).
#[test]
fn a_lease_deletion_and_a_leave_lose_no_acknowledged_increment() {
    holds("850");
    holds("2083");
}

/// Seed 255: a claim to a holder paused through a Lease restore timed out; the holder
/// answered it with the state when it resumed, the answer was dropped (its link had been
/// replaced as wedged), and the claim asked again and got nothing: c2 ended 59 below its
/// acknowledged 85. A claimed node now keeps what it handed for a while and sends it again
/// to the same claim (`Handed` in the runtime).
#[test]
fn a_claim_answer_lost_to_a_timeout_is_sent_again() {
    holds("255");
    holds("237");
}

/// Seed 1146: the claimant gave up (aborted) before the paused holder answered; the
/// holder's state was in an answer nobody read, and the holder, owner again later, claimed
/// and activated the counter empty (c0 23 below its acknowledged 73). A node that claims
/// an actor now counts the state it handed away lately among the candidates.
#[test]
fn a_state_handed_to_a_claimant_that_gave_up_is_claimed_back() {
    holds("1146");
}

/// Seed 5871: a leaving node answered a claim across a one-way cut (the answer never
/// arrived) and exited: the claimant activated empty. A draining node now pushes the
/// states it handed lately to their owners like its parked ones (a copy that arrived is
/// superseded there, harmlessly).
#[test]
fn a_leaving_node_pushes_the_states_it_handed_lately() {
    holds("5871");
}

/// Seed 635: the Lease was deleted while the restorer was partitioned; the holder of c1,
/// healthy, rejoined the restored epoch as a new incarnation with its state, but the
/// restorer did not claim from it (another incarnation) and gave up on its old
/// incarnation after the down grace: c1 ended 14 below its acknowledged 157. Across a
/// restore a previous owner's pod is now claimed whatever its incarnation, and a member
/// the restore left out is waited for `restore_grace` (10 s), not the down grace.
#[test]
fn a_restored_epoch_claims_from_the_members_that_rejoin_it() {
    holds("635");
    holds("715");
}

/// Seed 5354: pod-3 handed c1 to pod-5's claim under table v24 while its own table was
/// v20, which did not have pod-5 yet; a message for c1 then made pod-3 the owner by v20
/// and it activated c1 beside pod-5 (one activation at a time broken at 38.02 s). A
/// tombstone from a newer table whose claimant this node does not know yet now makes the
/// message wait for that table.
#[test]
fn a_tombstone_from_an_unseen_table_keeps_the_old_holder_from_activating() {
    holds("5354");
}

/// Seed 270: a claimant crashed while the holder's answer (with the state) was on its way;
/// the oracle did not count the crash as exposing the counter. Seed 121: a holder
/// partitioned through a Lease deletion past the grace, given up by the restorer. Both are
/// the design's ways of losing state without a durable store; the oracle now exposes
/// them (`world.rs`: a claim in flight to a crashed process, a holder cut off past the
/// grace while another process runs the actor).
#[test]
fn crashed_claimants_and_holders_cut_off_past_the_grace_expose_their_counters() {
    holds("270");
    holds("121");
}

/// Seed 1119: two nodes whose tables changed between their pushes handed the same parked
/// state to each other; each acknowledgement removed the sender's copy and the counter
/// was held nowhere (c0 37 below its acknowledged 101). A sender that a newer table made
/// the owner keeps its copy, and only the owner acknowledges a duplicate.
#[test]
fn two_nodes_pushing_one_state_to_each_other_keep_a_copy() {
    holds("1119");
    holds("2358");
}

/// Seeds 1732 and 1590: a state pushed to a node that its sender's table named the owner
/// (but the claimant's did not) was invisible to the claim: the sender answered "nothing
/// here" and the receiver was never asked (c0 of 1732, c2 of 1590 activated empty). A
/// push now leaves a pointer at the sender (`Moved` to the receiver), and a receiver that
/// does not own what it was given pushes it on at once.
#[test]
fn a_state_pushed_to_a_node_that_does_not_own_it_reaches_the_owner() {
    holds("1732");
    holds("1590");
}

/// With a durable store (`SIM_STATE=durable`: the runtime's fenced in-memory store shared
/// by every node process, standing for PostgreSQL), the crashes that lose state in memory
/// mode lose nothing acknowledged, and neither does any other fault: oracle (b) allows
/// no exposure at all then.
#[test]
fn a_durable_store_loses_nothing_acknowledged_under_crashes() {
    let n = seeds();
    let out = sim(&[
        ("SEEDS", &n),
        ("SIM_STATE", "durable"),
        (
            "SIM_FAULTS",
            "crash,delete-pod,pause,partition,lease-deleted",
        ),
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let (checked, short_runs, short, missing, _) = losses(&t);
    assert_eq!(checked.to_string(), n, "{t}");
    assert_eq!((short_runs, short, missing), (0, 0, 0), "{t}");
}

/// Graceful seed 1 (`SIM_FAULTS=scale-up,scale-down,replace`): a leaving node pushed a
/// state to a peer whose older table still named the leaver the owner; the peer pushed it
/// back at once, the leaver took it after its last push and exited holding it (c0 64
/// below its acknowledged 153). A draining node now refuses hand-offs.
#[test]
fn a_leaving_node_takes_no_state_pushed_back_to_it() {
    let out = sim(&[("SEED", "1"), ("SIM_FAULTS", "scale-up,scale-down,replace")]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("short 0 missing 0"), "{t}");
}

/// Seed 5315: pod-0's claim of c4 aborted when a newer table made pod-3 the owner, leaving
/// the state parked at pod-0; pod-3 never activated c4, and when pod-4 (whose history
/// began after pod-0's tables) became the owner it claimed only from pod-3, which
/// answered "nothing here": c4 activated empty and the state pod-0 pushed on was
/// superseded (c4 45 below its acknowledged 126). A node that holds nothing and points
/// nowhere now sends the claimant to the owner before it in its own history (`Moved`).
#[test]
fn a_claimed_node_that_never_held_the_actor_points_at_its_predecessor() {
    holds("5315");
}

/// Seed 8722: pod-3 handed c0's state in its answer to pod-1's claim and was deleted
/// (killed) before the answer arrived; pod-1, still claiming, found pod-3 gone and
/// activated empty, counting the loss (the loss metric rose), but the oracle did not expose
/// c0: the state was in no activation and no parked slot at the kill. A process that dies
/// keeping a handed copy for a claim still in progress now exposes the counter: the
/// design's crash loss without a durable store, counted, not a broken promise.
#[test]
fn a_holder_killed_while_its_claim_answer_is_on_the_wire_exposes_the_counter() {
    holds("8722");
}

/// Seed 6534: pod-0's claim of c4 from pod-2 was out when pod-0 restored a deleted Lease
/// (pod-2 left out, rejoining); the request failed after the restore, and the verdict used
/// the "left out by a restore" time read before the request, which had none: pod-2 was
/// given up at once instead of waited for `restore_grace`, its answer (with the state) was
/// dropped, and c4 activated empty elsewhere (44 below its acknowledged 110, no loss
/// counted). The verdict now reads it after the failure.
#[test]
fn a_restore_during_a_claim_waits_for_the_member_it_left_out() {
    holds("6534");
}

/// Seed 6527: pod-2, paused through a Lease deletion, found two claims of pod-3 for c6
/// queued when it resumed (the first had timed out at pod-3 and was sent again); the first
/// took the state (its answer went to the abandoned request), the second found nothing
/// parked and, having seen the actor held when it arrived, answered "nothing here": c6
/// activated empty (20 below its acknowledged 67). A claim that finds the state gone to a
/// concurrent claim now sends the copy kept for the same claimant, or points at the other.
#[test]
fn a_repeated_claim_queued_beside_the_first_gets_the_state_too() {
    holds("6527");
}

/// Durable seeds 29 and 422 (`SIM_FAULTS=crash,delete-pod,pause,partition,lease-deleted`):
/// every pod died while the Lease was deleted, so a fresh cluster formed (another cluster
/// id, epochs from 0 again). The store still named owners of the earlier life (epoch 5),
/// and `write_through::generation` refused every activation whose table was "behind" a
/// stored owner: every counter answered nothing for good. A life's first epoch is now the
/// time it formed (`MemberTable::first_epoch`), above every epoch of an earlier life.
#[test]
fn a_cluster_formed_anew_activates_actors_an_earlier_life_stored() {
    for seed in ["29", "422"] {
        let out = sim(&[
            ("SEED", seed),
            ("SIM_STATE", "durable"),
            (
                "SIM_FAULTS",
                "crash,delete-pod,pause,partition,lease-deleted",
            ),
        ]);
        let t = text(&out);
        assert!(out.status.success(), "seed {seed}: {t}");
    }
}
