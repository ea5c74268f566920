#!/usr/bin/env bash
# Runs every comparative benchmark of BENCHMARKS.md in one go and prints the medians side by
# side, then the client-API load test against a bare axum floor. Loopback only; short runs
# (criterion --warm-up-time 1 --measurement-time 3). Usage: bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p troupe-bench --bench local --bench remote --bench http -- \
  --warm-up-time 1 --measurement-time 3 "$@"
python3 - <<'PY'
import json, glob, os
rows = []
for f in sorted(glob.glob("target/criterion/*/*/new/estimates.json")):
    group, name = f.split("/")[2:4]
    d = json.load(open(f))
    rows.append((group, name, d["median"]["point_estimate"]))
print("\n%-28s %-28s %14s" % ("group", "contender", "median ns/op"))
for g, n, m in rows:
    print("%-28s %-28s %14.1f" % (g, n, m))
PY
cargo build --release -p troupe-bench --bin loadgen
for mode in "" "--baseline"; do
  echo "== loadgen --serve $mode"
  ./target/release/loadgen --serve $mode --requests 100000 --concurrency 64 --duration 20
done
