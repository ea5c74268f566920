//! `troupe-sim`: runs seeds of the simulation (membership and actor runtime; see the crate
//! docs).
//!
//! Environment: `SEED=<n>` runs that one seed and prints its full trace; otherwise
//! `SEEDS=<n>` (default 10000) seeds from `FIRST_SEED` (default 0) on `SIM_THREADS`
//! threads (default: one per core). `SIM_FAULTS=a,b` draws
//! only those fault kinds, `SIM_SKIP=a,b` leaves those out; with `SEED`, `SHRINK=1` also
//! prints the failing schedule with as few faults as still fail. Exits 1 on any violation.
//!
//! `SIM_STATE=durable` keeps actor states in a fenced store shared by every node process
//! (standing for the cluster's PostgreSQL); oracle (b) then allows no loss at all.
//!
//! Diagnosing a seed: `SIM_HOLDINGS=1` adds a trace line whenever what a process holds of
//! a counter changes (phase, generation, parked copies); `SIM_LOG=<filter>` (e.g.
//! `troupe_actors=debug`) prints the nodes' own log events on stderr, each in a `node`
//! span naming its pod.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use troupe_sim::{Config, FaultKind, run, run_seeds, shrink};

troupe_sim::install_virtual_clock!();

fn kinds(var: &str) -> Result<Option<Vec<FaultKind>>, String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v
            .split(',')
            .map(|s| s.trim().parse::<FaultKind>())
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        _ => Ok(None),
    }
}

fn number(var: &str, default: u64) -> Result<u64, String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map_err(|e| format!("{var}={v:?}: {e}")),
        _ => Ok(default),
    }
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("troupe-sim: {e}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<ExitCode, String> {
    if let Ok(filter) = std::env::var("SIM_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
                "troupe_sim=info,{filter}"
            )))
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .without_time()
            .init();
    }
    let mut cfg = Config {
        trace_holdings: std::env::var("SIM_HOLDINGS").is_ok_and(|v| v == "1"),
        durable: match std::env::var("SIM_STATE").as_deref() {
            Ok("durable") => true,
            Ok("memory") | Err(_) => false,
            Ok(other) => return Err(format!("SIM_STATE={other:?}: memory or durable")),
        },
        ..Config::default()
    };
    if let Some(only) = kinds("SIM_FAULTS")? {
        cfg.shape.kinds = only.into_iter().collect();
    }
    if let Some(skip) = kinds("SIM_SKIP")? {
        for k in skip {
            cfg.shape.kinds.remove(&k);
        }
    }
    if std::env::var("SEED").is_ok_and(|v| !v.trim().is_empty()) {
        let seed = number("SEED", 0)?;
        let out = run(seed, &cfg);
        for line in &out.trace {
            println!("{line}");
        }
        println!("{}", out.report());
        if out.violation.is_some()
            && std::env::var("SHRINK").is_ok_and(|v| v == "1")
            && let Some(min) = shrink(seed, &cfg)
        {
            println!(
                "--- shrunk to {} of {} faults:",
                min.schedule.faults.len(),
                out.schedule.faults.len()
            );
            for line in &min.trace {
                println!("{line}");
            }
            println!("{}", min.report());
        }
        return Ok(if out.violation.is_some() {
            ExitCode::FAILURE
        } else {
            println!("seed {seed}: no violation");
            ExitCode::SUCCESS
        });
    }
    let seeds = number("SEEDS", 10_000)?;
    let first = number("FIRST_SEED", 0)?;
    let started = Instant::now();
    let mut faults: BTreeMap<FaultKind, u64> = BTreeMap::new();
    let mut violations: Vec<(u64, &'static str)> = Vec::new();
    let (mut checked, mut short_runs, mut short, mut missing, mut counted) = (0u64, 0, 0, 0, 0);
    let threads = match number("SIM_THREADS", 0)? {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => usize::try_from(n).unwrap_or(1),
    };
    for out in run_seeds(first, seeds, &cfg, threads) {
        for (k, n) in &out.faults {
            *faults.entry(*k).or_default() += n;
        }
        if let Some(l) = &out.losses {
            checked += 1;
            short_runs += u64::from(l.short > 0);
            short += l.short;
            missing += l.missing;
            counted += l.counted;
        }
        if let Some(v) = &out.violation {
            if violations.is_empty() {
                println!("{}", out.report.as_deref().unwrap_or(""));
            }
            println!(
                "seed {}: {} at {:.3}s",
                out.seed,
                v.invariant,
                v.at.as_secs_f64()
            );
            violations.push((out.seed, v.invariant));
        }
    }
    let took = started.elapsed();
    println!("seeds run: {seeds} (from {first}, {threads} threads)");
    println!("violations: {}", violations.len());
    let mut by_invariant: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (seed, inv) in &violations {
        by_invariant.entry(inv).or_default().push(*seed);
    }
    for (inv, seeds) in &by_invariant {
        let shown: Vec<String> = seeds.iter().take(10).map(u64::to_string).collect();
        println!("  {inv}: {} (seeds {})", seeds.len(), shown.join(", "));
    }
    println!(
        "actor state losses (runs that reached the final reads: {checked}): {short_runs} runs \
         with {short} counters short by {missing} acknowledged increments in all, all exposed \
         to a crash, downing, eviction or unfinished leave; loss metric rose by {counted}"
    );
    println!("faults injected:");
    for (k, n) in &faults {
        println!("  {k:<14} {n}");
    }
    println!("wall time: {:.1}s", took.as_secs_f64());
    Ok(if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
