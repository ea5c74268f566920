#!/usr/bin/env bash
# Runs the end-to-end suite against the running local cluster: builds and imports the
# images, installs the operator with the project's own Helm chart (so it runs under the
# chart's RBAC), then runs `cargo test -p troupe-e2e`. Extra arguments go to cargo test,
# e.g. `hack/e2e.sh --test cluster`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
eval "$("$here/cluster-env.sh")"
kubectl get --raw /readyz >/dev/null 2>&1 || die "the local cluster is not up: run 'make cluster-up' first"

"$here/images.sh" all
if [ -f "$root/charts/troupe/Chart.yaml" ]; then
  log "installing the operator with charts/troupe"
  helm upgrade --install troupe "$root/charts/troupe" --namespace troupe-system --create-namespace \
    --wait --timeout 180s
else
  die "charts/troupe is missing: the operator cannot be installed"
fi
cd "$root"
cargo test --no-fail-fast -p troupe-e2e "$@" -- --test-threads=2
