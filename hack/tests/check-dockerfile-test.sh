#!/usr/bin/env bash
# Proves hack/check-dockerfile.sh can fail: each mutation of docker/Dockerfile or
# hack/images.sh below breaks one thing it checks, and it must refuse every one (and accept
# the files as they are). Part of `make lint`; no Docker, no network. VERBOSE=1 prints why
# each mutation was refused.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
hack="$(cd "$here/.." && pwd)"
root="$(cd "$hack/.." && pwd)"
check="$hack/check-dockerfile.sh"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$check" >/dev/null || { echo "check-dockerfile.sh refuses the files as they are" >&2; exit 1; }

failures=0
# mutate FILE(dockerfile|images) SED-EXPRESSION WHAT
mutate() {
  local which="$1" expr="$2" what="$3"
  cp "$root/docker/Dockerfile" "$work/Dockerfile"
  cp "$hack/images.sh" "$work/images.sh"
  sed -i -e "$expr" "$work/$( [ "$which" = dockerfile ] && echo Dockerfile || echo images.sh)"
  if cmp -s "$work/Dockerfile" "$root/docker/Dockerfile" && cmp -s "$work/images.sh" "$hack/images.sh"; then
    echo "mutation '$what' changed nothing: fix the test" >&2
    failures=$((failures + 1))
  elif why="$("$check" "$work/Dockerfile" "$work/images.sh" 2>&1)"; then
    echo "check-dockerfile.sh accepted: $what" >&2
    failures=$((failures + 1))
  elif [ -n "${VERBOSE:-}" ]; then
    printf '%s:\n%s\n' "$what" "$why"
  fi
}

mutate dockerfile 's#^FROM scratch AS troupe-node#FROM alpine AS troupe-node#' "a base image"
mutate dockerfile 's#/out/troupe-operator /troupe-operator#/out/troupe-operator /bin/troupe-operator#' "another binary path"
mutate dockerfile '0,/^USER 65532:65532/s//USER 0:0/' "another user"
mutate dockerfile 's#ENTRYPOINT \["/troupe-node"\]#ENTRYPOINT ["/troupe-node", "--standalone"]#' "another entrypoint"
mutate dockerfile '/^ENTRYPOINT \["\/troupe-operator"\]/a ENV RUST_LOG=debug' "an extra instruction"
mutate dockerfile 's#arm64) triple=aarch64-unknown-linux-musl#arm64) triple=aarch64-unknown-linux-gnu#' "a glibc triple"
mutate dockerfile 's#amd64) triple=x86_64-unknown-linux-musl#amd64) triple=aarch64-unknown-linux-musl#' "amd64 mapped to another CPU"
mutate dockerfile 's#cross_cc=aarch64-linux-gnu-gcc#cross_cc=x86_64-linux-gnu-gcc#' "the wrong cross compiler"
# shellcheck disable=SC1003 # the backslash is sed's, for the Dockerfile's continuation
mutate dockerfile '/^      arm64) triple=/a \      riscv64) triple=riscv64gc-unknown-linux-musl; cross_pkg=gcc-riscv64-linux-gnu; cross_cc=riscv64-linux-gnu-gcc ;; \\' "an architecture the check does not know"
mutate dockerfile 's#exit 1 ;; \\#true ;; \\#' "other architectures not refused"
mutate dockerfile 's#^ARG TARGETARCH#ARG TARGET_ARCH#' "no ARG TARGETARCH"
mutate dockerfile 's#-p troupe-operator --bin troupe-operator#-p troupe-operator#' "a binary not built"
mutate dockerfile 's#    esac; \\#    esac \\#' "a RUN that is not valid sh"
mutate images 's#all) rust_images troupe-node troupe-operator;#all) rust_images troupe-node troupe-operator troupe-bench;#' "an image the Dockerfile lacks"
# shellcheck disable=SC2016 # $path and $bin are images.sh's, not ours
mutate images 's#--user 65532:65532 --file "$path:/$bin"#--user 1000:1000 --file "$path:/$bin"#' "images.sh changing the user"

if [ "$failures" -gt 0 ]; then
  echo "check-dockerfile.sh missed $failures mutation(s)" >&2
  exit 1
fi
echo "check-dockerfile.sh refuses all 15 mutations"
