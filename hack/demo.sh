#!/usr/bin/env bash
# `make demo`: the whole story on this machine. Brings up the local cluster, builds and
# imports the images, installs the operator with its Helm chart, applies the example
# ActorCluster and shows it working: the pods, the member table, and requests through the
# client Service. The cluster stays up afterwards; `make cluster-down` removes it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
cd "$root"

"$here/cluster-up.sh"
"$here/images.sh" all
eval "$("$here/cluster-env.sh")"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "helm install troupe charts/troupe"
helm upgrade --install troupe charts/troupe --namespace troupe-system --create-namespace --wait --timeout 180s
kubectl -n troupe-system get deploy,pods

say "kubectl apply -f manifests/examples/actorcluster.yaml"
kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n demo apply -f manifests/examples/actorcluster.yaml
name="$(kubectl -n demo get ac -o jsonpath='{.items[0].metadata.name}')"
for _ in $(seq 1 120); do
  ready="$(kubectl -n demo get ac "$name" -o jsonpath='{.status.readyReplicas}' 2>/dev/null || true)"
  want="$(kubectl -n demo get ac "$name" -o jsonpath='{.spec.replicas}')"
  [ "${ready:-0}" = "$want" ] && break
  sleep 1
done
kubectl -n demo get ac,deploy,svc,hpa,pdb,pods -o wide

say "the member table, as the first pod sees it"
pod_ip="$(kubectl -n demo get pods -l "app.kubernetes.io/instance=$name" -o jsonpath='{.items[0].status.podIP}')"
curl -fsS "http://$pod_ip:8558/cluster/members" | (jq . 2>/dev/null || cat)

say "actors through the client Service"
vip="$(kubectl -n demo get svc "$name" -o jsonpath='{.spec.clusterIP}')"
for i in 1 2 3 4 5; do
  curl -fsS -X POST -H 'content-type: application/json' -d '{"by":1}' \
    "http://$vip:8080/actors/counter/demo/ask/add" && echo
done
curl -fsS -X POST -H 'content-type: application/json' -d '"hello troupe"' \
  "http://$vip:8080/actors/echo/greeting/ask" && echo

say "done: the cluster stays up. Try: eval \"\$(make -s cluster-env)\"; kubectl -n demo scale ac/$name --replicas=5"
