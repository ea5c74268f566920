#!/usr/bin/env bash
# Regression check for hack/cluster-down.sh: it must stop only the processes of the local
# cluster, never another user of the same cached binaries (here: an etcd on other ports
# with its own data directory, as a test's own control plane would run). Run it while the
# local cluster is DOWN (it runs cluster-down.sh). Exit 0: the other etcd survived.
# usage: hack/tests/cluster-down-spares-others.sh [path/to/cluster-down.sh]
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=../lib.sh
. "$here/lib.sh"
down="${1:-$here/cluster-down.sh}"
[ -x "$K8S_BIN/etcd" ] || die "no etcd in $K8S_BIN: run hack/build-k8s.sh first"
if [ -f "$CLUSTER_DIR/run/kube-apiserver.pid" ]; then
  die "the local cluster is up; run this only after 'make cluster-down'"
fi
data="$(mktemp -d /tmp/troupe-other-etcd.XXXXXX)"
"$K8S_BIN/etcd" --name other --data-dir "$data" --log-level error \
  --listen-client-urls http://127.0.0.1:42379 --advertise-client-urls http://127.0.0.1:42379 \
  --listen-peer-urls http://127.0.0.1:42380 --initial-advertise-peer-urls http://127.0.0.1:42380 \
  --initial-cluster other=http://127.0.0.1:42380 >/dev/null 2>&1 &
other=$!
sleep 1
bash "$down" >/dev/null 2>&1
sleep 0.5
if kill -0 "$other" 2>/dev/null; then
  echo "ok: cluster-down left the other etcd (pid $other) running"
  rc=0
else
  echo "FAIL: cluster-down killed an etcd that is not the local cluster's (pid $other, data $data)"
  rc=1
fi
kill "$other" 2>/dev/null
wait "$other" 2>/dev/null
rm -rf "$data"
exit "$rc"
