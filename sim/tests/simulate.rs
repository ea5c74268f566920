//! The simulation's own promises: a seed replays exactly, and seeds hold the invariants.
//!
//! `SIM_TEST_SEEDS` sets how many seeds `seeds_hold_the_invariants` runs (default 30, a
//! few seconds each in a debug build; `cargo test --profile sim` runs them ~8x faster).

use troupe_sim::{Config, FaultKind, run, run_seeds};

/// Fault kinds left out of `seeds_hold_the_invariants` because they break an invariant in
/// the membership code as it is, with the finding that fixes them. Remove a kind here when
/// its fix is merged; `make simulate` always draws every kind.
const OPEN_FINDINGS: &[(FaultKind, &str)] = &[
    (
        FaultKind::LeaseDeleted,
        "H1: a deleted Lease lets a second cluster form and serve beside the first",
    ),
    (
        FaultKind::Pause,
        "M2: a read sent before a pause is taken as fresh store contact after it",
    ),
    (
        FaultKind::StoreSlow,
        "M2: a slow read is stamped as store contact on arrival, not when sent",
    ),
];

#[test]
fn a_seed_replays_exactly() {
    let cfg = Config::default();
    for seed in [3, 11] {
        let a = run(seed, &cfg);
        let b = run(seed, &cfg);
        assert!(
            a.trace.len() > 20,
            "seed {seed} did almost nothing:\n{}",
            a.report()
        );
        let first_difference = a
            .trace
            .iter()
            .zip(&b.trace)
            .position(|(x, y)| x != y)
            .map(|i| format!("line {i}:\n  {}\n  {}", a.trace[i], b.trace[i]));
        assert_eq!(first_difference, None, "seed {seed} did not replay exactly");
        assert_eq!(
            a.trace.len(),
            b.trace.len(),
            "seed {seed}: traces differ in length"
        );
        assert_eq!(a.violation, b.violation);
    }
    let other = run(4, &cfg);
    assert_ne!(
        run(3, &cfg).trace,
        other.trace,
        "two seeds, one trace: the seed is ignored"
    );
}

#[test]
fn seeds_hold_the_invariants() {
    let mut cfg = Config::default();
    for (kind, _) in OPEN_FINDINGS {
        cfg.shape.kinds.remove(kind);
    }
    let seeds: u64 = std::env::var("SIM_TEST_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let failures: Vec<String> = run_seeds(0, seeds, &cfg, threads)
        .into_iter()
        .filter_map(|s| s.report)
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds broke an invariant; the first:\n{}",
        failures.len(),
        failures.first().map(String::as_str).unwrap_or("")
    );
}

/// Runs `seed` with only `kinds` drawn and asserts it breaks no invariant.
fn assert_seed_holds(seed: u64, kinds: &[FaultKind]) {
    let mut cfg = Config::default();
    if !kinds.is_empty() {
        cfg.shape.kinds = kinds.iter().copied().collect();
    }
    let out = run(seed, &cfg);
    assert!(out.violation.is_none(), "{}", out.report());
}

#[test]
#[ignore = "open finding H1 (membership helper): un-ignore when the restore design lands"]
fn h1_a_deleted_lease_while_a_node_is_cut_from_the_store_gives_one_serving_cluster() {
    // Shrunk: 4 pods; store-cut pod-2 at 20.61 s; Lease deleted at 21.05 s. pod-0 forms a
    // new cluster alone while pod-2 serves the old one on its peers' store age.
    assert_seed_holds(9, &[]);
}

#[test]
#[ignore = "open finding M2 (membership helper): un-ignore when store contact is stamped at send"]
fn m2_a_node_paused_past_its_eviction_does_not_serve_on_a_stale_read() {
    // Shrunk: 4 pods; pause pod-1 6.97-13.15 s, pod-3 14.51-24.30 s, pod-1 17.62-26.19 s.
    // pod-1 is downed at 20.53 s; on resume a read sent before the pause completes, is
    // stamped as fresh contact, and pod-1 serves on its old table (v13).
    assert_seed_holds(9, &[FaultKind::Pause]);
}
