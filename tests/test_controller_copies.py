"""Rebuilds, snapshot copies and pod Events against the real apiserver."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from controller_harness import (
    Cluster,
    ControllerProcess,
    decided_pod,
    eventually,
    make_ready,
    scrape_metrics,
    unique,
)

from webhook.kube import client as k

pytestmark = pytest.mark.envtest
D1, D2, D3 = ("sha256:" + c * 64 for c in "123")


async def test_spec_change_rebuilds_and_the_old_snapshot_serves_until_then(
    cluster: Cluster, running: tuple[ControllerProcess, str, str]
) -> None:
    """Issue 10.1 and 10.2: a rebuild's copy is made beside the one in use, status.namespaces
    switches once it is ready, and neither the old copy nor a deleted cache's copy goes while
    a claim clones it (the test plays the snapshot controller and the CSI provisioner)."""
    process, ns, selector = running
    eager = await cluster.namespace(unique("eager"))
    name = unique("rb")
    await cluster.cache(name, {"images": ["nginx:1"], "namespaces": [eager]}, selector)
    first = await make_ready(cluster, ns, name, [("docker.io/library/nginx:1", D1, 5)], "h1")
    old_snapshot = first["status"]["snapshotName"]
    # Eager copy for spec.namespaces, without any pod there; published once ready.
    old_copy = (await cluster.copy_entry(name, eager, ready=False))["snapshotName"]
    copy = await eventually(lambda: cluster.kube.find(k.SNAPSHOT, eager, old_copy), "eager copy")
    old_content = copy["spec"]["source"]["volumeSnapshotContentName"]
    await cluster.ready_copy(eager, old_copy)
    await cluster.copy_entry(name, eager, ready=True)

    # retentionDays alone does not rebuild.
    await cluster.kube.patch(k.IMAGECACHE, None, name, {"spec": {"retentionDays": 3}})

    async def has_expiry() -> Any:
        return ((await cluster.get_cache(name)) or {}).get("status", {}).get("expireTime")

    await eventually(has_expiry, "expireTime")
    assert await cluster.owned(k.JOB, ns, name) == []

    # A changed image list builds beside the served snapshot.
    await cluster.kube.patch(k.IMAGECACHE, None, name, {"spec": {"images": ["nginx:1", "redis"]}})
    await cluster.one(k.JOB, ns, name, "rebuild Job")

    async def rebuilding() -> Any:
        status = ((await cluster.get_cache(name)) or {}).get("status") or {}
        return status if "rebuilding" in status.get("message", "") else None

    during = await eventually(rebuilding, "rebuilding message")
    assert during["phase"] == "Ready" and during["snapshotName"] == old_snapshot
    # A pod's claim clones the old copy and is not provisioned yet.
    await cluster.claim(eager, "early-imagecache", name, old_copy)

    second = await make_ready(
        cluster,
        ns,
        name,
        [("docker.io/library/nginx:1", D1, 5), ("docker.io/library/redis:latest", D2, 6)],
        "h2",
    )
    assert second["status"]["snapshotName"] != old_snapshot
    assert second["status"]["imageCount"] == 2

    # The new copy is made beside the old one; pods keep getting the old one until it is ready.
    async def new_copy() -> Any:
        for snap in await cluster.owned(k.SNAPSHOT, eager, name):
            if snap["metadata"]["name"] != old_copy:
                return snap
        return None

    fresh = await eventually(new_copy, "the rebuild's copy")
    content = await cluster.kube.get(
        k.CONTENT, None, fresh["spec"]["source"]["volumeSnapshotContentName"]
    )
    assert content["spec"]["source"]["snapshotHandle"] == "h2"
    entry = await cluster.copy_entry(name, eager)
    assert entry["snapshotName"] == old_copy and entry["readyToUse"] is True
    await cluster.ready_copy(eager, fresh["metadata"]["name"])

    async def switched() -> Any:
        entry = await cluster.copy_entry(name, eager)
        return entry if entry["snapshotName"] == fresh["metadata"]["name"] else None

    entry = await eventually(switched, "status.namespaces switched to the new copy")
    assert entry["readyToUse"] is True
    assert f"claim {eager}/early-imagecache" in entry.get("message", ""), entry
    # The claim still clones the old copy: it and the old primary stay.
    assert await cluster.kube.find(k.SNAPSHOT, eager, old_copy) is not None
    assert await cluster.kube.find(k.SNAPSHOT, ns, old_snapshot) is not None
    await cluster.bind_claim(eager, "early-imagecache")

    async def old_gone() -> bool:
        return (
            await cluster.kube.find(k.SNAPSHOT, ns, old_snapshot) is None
            and await cluster.kube.find(k.SNAPSHOT, eager, old_copy) is None
            and await cluster.kube.find(k.CONTENT, None, old_content) is None
        )

    await eventually(old_gone, "superseded snapshot, copy and copy content deleted")
    reasons = [reason for _, reason, _ in cluster.events(name)]
    assert "SnapshotInUse" in reasons, reasons

    # Deleting the cache waits for a claim that clones its copy.
    await cluster.claim(eager, "late-imagecache", name, fresh["metadata"]["name"])
    await cluster.delete_cache(name)

    async def deferred() -> Any:
        status = ((await cluster.get_cache(name)) or {}).get("status") or {}
        return f"claim {eager}/late-imagecache" in status.get("message", "")

    await eventually(deferred, "deletion deferred for the claim")
    assert await cluster.kube.find(k.SNAPSHOT, eager, fresh["metadata"]["name"]) is not None
    await cluster.bind_claim(eager, "late-imagecache")
    await cluster.gone(name)
    assert await cluster.leftovers(ns, name) == {}, process.tail()
    assert "DeletionDeferred" in [reason for _, reason, _ in cluster.events(name)]


async def test_pods_get_one_event_each_a_copy_and_last_matched_time(
    cluster: Cluster, running: tuple[ControllerProcess, str, str]
) -> None:
    process, ns, selector = running
    name = unique("pe")
    await cluster.cache(name, {"images": ["nginx", "redis"]}, selector)
    await make_ready(cluster, ns, name, [("docker.io/library/nginx:latest", D1, 5)], "h1")
    app = await cluster.namespace(unique("app"))
    assert await cluster.owned(k.SNAPSHOT, app, name) == []

    pods = [
        decided_pod(app, "hit", "hit", name),
        decided_pod(app, "mismatch", "mismatch", name, missing="docker.io/library/busybox:latest"),
        decided_pod(app, "miss", "miss", None),
        decided_pod(app, "unavailable", "unavailable", "no-such-cache"),
        {
            **decided_pod(app, "undecided", "hit", None),
            "metadata": {"name": "undecided", "namespace": app},
        },
    ]
    for manifest in pods:
        await cluster.kube.create(manifest)

    # The hit made a copy in the pod's namespace.
    entry = await cluster.copy_entry(name, app)
    copy = await eventually(
        lambda: cluster.kube.find(k.SNAPSHOT, app, entry["snapshotName"]),
        "copy in the pod's namespace",
    )
    assert copy["metadata"]["labels"]["imagecache.dev/cache"] == name

    async def pod_events() -> Any:
        listed = await cluster.kube.list(k.EVENT, app)
        found = {
            e["involvedObject"]["name"]: (e["type"], e["reason"], e["message"])
            for e in listed.get("items") or []
            if e.get("reportingComponent") == "imagecache-controller"
        }
        return found if len(found) >= 4 else None

    events = await eventually(pod_events, "pod events")
    assert set(events) == {"hit", "mismatch", "miss", "unavailable"}
    assert events["hit"][:2] == ("Normal", "ImageCacheHit")
    assert events["mismatch"][:2] == ("Warning", "ImageCacheMismatch")
    assert "docker.io/library/busybox:latest" in events["mismatch"][2]
    assert events["miss"][:2] == ("Normal", "ImageCacheMiss")
    assert events["unavailable"][:2] == ("Warning", "ImageCacheUnavailable")
    assert "no-such-cache" in events["unavailable"][2]

    # lastMatchedTime: the newest hit/mismatch pod's creation time, written in one batch.
    async def matched() -> Any:
        return ((await cluster.get_cache(name)) or {}).get("status", {}).get("lastMatchedTime")

    stamp = await eventually(matched, "lastMatchedTime")
    created = (await cluster.kube.get(k.POD, app, "mismatch"))["metadata"]["creationTimestamp"]
    assert stamp >= created

    # Once per pod: a restarted controller writes no second Event.
    process.kill()
    restarted = ControllerProcess(process.plane, ns, selector).start()
    try:
        await eventually(lambda: _healthy(restarted), "restarted controller healthy")
        # It tries the four Events again (it keeps no memory) and the apiserver says 409.
        await eventually(lambda: _creates(restarted, 4), "restarted controller tried the Events")
        listed = await cluster.kube.list(k.EVENT, app)
        ours = [
            e
            for e in listed.get("items") or []
            if e.get("reportingComponent") == "imagecache-controller"
        ]
        assert len(ours) == 4 and all(e["count"] == 1 for e in ours)
        # Pods that run have their disks: the cache is no longer protected by them.
        for started in ("hit", "mismatch"):
            await cluster.kube.patch(
                k.POD, app, started, {"status": {"phase": "Running"}}, subresource="status"
            )
        await cluster.delete_cache(name)
        await cluster.gone(name)
    finally:
        restarted.kill()


async def _metrics(process: ControllerProcess) -> str | None:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{process.port}/metrics") as response,
        ):
            return await response.text() if response.status == 200 else None
    except aiohttp.ClientError:
        return None


async def _creates(process: ControllerProcess, at_least: int) -> bool:
    text = await _metrics(process) or ""
    for line in text.splitlines():
        if line.startswith('imagecache_api_requests_total{verb="create"}'):
            return float(line.split()[-1]) >= at_least
    return False


async def _healthy(process: ControllerProcess) -> bool:
    text = await scrape_metrics(process.port)
    return text is not None and "imagecache_leader 1.0" in text
