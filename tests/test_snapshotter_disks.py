"""Which pod a cache disk belongs to, from where the kubelet mounted it (real files)."""

from __future__ import annotations

from pathlib import Path

from webhook.core.cachedisk import CachedImage, CachedLayer, CacheManifest
from webhook.snapshotter.disks import DiskLayers

CHAIN = "sha256:" + "a" * 64
UID = "5214cf4b-2e59-4c55-8c73-bb3dcb64acb9"


def make_disk(disk: Path) -> None:
    (disk / "layers" / CHAIN.removeprefix("sha256:")).mkdir(parents=True)
    cached = CachedImage("r/img:1", "sha256:" + "0" * 64, 1, "", (
        CachedLayer("sha256:" + "1" * 64, CHAIN, CHAIN, 1, True, "linux/amd64"),))
    (disk / "imagecache.json").write_text(CacheManifest("c", (cached,)).to_json())


def test_pod_of_a_csi_and_of_a_local_volume_disk(tmp_path: Path) -> None:
    # Seen on the real node (issue 12.5): a local-PV clone (4 levels below the pods dir, no
    # trailing `mount`) was taken for nobody's disk, so "whose disk" never matched its pod.
    for volume in ("kubernetes.io~csi/pv/mount", "kubernetes.io~local-volume/pv"):
        root = tmp_path / volume.split("/")[0]
        make_disk(root / UID / "volumes" / volume)
        disks = DiskLayers(str(root), globs=(f"*/volumes/{volume.replace('/pv', '/*')}",))
        try:
            (source,) = disks.sources(CHAIN.removeprefix("sha256:"))
            assert source.pod_uid == UID, volume
        finally:
            disks.close()
