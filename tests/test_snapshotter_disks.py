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


def test_a_disk_whose_origin_cannot_be_checked_is_not_used_but_its_layers_do_not_dangle(
        tmp_path: Path) -> None:
    """Issue 11 (disk origin): without an answer from the API (here: no API at all) a disk
    lends no layer to new pulls, but the layers already taken from it do not dangle: the
    snapshotter, restarted during an API outage, must not have CRI remove their images. An
    emptyDir that looks like a cache disk is refused for good: a layer on it dangles."""
    import pytest

    from webhook.snapshotter.core.snapshots import TARGET_REF_LABEL, AlreadyExists
    from webhook.snapshotter.metrics import SnapshotterMetrics
    from webhook.snapshotter.origin import DiskOrigin
    from webhook.snapshotter.snapshotter import Snapshotter

    chain = CHAIN.removeprefix("sha256:")
    pods = tmp_path / "pods"
    make_disk(pods / UID / "volumes" / "kubernetes.io~csi" / "pv-1" / "mount")
    metrics = SnapshotterMetrics()
    # Taken from the disk while it was trusted (here: --disk-origin any) ...
    trusting = Snapshotter(tmp_path / "root", DiskLayers(str(pods)), metrics, materialize=False)
    with pytest.raises(AlreadyExists):
        trusting.prepare("k8s.io/1/extract", "", {TARGET_REF_LABEL: CHAIN})
    trusting.close()
    # ... then restarted with the origin check and no API.
    origin = DiskOrigin(None, "", metrics, no_reader_reason="no API in this test")
    restarted = Snapshotter(tmp_path / "root", DiskLayers(str(pods), origin=origin), metrics,
                            materialize=False)
    try:
        assert restarted.disks.sources(chain) == []  # no new pull takes it
        assert restarted.dangling() == []  # but its image stays
    finally:
        restarted.close()
    # An emptyDir holding it instead: refused for good, the layer dangles.
    (pods / UID / "volumes" / "kubernetes.io~csi").rename(
        pods / UID / "volumes" / "kubernetes.io~empty-dir")
    glob = ("*/volumes/*/*/mount",)
    restarted = Snapshotter(tmp_path / "root", DiskLayers(str(pods), glob, origin=origin),
                            metrics, materialize=False)
    try:
        assert [i.name for i in restarted.dangling()] == [CHAIN]
    finally:
        restarted.close()
