"""Faults on the node: a cache is an optimization, so no part going away may block a pod.

- the node agent (mirror) gone: pods that use a cache still start, their images pulled from
  the registry as usual (containerd's next host);
- the controller stopped: pods in a namespace without a ready copy start uncached, none stays
  Pending;
- a cache disk unmounted (its pod deleted) while pods of the same image run elsewhere on the
  node: they keep running and new pods of that image still start.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from node_harness import MIRROR_PORT, Node, eventually
from node_site import FRESH, NAMESPACE, RELEASE, WEB, Built, Site, deployment

AUTO = {"imagecache.dev/use-image-cache": "auto"}


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _cleanup(node: Node, namespace: str, *names: str) -> None:
    for name in names:
        node.kubectl("delete", "deployment", name, "-n", namespace, "--wait=false", check=False)
    for name in names:
        eventually(
            f"pods of {name} gone", lambda n=name: not node.list("pods", namespace, f"app={n}"), 120
        )


@pytest.fixture
def mirror_gone(site: Site) -> Iterator[None]:
    node, port = site.node, site.node.base + MIRROR_PORT
    ds = f"daemonset/{RELEASE}-mirror"
    node.kubectl(
        "patch",
        ds,
        "-n",
        NAMESPACE,
        "--type=merge",
        "-p",
        '{"spec":{"template":{"spec":{"nodeSelector":{"imagecache-test/nowhere":"true"}}}}}',
    )
    eventually("the mirror to be gone from the node", lambda: not _listening(port), 120)
    try:
        yield
    finally:
        node.kubectl(
            "patch",
            ds,
            "-n",
            NAMESPACE,
            "--type=json",
            "-p",
            '[{"op":"remove","path":"/spec/template/spec/nodeSelector"}]',
        )
        node.kubectl("rollout", "status", ds, "-n", NAMESPACE, "--timeout=180s", timeout=200)


def test_without_the_mirror_cached_pods_still_start(
    site: Site, built: Built, mirror_gone: None
) -> None:
    node = site.node
    node.forget_image(built.public_image, built.public_layers, built.public_chains)
    mark = site.public.mark()
    node.apply(deployment("nomirror", WEB, built.public_image, 1, AUTO))
    try:
        pod = node.wait_pods(WEB, "app=nomirror", 1, timeout=240)[0]
        assert pod["metadata"]["annotations"]["imagecache.dev/decision"] == "hit"
        # pulled normally: containerd skipped the dead mirror and went to the registry
        assert site.public.blob_gets(mark, "shop/app")
    finally:
        _cleanup(node, WEB, "nomirror")


@pytest.fixture
def controller_stopped(site: Site) -> Iterator[None]:
    node = site.node
    deploy = f"deployment/{RELEASE}-controller"
    node.kubectl("scale", deploy, "-n", NAMESPACE, "--replicas=0")
    eventually(
        "the controller pods to be gone",
        lambda: not node.list("pods", NAMESPACE, "app.kubernetes.io/component=controller"),
        120,
    )
    try:
        yield
    finally:
        node.kubectl("scale", deploy, "-n", NAMESPACE, "--replicas=1")
        node.kubectl("rollout", "status", deploy, "-n", NAMESPACE, "--timeout=180s", timeout=200)


def test_without_the_controller_pods_start_uncached(
    site: Site, built: Built, controller_stopped: None
) -> None:
    node = site.node
    # the cache is usable from FRESH, but the namespace is made only now: no copy can exist
    node.kubectl("create", "namespace", FRESH)
    node.apply(deployment("nocontroller", FRESH, built.public_image, 2, AUTO))
    try:
        pods = node.wait_pods(FRESH, "app=nocontroller", 2, timeout=240)
        for pod in pods:
            assert pod["metadata"]["annotations"]["imagecache.dev/decision"] == "unavailable"
            assert not any(v["name"] == "imagecache" for v in pod["spec"]["volumes"])
        assert not [
            p
            for p in node.list("pods", FRESH, "app=nocontroller")
            if p["status"].get("phase") == "Pending"
        ]
    finally:
        _cleanup(node, FRESH, "nocontroller")
        node.kubectl("delete", "namespace", FRESH, "--wait=false")


def test_a_disk_unmounted_while_the_image_runs_elsewhere(site: Site, built: Built) -> None:
    node = site.node
    node.apply(
        deployment("withdisk", WEB, built.public_image, 1, AUTO),
        deployment("neighbour", WEB, built.public_image, 1, {}),
    )
    try:
        cached = node.wait_pods(WEB, "app=withdisk", 1, timeout=240)[0]
        neighbour = node.wait_pods(WEB, "app=neighbour", 1, timeout=240)[0]
        assert cached["metadata"]["annotations"]["imagecache.dev/decision"] == "hit"
        claim = f"{cached['metadata']['name']}-imagecache"
        volume = (node.get("pvc", claim, WEB) or {})["spec"]["volumeName"]
        # the cached pod goes: kubelet unmounts its disk, the stand-in deletes the clone
        node.kubectl("scale", "deployment/withdisk", "-n", WEB, "--replicas=0")
        node.wait_deleted("pv", volume, timeout=180)
        # the neighbour runs on, and reads its image's files
        name = neighbour["metadata"]["name"]
        again = node.get("pod", name, WEB) or {}
        assert again["status"]["phase"] == "Running"
        assert again["status"]["containerStatuses"][0]["restartCount"] == 0
        listing = node.kubectl("exec", "-n", WEB, name, "--", "ls", "/data/layer0").stdout
        assert listing.strip()
        # and a new pod of that image, cache or not, still starts
        node.kubectl("scale", "deployment/withdisk", "-n", WEB, "--replicas=1")
        node.kubectl("scale", "deployment/neighbour", "-n", WEB, "--replicas=2")
        node.wait_pods(WEB, "app=withdisk", 1, timeout=240)
        node.wait_pods(WEB, "app=neighbour", 2, timeout=240)
    finally:
        _cleanup(node, WEB, "withdisk", "neighbour")
