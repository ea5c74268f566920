#!/usr/bin/env bash
# Checks, without Docker or network, that docker/Dockerfile builds the images hack/images.sh
# builds (part of `make lint`):
#   1. the same images: one final stage per Rust binary hack/images.sh packages
#      (`rust_images` in its `all` case), and no other final stage;
#   2. the same layout: FROM scratch (mkimage.py writes one layer and no base), the binary
#      copied from the build stage to the path hack/images.sh puts it at (/<binary>), the
#      same USER and the same ENTRYPOINT, and nothing else in the stage;
#   3. every TARGETARCH branch of the build stage maps to the musl target triple of that
#      architecture (amd64 to hack/images.sh's own triple) with a matching cross compiler,
#      any other architecture fails with a message, and the build step builds each binary;
#   4. every RUN of the Dockerfile parses as POSIX sh (`sh -n`, nothing is run).
# usage: check-dockerfile.sh [DOCKERFILE [IMAGES_SH [MKIMAGE_PY]]]   (defaults: the repo's)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
dockerfile="${1:-$root/docker/Dockerfile}"
images="${2:-$here/images.sh}"
mkimage="${3:-$here/images/mkimage.py}"
command -v python3 >/dev/null || { echo "python3 is missing: hack/install-deps.sh installs it" >&2; exit 1; }

python3 - "$dockerfile" "$images" "$mkimage" <<'PY'
import json
import re
import subprocess
import sys

dockerfile_path, images_path, mkimage_path = sys.argv[1:4]
problems = []


def problem(msg):
    problems.append(msg)


# Docker's TARGETARCH -> the CPU of Rust's <cpu>-unknown-linux-musl target. An architecture
# the Dockerfile supports must be here, so that its triple can be checked.
RUST_CPU = {"amd64": "x86_64", "arm64": "aarch64"}


def instructions(text):
    """The Dockerfile's instructions as (KEYWORD, arguments), continuations joined."""
    out, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, args = current.partition(" ")
        out.append((keyword.upper(), args.strip()))
        current = ""
    if current:
        problem("the Dockerfile ends inside a continued instruction")
    return out


# --- the Dockerfile's stages ------------------------------------------------------------
with open(dockerfile_path) as f:
    docker_text = f.read()
stages = []  # (name, base, [(keyword, args)])
for keyword, args in instructions(docker_text):
    if keyword == "FROM":
        m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
        if not m:
            problem(f"cannot read FROM {args}")
            continue
        stages.append((m.group(2) or "", m.group(1), []))
    elif stages:
        stages[-1][2].append((keyword, args))
by_name = {name: (base, body) for name, base, body in stages}

# --- what hack/images.sh builds -------------------------------------------------------------
with open(images_path) as f:
    images_text = f.read()
m = re.search(r"^\s*all\)\s*rust_images\s+([^;]+);", images_text, re.M)
binaries = m.group(1).split() if m else []
if not binaries:
    problem(f"{images_path}: no `all) rust_images BINARY...;` case found")
m = re.search(r"^rust_images\(\)\s*\{(.*?)^\}", images_text, re.M | re.S)
rust_images = m.group(1) if m else ""
if not rust_images:
    problem(f"{images_path}: no rust_images() function found")
m = re.search(r"cargo build --release --target (\S+)", rust_images)
images_triple = m.group(1) if m else None
if not images_triple:
    problem(f"{images_path}: rust_images builds for no --target")


def option(name):
    m = re.search(rf'--{name}\s+("[^"]*"|\S+)', rust_images)
    return m.group(1).strip('"') if m else None


entrypoint, user, file_arg = option("entrypoint"), option("user"), option("file")
for name, value in [("entrypoint", entrypoint), ("user", user), ("file", file_arg)]:
    if value is None:
        problem(f"{images_path}: rust_images passes mkimage.py no --{name}")

with open(mkimage_path) as f:
    mkimage_text = f.read()
# mkimage.py writes an image of one layer (the binaries) on no base: FROM scratch.
if not re.search(r'"diff_ids":\s*\["sha256:"\s*\+\s*layer_digest\]', mkimage_text):
    problem(f"{mkimage_path}: no longer writes exactly one layer on no base; "
            "update the Dockerfile's FROM and this check together")

# --- 1 and 2: the final stages ------------------------------------------------------------
finals = [name for name, base, _ in stages if name != "build"]
for extra in sorted(set(finals) - set(binaries)):
    problem(f"Dockerfile stage {extra!r} builds an image hack/images.sh does not")
