"""Shared fixtures. `apiserver`: a real control plane for the whole session (tests/envtest.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

# tests/ is not a package: make `import envtest` work whatever the rootdir/import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from controller_harness import Cluster, ControllerProcess, unique
from envtest import SKIP_REASON, ControlPlane, control_plane

from webhook.kube.client import Kube, load_configuration


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test that uses the real apiserver is an envtest test, marked or not (`-m envtest`).
    for item in items:
        if "apiserver" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.envtest)


@pytest.fixture(scope="session")
def apiserver() -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager on free 127.0.0.1 ports, with the
    VolumeSnapshot and ImageCache CRDs Established. Skips when KUBEBUILDER_ASSETS is unset."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if not assets:
        pytest.skip(SKIP_REASON)
    with control_plane(Path(assets)) as plane:
        yield plane


@pytest.fixture
async def cluster(apiserver: ControlPlane) -> AsyncIterator[Cluster]:
    """An admin client on the control plane, with the controller tests' helpers."""
    kube = Kube(await load_configuration(str(apiserver.kubeconfig)))
    try:
        yield Cluster(apiserver, kube)
    finally:
        await kube.close()


@pytest.fixture
async def running(
    apiserver: ControlPlane, cluster: Cluster
) -> AsyncIterator[tuple[ControllerProcess, str, str]]:
    """A controller with its own namespace, reconciling only this test's caches."""
    namespace = await cluster.namespace(unique("imc-system"))
    await cluster.snapshot_class()
    selector = f"test={unique('t')}"
    process = ControllerProcess(apiserver, namespace, selector).start()
    try:
        yield process, namespace, selector
    finally:
        process.kill()
