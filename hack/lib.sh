# shellcheck shell=bash
# Shared settings for the hack/ scripts: versions, cache paths, logging.
# Sourced, never executed.

KUBE_VERSION="${KUBE_VERSION:-v1.34.4}"
CARGO_FUZZ_VERSION="${CARGO_FUZZ_VERSION:-0.13.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.4}"
HELM_VERSION="${HELM_VERSION:-v3.19.5}"

TROUPE_CACHE="${TROUPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/troupe}"
K8S_BIN="$TROUPE_CACHE/kubernetes-$KUBE_VERSION/bin"
HELM_BIN="$TROUPE_CACHE/helm-$HELM_VERSION/bin"
# Go's module and build caches live under ~/.cache too, never in the tree.
export GOMODCACHE="${GOMODCACHE_TROUPE:-$TROUPE_CACHE/go-mod}"
export GOCACHE="${GOCACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/go-build}"
export GOTOOLCHAIN=local

# Runtime state of the local cluster (certificates, data, logs, pid files).
CLUSTER_DIR="${CLUSTER_DIR:-/var/lib/troupe-cluster}"
NODE_NAME="${NODE_NAME:-troupe-node-0}"
NODE_IP="${NODE_IP:-10.98.0.1}"
POD_CIDR="${POD_CIDR:-10.244.0.0/24}"
SERVICE_CIDR="${SERVICE_CIDR:-10.96.0.0/16}"
FIRST_SERVICE_IP="${FIRST_SERVICE_IP:-10.96.0.1}"
CONTAINERD_ROOT="$CLUSTER_DIR/containerd"
CONTAINERD_SOCK="/run/troupe-containerd/containerd.sock"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

CONTAINERD_STATE="/run/troupe-containerd"
NODE_IF="troupe0"
BRIDGE_IF="troupebr0"
KUBECONFIG_PATH="$CLUSTER_DIR/admin.kubeconfig"
PAUSE_IMAGE="troupe-pause:0.1.0"

# CoreDNS, the local cluster's DNS (hack/build-coredns.sh, hack/cluster-up.sh).
COREDNS_VERSION="${COREDNS_VERSION:-v1.12.4}"
COREDNS_BIN="$TROUPE_CACHE/coredns-$COREDNS_VERSION/bin"
CLUSTER_DOMAIN="${CLUSTER_DOMAIN:-cluster.local}"
# CoreDNS listens on the node address, which pods reach through the bridge's gateway.
CLUSTER_DNS_IP="${CLUSTER_DNS_IP:-$NODE_IP}"

# PostgreSQL for durable actor state (hack/postgres.sh): Debian's server on the node address.
POSTGRES_DIR="$CLUSTER_DIR/postgres"
POSTGRES_PORT="${POSTGRES_PORT:-5433}"

# Closes every descriptor above stderr in the calling (sub)shell, so that a process
# started from it holds nothing of its caller's: a `flock` lock taken around a test would
# otherwise be held by a restarted API server or database (or a watchdog) for as long as it runs.
close_inherited_fds() {
  local fd
  for fd in /proc/$BASHPID/fd/*; do
    fd="${fd##*/}"
    [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-" 2>/dev/null
  done
  return 0
}
