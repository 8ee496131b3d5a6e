"""The node snapshotter under a real containerd 1.6, driven through CRI as the kubelet drives
it (PullImage, RunPodSandbox, CreateContainer, StartContainer, ExecSync): issue 11.2/11.4.

Real parts only: Debian's docker-registry, the real builder writing the cache disk (OCI
layout and unpacked layers) in the kubelet's CSI mount layout, `imagecache snapshotter
serve` as a process, Debian's containerd and runc. A cached image must pull with no layer
GET at the registry and no layer applied by containerd, and its container must see the
image's files; an ordinary image, a partially cached one and one with a VOLUME must work
through the same snapshotter; so must containers across a snapshotter kill and restart.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from builder_proxy import RegistryProxy
from layerkit import Entry, busybox_layer, gz_layer, image_of
from mirror_testkit import containerd_unavailable, kubelet_mount
from registry_fixture import Image, Registry, missing_tools, random_bytes, run_builder
from snapshotter_testkit import (
    Containerd,
    Cri,
    SnapshotterProcess,
    cri_of,
    plain_http_hosts,
)

from webhook.core.layer_chain import chain_ids

_MISSING = (missing_tools("docker-registry", "runc") or containerd_unavailable()
            or (None if os.path.exists("/bin/busybox") else "needs /bin/busybox "
                "(apt-get install busybox-static)"))
pytestmark = [
    pytest.mark.containerd,
    pytest.mark.registry,
    pytest.mark.skipif(_MISSING is not None, reason=_MISSING or ""),
]

SLEEP = ["/bin/busybox", "sleep", "3600"]
BIG = random_bytes(3 << 20, 11)
FILES = {"srv/a": BIG, "srv/b": b"bee\n", "etc/motd": b"hello\n", "etc/keep": b"kept\n"}
BASE = busybox_layer()
DATA = gz_layer([Entry(k, v) for k, v in FILES.items()])
TOP = gz_layer([Entry("etc/.wh.motd"), Entry("srv/c", b"sea\n")])


@dataclass
class Node:
    registry: Registry
    snapshotter: SnapshotterProcess
    containerd: Containerd
    cri: Cri
    images: dict[str, Image]
    certs_d: Path
    disk: Path

    def ref(self, name: str) -> str:
        return f"{self.registry.host}/{name}:1"

    def layer_gets(self, before: int, img: Image) -> list[str]:
        wanted = {b.digest for b in img.layers}
        return [r for r in self.registry.requests()[before:]
                if r.startswith("GET ") and r.rsplit("/", 1)[-1] in wanted]

    def applied(self, img: Image) -> list[str]:
        """containerd's 'diff applied' lines (it unpacked the layer itself) for `img`."""
        digests = {b.digest for b in img.layers}
        return [line for line in self.containerd.lines()
                if "diff applied" in line and any(d in line for d in digests)]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


IMAGES = {
    "pause": image_of([busybox_layer(("sleep",))],
                      config={"Entrypoint": ["/bin/busybox", "sleep", "2147483647"]}),
    "app": image_of([BASE, DATA, TOP], config={"Cmd": SLEEP}),
    "partial": image_of([BASE, DATA, TOP, gz_layer([Entry("srv/extra", b"extra\n")])],
                        config={"Cmd": SLEEP}),
    "vol": image_of([BASE, gz_layer([Entry("data/", type=b"5", mode=0o755),
                                     Entry("data/file", b"in the volume\n")])],
                    config={"Cmd": SLEEP, "Volumes": {"/data": {}}}),
    "plain": image_of([busybox_layer(("sh", "cat", "sleep")),
                       gz_layer([Entry("srv/plain", b"plain\n")])], config={"Cmd": SLEEP}),
}


