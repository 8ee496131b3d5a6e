#!/usr/bin/env python3
"""Writes a root filesystem directory as a one-layer OCI image archive, deterministically.

    oci_archive.py ROOTFS OUT.tar --name REF [--config-json JSON] [--epoch N]

Same tree, same digest: entries sorted, every mtime the epoch, numeric owners only (no user
or group names), no atime/ctime, gzip without name or time. /dev, /proc, /sys and /run keep
only their directories (the runtime mounts them). The archive holds `oci-layout`, `index.json`
(annotated with `io.containerd.image.name` for `ctr images import` and
`org.opencontainers.image.ref.name` = the tag for `skopeo copy oci-archive:`) and
`blobs/sha256/*`. Prints the manifest digest. Stdlib only (it runs before any venv exists).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import stat
import sys
import tarfile
from typing import Any

EMPTIED = ("dev", "proc", "sys", "run")  # kept as directories, contents never shipped
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def _entries(root: str) -> list[str]:
    """Relative paths under root, sorted, parents before children."""
    out: list[str] = []
    for top, dirs, files in os.walk(root):
        rel = os.path.relpath(top, root)
        if rel != "." and rel.split(os.sep)[0] in EMPTIED:
            dirs[:] = []
            continue
        dirs.sort()
        for name in sorted(dirs + files):
            out.append(os.path.normpath(os.path.join(rel, name)))
    return sorted(out)


def _info(root: str, rel: str, epoch: int, links: dict[tuple[int, int], str]) -> tarfile.TarInfo:
    path = os.path.join(root, rel)
    st = os.lstat(path)
    ti = tarfile.TarInfo(rel)
    ti.mode, ti.uid, ti.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    ti.uname = ti.gname = ""
    ti.mtime = epoch
    if stat.S_ISLNK(st.st_mode):
        ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(path)
    elif stat.S_ISDIR(st.st_mode):
        ti.type = tarfile.DIRTYPE
    elif stat.S_ISREG(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in links:
            ti.type, ti.linkname = tarfile.LNKTYPE, links[key]
        else:
            links[key] = rel
            ti.type, ti.size = tarfile.REGTYPE, st.st_size
    elif stat.S_ISFIFO(st.st_mode):
        ti.type = tarfile.FIFOTYPE
    else:  # sockets, devices: nothing an image should carry outside /dev
        raise ValueError(f"{path}: not a file, directory, link or fifo; remove it first")
    return ti


def layer_tar(root: str, epoch: int) -> bytes:
    buf = io.BytesIO()
    links: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in _entries(root):
            ti = _info(root, rel, epoch, links)
            if ti.type == tarfile.REGTYPE:
                with open(os.path.join(root, rel), "rb") as f:
                    tar.addfile(ti, f)
            else:
                tar.addfile(ti)
    return buf.getvalue()


def _gzip(raw: bytes) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
        gz.write(raw)
    return out.getvalue()


def _blob(blobs: dict[str, bytes], data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return digest, len(data)


def _rfc3339(epoch: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def archive(root: str, name: str, config: dict[str, Any], epoch: int) -> tuple[bytes, str]:
    raw = layer_tar(root, epoch)
    blobs: dict[str, bytes] = {}
    layer_digest, layer_size = _blob(blobs, _gzip(raw))
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "created": _rfc3339(epoch),
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
        "history": [{"created": _rfc3339(epoch), "created_by": "hack/image.sh"}],
    }
    config_digest, config_size = _blob(blobs, json.dumps(image_config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{"mediaType": LAYER, "digest": layer_digest, "size": layer_size}],
    }
    manifest_digest, manifest_size = _blob(blobs, json.dumps(manifest, sort_keys=True).encode())
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": manifest["mediaType"],
                "digest": manifest_digest,
                "size": manifest_size,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        ],
    }
    files = {
        "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
        "index.json": json.dumps(index, sort_keys=True).encode(),
        **{f"blobs/sha256/{d.split(':', 1)[1]}": data for d, data in blobs.items()},
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirname in ("blobs", "blobs/sha256"):
            ti = tarfile.TarInfo(dirname)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, epoch
            tar.addfile(ti)
        for path in sorted(files):
            ti = tarfile.TarInfo(path)
            ti.size, ti.mode, ti.mtime = len(files[path]), 0o644, epoch
            tar.addfile(ti, io.BytesIO(files[path]))
    return out.getvalue(), manifest_digest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rootfs")
    parser.add_argument("out")
    parser.add_argument("--name", required=True, help="image reference, e.g. localhost/x:1")
    parser.add_argument("--config-json", default="{}", help="the image config's `config` object")
    parser.add_argument("--epoch", type=int, default=int(os.environ.get("SOURCE_DATE_EPOCH", 0)))
    args = parser.parse_args()
    data, digest = archive(args.rootfs, args.name, json.loads(args.config_json), args.epoch)
    tmp = args.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, args.out)
    print(digest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
