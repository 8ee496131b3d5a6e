"""The node snapshotter on a real node, through the chart (issue 11), as an operator rolls it
onto a node pool (docs/snapshotter.md): `helm upgrade` with `snapshotter.enabled=true` (the
DaemonSet runs `snapshotter serve` privileged beside the mirror), then on the node
`imagecache snapshotter configure` and a containerd restart (Node.use_snapshotter: config.toml
edited in place, containerd restarted by its pid file as systemd would, local images imported
again for the new snapshotter). A cache built then by the real builder Job (`--builder-layers`)
starts its pod with nothing downloaded and nothing unpacked: the layers come from the pod's own
disk. An ordinary image still runs through the same snapshotter. Rolling back (configure
`--snapshotter overlayfs`, restart, `snapshotter forget-images` in the snapshotter's container,
`snapshotter.enabled=false`) leaves the node Ready, and a new pod of the image that came from
the disk starts (without forget-images it stayed in CreateContainerError: "content digest ...
not found", containerd never had its layer blobs to unpack for overlayfs).

Stood in, as in the other node tests and only because these machines have no CSI driver with
snapshots: tests/node/csi_standin.py marks snapshots ready and provides each pod's clone (a
hard-linked copy of the built disk) as a local PV pre-bound to its claim.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import stat
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from node_harness import SNAPSHOTTER_METRICS, Node, Registry, eventually
from node_site import (
    NAMESPACE,
    RELEASE,
    WEB,
    Site,
    deployment,
    install,
    tke_manifest,
    wait_cache_ready,
    wait_release_ready,
)

AUTO = {"imagecache.dev/use-image-cache": "auto"}
CACHE = "layered"


@dataclass
class Switched:
    site: Site
    image: str  # cached, with layers on its disk
    chains: list[str]
    layer_digests: list[str]
    plain: str  # in no cache
    plain_chains: list[str]
    socket: Path
    archive: Path
    rolled_back: bool = False
    forgotten: str = ""  # what forget-images said


def snapshotter_values(node: Node, values: dict[str, Any]) -> dict[str, Any]:
    """The chart's snapshotter values for this node: its paths under the node's DIR (two
    nodes may share the machine), containerd's socket where node-up.sh put it."""
    home = node.dir / "imagecache-snapshotter"
    return {
        **values,
        "snapshotter": {
            "enabled": True,
            "root": str(home / "root"),
            "socket": str(home / "run" / "snapshotter.sock"),
            "containerdSocket": str(node.dir / "containerd" / "containerd.sock"),
            "metricsPort": node.base + SNAPSHOTTER_METRICS,
            # hostNetwork, and no kube-proxy on this node: the Service's 10.0.0.1 is routed
            # off the machine from the host's network (node README); the apiserver is here
            "kubernetesServiceHost": "127.0.0.1",
            "kubernetesServicePort": node.base,
        },
    }


def _push(
    node: Node, registry: Registry, repo: str, tmp: Path, layers: int
) -> tuple[str, str, list[str]]:
    """A runnable image of `layers` layers made and pushed; its reference, manifest digest
    and chain IDs."""
    image = f"{registry.host}/{repo}"
    archive = tmp / (repo.split(":")[0].replace("/", "_") + ".tar")  # skopeo: no ':' in paths
    digest = registry.push(node.make_image(image, archive, layers=layers, salt=repo), repo)
    return image, digest, registry.chain_ids(repo)


def _roll_back(switched: Switched, tmp: Path) -> None:
    """Docs' order: containerd off the snapshotter first (a pod of the DaemonSet made after
    the snapshotter is gone could not get its own snapshots), then the chart value."""
    node = switched.site.node
    node.use_snapshotter("overlayfs", [switched.archive])
    # an image with a layer from a cache disk has no blob of it: overlayfs cannot unpack it
    snap = snapshotter_values(node, {})["snapshotter"]
    switched.forgotten = node.kubectl(
        "exec", "-n", NAMESPACE, f"daemonset/{RELEASE}-mirror", "-c", "snapshotter", "--",
        "imagecache", "snapshotter", "forget-images", "--root", snap["root"],
        "--containerd-socket", snap["containerdSocket"],
    ).stdout  # fmt: skip
    install(node, switched.site.values, tmp, upgrade=True)
    wait_release_ready(node)
    switched.rolled_back = True


