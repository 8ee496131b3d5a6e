"""The node mirror's own test parts, for its tests and benchmark: OCI layouts written here,
cache disks laid out as the builder lays them, the kubelet mount layout, the mirror itself
(in this process or as `imagecache mirror serve`), and containerd with CRI over gRPC.
Registries, images, pushes and skopeo come from registry_fixture.

Nothing here stands in for a part: every server is the real program on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from registry_fixture import (
    OCI_INDEX,
    Blob,
    Image,
    Index,
    image,
    layer_of,
    main_command,
    missing_tools,
    repo_env,
    skopeo,
    stop_process,
    wait_for_line,
)

from webhook.core.cachedisk import REF_NAME_ANNOTATION, CachedImage, CacheManifest

# ---------------------------------------------------------------- cache disks


class Layout:
    """An OCI image layout being written: blobs plus index.json."""

    def __init__(self, path: Path) -> None:
        self.path = path
        (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self.entries: list[dict[str, Any]] = []

    def write(self, blob: Blob) -> None:
        (self.path / "blobs" / "sha256" / blob.digest.split(":")[1]).write_bytes(blob.data)

    def add(self, item: Image | Index, ref_name: str) -> None:
        """Every blob of an image or index, and index.json naming it `ref_name`."""
        for img in item.images if isinstance(item, Index) else (item,):
            for blob in (*img.blobs, img.manifest):
                self.write(blob)
        self.write(item.manifest)  # an index's own; an image's again, harmlessly
        self.entries.append(item.manifest.descriptor(annotations={REF_NAME_ANNOTATION: ref_name}))
        body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.entries}
        (self.path / "index.json").write_text(json.dumps(body, indent=1))


def make_cache_disk(
    disk: Path,
    name: str,
    images: Sequence[tuple[str, str]],
    *,
    built_with_credentials: bool = False,
    serve_credentialed: bool = False,
) -> CacheManifest:
    """A cache disk as the builder makes one: `images` are (source docker ref, normalized
    reference) pairs copied with skopeo into disk/oci, then imagecache.json."""
    (disk / "oci").mkdir(parents=True, exist_ok=True)
    for source, normalized in images:
        skopeo("copy", "--quiet", "--all", "--preserve-digests", "--src-tls-verify=false",
               f"docker://{source}", f"oci:{disk / 'oci'}:{normalized}")
    index = json.loads((disk / "oci" / "index.json").read_text())
    cached = []
    for entry in index["manifests"]:
        cached.append(CachedImage(image=entry["annotations"][REF_NAME_ANNOTATION],
                                  digest=entry["digest"], size=entry["size"],
                                  media_type=entry.get("mediaType", "")))
    manifest = CacheManifest(name=name, images=tuple(cached),
                             built_with_credentials=built_with_credentials,
                             serve_credentialed=serve_credentialed)
    (disk / "imagecache.json").write_text(manifest.to_json())
    return manifest


def make_disk(disk: Path, name: str, ref: str, *, built_with_credentials: bool = False,
              serve_credentialed: bool = False) -> str:
    """A small cache disk written directly, without a registry: one image tagged `ref`.
    Returns the image's manifest digest."""
    img = image([layer_of({name: name.encode()})])
    Layout(disk / "oci").add(img, ref)
    manifest = CacheManifest(name, (), built_with_credentials=built_with_credentials,
                             serve_credentialed=serve_credentialed)
    (disk / "imagecache.json").write_text(manifest.to_json())
    return img.digest


def kubelet_mount(root: Path, pod: str, pv: str) -> Path:
    """Where kubelet mounts a CSI volume of pod `pod`."""
    return root / pod / "volumes" / "kubernetes.io~csi" / pv / "mount"


# ---------------------------------------------------------------- the mirror


@dataclass
class InProcessMirror:
    url: str
    host: str
    watcher: Any
    metrics: Any


