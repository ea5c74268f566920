//! What the simulation's integration tests share: running the `troupe-sim` binary (the one
//! place the virtual clock is installed) with a clean environment, and reading its output.

use std::process::{Command, Output};

/// Runs `troupe-sim` with only `env` among the variables it reads.
pub fn sim(env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_troupe-sim"));
    for var in [
        "SEED",
        "SEEDS",
        "FIRST_SEED",
        "SIM_FAULTS",
        "SIM_SKIP",
        "SHRINK",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    match cmd.output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run troupe-sim: {e}"),
    }
}

/// Its stdout and stderr as one text.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