@pytest.fixture(scope="module")
def switched(
    site: Site, image_archive: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Switched]:
    node = site.node
    tmp = tmp_path_factory.mktemp("snapshotter")
    # new layers every session (the tag salts them): a node kept from an earlier session
    # (IMAGECACHE_NODE_KEEP) must not hold them already
    tag = secrets.token_hex(4)
    image, _, chains = _push(node, site.public, f"shop/layered:{tag}", tmp, layers=3)
    plain, _, plain_chains = _push(node, site.public, f"shop/plain:{tag}", tmp, layers=2)
    values = snapshotter_values(node, site.values)
    socket = Path(values["snapshotter"]["socket"])
    switched = Switched(
        site, image, chains, site.public.layers(f"shop/layered:{tag}"), plain, plain_chains, socket,
        image_archive,
    )  # fmt: skip
    try:
        install(node, values, tmp, upgrade=True)
        wait_release_ready(node)
        eventually("the snapshotter's socket", socket.exists, 120)
        node.use_snapshotter("imagecache", [image_archive], socket)
        node.apply(tke_manifest(CACHE, [image], [site.public], namespaces=[WEB]))
        wait_cache_ready(node, CACHE, WEB)
        yield switched
    finally:
        for name in ("layered", "plain", "after"):
            node.kubectl("delete", "deployment", name, "-n", WEB, "--wait=false", check=False)
        node.kubectl("delete", "imc", CACHE, "--wait=false", check=False)
        if not switched.rolled_back:
            _roll_back(switched, tmp)


def _snapshotter_log(node: Node) -> str:
    return node.kubectl(
        "logs", "-n", NAMESPACE, f"daemonset/{RELEASE}-mirror", "-c", "snapshotter"
    ).stdout


def _disk_layers_metric(node: Node) -> float:
    url = f"http://127.0.0.1:{node.base + SNAPSHOTTER_METRICS}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    for line in text.splitlines():
        if line.startswith("imagecache_snapshotter_disk_layers_total "):
            return float(line.split()[1])
    raise AssertionError(f"no imagecache_snapshotter_disk_layers_total in {url}")


def _snapshots(node: Node) -> set[str]:
    listed = node.ctr("snapshots", "--snapshotter", "imagecache", "ls").stdout.splitlines()
    return {line.split()[0] for line in listed[1:] if line.strip()}


def _a_file_of(layer: Path) -> Path:
    """A regular file of the layer directory (the image's top layer: nothing hides it)."""
    for root, _, files in sorted(os.walk(layer)):
        for name in sorted(files):
            path = Path(root) / name
            st = path.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_size > 0:
                return path
    raise AssertionError(f"no regular file in {layer}")


def _pod(node: Node, app: str) -> dict[str, Any]:
    return node.wait_pods(WEB, f"app={app}", 1, timeout=240)[0]


def test_a_cached_image_starts_from_its_disk_with_no_pull_and_no_unpack(
    switched: Switched,
) -> None:
    site, node = switched.site, switched.site.node
    assert node.cri_snapshotter() == "imagecache"
    cache = node.get("imc", CACHE) or {}
    disk = node.dir / "csi" / "snapshots" / cache["status"]["snapshotHandle"]
    manifest = json.loads((disk / "imagecache.json").read_text())
    held = [layer["chainID"] for image in manifest["images"] for layer in image["layers"]]
    assert held == switched.chains, "the builder Job did not unpack the layers (--builder-layers)"
    # the layers the node does not hold yet (its base layer, busybox's, may be there);
    # the two of real files made for this session are new
    snapshots = _snapshots(node)
    new = [chain for chain in switched.chains if chain not in snapshots]
    assert new[-2:] == switched.chains[-2:], (new, switched.chains)
    mark, disk_layers = site.public.mark(), _disk_layers_metric(node)
    content_before = set(node.ctr("content", "ls", "-q").stdout.split())
    node.apply(deployment("layered", WEB, switched.image, 1, AUTO))
    pod = _pod(node, "layered")
    meta = pod["metadata"]
    assert meta["annotations"]["imagecache.dev/decision"] == "hit"
    # nothing downloaded: no blob GET upstream, and no layer blob new in containerd's content
    # store (the mirror would have put it there), so containerd had nothing to unpack either
    assert site.public.blob_gets(mark, "shop/layered") == []
    content = set(node.ctr("content", "ls", "-q").stdout.split()) - content_before
    assert not content & set(switched.layer_digests), "a layer blob was fetched"
    # every new layer committed from the pod's own disk, said in its log and metrics
    log = _snapshotter_log(node)
    for chain in new:
        assert f"layer {chain} from cache disk" in log, log[-3000:]
    assert _disk_layers_metric(node) - disk_layers == len(new)
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    pods = {line.get("pod") for line in lines if line.get("chainID") in new}
    assert pods == {meta["uid"]}, pods
    # the container runs on those layers: its root overlay's lowers are on the pod's disk, and
    # it reads the files the builder unpacked (same sha256)
    name = meta["name"]
    mountinfo = node.kubectl("exec", "-n", WEB, name, "--", "cat", "/proc/1/mountinfo").stdout
    root = next(line for line in mountinfo.splitlines() if line.split()[4] == "/")
    assert f"/pods/{meta['uid']}/volumes/kubernetes.io~local-volume/" in root, root
    top = disk / "layers" / switched.chains[-1].split(":", 1)[1]
    sample = _a_file_of(top)
    inside = "/" + str(sample.relative_to(top))
    seen = node.kubectl("exec", "-n", WEB, name, "--", "sha256sum", inside).stdout.split()[0]
    assert seen == hashlib.sha256(sample.read_bytes()).hexdigest()


