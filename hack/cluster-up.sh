#!/usr/bin/env bash
# Brings up a real single-node Kubernetes cluster on this machine, the way
# kubernetes/hack/local-up-cluster.sh does: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet with containerd, kube-proxy and CoreDNS, started as processes.
#
# It CHANGES THE HOST and needs root on Linux: it creates a dummy interface and a bridge,
# adds iptables chains, mounts filesystems for pods and runs its own containerd.
# `hack/cluster-down.sh` (make cluster-down) undoes all of it. It is idempotent: it first
# cleans whatever an earlier (or killed) run left, and returns once /readyz answers and the
# node is Ready. The admin kubeconfig is written to $CLUSTER_DIR/admin.kubeconfig.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"

[ "$(uname -s)" = Linux ] || die "the local cluster runs on Linux only; use kind-config.yaml with Docker elsewhere"
[ "$(id -u)" = 0 ] || die "cluster-up needs root: it creates interfaces, iptables chains and mounts (see README)"
log "NOTE: this changes the host (address $NODE_IP on lo, bridge $BRIDGE_IF, iptables KUBE-* chains, mounts under $CLUSTER_DIR); 'make cluster-down' undoes it"

"$here/install-deps.sh"
"$here/build-k8s.sh"
"$here/build-coredns.sh"
"$here/cluster-down.sh"

pki="$CLUSTER_DIR/pki"
run="$CLUSTER_DIR/run"
logs="$CLUSTER_DIR/logs"
mkdir -p "$pki" "$run" "$logs" "$CLUSTER_DIR/etcd" "$CLUSTER_DIR/cni/net.d" "$CLUSTER_DIR/kubelet" "$CONTAINERD_STATE"
chmod 700 "$CLUSTER_DIR/etcd"

# --- host network -------------------------------------------------------------------
sysctl -qw net.ipv4.ip_forward=1
sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || modprobe br_netfilter 2>/dev/null || true
sysctl -qw net.bridge.bridge-nf-call-iptables=1 || die "net.bridge.bridge-nf-call-iptables cannot be set: the kernel needs CONFIG_BRIDGE_NETFILTER"
# The node's own stable address, independent of the machine's network card. A dummy
# interface would be the usual home; kernels without CONFIG_DUMMY have none, and a /32 on
# the loopback device serves the same purpose.
ip addr add "$NODE_IP/32" dev lo label "lo:$NODE_IF"

# cgroup v1 controllers the kernel has but the host did not mount (the kubelet wants them).
for c in hugetlb net_cls net_prio perf_event; do
  if grep -qE "^$c\s+0\s" /proc/cgroups && [ ! -d "/sys/fs/cgroup/$c" ]; then
    mkdir -p "/sys/fs/cgroup/$c" && mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c" || true
  fi
done

# --- PKI and kubeconfigs ------------------------------------------------------------
"$here/certs.sh" "$pki"
kubectl="$K8S_BIN/kubectl"
kubeconfig() { # name cert server
  local f="$CLUSTER_DIR/$1.kubeconfig"
  "$kubectl" config set-cluster local --server="$3" --certificate-authority="$pki/ca.crt" --embed-certs --kubeconfig="$f" >/dev/null
  "$kubectl" config set-credentials "$1" --client-certificate="$pki/$2.crt" --client-key="$pki/$2.key" --embed-certs --kubeconfig="$f" >/dev/null
  "$kubectl" config set-context local --cluster=local --user="$1" --kubeconfig="$f" >/dev/null
  "$kubectl" config use-context local --kubeconfig="$f" >/dev/null
  chmod 600 "$f"
}
api="https://$NODE_IP:6443"
kubeconfig admin admin "$api"
kubeconfig controller-manager controller-manager "$api"
kubeconfig scheduler scheduler "$api"
kubeconfig kubelet kubelet-client "$api"
kubeconfig kube-proxy kube-proxy "$api"
kubeconfig coredns coredns "$api"

