#!/usr/bin/env bash
# Installs what the local cluster and the image builds need: Debian packages and the
# rustup musl target, the nightly toolchain and cargo-fuzz (the fuzz smoke). Idempotent; quiet when everything is there already.
# prometheus is there for promtool (hack/check-chart.sh checks the chart's alert rules).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"

packages=(containerd runc containernetworking-plugins iptables conntrack openssl musl-tools
  iproute2 jq kmod python3 curl postgresql prometheus)
need=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "installing ${need[*]} needs root"
  log "installing Debian packages: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
  log "adding the rustup target x86_64-unknown-linux-musl"
  rustup target add x86_64-unknown-linux-musl
fi
# The fuzz smoke of `make test` (hack/fuzz.sh): cargo-fuzz needs a nightly toolchain.
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  log "installing the nightly toolchain (minimal) for cargo-fuzz"
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi
