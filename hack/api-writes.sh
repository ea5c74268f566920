#!/usr/bin/env bash
# Measures what a settled ActorCluster costs the API server at rest: mutating requests per
# second (create, update, patch, apply, delete), by resource, from the API server's own
# counter `apiserver_request_total`, against the floor of the same cluster with no
# ActorCluster measured in the same run.
#
#   hack/api-writes.sh [--window SECS] [--replicas N]
#
# Needs the local cluster with the operator installed by the chart (make demo, or
# hack/e2e.sh's setup). Creates the namespace `api-writes`, applies the example
# ActorCluster there with N replicas (default 3), waits until it is Ready and settled,
# measures, and deletes the namespace. Prints a table; asserts nothing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
eval "$("$here/cluster-env.sh")"

window=60
replicas=3
while [ $# -gt 0 ]; do
  case "$1" in
    --window) window="$2"; shift 2 ;;
    --replicas) replicas="$2"; shift 2 ;;
    *) die "unknown argument $1 (use --window SECS, --replicas N)" ;;
  esac
done
ns=api-writes
kubectl -n troupe-system get deploy troupe >/dev/null 2>&1 \
  || die "the operator is not installed: run make demo (or helm install troupe charts/troupe -n troupe-system)"

work="$(mktemp -d /tmp/troupe-api-writes.XXXXXX)"
cleanup() {
  rm -rf "$work"
  kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

# snapshot FILE: "resource verb count" of every mutating request the API server counted.
snapshot() {
  kubectl get --raw /metrics \
    | awk '/^apiserver_request_total\{/ {
        verb = ""; res = ""
        if (match($0, /verb="[A-Z]+"/)) verb = substr($0, RSTART + 6, RLENGTH - 7)
        if (match($0, /resource="[a-z.]*"/)) res = substr($0, RSTART + 10, RLENGTH - 11)
        if (verb ~ /^(GET|LIST|WATCH|CONNECT)$/ || verb == "") next
        sub_ = ""
        if (match($0, /subresource="[a-z]*"/)) sub_ = substr($0, RSTART + 13, RLENGTH - 14)
        if (sub_ != "") res = res "/" sub_
        sum[res " " verb] += $NF
      }
      END { for (k in sum) print k, sum[k] }' | sort >"$1"
}

# measure NAME: mutating requests per resource over the window into $work/NAME.rates.
measure() {
  snapshot "$work/$1.before"
  sleep "$window"
  snapshot "$work/$1.after"
  join -a2 -e 0 -o 0,1.2,2.2 <(awk '{print $1"|"$2, $3}' "$work/$1.before") \
    <(awk '{print $1"|"$2, $3}' "$work/$1.after") \
    | awk -v w="$window" '{ d = $3 - $2; if (d > 0) printf "%s %.3f\n", $1, d / w }' >"$work/$1.rates"
}

log "floor: the cluster with no ActorCluster in $ns, ${window} s"
kubectl delete namespace "$ns" --wait=true >/dev/null 2>&1 || true
measure floor

log "applying the example ActorCluster ($replicas replicas) in $ns"
kubectl create namespace "$ns" >/dev/null
sed "s/replicas: [0-9]*/replicas: $replicas/" "$root/manifests/examples/actorcluster.yaml" \
  | kubectl -n "$ns" apply -f - >/dev/null
name="$(kubectl -n "$ns" get ac -o jsonpath='{.items[0].metadata.name}')"
for _ in $(seq 1 180); do
  up="$(kubectl -n "$ns" get ac "$name" -o jsonpath='{.status.upMembers}' 2>/dev/null || true)"
  [ "${up:-0}" = "$replicas" ] && break
  sleep 1
done
[ "${up:-0}" = "$replicas" ] || die "the ActorCluster did not reach $replicas Up members in 180 s"
log "Up; letting it settle 20 s, then ${window} s at rest"
sleep 20
measure rest

printf '\n%-44s %10s %10s %10s\n' "resource|verb" "floor/s" "rest/s" "cluster/s"
join -a1 -a2 -e 0 -o 0,1.2,2.2 "$work/floor.rates" "$work/rest.rates" \
  | awk '{ printf "%-44s %10.3f %10.3f %10.3f\n", $1, $2, $3, $3 - $2; f += $2; r += $3 }
         END { printf "%-44s %10.3f %10.3f %10.3f\n", "TOTAL", f, r, r - f }'
echo
echo "cluster/s is what one settled ActorCluster of $replicas nodes adds (nodes and operator together)."
