"""The ImageCache LIST+WATCH against a real kube-apiserver (envtest; skipped without
KUBEBUILDER_ASSETS): initial LIST, events, resuming after the server ends a watch, 410 Gone
-> a fresh LIST, and the webhook's readiness following the first LIST."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from envtest import ControlPlane
from server_fixtures import (
    client_context,
    generate_certs,
    options,
    running,
    server_logger,
    url,
    wait_for,
)

from webhook.core.names import GROUP, PLURAL, VERSION
from webhook.kube.client import IMAGECACHE, Kube
from webhook.kube.informer import ListWatch, WatchOptions

pytestmark = pytest.mark.envtest


def _cache(name: str, *images: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ImageCache",
        "metadata": {"name": name},
        "spec": {"images": list(images) or ["nginx:1.25"]},
    }


class Recorder:
    def __init__(self) -> None:
        self.replaced: list[list[str]] = []
        self.events: list[tuple[str, str]] = []

    def on_replace(self, items: list[Mapping[str, Any]]) -> None:
        self.replaced.append(sorted(i["metadata"]["name"] for i in items))

    def on_event(self, event_type: str, obj: Mapping[str, Any]) -> None:
        self.events.append((event_type, obj["metadata"]["name"]))


@pytest.fixture
def prefix(apiserver: ControlPlane) -> AsyncIterator[str]:
    # Every test's caches carry their own prefix; they are deleted at the end.
    mark = f"w{uuid.uuid4().hex[:8]}"
    yield mark  # type: ignore[misc]
    names = apiserver.kubectl("get", PLURAL, "-o", "name").stdout.split()
    mine = [n for n in names if n.split("/", 1)[1].startswith(mark)]
    if mine:
        apiserver.kubectl("delete", "--wait=false", *mine)


async def _kubectl(plane: ControlPlane, *args: str, manifest: dict[str, Any] | None = None) -> None:
    if manifest is not None:
        await asyncio.to_thread(plane.apply, manifest)
    else:
        await asyncio.to_thread(plane.kubectl, *args)


@asynccontextmanager
async def watching(plane: ControlPlane, recorder: Recorder, **options: Any) -> AsyncIterator[Kube]:
    """The one LIST+WATCH loop feeding `recorder`, running for the block."""
    kube = await Kube.connect(str(plane.kubeconfig))
    loop = ListWatch(
        kube, IMAGECACHE, on_replace=recorder.on_replace, on_event=recorder.on_event,
        logger=server_logger(), **options,
    )  # fmt: skip
    task = asyncio.create_task(loop.run())
    try:
        yield kube
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await kube.close()


async def test_list_then_events_then_resume(apiserver: ControlPlane, prefix: str) -> None:
    for n in range(2):
        await _kubectl(apiserver, manifest=_cache(f"{prefix}-a{n}"))
    recorder = Recorder()
    async with watching(apiserver, recorder, options=WatchOptions(timeout_seconds=2)) as kube:
        await wait_for(lambda: bool(recorder.replaced), within=20, what="the first LIST")
        assert {f"{prefix}-a0", f"{prefix}-a1"} <= set(recorder.replaced[0])

        await _kubectl(apiserver, manifest=_cache(f"{prefix}-b"))
        await wait_for(lambda: ("ADDED", f"{prefix}-b") in recorder.events, within=20)
        await _kubectl(apiserver, manifest=_cache(f"{prefix}-b", "busybox:1.36"))
        await wait_for(lambda: ("MODIFIED", f"{prefix}-b") in recorder.events, within=20)

        await asyncio.sleep(2.5)  # the server ends the 2 s watch; the loop resumes it
        await _kubectl(apiserver, "delete", f"{PLURAL}/{prefix}-a0")
        await wait_for(lambda: ("DELETED", f"{prefix}-a0") in recorder.events, within=20)
        # Resumed from the last resourceVersion: no second LIST, no event seen twice.
        assert len(recorder.replaced) == 1
        assert kube.requests["list"] == 1 and kube.requests["watch"] >= 2
        mine = [e for e in recorder.events if e[1].startswith(prefix)]
        assert mine == [
            ("ADDED", f"{prefix}-b"),
            ("MODIFIED", f"{prefix}-b"),
            ("DELETED", f"{prefix}-a0"),
        ]


async def test_expired_resource_version_lists_again(
    apiserver: ControlPlane, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    await _kubectl(apiserver, manifest=_cache(f"{prefix}-c"))
    recorder = Recorder()
    # A version long compacted away: 410 Gone.
    async with watching(apiserver, recorder, resource_version="1"):
        await wait_for(lambda: bool(recorder.replaced), within=20, what="the LIST after 410")
        assert f"{prefix}-c" in recorder.replaced[0]
        assert len(recorder.replaced) == 1
        await _kubectl(apiserver, manifest=_cache(f"{prefix}-d"))
        await wait_for(lambda: ("ADDED", f"{prefix}-d") in recorder.events, within=20)
    messages = [r.getMessage() for r in caplog.records]
    assert "listing again" in messages
    assert "watch failed, retrying" not in messages


async def test_webhook_ready_after_the_first_list(
    apiserver: ControlPlane, prefix: str, tmp_path: Path
) -> None:
    await _kubectl(apiserver, manifest=_cache(f"{prefix}-e"))
    certs = generate_certs(tmp_path / "certs")
    opts = options(certs / "tls.crt", certs / "tls.key", kubeconfig=str(apiserver.kubeconfig))
    connector = aiohttp.TCPConnector(ssl=client_context(certs / "ca.crt"))
    async with running(opts) as webhook, aiohttp.ClientSession(connector=connector) as session:
        await wait_for(lambda: webhook.state.synced, within=20, what="the first LIST")
        async with session.get(url(webhook, "/readyz")) as response:
            assert response.status == 200
        assert webhook.state.index.get(f"{prefix}-e") is not None
        await _kubectl(apiserver, manifest=_cache(f"{prefix}-f"))
        await wait_for(lambda: webhook.state.index.get(f"{prefix}-f") is not None, within=20)
        await _kubectl(apiserver, "delete", f"{PLURAL}/{prefix}-e")
        await wait_for(lambda: webhook.state.index.get(f"{prefix}-e") is None, within=20)
        async with session.get(url(webhook, "/metrics")) as response:
            text = await response.text()
        assert "imagecache_cache_index_resyncs_total 1.0" in text
