#!/usr/bin/env bash
# Checks charts/troupe in seconds, with no cluster (it never talks to one: KUBECONFIG points
# at a stand-in API server for the one check that needs `lookup`):
#   1. helm lint --strict, with the defaults and with every option on (ci/all-on-values.yaml);
#   2. helm template: the defaults render no monitoring object and a versionPriority below
#      prometheus-adapter's 100; every option on renders each object it should; the PDB
#      follows replicas; manifests/install.yaml is what manifests/render.sh makes now;
#   3. promtool check rules and promtool test rules (hack/tests/chart-alerts.test.yaml) on
#      the rules of the rendered PrometheusRule;
#   4. every troupe_* metric the rules and the dashboard name is one the code registers, and
#      the dashboard is valid JSON;
#   5. the custom-metrics guard: install refuses beside another provider's APIService, and
#      goes ahead beside this release's own, or with customMetrics.enabled=false.
# Needs helm (hack/build-k8s.sh builds it; `make cluster-up` runs that) and promtool
# (Debian's prometheus package, hack/install-deps.sh). Missing either is an error, never a skip.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
chart="$root/charts/troupe"
all_on="$chart/ci/all-on-values.yaml"

helm="${HELM:-$HELM_BIN/helm}"
if [ ! -x "$helm" ]; then
  helm="$(command -v helm)" || die "helm is missing: hack/build-k8s.sh builds it into $HELM_BIN (make cluster-up runs it)"
fi
command -v promtool >/dev/null || die "promtool is missing: hack/install-deps.sh installs it (Debian package prometheus)"
command -v jq >/dev/null || die "jq is missing: hack/install-deps.sh installs it"
command -v python3 >/dev/null || die "python3 is missing: hack/install-deps.sh installs it"

work="$(mktemp -d /tmp/troupe-check-chart.XXXXXX)"
fake_pid=""
cleanup() {
  [ -n "$fake_pid" ] && kill "$fake_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
# Nothing below may reach a real cluster.
export KUBECONFIG="$work/kubeconfig"
: >"$KUBECONFIG"
failed=0
fail() { log "check-chart: FAILED: $*"; failed=1; }
ok() { log "check-chart: ok: $*"; }

# render NAME ARGS...: helm template into $work/NAME.yaml.
render() {
  local name="$1"
  shift
  "$helm" template troupe "$chart" --namespace troupe-system "$@" >"$work/$name.yaml"
}
# count FILE KIND: how many objects of KIND the rendered FILE holds.
count() { grep -c "^kind: $2\$" "$work/$1.yaml" || true; }

# 1. lint
for values in "" "$all_on"; do
  if "$helm" lint --strict "$chart" ${values:+-f "$values"} >"$work/lint.log" 2>&1; then
    ok "helm lint --strict ${values:+-f ${values#"$root"/}}"
  else
    cat "$work/lint.log" >&2
    fail "helm lint --strict ${values:+-f ${values#"$root"/}}"
  fi
done

# 2. template
render default
for kind in PodMonitor ServiceMonitor PrometheusRule PodDisruptionBudget; do
  [ "$(count default "$kind")" = 0 ] || fail "the defaults render a $kind"
done
grep -q 'grafana_dashboard' "$work/default.yaml" && fail "the defaults render the dashboard ConfigMap"
grep -q 'imagePullSecrets' "$work/default.yaml" && fail "the defaults render imagePullSecrets"
priority="$(sed -n '/^kind: APIService$/,/^---/s/^  versionPriority: //p' "$work/default.yaml")"
if [ -n "$priority" ] && [ "$priority" -lt 100 ]; then
  ok "defaults: no monitoring objects, APIService versionPriority $priority (< 100)"
else
  fail "the default APIService versionPriority is '${priority}', not below prometheus-adapter's 100"
fi

render all -f "$all_on"
for want in "PodMonitor 2" "ServiceMonitor 2" "PrometheusRule 1" "PodDisruptionBudget 1" "APIService 1"; do
  read -r kind n <<<"$want"
  [ "$(count all "$kind")" = "$n" ] || fail "every option on: $(count all "$kind") ${kind}s rendered, want $n"
done
grep -q '^    grafana_dashboard: "1"$' "$work/all.yaml" || fail "every option on: no ConfigMap labelled grafana_dashboard"
grep -A1 '^      imagePullSecrets:$' "$work/all.yaml" | grep -q 'name: regcred' || fail "every option on: imagePullSecrets not on the operator pod"
grep -q '^          imagePullPolicy: IfNotPresent$' "$work/all.yaml" || fail "the operator container has no imagePullPolicy"
render pdb-auto-2 --set replicas=2
render pdb-off-2 --set replicas=2 --set podDisruptionBudget.enabled=false
[ "$(count pdb-auto-2 PodDisruptionBudget)" = 1 ] || fail "podDisruptionBudget.enabled=auto with 2 replicas renders no PDB"
[ "$(count pdb-off-2 PodDisruptionBudget)" = 0 ] || fail "podDisruptionBudget.enabled=false renders a PDB"
render no-cm -f "$all_on" --set customMetrics.enabled=false
grep -q 'TroupeCustomMetricsAPIDown' "$work/no-cm.yaml" && fail "customMetrics.enabled=false still renders TroupeCustomMetricsAPIDown"
if "$helm" template troupe "$chart" --set monitoring.podMonitor.enabeld=true >/dev/null 2>&1; then
  fail "values.schema.json accepts a misspelt key (monitoring.podMonitor.enabeld)"
fi
HELM="$helm" "$root/manifests/render.sh" "$work/install.yaml"
if diff -u "$root/manifests/install.yaml" "$work/install.yaml" >"$work/install.diff"; then
  ok "helm template: every option on renders each object; manifests/install.yaml is current"
else
  cat "$work/install.diff" >&2
  fail "manifests/install.yaml is stale: run manifests/render.sh and commit it"
fi

# 3. promtool on the rendered rules (a PrometheusRule's spec is a rules file).
sed -n '/^kind: PrometheusRule$/,/^---/p' "$work/all.yaml" | sed -n '/^spec:$/,/^---/{/^spec:$/d;/^---/d;s/^  //;p}' >"$work/rules.yaml"
cp "$here/tests/chart-alerts.test.yaml" "$work/"
if promtool check rules "$work/rules.yaml" >"$work/promtool.log" 2>&1 &&
  promtool test rules "$work/chart-alerts.test.yaml" >>"$work/promtool.log" 2>&1; then
  ok "promtool check rules: $(grep -o '[0-9]* rules found' "$work/promtool.log"); promtool test rules: $(grep -c '^  - name:' "$here/tests/chart-alerts.test.yaml") tests pass"
else
  cat "$work/promtool.log" >&2
  fail "promtool on the chart's rules"
fi

# 4. metric names and the dashboard
dashboard="$chart/files/dashboards/troupe.json"
jq -e '.panels | length > 0' "$dashboard" >/dev/null || fail "$dashboard is not a dashboard"
mapfile -t rust < <(cd "$root" && git ls-files -- 'actors/*.rs' 'node/*.rs' 'operator/*.rs' 'contract/*.rs' 'state-postgres/*.rs')
registered="$(cd "$root" && grep -ohE '"troupe_[a-z0-9_]+"' "${rust[@]}" | tr -d '"' | sort -u)"
used="$( { cat "$work/rules.yaml"; jq -r '.. | .expr? // empty' "$dashboard"; } | grep -oE '\btroupe_[a-z0-9_]+' | sort -u)"
unknown=()
for m in $used; do
  base="$(sed -E 's/_(bucket|sum|count)$//' <<<"$m")"
  grep -qx "$m" <<<"$registered" || grep -qx "$base" <<<"$registered" || unknown+=("$m")
done
if [ "${#unknown[@]}" = 0 ]; then
  ok "the rules and the dashboard name $(wc -w <<<"$used") troupe_* metrics, all registered in the code"
else
  fail "the rules or the dashboard name metrics the code does not register: ${unknown[*]}"
fi

# 5. the custom-metrics guard, against a stand-in API server
# guard NAME APISERVICES_JSON WANT(ok|refused) HELM_ARGS...
guard() {
  local name="$1" items="$2" want="$3" got
  shift 3
  printf '%s\n' "$items" >"$work/apiservices.json"
  rm -f "$work/port"
  python3 "$here/tests/fake-apiserver.py" "$work/apiservices.json" "$work/port" 2>>"$work/fake.log" &
  fake_pid=$!
  for _ in $(seq 50); do [ -s "$work/port" ] && break; sleep 0.1; done
  [ -s "$work/port" ] || die "the stand-in API server did not start: $(cat "$work/fake.log")"
  cat >"$KUBECONFIG" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: stand-in, cluster: {server: "http://127.0.0.1:$(cat "$work/port")"}}]