start() { # name binary args...
  local name="$1"; shift
  setsid "$@" >"$logs/$name.log" 2>&1 </dev/null &
  echo $! >"$run/$name.pid"
}
wait_for() { # what seconds command...
  local what="$1" secs="$2"; shift 2
  for _ in $(seq 1 $((secs * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  die "$what did not come up within ${secs}s; see $logs/"
}

# --- etcd and the API server ----------------------------------------------------------
start etcd "$K8S_BIN/etcd" --name troupe --data-dir "$CLUSTER_DIR/etcd" --unsafe-no-fsync \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster troupe=http://127.0.0.1:2380 --log-level warn
wait_for etcd 30 curl -fsS http://127.0.0.1:2379/health

start kube-apiserver "$K8S_BIN/kube-apiserver" \
  --etcd-servers=http://127.0.0.1:2379 \
  --bind-address=0.0.0.0 --secure-port=6443 --advertise-address="$NODE_IP" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --client-ca-file="$pki/ca.crt" --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$pki/ca.crt" --kubelet-preferred-address-types=InternalIP \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --allow-privileged=true \
  --requestheader-client-ca-file="$pki/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
  --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --proxy-client-cert-file="$pki/front-proxy-client.crt" --proxy-client-key-file="$pki/front-proxy-client.key" \
  --enable-aggregator-routing=true
export KUBECONFIG="$KUBECONFIG_PATH"
wait_for kube-apiserver 90 "$kubectl" get --raw /readyz

# --- CoreDNS -------------------------------------------------------------------------
# Serves $CLUSTER_DOMAIN from the API (the kubernetes plugin) and nothing else: no forward
# plugin, so names outside the cluster are refused. It runs as the user troupe:coredns,
# which may only list and watch what the plugin reads. It listens on $CLUSTER_DNS_IP, the
# node address pods reach through their bridge gateway; the kubelet's clusterDNS points
# every pod's /etc/resolv.conf there.
"$kubectl" apply -f - >/dev/null <<YAML
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: { name: "troupe:coredns" }
rules:
  - { apiGroups: [""], resources: [services, namespaces], verbs: [list, watch] }
  - { apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch] }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: { name: "troupe:coredns" }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "troupe:coredns" }
subjects:
  - { apiGroup: rbac.authorization.k8s.io, kind: User, name: "troupe:coredns" }
YAML
cat >"$CLUSTER_DIR/Corefile" <<COREFILE
$CLUSTER_DOMAIN:53 {
    bind $CLUSTER_DNS_IP
    errors
    ready 127.0.0.1:8181
    kubernetes $CLUSTER_DOMAIN {
        kubeconfig $CLUSTER_DIR/coredns.kubeconfig local
    }
}
COREFILE
start coredns "$COREDNS_BIN/coredns" -conf "$CLUSTER_DIR/Corefile"
wait_for coredns 30 curl -fsS http://127.0.0.1:8181/ready

# --- containerd ----------------------------------------------------------------------
cat >"$CLUSTER_DIR/containerd.toml" <<TOML
version = 2
root = "$CLUSTER_DIR/containerd"
state = "$CONTAINERD_STATE"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  enable_selinux = false
  # Some sandboxed hosts refuse lowering oom_score_adj even to root; never go below ours.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$CONTAINERD_STATE/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CLUSTER_DIR/cni/net.d"
TOML
cat >"$CLUSTER_DIR/cni/net.d/10-troupe.conflist" <<JSON
{
  "cniVersion": "0.4.0",
  "name": "troupe",
  "plugins": [
    { "type": "bridge", "bridge": "$BRIDGE_IF", "isGateway": true, "ipMasq": false,
      "hairpinMode": true,
      "ipam": { "type": "host-local", "ranges": [[{ "subnet": "$POD_CIDR" }]],
                "routes": [{ "dst": "0.0.0.0/0" }], "dataDir": "$CLUSTER_DIR/cni-ipam" } },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
JSON
start containerd containerd --config "$CLUSTER_DIR/containerd.toml"
wait_for containerd 30 ctr --address "$CONTAINERD_SOCK" version
"$here/images.sh" pause

# --- controllers, scheduler, kubelet, kube-proxy -------------------------------------
start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
  --kubeconfig="$CLUSTER_DIR/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$CLUSTER_DIR/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$CLUSTER_DIR/controller-manager.kubeconfig" \
  --controllers='*' --use-service-account-credentials \
  --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
  --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" --cluster-cidr="$POD_CIDR" \
  --horizontal-pod-autoscaler-sync-period=5s \
  --node-monitor-grace-period=40s --leader-elect=false
start kube-scheduler "$K8S_BIN/kube-scheduler" \
  --kubeconfig="$CLUSTER_DIR/scheduler.kubeconfig" \
  --authentication-kubeconfig="$CLUSTER_DIR/scheduler.kubeconfig" \
  --authorization-kubeconfig="$CLUSTER_DIR/scheduler.kubeconfig" --leader-elect=false

cat >"$CLUSTER_DIR/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: { enabled: false }
  webhook: { enabled: true }
  x509: { clientCAFile: "$pki/ca.crt" }
authorization: { mode: Webhook }
tlsCertFile: "$pki/kubelet-serving.crt"
tlsPrivateKeyFile: "$pki/kubelet-serving.key"
cgroupDriver: cgroupfs
cgroupRoot: /
containerRuntimeEndpoint: "unix://$CONTAINERD_SOCK"
failSwapOn: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: { memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%" }
serializeImagePulls: false
resolvConf: /etc/resolv.conf
clusterDNS: ["$CLUSTER_DNS_IP"]
clusterDomain: "$CLUSTER_DOMAIN"
maxPods: 110
podPidsLimit: -1
rotateCertificates: false
serverTLSBootstrap: false
YAML
start kubelet "$K8S_BIN/kubelet" --config="$CLUSTER_DIR/kubelet.yaml" \
  --kubeconfig="$CLUSTER_DIR/kubelet.kubeconfig" --root-dir="$CLUSTER_DIR/kubelet" \
  --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1

cat >"$CLUSTER_DIR/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: { kubeconfig: "$CLUSTER_DIR/kube-proxy.kubeconfig" }
mode: iptables
clusterCIDR: "$POD_CIDR"
hostnameOverride: "$NODE_NAME"
conntrack: { maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s }
YAML
start kube-proxy "$K8S_BIN/kube-proxy" --config="$CLUSTER_DIR/kube-proxy.yaml"

wait_for "node $NODE_NAME" 120 "$kubectl" wait --for=condition=Ready "node/$NODE_NAME" --timeout=1s
# PostgreSQL for ActorClusters with spec.state.store: postgres (and their e2e tests).
"$here/postgres.sh" up
log "local cluster is up: $("$kubectl" version 2>/dev/null | tr '\n' ' ')"
log "use it with: eval \"\$(make -s cluster-env)\""
