"""Layer tars with what real images hold (whiteouts, opaque directories, symlinks, hard
links, owners, setuid bits, xattrs) or what hostile ones try; and images made of them."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from dataclasses import dataclass, field
from typing import Any

from registry_fixture import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, Blob, Image, sha256


@dataclass
class Entry:
    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    xattrs: dict[str, str] = field(default_factory=dict)


def tar_of(entries: list[Entry]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type, info.linkname, info.mode = e.type, e.linkname, e.mode
            info.uid, info.gid, info.mtime = e.uid, e.gid, 1_700_000_000
            info.size = len(e.data) if e.type == tarfile.REGTYPE else 0
            info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in e.xattrs.items()}
            tar.addfile(info, io.BytesIO(e.data) if info.size else None)
    return raw.getvalue()


def gz_layer(entries: list[Entry]) -> Blob:
    return Blob(OCI_LAYER_GZIP, gzip.compress(tar_of(entries), compresslevel=1, mtime=0))


def image_of(layers: list[Blob], diff_ids: list[str] | None = None,
             config: dict[str, Any] | None = None) -> Image:
    """An OCI image; `diff_ids` overrides the true ones (to make a config that lies)."""
    true_ids = [sha256(gzip.decompress(b.data)) for b in layers]
    doc: dict[str, Any] = {
        "architecture": "amd64", "os": "linux",
        "config": config or {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids or true_ids},
    }
    cfg = Blob(OCI_CONFIG, json.dumps(doc).encode())
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg.descriptor(),
                "layers": [b.descriptor() for b in layers]}
    return Image(Blob(OCI_MANIFEST, json.dumps(manifest).encode()), cfg, tuple(layers))


d, f, s, h = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE

BASE = gz_layer([
    Entry("etc/", type=d, mode=0o755),
    Entry("etc/motd", b"hello\n"),
    Entry("etc/keep", b"kept\n"),
    Entry("var/cache/", type=d, mode=0o755),
    Entry("var/cache/old", b"old\n"),
    Entry("usr/bin/", type=d, mode=0o755),
    Entry("usr/bin/tool", b"#!/bin/sh\necho tool\n", mode=0o4755),
    Entry("usr/bin/tool2", type=h, linkname="usr/bin/tool"),
    Entry("usr/bin/sh", type=s, linkname="/bin/busybox"),
    Entry("home/user/", type=d, mode=0o700, uid=1000, gid=1000),
    Entry("home/user/notes", b"mine\n", mode=0o600, uid=1000, gid=1000,
          xattrs={"user.origin": "imagecache-test", "trusted.overlay.redirect": "/etc"}),
])
TOP = gz_layer([
    Entry("etc/.wh.motd"),
    Entry("var/cache/", type=d, mode=0o755),
    Entry("var/cache/.wh..wh..opq"),
    Entry("var/cache/new", b"new\n"),
])
OTHER = gz_layer([Entry("srv/data", b"other\n")])


def escape_layer(target: str) -> Blob:
    """Writes through a symlink to `target` (outside the layer), if an unpacker followed it."""
    return gz_layer([Entry("evil", type=s, linkname=target), Entry("evil/pwned", b"pwned\n")])


def busybox_layer(tools: tuple[str, ...] = ("sh", "ls", "cat", "sha256sum", "sleep", "stat")
                  ) -> Blob:
    """Debian's static busybox (package busybox-static) and links for `tools`: enough of a
    userland for containers the tests run."""
    from pathlib import Path

    binary = Path("/bin/busybox").read_bytes()
    return gz_layer([Entry("bin/", type=d, mode=0o755),
                     Entry("bin/busybox", binary, mode=0o755),
                     *(Entry(f"bin/{tool}", type=s, linkname="busybox") for tool in tools),
                     Entry("tmp/", type=d, mode=0o1777)])
