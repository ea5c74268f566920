#!/usr/bin/env bash
# Prints one line per test binary of a `cargo test` log: suite, result, tests passed and
# failed, and the duration libtest measured ("finished in"), e.g.
#   e2e suite  cluster        ok      3 passed  0 failed    41.2s
# A binary that started but printed no result (crashed, killed) shows "did not finish".
# usage: e2e-summary.sh LOG
set -euo pipefail
log="${1:?usage: e2e-summary.sh LOG}"
[ -f "$log" ] || exit 0
awk '
  /^ *Running (tests\/|unittests )/ {
    if (suite != "") printf "  e2e suite  %-14s did not finish\n", suite
    suite = ($2 == "unittests") ? "unit(" $3 ")" : $2
    sub(/^tests\//, "", suite); sub(/\.rs/, "", suite)
    next
  }
  /^test result: / && suite != "" {
    result = $3; sub(/\.$/, "", result)
    passed = $4; failed = $6
    d = $NF; sub(/s$/, "", d)
    printf "  e2e suite  %-14s %-7s %3d passed %2d failed  %7.1fs\n", suite, result, passed, failed, d
    suite = ""
  }
  END { if (suite != "") printf "  e2e suite  %-14s did not finish\n", suite }
' "$log"
