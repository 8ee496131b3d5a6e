"""The node snapshotter uses a cache disk's layers only when the API proves the disk's origin
(issue 11, disk origin; webhook.snapshotter.core.disk_origin):
a pod's own volume that looks like a cache
disk is never used, a real cache clone is.

Real parts: the kube-apiserver and kube-controller-manager (envtest; its ephemeral volume
controller makes the pods' claims from their templates), Debian's docker-registry, the real
builder writing the disks, `imagecache snapshotter serve` under the chart's own RBAC (the
mirror's ServiceAccount and the ClusterRole the chart renders), containerd 1.6 through CRI.
Played, at the API boundary: the CSI driver and the snapshot controller (this test creates
the PersistentVolumes, binds the claims to them, and marks the VolumeSnapshots bound, as
they would), and the kubelet (it puts each disk where the kubelet mounts that pod's volume).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from envtest import ControlPlane, free_port
from helm_chart import HELM_MISSING, RBAC_KINDS, apply_server_side, helm_binary, only_kinds
from helm_chart import render_text as render_chart
from layerkit import Entry, busybox_layer, gz_layer, image_of
from mirror_testkit import containerd_unavailable, kubelet_mount
from registry_fixture import Registry, missing_tools, run_builder
from sa_kubeconfig import service_account_kubeconfig
from snapshotter_testkit import Containerd, Cri, SnapshotterProcess, cri_of, plain_http_hosts

from webhook.core.layer_chain import chain_ids

_MISSING = (missing_tools("docker-registry", "runc") or containerd_unavailable()
            or (None if os.path.exists("/bin/busybox") else "needs /bin/busybox")
            or (None if helm_binary() else HELM_MISSING))
pytestmark = [
    pytest.mark.containerd,
    pytest.mark.registry,
    pytest.mark.envtest,
    pytest.mark.skipif(_MISSING is not None, reason=_MISSING or ""),
]

SLEEP = ["/bin/busybox", "sleep", "3600"]
RELEASE, NS_CTRL = "origin", "imc-origin-system"
MIRROR_SA = f"{RELEASE}-imagecache-mirror"
TENANT = "imc-origin-team"
MANAGED = {"app.kubernetes.io/managed-by": "imagecache-controller"}
# Each image's layers are its own (distinct busybox links): a layer one disk gives can never
# stand in for another image's.
IMAGES = {
    "pause": image_of([busybox_layer(("sleep",))],
                      config={"Entrypoint": ["/bin/busybox", "sleep", "2147483647"]}),
    "good": image_of([busybox_layer(("cat", "sleep")),
                      gz_layer([Entry("srv/good", b"from the cache\n")])], config={"Cmd": SLEEP}),
    "victim": image_of([busybox_layer(("cat", "sleep", "ls")),
                        gz_layer([Entry("srv/app", b"the real thing\n")])],
                       config={"Cmd": SLEEP}),
    "later": image_of([busybox_layer(("cat", "sleep", "ls", "sh")),
                       gz_layer([Entry("srv/later", b"later\n")])], config={"Cmd": SLEEP}),
}


def wait_until(what: str, probe: Any, within: float = 90.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within}s")
        time.sleep(0.2)


def get(plane: ControlPlane, kind: str, name: str, namespace: str = "") -> Any:
    args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
    result = plane.kubectl(*args, check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def namespace(plane: ControlPlane, name: str) -> None:
    plane.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    wait_until(f"default ServiceAccount in {name}",
               lambda: get(plane, "serviceaccount", "default", name))


def snapshot_pair(plane: ControlPlane, ns: str, name: str, ours: bool) -> None:
    """A VolumeSnapshot bound to a VolumeSnapshotContent: the controller's copy (`ours`), or
    a tenant's own snapshot whose content the snapshot controller made (no labels of ours),
    the tenant having forged our labels on the snapshot itself."""
    content = f"{name}-content-{ns}"
    plane.apply({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
                 "metadata": {"name": content, **({"labels": MANAGED} if ours else {})},
                 "spec": {"deletionPolicy": "Retain", "driver": "csi.example.com",
                          "source": {"snapshotHandle": f"handle-{name}"},
                          "volumeSnapshotRef": {"namespace": ns, "name": name}}})
    plane.apply({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                 "metadata": {"name": name, "namespace": ns, "labels": MANAGED},
                 "spec": {"source": {"volumeSnapshotContentName": content}}})
    plane.kubectl("patch", "volumesnapshot", name, "-n", ns, "--subresource=status",
                  "--type=merge", "-p", json.dumps({"status": {
                      "boundVolumeSnapshotContentName": content, "readyToUse": True}}))


def pod_with_clone(plane: ControlPlane, ns: str, name: str, snapshot: str,
                   read_only: bool = True) -> tuple[str, str]:
    """A pod with the webhook's ephemeral volume (cloned from `snapshot`), its claim made by
    the ephemeral volume controller and bound to a PV made here. (pod uid, PV name)."""
    plane.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
                 "spec": {"containers": [{"name": "app", "image": "x", "volumeMounts": [
                     {"name": "imagecache", "mountPath": "/var/lib/imagecache",
                      "readOnly": read_only}]}],
                     "volumes": [{"name": "imagecache", "ephemeral": {"volumeClaimTemplate": {
                         "metadata": {"labels": {"imagecache.dev/cache": "base"}},
                         "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "csi",
                                  "resources": {"requests": {"storage": "1Gi"}},
                                  "dataSource": {"apiGroup": "snapshot.storage.k8s.io",
                                                 "kind": "VolumeSnapshot",
                                                 "name": snapshot}}}}}]}})
    pod = get(plane, "pod", name, ns)
    claim = wait_until(f"the ephemeral volume controller's claim of {ns}/{name}",
                       lambda: get(plane, "pvc", f"{name}-imagecache", ns))
    pv = f"pvc-{claim['metadata']['uid']}"
    plane.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
                 "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                          "storageClassName": "csi", "persistentVolumeReclaimPolicy": "Delete",
                          "csi": {"driver": "csi.example.com", "volumeHandle": pv},
                          "claimRef": {"namespace": ns, "name": f"{name}-imagecache",
                                       "uid": claim["metadata"]["uid"]}}})
    plane.kubectl("patch", "pvc", f"{name}-imagecache", "-n", ns, "--type=merge", "-p",
                  json.dumps({"spec": {"volumeName": pv}}))
    return pod["metadata"]["uid"], pv


@dataclass
class World:
    plane: ControlPlane
    registry: Registry
    pods: Path  # the kubelet's pods directory
    certs_d: Path
    work: Path
    kubeconfig: Path  # the mirror ServiceAccount's (the chart's RBAC)

    def ref(self, name: str) -> str:
        return f"{self.registry.host}/{name}:1"

    def build(self, disk: Path, image: str) -> None:
        disk.mkdir(parents=True)
        code, result = run_builder(disk, self.work / f"term-{image}", [self.ref(image)],
                                   "--insecure-registry", self.registry.host, "--layers")
        assert code == 0, result

    def layer_gets(self, before: int, image: str) -> int:
        wanted = {b.digest for b in IMAGES[image].layers}
        return len([r for r in self.registry.requests()[before:]
                    if r.startswith("GET ") and r.rsplit("/", 1)[-1] in wanted])


@pytest.fixture(scope="module")
def world(apiserver: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("origin")
    namespace(apiserver, NS_CTRL)
    namespace(apiserver, TENANT)
    chart = render_chart({"mirror": {"enabled": True}, "snapshotter": {"enabled": True}},
                         release=RELEASE, namespace=NS_CTRL, kube_version="1.20.2")
    apply_server_side(apiserver, only_kinds(chart, RBAC_KINDS | {"ServiceAccount"}))
    kubeconfig = service_account_kubeconfig(apiserver, NS_CTRL, MIRROR_SA,
                                            work / "mirror.kubeconfig")
    with Registry(work / "registry") as registry:
        pusher = registry.client()
        for name, img in IMAGES.items():
            pusher.push_image(name, "1", img)
        certs_d = work / "certs.d"
        plain_http_hosts(certs_d, registry.host)
        yield World(apiserver, registry, work / "pods", certs_d, work, kubeconfig)


@contextlib.contextmanager
def node(world: World, name: str, *args: str) -> Iterator[tuple[SnapshotterProcess, Cri]]:
    run = world.work / name
    socket = run / "snap.sock"
    run.mkdir()
    snapshotter = SnapshotterProcess(
        run / "root", world.pods, socket, run / "snapshotter.log",
        "--containerd-socket", str(run / "ctd" / "containerd.sock"),
        "--glob", "*/volumes/kubernetes.io~csi/*/mount",
        "--glob", "*/volumes/kubernetes.io~empty-dir/*", *args)
    containerd = Containerd(run / "ctd", world.certs_d, socket, world.ref("pause"))
    with cri_of(containerd, snapshotter, run) as cri:
        yield snapshotter, cri


def log_lines(snapshotter: SnapshotterProcess) -> list[dict[str, Any]]:
    lines = []
    for line in snapshotter.text().splitlines():
        with contextlib.suppress(ValueError):
            lines.append(json.loads(line))
    return lines


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_look_alike_disk_is_never_used_and_a_real_clone_is(world: World) -> None:
    plane = world.plane
    # The real thing: the controller's copy in the tenant's namespace, cloned by a pod.
    snapshot_pair(plane, TENANT, "imagecache-base-1", ours=True)
    owner_uid, owner_pv = pod_with_clone(plane, TENANT, "owner", "imagecache-base-1")
    good = kubelet_mount(world.pods, owner_uid, owner_pv)
    world.build(good, "good")
    # Look-alikes holding the victim image's layers, one of them tampered with:
    # (1) a clone of the tenant's own snapshot (our labels forged on it and on the claim),
    snapshot_pair(plane, TENANT, "imagecache-forged", ours=False)
    thief_uid, thief_pv = pod_with_clone(plane, TENANT, "thief", "imagecache-forged")
    forged = kubelet_mount(world.pods, thief_uid, thief_pv)
    world.build(forged, "victim")
    base_hex, data_hex = [c.removeprefix("sha256:") for c in chain_ids(
        ["sha256:" + hashlib.sha256(gzip.decompress(b.data)).hexdigest()
         for b in IMAGES["victim"].layers])]
    (forged / "layers" / data_hex / "srv" / "app").write_bytes(b"planted\n")
    # (2) an emptyDir of the same pod, named like the real clone's PV,
    empty = world.pods / thief_uid / "volumes" / "kubernetes.io~empty-dir" / owner_pv
    world.build(empty, "victim")
    # (3) a real clone of ours, mounted writable by its pod.
    writer_uid, writer_pv = pod_with_clone(plane, TENANT, "writer", "imagecache-base-1",
                                           read_only=False)
    writable = kubelet_mount(world.pods, writer_uid, writer_pv)
    world.build(writable, "victim")

    port = free_port()
    with node(world, "api", "--disk-origin", "api", "--kubeconfig", str(world.kubeconfig),
              "--controller-namespace", NS_CTRL, "--metrics-listen",
              f"127.0.0.1:{port}") as (snapshotter, cri):
        before = len(world.registry.requests())
        cri.pull(world.ref("victim"))
        assert world.layer_gets(before, "victim") == 2  # both layers downloaded
        sandbox = cri.run_pod("thief", thief_uid)
        container = cri.start_container(sandbox, "app", world.ref("victim"), SLEEP)
        assert cri.exec(container, ["/bin/cat", "/srv/app"]) == (0, "the real thing\n")
        lines = log_lines(snapshotter)
        refused = {line["disk"]: line["reason"] for line in lines
                   if line.get("origin") == "refused"}
        assert "not made by the imagecache controller" in refused[str(forged)]
        assert "not the kubelet's mount of a PersistentVolume" in refused[str(empty)]
        assert "container app mounts it writable" in refused[str(writable)]
        assert not [line for line in lines if line.get("chainID") in (
            f"sha256:{base_hex}", f"sha256:{data_hex}") and line.get("disk")
            and "from cache disk" in line["msg"]]

        before = len(world.registry.requests())
        cri.pull(world.ref("good"))
        assert world.layer_gets(before, "good") == 0  # taken from the owner's disk
        sandbox = cri.run_pod("owner", owner_uid)
        container = cri.start_container(sandbox, "app", world.ref("good"), SLEEP)
        assert cri.exec(container, ["/bin/cat", "/srv/good"]) == (0, "from the cache\n")
        trusted = [line for line in log_lines(snapshotter) if line.get("origin") == "trusted"]
        assert [line["disk"] for line in trusted] == [str(good)]
        print(f"origin check: {trusted[0]['reads']} reads, {trusted[0]['ms']} ms")  # for docs
        assert metric(port, "imagecache_snapshotter_disk_origin_total") >= 1
        assert metric(port, "imagecache_snapshotter_disk_layers_total") == 2


def test_without_an_answer_from_the_api_the_disk_is_not_used(world: World) -> None:
    """Fail safe: an apiserver that does not answer (here: nothing listens) costs the pull
    its disk, never the pull itself; the reason is logged and counted as unknown."""
    snapshot_pair(world.plane, TENANT, "imagecache-base-2", ours=True)
    uid, pv = pod_with_clone(world.plane, TENANT, "later", "imagecache-base-2")
    world.build(kubelet_mount(world.pods, uid, pv), "later")
    dead = world.work / "dead.kubeconfig"
    dead.write_text(world.kubeconfig.read_text().replace(
        world.plane.url, f"https://127.0.0.1:{free_port()}"))
    port = free_port()
    with node(world, "no-api", "--disk-origin", "api", "--kubeconfig", str(dead),
              "--metrics-listen", f"127.0.0.1:{port}") as (snapshotter, cri):
        before = len(world.registry.requests())
        started = time.monotonic()
        cri.pull(world.ref("later"))
        assert world.layer_gets(before, "later") == 2
        assert time.monotonic() - started < 60
        unknown = [line for line in log_lines(snapshotter) if line.get("origin") == "unknown"]
        assert unknown and "Connection refused" in unknown[0]["reason"]
        assert 'result="unknown"' in urllib.request.urlopen(
            f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
