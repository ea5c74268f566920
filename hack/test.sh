#!/usr/bin/env bash
# `make test`: the whole gate, in order of cost. Lint and unit tests first; then a local
# cluster is brought up, the chart is checked (hack/check-chart.sh needs the helm that
# cluster-up builds), the end-to-end suite runs against it, and the cluster is torn
# down whatever happened. If the cluster cannot come up the run fails with the reason:
# an end-to-end test never passes by skipping. At the end, pass or fail, it prints how
# long each phase and each e2e suite took, so that CI time stays visible.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
cd "$root"
started=$(date +%s)
e2e_log="$(mktemp /tmp/troupe-e2e.XXXXXX.log)"
phases=()

# phase NAME COMMAND...: runs COMMAND, records its duration and result.
phase() {
  local name="$1" t0 rc=0
  shift
  log "== $name (at +$(( $(date +%s) - started ))s)"
  t0=$(date +%s)
  "$@" || rc=$?
  phases+=("$(printf '  phase      %-14s %-7s %22s %7.1fs' "$name" "$([ "$rc" = 0 ] && echo ok || echo "FAILED")" "" "$(( $(date +%s) - t0 ))")")
  return "$rc"
}

summary() {
  local rc=$?
  trap - EXIT
  if [ -n "${cluster_started:-}" ]; then
    phase "cluster down" "$here/cluster-down.sh" || true
  fi
  {
    echo "== timing summary ($( [ "$rc" = 0 ] && echo passed || echo "FAILED, exit $rc" ), total $(( $(date +%s) - started ))s)"
    printf '%s\n' "${phases[@]}"
    "$here/e2e-summary.sh" "$e2e_log" || true
  } >&2
  exit "$rc"
}
trap summary EXIT

phase "deps" "$here/install-deps.sh"
phase "lint" make --no-print-directory lint
phase "unit tests" make --no-print-directory unit
# Every fuzz target for a few seconds from the committed corpus (`make fuzz` runs minutes).
phase "fuzz smoke" "$here/fuzz.sh" "${TROUPE_FUZZ_SMOKE_SECS:-5}"
cluster_started=1
phase "cluster up" "$here/cluster-up.sh"
# The chart's checks need helm, which cluster-up builds; they use no cluster.
phase "chart" "$here/check-chart.sh"
phase "e2e setup" env TROUPE_E2E_LOG=/dev/null "$here/e2e.sh" --no-run
phase "e2e" env TROUPE_E2E_SETUP=0 TROUPE_E2E_LOG="$e2e_log" "$here/e2e.sh"
