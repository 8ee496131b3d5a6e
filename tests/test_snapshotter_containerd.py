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

import gzip
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from layerkit import Entry, busybox_layer, gz_layer, image_of
from mirror_testkit import containerd_unavailable, kubelet_mount
from registry_fixture import Image, Registry, missing_tools, random_bytes, run_builder
from snapshotter_testkit import Containerd, Cri, SnapshotterProcess, plain_http_hosts

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


@dataclass
class Node:
    registry: Registry
    snapshotter: SnapshotterProcess
    containerd: Containerd
    cri: Cri
    images: dict[str, Image]

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


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    work = tmp_path_factory.mktemp("snapnode")
    base = busybox_layer()
    data = gz_layer([Entry(k, v) for k, v in FILES.items()])
    top = gz_layer([Entry("etc/.wh.motd"), Entry("srv/c", b"sea\n")])
    images = {
        "pause": image_of([busybox_layer(("sleep",))],
                          config={"Entrypoint": ["/bin/busybox", "sleep", "2147483647"]}),
        "app": image_of([base, data, top], config={"Cmd": SLEEP}),
        "partial": image_of([base, data, top, gz_layer([Entry("srv/extra", b"extra\n")])],
                            config={"Cmd": SLEEP}),
        "vol": image_of([base, gz_layer([Entry("data/", type=b"5", mode=0o755),
                                         Entry("data/file", b"in the volume\n")])],
                        config={"Cmd": SLEEP, "Volumes": {"/data": {}}}),
        "plain": image_of([busybox_layer(("sh", "cat", "sleep")),
                           gz_layer([Entry("srv/plain", b"plain\n")])], config={"Cmd": SLEEP}),
    }
    with Registry(work / "registry") as registry:
        pusher = registry.client()
        for name, img in images.items():
            pusher.push_image(name, "1", img)
        disks_root = work / "pods"
        disk = kubelet_mount(disks_root, "pod-a-uid", "pvc-a")
        disk.mkdir(parents=True)
        code, result = run_builder(disk, work / "term", [f"{registry.host}/app:1",
                                                         f"{registry.host}/vol:1"],
                                   "--insecure-registry", registry.host)
        assert code == 0, result
        certs_d = work / "certs.d"
        plain_http_hosts(certs_d, registry.host)
        socket = work / "snap.sock"
        snapshotter = SnapshotterProcess(work / "snaproot", disks_root, socket,
                                         work / "snapshotter.log")
        containerd = Containerd(work / "containerd", certs_d, socket,
                                f"{registry.host}/pause:1")
        cri = Cri(containerd.socket, work)
        try:
            yield Node(registry, snapshotter, containerd, cri, images)
        finally:
            try:
                cri.remove_pods()
            finally:
                cri.close()
                containerd.stop()
                snapshotter.stop()


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
    # containerd redials the socket after gRPC's reconnect backoff; until then its calls fail
    # UNAVAILABLE and the kubelet retries, as this does.
    deadline = time.monotonic() + 120
    while True:
        try:
            second = node.cri.start_container(sandbox, "second", node.ref("app"), SLEEP)
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            assert time.monotonic() < deadline, "containerd never reconnected"
            time.sleep(0.2)
    check_app_files(node, second)
    check_app_files(node, first)