def test_an_ordinary_image_runs_through_the_same_snapshotter(switched: Switched) -> None:
    site, node = switched.site, switched.site.node
    mark = site.public.mark()
    node.apply(deployment("plain", WEB, switched.plain, 1, {}))
    name = _pod(node, "plain")["metadata"]["name"]
    assert site.public.blob_gets(mark, "shop/plain"), "the image was not pulled"
    # unpacked by containerd into the snapshotter's ordinary snapshots, none from a disk
    snapshots = node.ctr("snapshots", "--snapshotter", "imagecache", "ls").stdout
    for chain in switched.plain_chains:
        assert chain in snapshots
        assert f"layer {chain} from cache disk" not in _snapshotter_log(node)
    assert node.kubectl("exec", "-n", WEB, name, "--", "true").returncode == 0


def _serving_pid(node: Node) -> int:
    """The host pid of the process serving the snapshotter's socket: the snapshotter
    container's init (its task in containerd), or that process's child if it supervises one."""
    mirror = node.list("pods", NAMESPACE, "app.kubernetes.io/component=mirror")[0]
    statuses = {c["name"]: c for c in mirror["status"]["containerStatuses"]}
    container = statuses["snapshotter"]["containerID"].removeprefix("containerd://")
    tasks = [line.split() for line in node.ctr("tasks", "ls").stdout.splitlines()[1:]]
    pid = int(next(task[1] for task in tasks if task[0] == container))
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[0]) if children else pid


def test_the_snapshotter_killed_while_pods_run(switched: Switched) -> None:
    """Its serving process SIGKILLed: the supervisor (`serve --supervise`) starts it again in
    the same container, which never exits (while CRI uses the snapshotter, no container of
    the node, its own included, could be created without it); the pods keep running and a
    new pod of the cached image starts with nothing downloaded."""
    site, node = switched.site, switched.site.node
    running = _pod(node, "layered")
    served = _snapshotter_log(node).count('"msg":"serving on unix://')
    os.kill(_serving_pid(node), signal.SIGKILL)  # as a crash or the OOM killer would
    eventually(
        "the snapshotter serving again",
        lambda: _snapshotter_log(node).count('"msg":"serving on unix://') > served,
        120,
    )
    mirror = node.list("pods", NAMESPACE, "app.kubernetes.io/component=mirror")[0]
    statuses = {c["name"]: c for c in mirror["status"]["containerStatuses"]}
    assert statuses["snapshotter"]["restartCount"] == 0  # the same container
    mark = site.public.mark()
    node.kubectl("scale", "deployment", "layered", "-n", WEB, "--replicas=2")
    pods = node.wait_pods(WEB, "app=layered", 2, timeout=240)
    assert running["metadata"]["uid"] in {p["metadata"]["uid"] for p in pods}
    assert all(p["status"]["containerStatuses"][0]["restartCount"] == 0 for p in pods)
    assert site.public.blob_gets(mark, "shop/layered") == []


def test_rolling_back_leaves_the_node_ready_with_its_pods(
    switched: Switched, tmp_path: Path
) -> None:
    node = switched.site.node
    for app in ("layered", "plain"):
        node.kubectl("delete", "deployment", app, "-n", WEB, "--wait=false", check=False)
    _roll_back(switched, tmp_path)
    assert node.cri_snapshotter() == "overlayfs"
    # forget-images removed the image pulled from the disk (no layer blob in containerd) and
    # kept the one pulled from the registry
    removed = [line for line in switched.forgotten.splitlines() if line.startswith("removed")]
    repo = switched.image.rsplit(":", 1)[0]  # its pods ran it pinned: repo@digest
    assert len(removed) == 1 and f"{repo}@sha256:" in removed[0], switched.forgotten
    listed = node.ctr("images", "ls", "-q").stdout.split()
    assert not [name for name in listed if name.startswith(repo)], listed
    assert switched.plain in listed
    node.wait_ready()
    daemonset = node.get("daemonset", f"{RELEASE}-mirror", NAMESPACE) or {}
    containers = daemonset["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["mirror"]
    # the release's pods run, and a new pod of the cached image starts on overlayfs
    for app in ("webhook", "controller", "mirror"):
        pods = node.list("pods", NAMESPACE, f"app.kubernetes.io/component={app}")
        assert pods and all(p["status"]["phase"] == "Running" for p in pods), app
    node.apply(deployment("after", WEB, switched.image, 1, AUTO))
    _pod(node, "after")
    node.kubectl("delete", "deployment", "after", "-n", WEB, "--wait=false")