for binary in binaries:
    if binary not in by_name:
        problem(f"Dockerfile has no stage {binary!r} for hack/images.sh's {binary} image")
        continue
    base, body = by_name[binary]
    want_path = (file_arg or "").split(":", 1)[-1].replace("$bin", binary)
    want_entry = (entrypoint or "").replace("$bin", binary)
    if base != "scratch":
        problem(f"stage {binary}: FROM {base}, hack/images.sh's image has no base (scratch)")
    want = [
        ("COPY", f"--from=build /out/{binary} {want_path}"),
        ("USER", user),
        ("ENTRYPOINT", json.dumps([want_entry])),
    ]
    got = [(k, re.sub(r"\s+", " ", a)) for k, a in body]
    if got != want:
        problem(f"stage {binary}: has {got}, hack/images.sh's layout needs exactly {want}")

# --- 3: TARGETARCH branches -> target triples -------------------------------------------------
build = by_name.get("build")
if build is None:
    problem("Dockerfile has no stage named build")
else:
    base, body = build
    runs = [a for k, a in body if k == "RUN"]
    args = {a.split("=")[0] for k, a in body if k == "ARG"}
    if "TARGETARCH" not in args:
        problem("stage build: no ARG TARGETARCH (BuildKit sets it only when declared)")
    text = " ".join(runs)
    m = re.search(r'case "\$TARGETARCH" in (.*?) esac', text)
    if not m:
        problem('stage build: no `case "$TARGETARCH" in ... esac` choosing the target')
    else:
        arms = [a.strip() for a in re.split(r";;", m.group(1)) if a.strip()]
        seen_default = False
        mapped = {}
        for arm in arms:
            pattern, _, action = arm.partition(")")
            pattern = pattern.strip()
            if pattern == "*":
                seen_default = True
                if not re.search(r"\bexit [1-9]", action) or "echo" not in action:
                    problem("stage build: the `*)` TARGETARCH branch must print why and exit non-zero")
                continue
            triple = re.search(r"\btriple=(\S+?);", action + ";")
            pkg = re.search(r"\bcross_pkg=(\S+?);", action + ";")
            cc = re.search(r"\bcross_cc=(\S+?);", action + ";")
            if not triple:
                problem(f"stage build: TARGETARCH {pattern} sets no triple")
                continue
            triple = triple.group(1)
            mapped[pattern] = triple
            cpu = RUST_CPU.get(pattern)
            if cpu is None:
                problem(f"stage build: TARGETARCH {pattern} is not known to hack/check-dockerfile.sh (add it to RUST_CPU)")
            elif triple != f"{cpu}-unknown-linux-musl":
                problem(f"stage build: TARGETARCH {pattern} maps to {triple}, not {cpu}-unknown-linux-musl")
            if not pkg or not cc:
                problem(f"stage build: TARGETARCH {pattern} names no cross_pkg/cross_cc")
            elif cpu and (cc.group(1) != f"{cpu}-linux-gnu-gcc"
                          or pkg.group(1) != "gcc-" + f"{cpu}-linux-gnu".replace("_", "-")):
                problem(f"stage build: TARGETARCH {pattern}'s cross compiler "
                        f"{pkg.group(1)}/{cc.group(1)} is not {cpu}'s")
        if not seen_default:
            problem("stage build: no `*)` TARGETARCH branch refusing other architectures")
        if images_triple and mapped.get("amd64") != images_triple:
            problem(f"stage build: amd64 maps to {mapped.get('amd64')}, hack/images.sh builds {images_triple}")
        if "arm64" not in mapped:
            problem("stage build: no arm64 TARGETARCH branch")
    for binary in binaries:
        if not re.search(rf"--bin {re.escape(binary)}\b", text):
            problem(f"stage build: the cargo build does not build --bin {binary}")
        if not re.search(rf'release/{re.escape(binary)}"?[^;]*/out/', text):
            problem(f"stage build: {binary} is not copied to /out/")

# --- 4: every RUN parses as sh ------------------------------------------------------------
for name, base, body in stages:
    for k, a in body:
        if k == "RUN":
            r = subprocess.run(["sh", "-n", "-c", a], capture_output=True, text=True)
            if r.returncode != 0:
                problem(f"stage {name or base}: a RUN does not parse as sh: {r.stderr.strip()}")

if problems:
    for p in problems:
        print(f"{dockerfile_path}: {p}", file=sys.stderr)
    sys.exit(1)
print(f"{dockerfile_path} agrees with hack/images.sh: images {', '.join(binaries)}; "
      f"TARGETARCH {', '.join(sorted(mapped))}")
PY