@contextlib.contextmanager
def running_node(work: Path, *snapshotter_args: str) -> Iterator[Node]:
    """Registry with IMAGES, a cache disk of app and vol built by the builder and mounted as
    pod `pod-a-uid`'s volume, the snapshotter, containerd using it, CRI."""
    with Registry(work / "registry") as registry:
        pusher = registry.client()
        for name, img in IMAGES.items():
            pusher.push_image(name, "1", img)
        disks_root = work / "pods"
        disk = kubelet_mount(disks_root, "pod-a-uid", "pvc-a")
        disk.mkdir(parents=True)
        code, result = run_builder(disk, work / "term", [f"{registry.host}/app:1",
                                                         f"{registry.host}/vol:1"],
                                   "--insecure-registry", registry.host, "--layers")
        assert code == 0, result
        certs_d = work / "certs.d"
        plain_http_hosts(certs_d, registry.host)
        socket = work / "snap.sock"
        snapshotter = SnapshotterProcess(
            work / "snaproot", disks_root, socket, work / "snapshotter.log",
            "--containerd-socket", str(work / "containerd" / "containerd.sock"),
            *snapshotter_args)
        containerd = Containerd(work / "containerd", certs_d, socket,
                                f"{registry.host}/pause:1")
        with cri_of(containerd, snapshotter, work) as cri:
            yield Node(registry, snapshotter, containerd, cri, IMAGES, certs_d, disk)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with running_node(tmp_path_factory.mktemp("snapnode"), "--materialize-delay", "0") as n:
        yield n