users: [{name: stand-in, user: {token: none}}]
contexts: [{name: stand-in, context: {cluster: stand-in, user: stand-in}}]
current-context: stand-in
EOF
  if "$helm" template troupe "$chart" --namespace troupe-system --dry-run=server "$@" >/dev/null 2>"$work/guard.log"; then
    got=ok
  else
    got=refused
  fi
  kill "$fake_pid" 2>/dev/null
  wait "$fake_pid" 2>/dev/null || true
  fake_pid=""
  : >"$KUBECONFIG"
  if [ "$got" != "$want" ]; then
    cat "$work/guard.log" >&2
    fail "custom-metrics guard, $name: $got, want $want"
    guard_failed=1
  elif [ "$got" = refused ] && ! grep -q 'customMetrics.enabled=false' "$work/guard.log"; then
    cat "$work/guard.log" >&2
    fail "custom-metrics guard, $name: refused without saying what to set"
    guard_failed=1
  fi
}
apiservice() { # NAME RELEASE RELEASE_NAMESPACE
  printf '{"apiVersion":"apiregistration.k8s.io/v1","kind":"APIService","metadata":{"name":"%s","annotations":{"meta.helm.sh/release-name":"%s","meta.helm.sh/release-namespace":"%s"}},"spec":{"group":"custom.metrics.k8s.io","version":"%s","service":{"name":"%s","namespace":"%s"}}}' \
    "$1" "$2" "$3" "${1%%.*}" "$2" "$3"
}
guard_failed=0
local_v1='{"apiVersion":"apiregistration.k8s.io/v1","kind":"APIService","metadata":{"name":"v1."},"spec":{"version":"v1"}}'
adapter="$(apiservice v1beta1.custom.metrics.k8s.io prometheus-adapter monitoring)"
guard "no provider" "[$local_v1]" ok
guard "prometheus-adapter's v1beta1" "[$local_v1, $adapter]" refused
guard "another release's v1beta2" "[$(apiservice v1beta2.custom.metrics.k8s.io troupe other-ns)]" refused
guard "this release's own v1beta2 (upgrade)" "[$local_v1, $(apiservice v1beta2.custom.metrics.k8s.io troupe troupe-system)]" ok
guard "prometheus-adapter's, customMetrics.enabled=false" "[$adapter]" ok --set customMetrics.enabled=false
[ "$guard_failed" = 0 ] && ok "custom-metrics guard: refuses beside another provider, installs beside its own"

[ "$failed" = 0 ] || die "charts/troupe failed its checks (above)"
log "charts/troupe: all checks passed"
