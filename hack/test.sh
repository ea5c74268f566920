#!/usr/bin/env bash
# `make test`: the whole gate, in order of cost. Lint and unit tests first; then a local
# cluster is brought up, the end-to-end suite runs against it, and the cluster is torn
# down whatever happened. If the cluster cannot come up the run fails with the reason:
# an end-to-end test never passes by skipping.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
cd "$root"
started=$(date +%s)
stage() { log "== $* (at +$(( $(date +%s) - started ))s)"; }

"$here/install-deps.sh"
stage "lint"
make --no-print-directory lint
stage "unit tests"
make --no-print-directory unit

stage "local cluster up"
trap '"$here/cluster-down.sh" || true' EXIT
"$here/cluster-up.sh"
stage "end-to-end tests"
"$here/e2e.sh"
stage "done"
