#!/usr/bin/env bash
# Operator benchmark on the running local cluster (operator installed by the chart):
# creates N ActorClusters (replicas 0, no pods), then times N sequential changes from the
# PATCH to the Deployment carrying the change (seen by a watch), and reads the operator's
# RSS and reconcile-duration histogram from its /metrics.
#   operator/bench/reconcile.sh [--clusters 1000] [--samples 200] [--keep]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
eval "$(make -s cluster-env)"
kubectl get --raw /readyz >/dev/null || { echo "the local cluster is not up" >&2; exit 1; }
cargo run --quiet -p troupe-operator --bin reconcile-bench -- "$@"
