#!/usr/bin/env bash
# Builds the Kubernetes control-plane and node binaries, etcd and helm from the Go
# module proxy, once per version, into ~/.cache/troupe. Later runs reuse the cache.
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces the staging modules
# with local paths. So we write a tiny wrapper module that requires it and replaces
# every staging module with its published v0.x twin, then `go build` the cmd/ packages.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"

want=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd)
missing=0
for b in "${want[@]}"; do [ -x "$K8S_BIN/$b" ] || missing=1; done

if [ "$missing" = 1 ]; then
  command -v go >/dev/null || die "go is not installed; Go 1.24+ is needed to build Kubernetes"
  log "building Kubernetes $KUBE_VERSION and etcd $ETCD_VERSION into $K8S_BIN (first run only; 15-35 min)"
  work="$TROUPE_CACHE/kubernetes-$KUBE_VERSION/src"
  mkdir -p "$work" "$K8S_BIN"
  staging_version="v0.${KUBE_VERSION#v1.}"
  staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go
    cloud-provider cluster-bootstrap code-generator component-base component-helpers
    controller-manager cri-api cri-client csi-translation-lib dynamic-resource-allocation
    endpointslice externaljwt kms kube-aggregator kube-controller-manager kube-proxy
    kube-scheduler kubectl kubelet metrics mount-utils pod-security-admission
    sample-apiserver sample-cli-plugin sample-controller)
  {
    echo "module troupe.dev/k8s-build"
    echo
    echo "go 1.24.0"
    echo
    echo "godebug default=go1.24"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo "require go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    echo
    for m in "${staging[@]}"; do echo "replace k8s.io/$m => k8s.io/$m $staging_version"; done
  } >"$work/go.mod"
  cat >"$work/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  cd "$work"
  go mod tidy -e >/dev/null 2>"$work/tidy.log" || { cat "$work/tidy.log"; die "go mod tidy failed"; }
  major="${KUBE_VERSION#v}"; major="${major%%.*}"
  minor="${KUBE_VERSION#v*.}"; minor="${minor%%.*}"
  build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  ld="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ld="$ld -X $pkg.gitCommit=troupe-local -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
  done
  export CGO_ENABLED=0
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    [ -x "$K8S_BIN/$b" ] && continue
    log "go build $b"
    go build -trimpath -ldflags "$ld" -o "$K8S_BIN/$b.tmp" "k8s.io/kubernetes/cmd/$b"
    mv "$K8S_BIN/$b.tmp" "$K8S_BIN/$b"
  done
  if [ ! -x "$K8S_BIN/etcd" ]; then
    log "go build etcd"
    go build -trimpath -ldflags "-s -w" -o "$K8S_BIN/etcd.tmp" go.etcd.io/etcd/server/v3
    mv "$K8S_BIN/etcd.tmp" "$K8S_BIN/etcd"
  fi
fi

if [ ! -x "$HELM_BIN/helm" ]; then
  log "building helm $HELM_VERSION into $HELM_BIN"
  mkdir -p "$HELM_BIN"
  CGO_ENABLED=0 GOBIN="$HELM_BIN" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi
log "Kubernetes binaries ready: $("$K8S_BIN/kube-apiserver" --version)"
