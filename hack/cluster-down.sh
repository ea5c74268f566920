#!/usr/bin/env bash
# Tears the local cluster down and removes every trace of it from the host: processes
# (by pid file, then by the paths they run from), containers and their shims, mounts,
# network namespaces, the bridge and the node address, the KUBE-* iptables chains,
# kubelet cgroups and the state directory. Safe to run any number of times, also after
# a run that was killed halfway.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"

[ "$(id -u)" = 0 ] || die "cluster-down needs root (it removes mounts, interfaces and iptables chains)"

stop_pid() { # name
  local f="$CLUSTER_DIR/run/$1.pid" pid
  [ -f "$f" ] || return 0
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

log "stopping the node agents"
# 1. The node agents first, so that nothing restarts the containers we are about to kill.
for c in kubelet kube-proxy kube-scheduler kube-controller-manager; do stop_pid "$c"; done

log "killing containers and containerd"
# 2. Every container and pod sandbox of our containerd, then its shims, then containerd.
runc_root="$CONTAINERD_STATE/runc/k8s.io"
if [ -d "$runc_root" ]; then
  for id in $(runc --root "$runc_root" list -q 2>/dev/null); do
    runc --root "$runc_root" kill "$id" KILL 2>/dev/null || true
  done
  sleep 0.5
  for id in $(runc --root "$runc_root" list -q 2>/dev/null); do
    runc --root "$runc_root" delete -f "$id" 2>/dev/null || true
  done
fi
pkill -9 -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" 2>/dev/null || true
stop_pid containerd
for c in coredns kube-apiserver etcd; do stop_pid "$c"; done
# Our PostgreSQL (its own pid file and data directory; Debian's clusters are not touched).
[ -d "$POSTGRES_DIR" ] && "$here/postgres.sh" down
# Anything of ours a killed run left without a pid file: only processes whose command line
# names our $CLUSTER_DIR, never another user of the same cached binaries (e.g. a test's
# own etcd and kube-apiserver).
for b in kubelet kube-proxy kube-scheduler kube-controller-manager kube-apiserver etcd; do
  pkill -9 -f "^$K8S_BIN/$b .*$CLUSTER_DIR/" 2>/dev/null || true
done
pkill -9 -f "^containerd --config $CLUSTER_DIR/" 2>/dev/null || true
pkill -9 -f "^$COREDNS_BIN/coredns -conf $CLUSTER_DIR/" 2>/dev/null || true

log "unmounting and removing network namespaces"
# 3. Mounts below our directories (deepest first), and the pods' network namespaces.
for _ in 1 2 3; do
  mapfile -t mounts < <(awk '{print $2}' /proc/mounts |
    grep -E "^($CLUSTER_DIR|$CONTAINERD_STATE|/run/netns/cni-)" | sort -r)
  [ "${#mounts[@]}" -eq 0 ] && break
  for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
done
if [ -f "$CLUSTER_DIR/run/netns.list" ]; then :; fi
for ns in /run/netns/cni-*; do
  [ -e "$ns" ] || continue
  ip netns delete "$(basename "$ns")" 2>/dev/null || rm -f "$ns"
done

# 4. Interfaces.
ip link delete "$BRIDGE_IF" 2>/dev/null || true
ip addr del "$NODE_IP/32" dev lo 2>/dev/null || true

log "removing iptables chains"
# 5. iptables: every chain kube-proxy or the CNI plugins made (KUBE-*, CNI-*), and every
# rule that jumps to one, in every table, for IPv4 and IPv6.
for tool in iptables ip6tables; do
  command -v "$tool-save" >/dev/null || continue
  for table in filter nat mangle raw; do
    dump="$("$tool-save" -t "$table" 2>/dev/null)" || continue
    echo "$dump" | grep -qE -- '(KUBE-|CNI-)' || continue
    echo "$dump" | grep -vE -- '(^:(KUBE-|CNI-))|(-j (KUBE-|CNI-))|(^-A (KUBE-|CNI-))' |
      "$tool-restore" -T "$table" 2>/dev/null || log "warning: could not clean $tool table $table"
  done
done

# 6. kubelet's cgroups (empty now that the containers are gone).
for h in /sys/fs/cgroup/*/; do
  for top in kubepods kubepods.slice; do
    [ -d "$h$top" ] && find "$h$top" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
done

# 7. State.
rm -rf "$CLUSTER_DIR" "$CONTAINERD_STATE"
log "local cluster is down; host is clean"
