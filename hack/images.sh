#!/usr/bin/env bash
# Builds the project's container images from static binaries, without Docker, and imports
# them into the local cluster's containerd:
#   troupe-pause:0.1.0     the pod sandbox (hack/images/pause.c, musl-gcc -static)
#   troupe-resolve:0.1.0   the e2e DNS check run as a pod (hack/images/resolve.c, musl-gcc -static)
#   troupe-intruder:0.1.0  the e2e security check's non-member pod (hack/images/intruder.c)
#   troupe-node:0.1.0      target/x86_64-unknown-linux-musl/release/troupe-node, also named
#                          troupe-node:0.1.0-rollout (the fault tests' rolling image update)
#   troupe-operator:0.1.0  target/x86_64-unknown-linux-musl/release/troupe-operator
#   troupe-sidecar-example:0.1.0  the sidecar-mode example (actors/examples/sidecar_greeter.rs)
# usage: images.sh [pause|resolve|intruder|node|operator|sidecar-example|all]   (default all)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"

what="${1:-all}"
out="$TROUPE_CACHE/images"
mkdir -p "$out"
exec 9>"$out/.lock"
flock 9

import() { # tarball
  if [ -S "$CONTAINERD_SOCK" ]; then
    ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$1" >/dev/null
    log "imported $(basename "$1") into the local cluster's containerd"
  else
    log "built $1 (the local cluster is not running, nothing imported)"
  fi
}

if [ "$what" = pause ] || [ "$what" = all ]; then
  musl-gcc -static -Os -o "$out/pause" "$here/images/pause.c"
  strip "$out/pause"
  python3 "$here/images/mkimage.py" --name "$PAUSE_IMAGE" --out "$out/pause.tar" \
    --entrypoint /pause --user 65535:65535 --file "$out/pause:/pause"
  import "$out/pause.tar"
fi

if [ "$what" = resolve ] || [ "$what" = all ]; then
  musl-gcc -static -Os -o "$out/resolve" "$here/images/resolve.c"
  strip "$out/resolve"
  python3 "$here/images/mkimage.py" --name troupe-resolve:0.1.0 --out "$out/resolve.tar" \
    --entrypoint /resolve --user 65532:65532 --file "$out/resolve:/resolve"
  import "$out/resolve.tar"
fi

if [ "$what" = intruder ] || [ "$what" = all ]; then
  musl-gcc -static -Os -o "$out/intruder" "$here/images/intruder.c"
  strip "$out/intruder"
  python3 "$here/images/mkimage.py" --name troupe-intruder:0.1.0 --out "$out/intruder.tar" \
    --entrypoint /intruder --user 65532:65532 --file "$out/intruder:/intruder"
  import "$out/intruder.tar"
fi

# Builds the given binaries in one cargo invocation (one feature resolution, one build),
# then packages and imports one image per binary.
rust_images() { # binary...
  local target_dir="${CARGO_TARGET_DIR:-$root/target}" args=() bin path
  for bin in "$@"; do args+=(-p "$bin" --bin "$bin"); done
  (cd "$root" && cargo build --release --target x86_64-unknown-linux-musl "${args[@]}")
  for bin in "$@"; do
    path="$target_dir/x86_64-unknown-linux-musl/release/$bin"
    local also=()
    [ "$bin" = troupe-node ] && also=(--also-name "$bin:0.1.0-rollout")
    python3 "$here/images/mkimage.py" --name "$bin:0.1.0" --out "$out/$bin.tar" \
      --entrypoint "/$bin" --user 65532:65532 --file "$path:/$bin" "${also[@]}"
    log "$bin:0.1.0: binary $(du -h "$path" | cut -f1), image tarball $(du -h "$out/$bin.tar" | cut -f1)"
    import "$out/$bin.tar"
  done
}

# The sidecar-mode example application (actors/examples/sidecar_greeter.rs).
sidecar_example() {
  local target_dir="${CARGO_TARGET_DIR:-$root/target}"
  (cd "$root" && cargo build --release --target x86_64-unknown-linux-musl -p troupe-actors --example sidecar_greeter)
  python3 "$here/images/mkimage.py" --name troupe-sidecar-example:0.1.0 --out "$out/sidecar-example.tar" \
    --entrypoint /sidecar-greeter --user 65532:65532 \
    --file "$target_dir/x86_64-unknown-linux-musl/release/examples/sidecar_greeter:/sidecar-greeter"
  import "$out/sidecar-example.tar"
}

case "$what" in
  all) rust_images troupe-node troupe-operator; sidecar_example ;;
  sidecar-example) sidecar_example ;;
  node) rust_images troupe-node ;;
  operator) rust_images troupe-operator ;;
  pause | resolve | intruder) ;;
  *) die "usage: images.sh [pause|resolve|intruder|node|operator|sidecar-example|all]" ;;
esac
