"""The informer against the real apiserver: watches that end, and 410 Gone."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
from typing import Any

import pytest
from controller_harness import Cluster, eventually, unique
from envtest import ControlPlane

from webhook.controller.workqueue import WorkQueue
from webhook.kube.client import Resource
from webhook.kube.informer import Informer

pytestmark = pytest.mark.envtest
CONFIGMAP = Resource("v1", "ConfigMap", "configmaps", True)
EVENTS = Resource("v1", "Event", "events", True)


def configmap(namespace: str, name: str, value: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"v": value},
    }


def event(namespace: str, name: str, message: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": namespace},
        "involvedObject": {"kind": "Pod", "name": "p", "namespace": namespace},
        "reason": "Test",
        "message": message,
    }


def recording_informer(
    cluster: Cluster, res: Resource, namespace: str, **options: Any
) -> tuple[Informer, list[tuple[str, str]]]:
    """An Informer of `namespace` that records (event type, name) of every change."""
    seen: list[tuple[str, str]] = []
    informer = Informer(
        cluster.kube,
        res,
        namespace=namespace,
        handler=lambda kind, obj: seen.append((kind, obj["metadata"]["name"])),
        **options,
    )
    return informer, seen


async def test_watch_resumes_after_the_server_ends_it(cluster: Cluster) -> None:
    ns = await cluster.namespace(unique("watch"))
    # the apiserver closes each watch after a second
    informer, seen = recording_informer(cluster, CONFIGMAP, ns, watch_timeout=1)
    stop = asyncio.Event()
    task = asyncio.create_task(informer.run(stop))
    try:
        await asyncio.wait_for(informer.synced.wait(), 10)
        for n in range(4):
            await cluster.kube.create(configmap(ns, f"cm{n}", "x"))
            await asyncio.sleep(0.8)  # across several watch restarts
        await cluster.kube.delete(CONFIGMAP, ns, "cm0")

        async def caught_up() -> bool:
            names = {n for _, n in informer.store if n.startswith("cm")}
            return names == {"cm1", "cm2", "cm3"}

        await eventually(caught_up, "all changes seen")

        async def resumed() -> bool:  # the server ends each watch after a second
            return cluster.kube.requests["watch"] >= 3

        await eventually(resumed, "several watches")
        assert informer.relists == 1  # resumed from its resourceVersion, never listed again
        assert ("DELETED", "cm0") in seen
    finally:
        stop.set()
        await task


async def test_410_gone_lists_again_and_reports_what_changed(
    apiserver: ControlPlane, cluster: Cluster
) -> None:
    # Events: the apiserver serves their watches from etcd (no watch cache), so compacting
    # etcd makes an old resourceVersion Gone, as it happens every 5 minutes in a cluster.
    ns = await cluster.namespace(unique("gone"))
    await cluster.kube.create(event(ns, "busy", "0"))
    await cluster.kube.create(event(ns, "doomed", "0"))
    informer, seen = recording_informer(cluster, EVENTS, ns)
    stop = asyncio.Event()
    task = asyncio.create_task(informer.run(stop))
    await asyncio.wait_for(informer.synced.wait(), 10)
    stop.set()
    await task
    old_version = informer.resource_version
    # While it is not watching: changes, then compaction past its version.
    await cluster.kube.delete(EVENTS, ns, "doomed")
    for n in range(1, 6):
        await cluster.kube.patch(EVENTS, ns, "busy", {"message": str(n)})
    apiserver.compact_etcd()
    seen.clear()
    stop = asyncio.Event()
    task = asyncio.create_task(informer.run(stop))
    try:

        async def relisted() -> bool:
            obj = informer.get(ns, "busy")
            return informer.relists == 2 and obj is not None and obj["message"] == "5"

        await eventually(relisted, "relist after 410 Gone")
        assert informer.resource_version != old_version
        assert informer.get(ns, "doomed") is None
        assert ("DELETED", "doomed") in seen and ("MODIFIED", "busy") in seen
    finally:
        stop.set()
        await task


def _etcd_write(plane: ControlPlane) -> None:
    """One write straight to etcd (a key no apiserver reads): the revision moves on."""
    body = {"key": base64.b64encode(b"/imagecache-test/bump").decode(), "value": "eA=="}
    request = urllib.request.Request(
        plane.etcd_url + "/v3/kv/put", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


async def _list_all(informer: Informer, page_size: int) -> None:
    informer.loop.options.page_size = page_size
    stop = asyncio.Event()
    task = asyncio.create_task(informer.run(stop))
    try:
        await asyncio.wait_for(informer.synced.wait(), 30)
    finally:
        stop.set()
        await task


async def test_lists_are_paged_and_every_object_is_seen(cluster: Cluster) -> None:
    """Issue 10.8: LISTs in pages (limit/continue), so a big cluster is never one answer."""
    ns = await cluster.namespace(unique("pages"))
    for n in range(7):
        await cluster.kube.create(configmap(ns, f"cm{n}", "x" * 100))
    slim: list[str] = []

    def transform(obj: dict[str, object]) -> dict[str, object]:
        slim.append(str(obj["metadata"]["name"]))  # type: ignore[index]
        return {"metadata": obj["metadata"]}

    informer = Informer(cluster.kube, CONFIGMAP, namespace=ns, transform=transform)
    before = cluster.kube.requests["list"]
    await _list_all(informer, page_size=3)

    names = {f"cm{n}" for n in range(7)}
    assert {name for _, name in informer.store if name.startswith("cm")} == names
    assert cluster.kube.requests["list"] - before == 3  # 3 + 3 + 1 (+ kube-root-ca.crt)
    assert names <= set(slim)  # each object went through the transform as its page came
    assert all("data" not in obj for obj in informer)


async def test_an_expired_continue_token_falls_back_to_a_whole_list(
    apiserver: ControlPlane, cluster: Cluster
) -> None:
    """Between two pages etcd is compacted past the list's snapshot: the continue token gets
    410, and the list is made whole in one request, as client-go's pager does."""
    ns = await cluster.namespace(unique("expired"))
    for n in range(5):
        await cluster.kube.create(configmap(ns, f"cm{n}", "x"))
    lists = 0

    def compact_before_the_second_page(verb: str) -> None:
        nonlocal lists
        if verb == "list":
            lists += 1
            if lists == 2:
                _etcd_write(apiserver)
                apiserver.compact_etcd()

    informer = Informer(cluster.kube, CONFIGMAP, namespace=ns)
    cluster.kube.observer = compact_before_the_second_page
    await _list_all(informer, page_size=2)

    assert {name for _, name in informer.store if name.startswith("cm")} == {
        f"cm{n}" for n in range(5)
    }
    assert lists == 3  # page 1, page 2 (410), the whole list
    assert informer.loop.expired_continues == 1
    assert informer.relists == 1


async def test_work_queue_backs_off_per_key_and_dedupes() -> None:
    queue = WorkQueue(base_delay=0.05, max_delay=1.0)
    stop = asyncio.Event()
    timers = asyncio.create_task(queue.run_timers(stop))
    try:
        queue.add("a")
        queue.add("a")
        assert len(queue) == 1
        key = await queue.get()
        queue.add("a")  # while processing: once more after done, not concurrently
        assert len(queue) == 0
        queue.done(key)
        assert len(queue) == 1
        await queue.get()
        delays = [queue.retry("a") for _ in range(4)]
        assert delays == sorted(delays) and delays[-1] > 4 * delays[0]
        queue.done("a")
        queue.forget("a")
        assert await asyncio.wait_for(queue.get(), 3) == "a"
    finally:
        stop.set()
        await timers
