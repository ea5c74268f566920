#!/usr/bin/env bash
# Builds CoreDNS from the Go module proxy, once per version, into
# ~/.cache/troupe/coredns-<version>/bin (COREDNS_VERSION in lib.sh). Later runs reuse it.
# The module has no replace directives, so a plain `go install module@version` builds it
# with the plugin set its release compiles in (kubernetes, cache, errors, ready, ...).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"

if [ ! -x "$COREDNS_BIN/coredns" ]; then
  command -v go >/dev/null || die "go is not installed; Go 1.24+ is needed to build CoreDNS"
  log "building CoreDNS $COREDNS_VERSION into $COREDNS_BIN (first run only; a few minutes)"
  mkdir -p "$COREDNS_BIN"
  tmp="$(mktemp -d "$TROUPE_CACHE/coredns-build.XXXXXX")"
  CGO_ENABLED=0 GOBIN="$tmp" go install -trimpath \
    -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=troupe-local" \
    "github.com/coredns/coredns@$COREDNS_VERSION"
  mv "$tmp/coredns" "$COREDNS_BIN/coredns"
  rmdir "$tmp"
fi
log "CoreDNS ready: $("$COREDNS_BIN/coredns" -version | head -1)"
