#!/usr/bin/env bash
# Runs kube-apiserver's own CRD validation on crds/actorcluster.yaml, with no cluster and no
# network: the structural schema, list-map keys, and each CEL rule's compilation and
# estimated cost (hack/crdcheck/main.go). A CRD over the cost budget is refused at install,
# which the unit tests (kube-rs' CEL evaluator has no cost model) cannot see.
# Builds hack/crdcheck against k8s.io/apiextensions-apiserver from the module cache that
# hack/build-k8s.sh fills (`make cluster-up` runs it), offline (GOPROXY=off); the binary is
# cached under ~/.cache/troupe. A missing cache or Go is an error, never a skip.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"

command -v go >/dev/null || die "go is missing: hack/install-deps.sh installs it"
k8s_src="$TROUPE_CACHE/kubernetes-$KUBE_VERSION/src"
if [ ! -f "$k8s_src/go.mod" ] || [ ! -f "$k8s_src/go.sum" ]; then
  die "no Kubernetes module cache at $k8s_src: hack/build-k8s.sh fills it (make cluster-up runs it)"
fi

out="$TROUPE_CACHE/crdcheck-$KUBE_VERSION"
bin="$out/crdcheck"
if [ ! -x "$bin" ] || [ "$here/crdcheck/main.go" -nt "$bin" ]; then
  log "building crdcheck against k8s.io/apiextensions-apiserver ($KUBE_VERSION, offline)"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  # The Kubernetes build's module graph: every k8s.io module pinned to $KUBE_VERSION's twin.
  sed 's#^module .*#module troupe.dev/crdcheck#' "$k8s_src/go.mod" >"$work/go.mod"
  cp "$k8s_src/go.sum" "$work/go.sum"
  cp "$here/crdcheck/main.go" "$work/main.go"
  mkdir -p "$out"
  (cd "$work" && GOPROXY=off GOFLAGS=-mod=mod GOSUMDB=off go build -trimpath -o "$bin.tmp" .)
  mv "$bin.tmp" "$bin"
fi
"$bin" "$root/crds/actorcluster.yaml"
