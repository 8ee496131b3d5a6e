"""Fixtures of the node tests (marker `node`): one real node for the whole session, the
project's image built once (hack/image.sh), two registries on the node's bridge, the chart
installed as README says, and the CSI stand-in. The node is always stopped at the end, also
after a failure or Ctrl-C (IMAGECACHE_NODE_KEEP=1 leaves it running)."""

from __future__ import annotations

import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_harness import SCRIPTS, Node, pick_base
from node_site import (
    FRESH,
    IMAGE,
    NAMESPACE,
    RELEASE,
    SHOP,
    WEB,
    Built,
    Site,
    build_image,
    set_up_site,
    tke_manifest,
    wait_cache_ready,
)


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "node tests need root (they run a kubelet, containerd and iptables)"
    if not (SCRIPTS / "node-up.sh").exists():
        return f"no node scripts in {SCRIPTS} (set IMAGECACHE_NODE_SCRIPTS)"
    missing = [t for t in ("skopeo", "docker-registry", "containerd", "ctr") if not shutil.which(t)]
    if missing:
        return f"node tests need {', '.join(missing)} (hack/test.sh installs them)"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    reason = _why_not()
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.node)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def image_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart's image, built once per session (cached across sessions by its inputs)."""
    return build_image()


@pytest.fixture(scope="session")
def node(image_archive: Path) -> Iterator[Node]:
    base = pick_base()
    directory = Path(os.environ.get("IMAGECACHE_NODE_DIR", f"/dev/shm/imagecache-node-{base}"))
    the_node = Node(base, directory)
    # SIGTERM (CI timeouts) as Ctrl-C, so that the teardown below still runs.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        the_node.up([image_archive])
        the_node.tag_by_digest(IMAGE, image_archive)
        yield the_node
    finally:
        if os.environ.get("IMAGECACHE_NODE_KEEP") != "1":
            the_node.down()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def site(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Registries, storage, the stand-in and the chart installed (README's install section)."""
    site = set_up_site(node, tmp_path_factory.mktemp("chart"))
    try:
        yield site
    finally:
        site.standin.stop()


@pytest.fixture(scope="session")
def built(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    node = site.node
    tmp = tmp_path_factory.mktemp("images")
    public_image = f"{site.public.host}/shop/app:1"
    private_image = f"{site.private.host}/shop/secret-app:1"
    node.make_image(public_image, tmp / "app.tar", salt="app")
    node.make_image(private_image, tmp / "secret.tar", salt="secret")
    public_digest = site.public.push(tmp / "app.tar", "shop/app:1")
    private_digest = site.private.push(tmp / "secret.tar", "shop/secret-app:1")
    for ns in (WEB, SHOP):
        node.kubectl("create", "namespace", ns, check=False)
    node.apply(node.pull_secret(SHOP, "regcred", site.private))
    node.apply(
        # usable from web (a copy made up front) and fresh (a namespace made only once the
        # controller is stopped, so it never gets a copy: tests/node/test_node_3_faults.py)
        tke_manifest("app", [public_image], [site.public], namespaces=[WEB, FRESH]),
        tke_manifest(
            "secret-app", [private_image], [site.private], imagePullSecrets=[f"{SHOP}/regcred"]
        ),
    )
    wait_cache_ready(node, "app", WEB)
    layers = [public_digest, *site.public.layers("shop/app:1")]
    yield Built(
        public_image,
        public_digest,
        layers,
        site.public.chain_ids("shop/app:1"),
        private_image,
        private_digest,
        "app",
        "secret-app",
    )
    if node.get("deployment", f"{RELEASE}-controller", NAMESPACE):  # not uninstalled yet
        node.kubectl("delete", "imc", "app", "secret-app", "--wait=false", check=False)
