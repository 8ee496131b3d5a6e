"""The snapshotter's API as containerd calls it (gRPC on its unix socket, the process itself):
containerd's overlay snapshotter semantics and error codes, crash safety, real overlay
mounts, the remote-layer rule, Usage 0 for disk layers, the fail-safe fallback, and what
happens when a cache disk goes away (issue 11.2). Pure rules: webhook.snapshotter.core.snapshots."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from snapshotter_testkit import SnapshotterProcess

from webhook.core.cachedisk import CachedImage, CachedLayer, CacheManifest
from webhook.snapshotter.api import snapshots_pb2 as pb
from webhook.snapshotter.api import snapshots_pb2_grpc as pb_grpc
from webhook.snapshotter.core.snapshots import (
    Info,
    InvalidArgument,
    Kind,
    LayerChoice,
    Mount,
    Use,
    choose_layer,
    matches,
    mounts_for,
    split_key,
    updated_labels,
)

REF = "containerd.io/snapshot.ref"
CHAIN = "sha256:" + "ab" * 32


def info(**kw: Any) -> Info:
    base: dict[str, Any] = {"id": 1, "name": "n", "parent": "p", "kind": Kind.COMMITTED,
                            "created": 0.0, "updated": 0.0, "labels": {}}
    return Info(**{**base, **kw})


# ------------------------------------------------------------------ pure rules


def test_mounts_follow_containerds_overlay_snapshotter() -> None:
    assert mounts_for(Kind.ACTIVE, "/s/1/fs", "/s/1/work", []) == [
        Mount("bind", "/s/1/fs", ("rw", "rbind"))]
    assert mounts_for(Kind.VIEW, "/s/2/fs", "/s/2/work", ["/l/1"]) == [
        Mount("bind", "/l/1", ("ro", "rbind"))]
    assert mounts_for(Kind.VIEW, "/s/2/fs", "/s/2/work", ["/l/2", "/l/1"]) == [
        Mount("overlay", "overlay", ("index=off", "lowerdir=/l/2:/l/1"))]
    assert mounts_for(Kind.ACTIVE, "/s/3/fs", "/s/3/work", ["/l/2", "/l/1"]) == [
        Mount("overlay", "overlay", ("index=off", "workdir=/s/3/work", "upperdir=/s/3/fs",
                                     "lowerdir=/l/2:/l/1"))]


def test_filters() -> None:
    snap = info(name="k8s.io/3/sha256:x", parent="k8s.io/2/p", labels={REF: "sha256:x"})
    assert matches(snap, [])
    assert matches(snap, [f'labels."{REF}"==sha256:x,parent=="k8s.io/2/p"'])
    assert not matches(snap, [f'labels."{REF}"==sha256:y,parent=="k8s.io/2/p"'])
    assert matches(snap, ["kind==view", "kind==committed"])  # any filter
    assert matches(snap, ['name!="a,b"'])
    with pytest.raises(InvalidArgument, match="not supported"):
        matches(snap, ["size>3"])


def test_whose_disk() -> None:
    disks = [("pod-a", "/a/layer"), ("pod-b", "/b/layer")]
    assert choose_layer("/copy", disks, "pod-c") == LayerChoice(Use.COPY, "/copy")
    assert choose_layer("", disks, "pod-b") == LayerChoice(Use.DISK, "/b/layer")
    assert choose_layer("", disks, None) == LayerChoice(Use.DISK, "/a/layer")  # short mounts
    assert choose_layer("", disks, "pod-c") == LayerChoice(Use.WAIT, "/a/layer")  # never b's
    assert choose_layer("", [("", "/x")], "") == LayerChoice(Use.WAIT, "/x")
    assert choose_layer("", [], "pod-a") == LayerChoice(Use.GONE)
    assert split_key("k8s.io/12/0123abc") == ("k8s.io", "0123abc")
    assert split_key("k8s.io/12/extract-1 sha256:x/y") == ("k8s.io", "extract-1 sha256:x/y")
    assert split_key("plain") == ("", "plain")


def test_label_updates() -> None:
    current = {"a": "1", "b": "2"}
    assert updated_labels(current, {"c": "3"}, []) == {"c": "3"}
    assert updated_labels(current, {"c": "3"}, ["labels"]) == {"c": "3"}
    assert updated_labels(current, {"a": "9"}, ["labels.a", "labels.b"]) == {"a": "9"}
    with pytest.raises(InvalidArgument, match="only labels"):
        updated_labels(current, {}, ["parent"])


# ------------------------------------------------------------------ the process over gRPC


@dataclass
class Api:
    process: SnapshotterProcess
    stub: Any
    root: Path
    disks: Path

    def code(self, call: str, **request: Any) -> grpc.StatusCode:
        kinds = {"Prepare": pb.PrepareSnapshotRequest, "View": pb.ViewSnapshotRequest,
                 "Commit": pb.CommitSnapshotRequest, "Remove": pb.RemoveSnapshotRequest,
                 "Mounts": pb.MountsRequest, "Stat": pb.StatSnapshotRequest}
        try:
            getattr(self.stub, call)(kinds[call](**request), timeout=30)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK

    def prepare(self, key: str, parent: str = "", **labels: str) -> list[Any]:
        reply = self.stub.Prepare(pb.PrepareSnapshotRequest(key=key, parent=parent,
                                                            labels=labels), timeout=30)
        return list(reply.mounts)

    def stat(self, key: str) -> Any:
        return self.stub.Stat(pb.StatSnapshotRequest(key=key), timeout=30).info

    def usage(self, key: str) -> tuple[int, int]:
        reply = self.stub.Usage(pb.UsageRequest(key=key), timeout=30)
        return reply.size, reply.inodes

    def names(self, *filters: str) -> set[str]:
        return {i.name for reply in self.stub.List(pb.ListSnapshotsRequest(
            filters=list(filters)), timeout=30) for i in reply.info}


@contextlib.contextmanager
def served(tmp_path: Path, *args: str) -> Iterator[Api]:
    """The snapshotter on `tmp_path/s.sock`, disks below `tmp_path/disks`, and a client."""
    disks = tmp_path / "disks"
    disks.mkdir(exist_ok=True)
    socket = tmp_path / "s.sock"
    process = SnapshotterProcess(tmp_path / "root", disks, socket, tmp_path / "log",
                                 "--containerd-socket", "", *args)
    channel = grpc.insecure_channel(f"unix://{socket}")
    try:
        yield Api(process, pb_grpc.SnapshotsStub(channel), tmp_path / "root", disks)
    finally:
        channel.close()
        process.stop()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with served(tmp_path, "--no-materialize", "--glob", "*",
                "--metrics-listen", "127.0.0.1:0") as running:
        yield running


def source(mounts: list[Any]) -> str:
    (mount,) = mounts
    return str(mount.source)


def options(mounts: list[Any]) -> dict[str, str]:
    (mount,) = mounts
    return dict(o.split("=", 1) for o in mount.options if "=" in o)


def test_semantics_and_error_codes(api: Api) -> None:
    C = grpc.StatusCode
    first = api.prepare("a")
    assert first[0].type == "bind" and list(first[0].options) == ["rw", "rbind"]
    Path(source(first), "hello").write_text("hi")
    assert api.code("Prepare", key="a") == C.ALREADY_EXISTS
    assert api.code("Commit", name="c1", key="a") == C.OK
    assert api.stat("c1").kind == pb.COMMITTED
    assert api.code("Stat", key="a") == C.NOT_FOUND
    assert api.code("Commit", name="c2", key="a") == C.NOT_FOUND
    assert api.code("Commit", name="c1", key="c1") == C.FAILED_PRECONDITION
    assert api.code("Prepare", key="x", parent="missing") == C.NOT_FOUND
    child = api.prepare("b", "c1")
    assert api.code("Prepare", key="y", parent="b") == C.FAILED_PRECONDITION
    assert api.code("Commit", name="c1", key="b") == C.ALREADY_EXISTS
    view = api.stub.View(pb.ViewSnapshotRequest(key="v", parent="c1"), timeout=30).mounts
    assert view[0].type == "bind" and "ro" in view[0].options
    assert api.stub.Mounts(pb.MountsRequest(key="v"), timeout=30).mounts == view
    assert api.code("Mounts", key="c1") == C.FAILED_PRECONDITION
    assert api.code("Remove", key="c1") == C.FAILED_PRECONDITION  # it has children
    assert api.names() == {"c1", "b", "v"}
    assert api.names("parent==c1") == {"b", "v"}
    assert api.names("kind==committed") == {"c1"}
    updated = api.stub.Update(pb.UpdateSnapshotRequest(
        info=pb.Info(name="c1", labels={"x": "1"}), update_mask={"paths": ["labels.x"]}),
        timeout=30).info
    assert dict(updated.labels) == {"x": "1"} and dict(api.stat("c1").labels) == {"x": "1"}
    assert api.usage("c1")[0] >= 2 and api.usage("c1")[1] == 2  # fs dir and hello

    # The active child's overlay, mounted for real, shows the parent's file.
    mnt = api.root.parent / "mnt"
    mnt.mkdir()
    opts = ",".join(child[0].options)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)], check=True)
    try:
        assert (mnt / "hello").read_text() == "hi"
        (mnt / "new").write_text("upper")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert Path(options(child)["upperdir"], "new").read_text() == "upper"

    # Crash safety: SIGKILL, restart: the store has every snapshot; orphans are cleaned.
    orphan = api.root / "snapshots" / "999"
    orphan.mkdir()
    api.process.kill()
    api.process.start()
    assert api.names() == {"c1", "b", "v"}
    assert not orphan.exists()  # serve cleans up at start
    for key in ("v", "b", "c1"):
        assert api.code("Remove", key=key) == C.OK
    assert api.names() == set()
    assert list((api.root / "snapshots").iterdir()) == []


def make_disk(disks: Path, name: str, chain: str = CHAIN) -> Path:
    """A cache disk as the builder leaves it: one unpacked layer, listed in imagecache.json."""
    disk = disks / name
    layer = disk / "layers" / chain.removeprefix("sha256:")
    (layer / "etc").mkdir(parents=True)
    (layer / "etc" / "from-disk").write_text("disk layer\n")
    cached = CachedImage("r/img:1", "sha256:" + "0" * 64, 1, "", (
        CachedLayer("sha256:" + "1" * 64, chain, chain, 1, True, "linux/amd64"),))
    (disk / "imagecache.json").write_text(CacheManifest(name, (cached,)).to_json())
    return disk


def test_remote_layer_rule_usage_and_fallback(api: Api) -> None:
    C = grpc.StatusCode
    disk = make_disk(api.disks, "d1")
    key = f"k8s.io/1/extract-1 {CHAIN}"
    assert api.code("Prepare", key=key, labels={REF: CHAIN}) == C.ALREADY_EXISTS
    layer = api.stat(CHAIN)
    assert layer.kind == pb.COMMITTED and layer.labels[REF] == CHAIN
    assert api.code("Stat", key=key) == C.NOT_FOUND  # nothing active left behind
    assert api.usage(CHAIN) == (0, 0)  # the disk's bytes, not the node's
    assert api.names(f'labels."{REF}"=={CHAIN},parent==""') == {CHAIN}
    port = re.search(r'"metrics":"127.0.0.1:(\d+)"', api.process.text())
    assert port is not None, api.process.text()
    with urllib.request.urlopen(f"http://127.0.0.1:{port[1]}/metrics", timeout=30) as reply:
        metrics = reply.read().decode()
    assert "imagecache_snapshotter_disk_layers_total 1.0" in metrics
    assert 'imagecache_snapshotter_call_seconds_count{code="ALREADY_EXISTS",method="Prepare"}' \
        in metrics
    child = api.prepare("c", CHAIN)
    assert options(child)["lowerdir"] == str(disk / "layers" / CHAIN.removeprefix("sha256:"))
    mnt = api.root.parent / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", ",".join(child[0].options),
                    str(mnt)], check=True)
    try:
        assert (mnt / "etc/from-disk").read_text() == "disk layer\n"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)

    # A layer no disk holds, and a disk whose description is broken: ordinary snapshots.
    other = "sha256:" + "cd" * 32
    broken = make_disk(api.disks, "d2", other)
    (broken / "imagecache.json").write_text("{not json")
    mounts = api.prepare(f"k8s.io/1/extract-2 {other}", **{REF: other})
    assert mounts[0].type == "bind"
    assert api.code("Stat", key=other) == C.NOT_FOUND

    # The disk goes away: its layer cannot be mounted any more, and says why.
    os.rename(disk / "imagecache.json", disk / "gone.json")
    with pytest.raises(grpc.RpcError) as failure:
        api.stub.Mounts(pb.MountsRequest(key="c"), timeout=30)
    assert failure.value.code() == C.FAILED_PRECONDITION
    assert "no longer mounted" in str(failure.value.details())
    # containerd asks for that layer again (the image was removed and is pulled anew): it
    # gets an ordinary snapshot to unpack into, not the gone one.
    again = api.prepare(f"k8s.io/1/extract-3 {CHAIN}", **{REF: CHAIN})
    assert again[0].type == "bind" and "rw" in again[0].options


def test_disk_mounted_or_unmounted_is_seen_by_the_next_prepare(api: Api) -> None:
    """The chain ID -> disk index (webhook.snapshotter.disks) is no stale cache: a disk mounted
    a moment ago serves the next Prepare, an unmounted one no longer does, a new one mounted
    at the same place does again, all within the scan interval (no waiting)."""
    C = grpc.StatusCode
    make_disk(api.disks, "plain", "sha256:" + "ef" * 32)
    assert api.code("Prepare", key="warm", labels={REF: "sha256:" + "ef" * 32}) \
        == C.ALREADY_EXISTS
    # That record is fsync'd a moment later, in the background (webhook.snapshotter.store);
    # a process killed at once keeps it all the same.
    api.process.kill()
    api.process.start()  # scans the disks: the next Prepares are within the scan's ttl
    assert api.stat("sha256:" + "ef" * 32).kind == pb.COMMITTED
    place = api.disks / "mounted"
    place.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(place)], check=True)
    try:
        make_disk(api.disks, "mounted")
        assert api.code("Prepare", key="k1", labels={REF: CHAIN}) == C.ALREADY_EXISTS
        child = api.prepare("c1", CHAIN)
        assert options(child)["lowerdir"] == str(place / "layers" / CHAIN.removeprefix(
            "sha256:"))
    finally:
        subprocess.run(["umount", str(place)], check=True)
    unpack = api.prepare("k2", **{REF: CHAIN})  # gone: an ordinary snapshot to unpack into
    assert unpack[0].type == "bind" and "rw" in unpack[0].options
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(place)], check=True)
    try:
        make_disk(api.disks, "mounted")
        assert api.code("Prepare", key="k3", labels={REF: CHAIN}) == C.ALREADY_EXISTS
    finally:
        subprocess.run(["umount", str(place)], check=True)


def test_materialized_layer_outlives_its_disk(tmp_path: Path) -> None:
    """After a disk-backed pull the layer is copied into the root in the background; once
    copied, mounts use the copy (never the disk), so the disk may go away."""
    disks = tmp_path / "disks"
    disk = make_disk(disks, "d1")
    layer = disk / "layers" / CHAIN.removeprefix("sha256:")
    os.mknod(layer / "etc" / "gone", 0o20000, os.makedev(0, 0))  # a whiteout
    os.setxattr(layer / "etc", "trusted.overlay.opaque", b"y")
    with served(tmp_path, "--materialize-delay", "0.5") as api:
        process = api.process
        assert api.code("Prepare", key="x", labels={REF: CHAIN}) == grpc.StatusCode.ALREADY_EXISTS
        copy = api.root / "layers" / CHAIN.removeprefix("sha256:")
        deadline = time.monotonic() + 60
        while not copy.is_dir():
            assert time.monotonic() < deadline, process.text()
            time.sleep(0.05)
        os.rename(disk, tmp_path / "unmounted")
        child = api.prepare("c", CHAIN)
        assert options(child)["lowerdir"] == str(copy)
        assert (copy / "etc" / "from-disk").read_text() == "disk layer\n"
        gone = os.lstat(copy / "etc" / "gone")
        assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
        assert os.getxattr(copy / "etc", "trusted.overlay.opaque") == b"y"
        assert '"msg":"layer ' in process.text() and "copied from" in process.text()
        # Once no snapshot uses the layer, Cleanup removes the copy.
        assert api.code("Remove", key="c") == grpc.StatusCode.OK
        api.stub.Cleanup(pb.CleanupRequest(), timeout=30)
        assert copy.is_dir()  # the layer snapshot itself still uses it
        assert api.code("Remove", key=CHAIN) == grpc.StatusCode.OK
        api.stub.Cleanup(pb.CleanupRequest(), timeout=30)
        assert not copy.exists()


def test_bad_flags_say_what_to_fix(tmp_path: Path) -> None:
    """One line naming the flag or path, exit 2 or 1, never a traceback."""
    from registry_fixture import main_command, repo_env

    for args, code, text in (
        (["serve", "--metrics-listen", "bad"], 2, "--metrics-listen 'bad': give HOST:PORT"),
        (["serve", "--root", "/proc/no-such/root", "--socket", str(tmp_path / "s.sock")], 1,
         "/proc/no-such"),
        (["serve", "--depth", "-1"], 2, "--depth must be 0 or more"),
    ):
        proc = subprocess.run(main_command("webhook.snapshotter.command", args), env=repo_env(),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == code, proc.stderr
        assert text in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_stopping_does_not_wait_for_copies(tmp_path: Path) -> None:
    """SIGTERM while a copy is pending: the snapshotter exits at once (it used to wait for
    its copies, whose I/O then ran on after it had been stopped)."""
    disks = tmp_path / "disks"
    make_disk(disks, "d1")
    with served(tmp_path, "--materialize-delay", "120") as api:
        assert api.code("Prepare", key="x", labels={REF: CHAIN}) == grpc.StatusCode.ALREADY_EXISTS
        started = time.monotonic()
        assert api.process.stop() == 0
        assert time.monotonic() - started < 30  # not the 120 s the copy was waiting for
    assert not (tmp_path / "root" / "layers" / CHAIN.removeprefix("sha256:")).exists()
