#!/usr/bin/env bash
# Runs the end-to-end suite against the running local cluster: builds and imports the
# images, installs the operator with the project's own Helm chart (so it runs under the
# chart's RBAC), then runs `cargo test -p troupe-e2e` and prints how long each suite took.
# Extra arguments go to cargo test, e.g. `hack/e2e.sh --test cluster`; those after a `--`
# go to the test binaries, e.g. `hack/e2e.sh --test faults -- --include-ignored`.
#   TROUPE_E2E_SETUP=0   skip the images and the chart (hack/soak-suite.sh does them once)
#   TROUPE_E2E_LOG=FILE  keep cargo's output there (default: a temporary file)
# The fault suite (e2e/tests/faults.rs) appends its figures to FILE.figures; they are
# printed after the summary, so that they show without --nocapture.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
eval "$("$here/cluster-env.sh")"
kubectl get --raw /readyz >/dev/null 2>&1 || die "the local cluster is not up: run 'make cluster-up' first"

if [ "${TROUPE_E2E_SETUP:-1}" != 0 ]; then
  "$here/images.sh" all
  [ -f "$root/charts/troupe/Chart.yaml" ] || die "charts/troupe is missing: the operator cannot be installed"
  log "installing the operator with charts/troupe"
  helm upgrade --install troupe "$root/charts/troupe" --namespace troupe-system --create-namespace \
    --wait --timeout 180s
  # The image tag does not change with the code: restart the operator so that it runs the
  # image just imported, not the one a warm cluster started it with.
  kubectl -n troupe-system rollout restart deployment/troupe >/dev/null
  kubectl -n troupe-system rollout status deployment/troupe --timeout 180s >/dev/null
fi
cd "$root"
out="${TROUPE_E2E_LOG:-$(mktemp /tmp/troupe-e2e.XXXXXX.log)}"
figures="$out.figures"
[ "$out" = /dev/null ] && figures="$(mktemp /tmp/troupe-e2e-figures.XXXXXX)"
: >"$figures"
rc=0
cargo_args=()
test_args=()
for a in "$@"; do
  if [ "${#test_args[@]}" = 0 ] && [ "$a" = -- ] && [ -z "${split:-}" ]; then split=1; continue; fi
  if [ -n "${split:-}" ]; then test_args+=("$a"); else cargo_args+=("$a"); fi
done
TROUPE_E2E_FIGURES="$figures" cargo test --no-fail-fast -p troupe-e2e "${cargo_args[@]}" -- --test-threads=2 "${test_args[@]}" 2>&1 | tee "$out" || rc=$?
log "e2e suites (cargo's log: $out):"
"$here/e2e-summary.sh" "$out" >&2
if [ -s "$figures" ]; then
  log "fault figures ($figures):"
  cat "$figures" >&2
fi
exit "$rc"
