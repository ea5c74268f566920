#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/) for SECS seconds each, starting from the committed
# seed corpus (fuzz/corpus/<target>, never written: new inputs go to a scratch directory
# under the target dir), and prints executions and crashes per target. Installs cargo-fuzz
# from the crate registry if it is missing; needs the nightly toolchain (rustup).
#   hack/fuzz.sh [SECS] [TARGET...]      (default 60 s, every target)
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the run.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${1:-60}"
shift || true
# shellcheck source=lib.sh
. "$root/hack/lib.sh"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
rustup toolchain list | grep -q '^nightly' || die "the nightly toolchain is needed: rustup toolchain install nightly --profile minimal (hack/install-deps.sh does it)"
cd "$root/fuzz"
targets=("$@")
[ "${#targets[@]}" = 0 ] && mapfile -t targets < <(cargo +nightly fuzz list)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/troupe/target}/fuzz"
scratch="$CARGO_TARGET_DIR/corpus"
rc=0
summary=()
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  log="$scratch/$t.log"
  if cargo +nightly fuzz run "$t" "$scratch/$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 >"$log" 2>&1; then
    verdict=ok
  else
    verdict=CRASH
    rc=1
  fi
  execs=$(grep -Eo 'Done [0-9]+ runs' "$log" | grep -Eo '[0-9]+' | tail -1)
  summary+=("$(printf '%-20s %6ss %12s runs  %s' "$t" "$secs" "${execs:-?}" "$verdict")")
  [ "$verdict" = ok ] || tail -30 "$log" >&2
done
printf '%s\n' "${summary[@]}"
exit "$rc"
