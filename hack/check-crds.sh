#!/usr/bin/env bash
# Fails when crds/ differs from what `crdgen` generates from the Rust types, when the
# chart's copy of the CRD differs from crds/, or when docs/reference/actorcluster.md differs
# from what `crddoc` renders from the same CRD.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
cargo run --quiet --locked -p troupe-operator --bin crdgen >"$tmp"
if ! diff -u crds/actorcluster.yaml "$tmp"; then
  echo "crds/actorcluster.yaml is out of date: run 'make crds' and commit the result" >&2
  exit 1
fi
if ! diff -q crds/actorcluster.yaml charts/troupe/files/actorcluster.yaml >/dev/null; then
  echo "charts/troupe/files/actorcluster.yaml differs from crds/actorcluster.yaml: run 'make crds'" >&2
  exit 1
fi
cargo run --quiet --locked -p troupe-operator --bin crddoc >"$tmp"
if ! diff -u docs/reference/actorcluster.md "$tmp"; then
  echo "docs/reference/actorcluster.md is out of date: run 'make crds' and commit the result" >&2
  exit 1
fi
echo "CRDs and the ActorCluster reference are up to date"
