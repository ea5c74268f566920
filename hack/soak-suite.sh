#!/usr/bin/env bash
# `make soak-suite RUNS=N`: the whole end-to-end suite N times in a row on the running
# local cluster, to find the tests that fail by chance. Images and the chart are installed
# once; then each run is `hack/e2e.sh` with its own log. It stops at the first run that
# fails and prints which tests failed and why (the harness's "===== test ... failed" line
# and libtest's failure output); at the end, the runs that passed and the total time.
# usage: soak-suite.sh [RUNS] [cargo test args...]   (RUNS default 3)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
runs="${1:-3}"
shift || true
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "usage: soak-suite.sh RUNS [cargo test args...]"
eval "$("$here/cluster-env.sh")"
kubectl get --raw /readyz >/dev/null 2>&1 || die "the local cluster is not up: run 'make cluster-up' first"

dir="$(mktemp -d /tmp/troupe-soak.XXXXXX)"
started=$(date +%s)
log "soak: setting up images and the chart once"
TROUPE_E2E_LOG="$dir/setup.log" "$here/e2e.sh" --no-run
setup_s=$(( $(date +%s) - started ))
green=0
for i in $(seq 1 "$runs"); do
  run_started=$(date +%s)
  log "soak: run $i of $runs (log $dir/run-$i.log)"
  if TROUPE_E2E_SETUP=0 TROUPE_E2E_LOG="$dir/run-$i.log" "$here/e2e.sh" "$@" >/dev/null 2>"$dir/run-$i.err"; then
    green=$((green + 1))
    log "soak: run $i green in $(( $(date +%s) - run_started ))s"
    "$here/e2e-summary.sh" "$dir/run-$i.log" >&2
    continue
  fi
  log "soak: run $i FAILED after $(( $(date +%s) - run_started ))s; $green green run(s) before it"
  "$here/e2e-summary.sh" "$dir/run-$i.log" >&2
  {
    echo "--- failed tests:"
    grep -E '^test .* \.\.\. FAILED$' "$dir/run-$i.log" || true
    echo "--- why (harness):"
    grep -E '^===== test .* failed' "$dir/run-$i.log" || true
    echo "--- why (libtest failure output, first 80 lines per suite):"
    awk '/^failures:$/ {on = 1; n = 0} on && n < 80 {print; n++} /^test result:/ {on = 0}' "$dir/run-$i.log"
    echo "--- full logs: $dir/run-$i.log ($dir/run-$i.err)"
  } >&2
  exit 1
done
total=$(( $(date +%s) - started ))
log "soak: $green consecutive green run(s) of the whole e2e suite in ${total}s (setup ${setup_s}s, runs $((total - setup_s))s); logs in $dir"