@contextlib.asynccontextmanager
async def mirror_in_process(
    root: Path,
    *,
    default_registry: str = "docker.io",
    depth: int = 2,
    interval: float = 0.2,
    serve_tags: bool = True,
) -> AsyncIterator[InProcessMirror]:
    """The mirror's own classes on 127.0.0.1:<free>, polling disks every `interval`. Serving
    tags (`--serve-tags`) by default: the server tests read the disks by tag as skopeo does;
    the command's default, by digest only, is tested with serve_tags=False."""
    import asyncio

    from aiohttp import web

    from webhook.mirror.core.mirror_disks import KUBELET_CSI_GLOB
    from webhook.mirror.disks import DiskWatcher
    from webhook.mirror.metrics import MirrorMetrics
    from webhook.mirror.server import MirrorServer

    watcher = DiskWatcher(str(root), [KUBELET_CSI_GLOB], depth)
    metrics = MirrorMetrics()
    await asyncio.to_thread(watcher.refresh)
    server = MirrorServer(lambda: watcher.index, metrics, default_registry, serve_tags)
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]

    async def poll() -> None:
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(watcher.refresh)

    task = asyncio.create_task(poll())
    try:
        yield InProcessMirror(f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", watcher, metrics)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await runner.cleanup()


class MirrorProcess:
    """`imagecache mirror serve` as its own process (webhook.mirror.command.main)."""

    def __init__(self, root: Path, log: Path, *extra: str) -> None:
        self.log = log
        args = ["serve", "--listen", "127.0.0.1:0", "--root", str(root), *extra]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(main_command("webhook.mirror.command", args),
                                         stdout=out, stderr=subprocess.STDOUT, env=repo_env())
        self.host = wait_for_line(log, r"serving on http://(127\.0\.0\.1:\d+)", self.proc, 30)
        self.url = f"http://{self.host}"

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def stop(self) -> int:
        return stop_process(self.proc)


# ---------------------------------------------------------------- containerd and CRI


def cri_modules(workdir: Path) -> tuple[ModuleType, ModuleType]:
    """(messages, grpc stubs) generated now from tests/data/mirror_cri_api.proto."""
    import importlib

    from grpc_tools import protoc  # type: ignore[import-untyped]

    proto_dir = Path(__file__).parent / "data"
    out = workdir / "cri_gen"
    out.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    code = protoc.main([
        "grpc_tools.protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out}",
        f"--grpc_python_out={out}", str(proto_dir / "mirror_cri_api.proto"),
    ])
    if code != 0:
        raise RuntimeError("grpc_tools.protoc failed on tests/data/mirror_cri_api.proto")
    sys.path.insert(0, str(out))
    try:
        return (importlib.import_module("mirror_cri_api_pb2"),
                importlib.import_module("mirror_cri_api_pb2_grpc"))
    finally:
        sys.path.remove(str(out))


def containerd_unavailable() -> str | None:
    reason = missing_tools("containerd")
    if reason:
        return reason
    if os.geteuid() != 0:
        return "containerd needs root (run the tests as root, as CI does)"
    return None


class Containerd:
    """containerd with its own root, state, sockets and registry config_path (hosts.toml),
    the CRI plugin on, the native snapshotter (no overlay or devmapper needed). `proxy`
    (top-level tables), `cri` (keys of the CRI plugin) and `cri_containerd` (keys of its
    containerd table) add to that configuration."""

    def __init__(self, workdir: Path, certs_d: Path, *, snapshotter: str = "native",
                 proxy: str = "", cri: str = "", cri_containerd: str = "",
                 boot_seconds: float = 30) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.socket = workdir / "containerd.sock"
        self.log = workdir / "containerd.log"
        config = workdir / "config.toml"
        config.write_text(f"""version = 2
root = "{workdir / 'root'}"
state = "{workdir / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[debug]
  level = "debug"
{proxy}[plugins."io.containerd.internal.v1.opt"]
  path = "{workdir / 'opt'}"
[plugins."io.containerd.grpc.v1.cri"]
{cri}  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
{cri_containerd}  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{workdir / 'cni-bin'}"
    conf_dir = "{workdir / 'cni-conf'}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs_d}"
""")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(["containerd", "--config", str(config)],
                                         stdout=out, stderr=subprocess.STDOUT)
        wait_for_line(self.log, r"containerd successfully booted", self.proc, boot_seconds)

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def stop(self) -> None:
        stop_process(self.proc, 15)


class CriImages:
    """The CRI v1 ImageService of a containerd, over its unix socket."""

    def __init__(self, socket_path: Path, workdir: Path) -> None:
        import grpc

        self.pb, stubs = cri_modules(workdir)
        self.channel = grpc.insecure_channel(f"unix://{socket_path}")
        self.stub = stubs.ImageServiceStub(self.channel)

    def pull(self, image: str, timeout: float = 120) -> str:
        request = self.pb.PullImageRequest(image=self.pb.ImageSpec(image=image))
        return str(self.stub.PullImage(request, timeout=timeout).image_ref)

    def status(self, image: str) -> Any:
        request = self.pb.ImageStatusRequest(image=self.pb.ImageSpec(image=image))
        return self.stub.ImageStatus(request, timeout=30).image

    def remove(self, image: str) -> None:
        self.stub.RemoveImage(self.pb.RemoveImageRequest(image=self.pb.ImageSpec(image=image)),
                              timeout=30)

    def close(self) -> None:
        self.channel.close()
