"""The snapshotter after a crash or a power cut (issue 11, startup reconcile): killed exactly
between two of its writes (IMAGECACHE_SNAPSHOTTER_CRASH_AT, a SIGKILL at a named point, no
timing), it restarts with nothing dangling and nothing leaked; a disk-backed layer's record
that a power cut lost (its commit is fsync'd 0.2 s late) is made again from its disk when
containerd names it. The power cut itself cannot happen in a test: the rows it can lose (the
pull's disk-backed records, written after the last fsync) are deleted from the stopped
snapshotter's database, which is the state it leaves. Real process over gRPC, real overlay
mounts; tests/test_snapshotter_containerd.py does the same under containerd.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
from pathlib import Path

import grpc
import pytest
from test_snapshotter_api import Api, served

from webhook.core.cachedisk import CachedImage, CachedLayer, CacheManifest
from webhook.core.layer_chain import chain_ids
from webhook.snapshotter.api import snapshots_pb2 as pb
from webhook.snapshotter.snapshotter import CRASH_AT

C = grpc.StatusCode
REF = "containerd.io/snapshot.ref"


def dies(api: Api, call: str, **request: object) -> None:
    """The call's process is killed at the crash point: the client sees the connection go."""
    assert api.code(call, **request) == C.UNAVAILABLE
    assert api.process.proc is not None
    assert api.process.proc.wait(30) == -9


def restart(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CRASH_AT)
    api.process.start()


@pytest.mark.parametrize("point", ["create-dirs", "commit-recorded", "remove-recorded"])
def test_killed_between_two_writes_nothing_dangles_nothing_leaks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    monkeypatch.setenv(CRASH_AT, point)
    with served(tmp_path, "--no-materialize") as api:
        snapshots = api.root / "snapshots"
        if point == "create-dirs":  # directories made, the record not committed
            dies(api, "Prepare", key="a")
            restart(api, monkeypatch)
            assert api.names() == set()
            assert list(snapshots.iterdir()) == []  # removed at start
            return
        mounts = api.prepare("a")
        Path(mounts[0].source, "hello").write_text("hi")
        if point == "commit-recorded":  # committed, its overlay workdir not removed yet
            dies(api, "Commit", name="c1", key="a")
            restart(api, monkeypatch)
            info = api.stat("c1")
            assert info.kind == pb.COMMITTED
            (own,) = snapshots.iterdir()
            assert sorted(p.name for p in own.iterdir()) == ["fs"]  # work removed at start
            assert (own / "fs" / "hello").read_text() == "hi"
            return
        assert api.code("Commit", name="c1", key="a") == C.OK
        dies(api, "Remove", key="c1")  # the record removed, its directory not yet
        restart(api, monkeypatch)
        assert api.names() == set()
        assert list(snapshots.iterdir()) == []


def disk_with_layers(disk: Path, diff_ids: list[str]) -> list[str]:
    """A cache disk listing an image of `diff_ids`, each layer unpacked (a file naming it);
    returns the chain IDs."""
    chains = list(chain_ids(diff_ids))
    layers = []
    for n, (diff_id, chain) in enumerate(zip(diff_ids, chains, strict=True)):
        layer = disk / "layers" / chain.removeprefix("sha256:")
        layer.mkdir(parents=True)
        (layer / f"layer-{n}").write_text(f"{n}\n")
        layers.append(CachedLayer("sha256:" + f"{n}" * 64, diff_id, chain, 1, True,
                                  "linux/amd64"))
    image = CachedImage("r/img:1", "sha256:" + "0" * 64, 1, "", tuple(layers))
    (disk / "imagecache.json").write_text(CacheManifest("c", (image,)).to_json())
    return chains


def test_a_disk_backed_record_lost_to_a_power_cut_is_made_again(tmp_path: Path) -> None:
    with served(tmp_path, "--no-materialize", "--glob", "*") as api:
        diff_ids = ["sha256:" + hashlib.sha256(f"layer {n}".encode()).hexdigest()
                    for n in range(3)]
        chains = disk_with_layers(api.disks / "d1", diff_ids)
        parent = ""
        for n, chain in enumerate(chains):  # what containerd's unpacker asks, layer by layer
            assert api.code("Prepare", key=f"k8s.io/{n}/extract {chain}", parent=parent,
                            labels={REF: chain}) == C.ALREADY_EXISTS
            parent = chain
        # The power cut: the pull's records were committed after the last fsync.
        api.process.kill()
        with sqlite3.connect(api.root / "metadata.db") as db:
            assert db.execute("DELETE FROM snapshots WHERE source != ''").rowcount == 3
        api.process.start()
        # containerd's metadata still names the top layer: a container's snapshot on it.
        mounts = api.prepare("k8s.io/9/container", chains[-1])
        options = dict(o.split("=", 1) for o in mounts[0].options if "=" in o)
        lowers = options["lowerdir"].split(":")
        assert lowers == [str(api.disks / "d1" / "layers" / c.removeprefix("sha256:"))
                          for c in reversed(chains)]
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", ",".join(mounts[0].options),
                        str(mnt)], check=True)
        try:
            assert sorted(p.name for p in mnt.iterdir()) == ["layer-0", "layer-1", "layer-2"]
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
        restored = api.stat(chains[1])
        assert restored.parent == chains[0] and restored.labels[REF] == chains[1]
        assert "made again from its disk" in api.process.text()
        # A name no disk holds stays missing (nothing is invented).
        assert api.code("Stat", key="sha256:" + "ab" * 32) == C.NOT_FOUND