@pytest.fixture(scope="module")
def lean(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """No background copies: a layer is copied only when a container of a pod without the
    disk needs it."""
    with running_node(tmp_path_factory.mktemp("leannode"), "--no-materialize") as n:
        yield n


def check_app_files(node: Node, container: str) -> None:
    code, out = node.cri.exec(container, ["/bin/busybox", "sha256sum", "/srv/a", "/srv/b",
                                          "/srv/c"])
    assert code == 0, out
    assert out.split()[0::2] == [sha(BIG), sha(b"bee\n"), sha(b"sea\n")]
    code, out = node.cri.exec(container, ["/bin/busybox", "ls", "/etc"])
    # motd is whited out by the top layer (CRI adds hostname, hosts, resolv.conf)
    assert code == 0 and "keep" in out.split() and "motd" not in out.split(), out


def test_cached_image_pulls_nothing_and_runs(node: Node) -> None:
    app = node.images["app"]
    before = len(node.registry.requests())
    started = time.monotonic()
    node.cri.pull(node.ref("app"))
    seconds = time.monotonic() - started
    assert node.layer_gets(before, app) == []
    assert node.applied(app) == []
    # The log names each layer (its chain ID) and the disk (and pod) it came from.
    chains = chain_ids(["sha256:" + sha(gzip.decompress(b.data)) for b in app.layers])
    lines = [json.loads(line) for line in node.snapshotter.text().splitlines()
             if line.startswith("{")]
    from_disk = {entry["chainID"]: entry for entry in lines
                 if entry.get("msg", "").startswith("layer sha256:") and "disk" in entry}
    assert set(chains) <= set(from_disk)
    assert all(from_disk[c]["pod"] == "pod-a-uid" for c in chains)
    sandbox = node.cri.run_pod("cached", "uid-cached")
    container = node.cri.start_container(sandbox, "app", node.ref("app"), SLEEP)
    check_app_files(node, container)
    print(f"cached pull took {seconds:.3f}s")


def test_ordinary_image_through_the_same_snapshotter(node: Node) -> None:
    plain = node.images["plain"]
    before = len(node.registry.requests())
    node.cri.pull(node.ref("plain"))
    assert len(node.layer_gets(before, plain)) == len(plain.layers)
    sandbox = node.cri.run_pod("plain", "uid-plain")
    container = node.cri.start_container(sandbox, "plain", node.ref("plain"), SLEEP)
    assert node.cri.exec(container, ["/bin/busybox", "cat", "/srv/plain"]) == (0, "plain\n")


def test_partially_cached_image(node: Node) -> None:
    partial = node.images["partial"]
    before = len(node.registry.requests())
    node.cri.pull(node.ref("partial"))
    fetched = node.layer_gets(before, partial)
    assert [f.rsplit("/", 1)[-1] for f in fetched] == [partial.layers[-1].digest]
    sandbox = node.cri.run_pod("partial", "uid-partial")
    container = node.cri.start_container(sandbox, "partial", node.ref("partial"), SLEEP)
    check_app_files(node, container)
    assert node.cri.exec(container, ["/bin/busybox", "cat", "/srv/extra"]) == (0, "extra\n")


def test_image_with_a_volume(node: Node) -> None:
    vol = node.images["vol"]
    before = len(node.registry.requests())
    node.cri.pull(node.ref("vol"))
    assert node.layer_gets(before, vol) == []
    sandbox = node.cri.run_pod("vol", "uid-vol")
    container = node.cri.start_container(sandbox, "vol", node.ref("vol"), SLEEP)
    assert node.cri.exec(container, ["/bin/busybox", "cat", "/data/file"]) == (
        0, "in the volume\n")


def test_snapshotter_killed_and_restarted_with_containers_running(node: Node) -> None:
    node.cri.pull(node.ref("app"))
    sandbox = node.cri.run_pod("restart", "uid-restart")
    first = node.cri.start_container(sandbox, "first", node.ref("app"), SLEEP)
    node.snapshotter.kill()
    check_app_files(node, first)  # running containers keep their mounts
    node.snapshotter.start()
    second = start_when_reconnected(node, sandbox, "second", node.ref("app"))
    check_app_files(node, second)
    check_app_files(node, first)


def test_snapshotter_killed_mid_pull(node: Node) -> None:
    """The snapshotter dies while containerd unpacks a layer into one of its snapshots: the
    pull fails (as with any snapshotter), the next pull after the restart completes, and the
    container sees every file."""
    first = gz_layer([Entry("srv/one", random_bytes(1 << 20, 21))])
    second = gz_layer([Entry("srv/two", b"two\n")])
    slow = image_of([busybox_layer(("cat", "sleep", "sha256sum")), first, second],
                    config={"Cmd": SLEEP})
    node.registry.client().push_image("slow", "1", slow)
    with RegistryProxy(node.registry.url) as proxy:
        plain_http_hosts(node.certs_d, proxy.host)
        hold = proxy.holds[second.digest] = threading.Event()
        asked = proxy.watch(second.digest)
        ref = f"{proxy.host}/slow:1"
        outcome: list[BaseException | str] = []
        puller = threading.Thread(target=lambda: outcome.append(_pull(node, ref)))
        puller.start()
        try:
            assert asked.wait(120), "containerd never asked for the last layer"
            node.snapshotter.kill()
        finally:
            hold.set()
            puller.join(300)
        assert isinstance(outcome[0], grpc.RpcError), outcome  # the pull could not commit
        node.snapshotter.start()
        deadline = time.monotonic() + 120
        while not isinstance(_pull(node, ref), str):  # containerd redials after its backoff
            assert time.monotonic() < deadline, "the pull never succeeded after the restart"
            time.sleep(0.2)
    sandbox = node.cri.run_pod("slow", "uid-slow")
    container = start_when_reconnected(node, sandbox, "slow", ref)
    assert node.cri.exec(container, ["/bin/busybox", "cat", "/srv/two"]) == (0, "two\n")
    code, out = node.cri.exec(container, ["/bin/busybox", "sha256sum", "/srv/one"])
    assert code == 0 and out.split()[0] == sha(random_bytes(1 << 20, 21)), out


def _pull(node: Node, ref: str) -> BaseException | str:
    try:
        return node.cri.pull(ref)
    except grpc.RpcError as exc:
        return exc


def start_when_reconnected(node: Node, sandbox: tuple[str, object], name: str,
                           image: str) -> str:
    """CreateContainer + StartContainer, retried while containerd's connection to a
    restarted snapshotter is still in its reconnect backoff (the kubelet retries too)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            return node.cri.start_container(sandbox, name, image, SLEEP)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            assert time.monotonic() < deadline, "containerd never reconnected"
            time.sleep(0.2)


def root_lowerdirs(node: Node, container: str) -> list[str]:
    """The lower directories of the container's root overlay, from its mountinfo."""
    code, out = node.cri.exec(container, ["/bin/busybox", "cat", "/proc/1/mountinfo"])
    assert code == 0, out
    for line in out.splitlines():
        fields = line.split()
        if fields[4] == "/" and "overlay" in fields:
            options = fields[-1].split(",")
            return [d for o in options if o.startswith("lowerdir=")
                    for d in o.removeprefix("lowerdir=").split(":")]
    raise AssertionError(f"no root overlay in {out}")


def test_a_container_never_mounts_another_pods_disk(lean: Node) -> None:
    lean.cri.pull(lean.ref("app"))
    own = lean.cri.run_pod("owner", "pod-a-uid")  # the pod whose volume the disk is
    mine = lean.cri.start_container(own, "app", lean.ref("app"), SLEEP)
    assert any(str(lean.disk) in d for d in root_lowerdirs(lean, mine))
    other = lean.cri.run_pod("neighbour", "pod-b-uid")  # same node, no disk of its own
    theirs = lean.cri.start_container(other, "app", lean.ref("app"), SLEEP)
    lowers = root_lowerdirs(lean, theirs)
    assert lowers and not any(str(lean.disk) in d for d in lowers), lowers
    assert all("/snaproot/" in d for d in lowers), lowers  # copies in the snapshotter's root
    check_app_files(lean, theirs)
    check_app_files(lean, mine)
    assert "waiting for its copy" in lean.snapshotter.text()


def test_an_image_whose_disk_went_away_is_pulled_again(lean: Node) -> None:
    vol, ref = lean.images["vol"], lean.ref("vol")
    before = len(lean.registry.requests())
    lean.cri.pull(ref)
    assert lean.layer_gets(before, vol) == []  # from the disk, not copied (--no-materialize)
    unmounted = lean.disk.parent / "unmounted"
    os.rename(lean.disk, unmounted)  # the pod ends; kubelet unmounts its disk
    try:
        deadline = time.monotonic() + 60
        # The snapshotter removes it through CRI, then logs it: wait for both (the log line
        # is written after RemoveImage returns, so it may trail the image's removal).
        while lean.cri.image_present(ref) or f"image {ref} removed" not in lean.snapshotter.text():
            assert time.monotonic() < deadline, lean.snapshotter.text()[-3000:]
            time.sleep(0.1)
        before = len(lean.registry.requests())
        lean.cri.pull(ref)  # what the kubelet does next: a real pull
        assert len(lean.layer_gets(before, vol)) >= 1
        sandbox = lean.cri.run_pod("vol-again", "uid-vol-again")
        container = lean.cri.start_container(sandbox, "vol", ref, SLEEP)
        assert lean.cri.exec(container, ["/bin/busybox", "cat", "/data/file"]) == (
            0, "in the volume\n")
    finally:
        os.rename(unmounted, lean.disk)


def test_a_layer_record_lost_to_a_power_cut_is_made_again(tmp_path: Path) -> None:
    """Issue 11 (startup reconcile): a power cut right after a cached pull loses the
    disk-backed layers' records (fsync'd 0.2 s late) while containerd's metadata keeps the
    image and its layers; the cut is played by deleting exactly those rows from the stopped
    snapshotter's database. The pod's container must still be created and see its files (the
    records are made again from the disk when containerd names them), not fail for ever on a
    parent that does not exist."""
    with running_node(tmp_path, "--materialize-delay", "3600") as n:
        n.cri.pull(n.ref("app"))
        n.snapshotter.kill()
        with sqlite3.connect(tmp_path / "snaproot" / "metadata.db") as db:
            lost = db.execute("DELETE FROM snapshots WHERE source != ''").rowcount
        assert lost == len(n.images["app"].layers)
        n.snapshotter.start()
        deadline = time.monotonic() + 120
        while True:  # RunPodSandbox, retried while containerd redials the snapshotter
            try:
                sandbox = n.cri.run_pod("owner", "pod-a-uid")
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                assert time.monotonic() < deadline, "containerd never reconnected"
                time.sleep(0.2)
        container = start_when_reconnected(n, sandbox, "app", n.ref("app"))
        check_app_files(n, container)
        assert "made again from its disk" in n.snapshotter.text()
