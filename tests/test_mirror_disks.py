"""Finding cache disks: the pure refresh plan, and DiskWatcher on real directories."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mirror_testkit import Layout, kubelet_mount, make_disk
from registry_fixture import image, layer_of

from webhook.core.cachedisk import CacheManifest
from webhook.mirror.core.mirror_disks import KUBELET_CSI_GLOB, RefreshPlan, disk_order, plan_refresh
from webhook.mirror.disks import BROKEN, REFUSED, SERVED, DiskWatcher, open_blob

PLANS = [
    # (known, seen) -> (load, drop, keep)
    (({}, {}), ((), (), ())),
    (({}, {"/a": (1,)}), (("/a",), (), ())),
    (({"/a": (1,)}, {"/a": (1,)}), ((), (), ("/a",))),
    (({"/a": (1,)}, {"/a": (2,)}), (("/a",), (), ())),
    (({"/a": (1,)}, {}), ((), ("/a",), ())),
    (({"/a": (1,), "/b": (1,)}, {"/b": (1,), "/c": (3,)}), (("/c",), ("/a",), ("/b",))),
]


@pytest.mark.parametrize(("args", "expected"), PLANS)
def test_plan_refresh(args: tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]],
                      expected: tuple[tuple[str, ...], ...]) -> None:
    plan = plan_refresh(*args)
    assert plan == RefreshPlan(*expected)
    assert plan.changed is bool(expected[0] or expected[1])


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        ({}, []),
        ({"/a": 1.0, "/b": 2.0}, ["/b", "/a"]),
        ({"/b": 1.0, "/a": 1.0, "/c": 0.5}, ["/a", "/b", "/c"]),
    ],
)
def test_disk_order_newest_first(built: dict[str, float], expected: list[str]) -> None:
    assert disk_order(built) == expected


def watcher(root: Path, depth: int = 2) -> DiskWatcher:
    return DiskWatcher(str(root), [KUBELET_CSI_GLOB], depth)


def test_disks_are_found_by_the_kubelet_glob_and_by_depth(tmp_path: Path) -> None:
    csi = kubelet_mount(tmp_path, "uid-1", "pvc-1")  # depth 5: found by the glob only
    make_disk(csi, "a", "docker.io/library/a:1")
    make_disk(tmp_path / "b", "b", "docker.io/library/b:1")  # depth 1
    make_disk(tmp_path / "x" / "c", "c", "docker.io/library/c:1")  # depth 2
    make_disk(tmp_path / "x" / "y" / "d", "d", "docker.io/library/d:1")  # depth 3: too deep
    # Inside a cache disk nothing more is looked for.
    make_disk(tmp_path / "b" / "nested", "n", "docker.io/library/n:1")
    (tmp_path / "link").symlink_to(tmp_path / "x" / "y")  # the walk does not follow links
    w = watcher(tmp_path)
    assert w.candidates() == sorted(str(p) for p in (csi, tmp_path / "b", tmp_path / "x" / "c"))
    assert w.refresh() is True
    assert w.counts() == {SERVED: 3, REFUSED: 0, BROKEN: 0}
    assert {repo for _, repo in w.index.repositories()} == {"library/a", "library/b",
                                                           "library/c"}
    assert w.refresh() is False  # nothing changed: nothing reloaded
    assert watcher(tmp_path, depth=0).candidates() == [str(csi)]


def test_the_root_itself_may_be_a_disk(tmp_path: Path) -> None:
    make_disk(tmp_path, "a", "docker.io/library/a:1")
    assert watcher(tmp_path, depth=0).candidates() == [str(tmp_path)]


def test_a_missing_root_is_no_disk_and_no_error(tmp_path: Path) -> None:
    w = watcher(tmp_path / "nope")
    assert w.refresh() is False
    assert w.counts() == {SERVED: 0, REFUSED: 0, BROKEN: 0}
    make_disk(tmp_path / "nope" / "a", "a", "docker.io/library/a:1")
    assert w.refresh() is True
    assert w.counts()[SERVED] == 1


def test_disk_states_and_reasons(tmp_path: Path) -> None:
    make_disk(tmp_path / "private", "private", "docker.io/library/p:1",
              built_with_credentials=True)
    make_disk(tmp_path / "allowed", "allowed", "docker.io/library/q:1",
              built_with_credentials=True, serve_credentialed=True)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "imagecache.json").write_text('{"schemaVersion": 1}')
    no_layout = tmp_path / "nolayout"
    no_layout.mkdir()
    (no_layout / "imagecache.json").write_text(CacheManifest("nolayout", ()).to_json())
    w = watcher(tmp_path)
    w.refresh()
    states = {Path(p).name: (d.state, d.reason) for p, d in w.disks.items()}
    assert states["allowed"] == (SERVED, "")
    assert states["private"][0] == REFUSED
    assert "built with credentials" in states["private"][1]
    assert states["broken"][0] == BROKEN
    assert "field 'images' must be a list" in states["broken"][1]
    assert states["nolayout"][0] == BROKEN
    assert "index.json" in states["nolayout"][1]
    assert w.index.holds_repository("docker.io", "library/q")
    assert not w.index.holds_repository("docker.io", "library/p")


def test_a_changed_disk_is_reloaded_and_a_removed_one_dropped(tmp_path: Path) -> None:
    disk = tmp_path / "a"
    first = make_disk(disk, "a", "docker.io/library/a:1")
    w = watcher(tmp_path)
    w.refresh()
    assert w.index.manifest("docker.io", "library/a", "1")[1].digest == first  # type: ignore[index]
    # The layout is rewritten with another image under the same tag.
    second = image([layer_of({"new": b"new"})])
    Layout(disk / "oci").add(second, "docker.io/library/a:1")
    os.utime(disk / "oci" / "index.json", ns=(1, 1))  # a different stamp even within one tick
    assert w.refresh() is True
    assert w.index.manifest("docker.io", "library/a", "1")[1].digest == second.digest  # type: ignore[index]
    (disk / "imagecache.json").unlink()
    assert w.refresh() is True
    assert w.counts()[SERVED] == 0
    assert w.index.manifest("docker.io", "library/a", "1") is None


def test_the_newest_disk_wins_a_tag_both_hold(tmp_path: Path) -> None:
    old = make_disk(tmp_path / "old", "old", "docker.io/library/a:1")
    new = make_disk(tmp_path / "new", "new", "docker.io/library/a:1")
    os.utime(tmp_path / "old" / "imagecache.json", (1_000_000, 1_000_000))
    os.utime(tmp_path / "new" / "imagecache.json", (2_000_000, 2_000_000))
    w = watcher(tmp_path)
    w.refresh()
    assert w.index.manifest("docker.io", "library/a", "1")[1].digest == new  # type: ignore[index]
    assert w.index.manifest("docker.io", "library/a", old) is not None


def test_problems_of_a_disk_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    disk = tmp_path / "a"
    make_disk(disk, "a", "docker.io/library/a:1")
    index = json.loads((disk / "oci" / "index.json").read_text())
    index["manifests"].append({"digest": "sha256:" + "0" * 64, "size": 2,
                               "annotations": {"org.opencontainers.image.ref.name": "b:1"}})
    (disk / "oci" / "index.json").write_text(json.dumps(index))
    with caplog.at_level("WARNING", logger="imagecache.mirror"):
        watcher(tmp_path).refresh()
    assert any("is not in oci/blobs: skipped" in r.getMessage() for r in caplog.records)


def test_open_blob_stays_inside_the_disk(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    digest = make_disk(disk, "a", "docker.io/library/a:1")
    opened = open_blob(str(disk), digest)
    assert opened is not None
    os.close(opened[0])
    assert open_blob(str(disk), "sha256:" + "0" * 64) is None  # absent
    assert open_blob(str(disk), "sha256:../../imagecache.json") is None  # not a digest
    outside = tmp_path / "outside"
    outside.write_bytes(b"host secret")
    link = "sha256:" + "1" * 64
    (disk / "oci" / "blobs" / "sha256" / ("1" * 64)).symlink_to(outside)
    assert open_blob(str(disk), link) is None
    (disk / "oci" / "blobs" / "sha256" / ("2" * 64)).mkdir()  # not a regular file
    assert open_blob(str(disk), "sha256:" + "2" * 64) is None
