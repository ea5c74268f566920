#!/usr/bin/env python3
"""Writes a container image holding static binaries as a docker-archive tarball.

The archive (manifest.json + config + one layer) is what `docker save` writes and what
`ctr images import` and `kind load image-archive` read; its short RepoTags name is
normalised by the importer, so the kubelet finds the image by the same short name the
manifests use. No registry and no Docker engine are involved.

usage: mkimage.py --name troupe-node:0.1.0 --out node.tar --entrypoint /troupe-node \
                  --user 65532:65532 --file /path/to/binary:/troupe-node [--file ...] \
                  [--also-name troupe-node:0.1.0-rollout ...]

Every --also-name is one more RepoTags entry: the same image under a second name (the
fault tests roll an ActorCluster from one name to the other).
"""
import argparse
import hashlib
import io
import json
import tarfile


def layer_tar(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for src, dst in files:
            info = tar.gettarinfo(src, arcname=dst.lstrip("/"))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = 0o755
            with open(src, "rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--entrypoint", required=True)
    p.add_argument("--user", default="65532:65532")
    p.add_argument("--file", action="append", required=True, help="SRC:DST")
    p.add_argument("--also-name", action="append", default=[], help="another RepoTags name")
    a = p.parse_args()

    files = [tuple(f.split(":", 1)) for f in a.file]
    layer = layer_tar(files)
    layer_digest = hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": [a.entrypoint],
            "User": a.user,
            "Env": ["PATH=/"],
            "Labels": {"org.opencontainers.image.title": a.name},
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + layer_digest]},
        "history": [{"created_by": "hack/images/mkimage.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [a.name] + a.also_name,
                 "Layers": [layer_digest + "/layer.tar"]}]

    with tarfile.open(a.out, mode="w") as out:
        for name, data in [(layer_digest + "/layer.tar", layer),
                           (config_name, config_bytes),
                           ("manifest.json", json.dumps(manifest).encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            out.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    main()
