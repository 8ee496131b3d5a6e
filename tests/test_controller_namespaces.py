"""Copies into namespaces and whose secrets a cache may use, against the real apiserver
(issue 10 points 1, 3 and 4). The test plays the snapshot controller (copies ready)."""

from __future__ import annotations

from typing import Any

import pytest
from controller_harness import (
    DRIVER,
    Cluster,
    ControllerProcess,
    eventually,
    make_ready,
    unique,
)

from webhook.controller.core import reconcile_names as rn
from webhook.kube import client as k

pytestmark = pytest.mark.envtest
D1 = "sha256:" + "1" * 64
IMAGES = [("docker.io/library/nginx:1", D1, 5)]


async def _copy_of(cluster: Cluster, cache: str, namespace: str) -> dict[str, Any]:
    entry = await cluster.copy_entry(cache, namespace)
    found: dict[str, Any] = await eventually(
        lambda: cluster.kube.find(k.SNAPSHOT, namespace, entry["snapshotName"]),
        f"copy of {cache} in {namespace}",
    )
    return found


async def test_copies_of_two_caches_never_share_a_content(
    cluster: Cluster, running: tuple[ControllerProcess, str, str]
) -> None:
    """Issue 10.3: cache web copied to prod-x and cache web-prod copied to x (equal specs,
    so equal build ids) got one VolumeSnapshotContent name; the 409 was taken for "made"
    and the second copy bound to the first one's content, of another namespace."""
    process, ns, selector = running
    web = unique("web")
    tail = unique("x")
    pairs = [(web, f"prod-{tail}"), (f"{web}-prod", tail)]
    for cache, namespace in pairs:
        await cluster.namespace(namespace)
        await cluster.cache(cache, {"images": ["nginx:1"], "namespaces": [namespace]}, selector)
        await make_ready(cluster, ns, cache, IMAGES, f"handle-{cache}")
    for cache, namespace in pairs:
        copy = await _copy_of(cluster, cache, namespace)
        name = copy["spec"]["source"]["volumeSnapshotContentName"]
        content = await cluster.kube.get(k.CONTENT, None, name)
        ref = content["spec"]["volumeSnapshotRef"]
        assert (ref["namespace"], ref["name"]) == (namespace, copy["metadata"]["name"]), name
        assert content["spec"]["source"] == {"snapshotHandle": f"handle-{cache}"}
        assert content["spec"]["sourceVolumeMode"] == "Filesystem"
        assert content["spec"]["deletionPolicy"] == "Retain" and content["spec"]["driver"] == DRIVER
    for cache, _ in pairs:
        await cluster.delete_cache(cache)
        await cluster.gone(cache)
    assert "Traceback" not in process.tail(400)


async def test_a_name_taken_by_another_object_is_never_taken_for_the_copy(
    cluster: Cluster, running: tuple[ControllerProcess, str, str]
) -> None:
    """Issue 10.3: a 409 on a copy's content is checked: an object that is not this cache's
    copy for this namespace is reported, and no VolumeSnapshot is bound to it."""
    process, ns, selector = running
    name = unique("taken")
    team = await cluster.namespace(unique("team"))
    await cluster.cache(name, {"images": ["nginx:1"]}, selector)
    ready = await make_ready(cluster, ns, name, IMAGES, "h-taken")
    uid, bid = ready["metadata"]["uid"], ready["status"]["buildId"]
    squatter = rn.copy_content_name(uid, name, team, bid)
    await cluster.kube.create(
        {
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshotContent",
            "metadata": {"name": squatter},
            "spec": {
                "deletionPolicy": "Retain",
                "driver": DRIVER,
                "source": {"snapshotHandle": "someone-elses"},
                "volumeSnapshotRef": {"name": "theirs", "namespace": "elsewhere"},
            },
        }
    )
    try:
        await cluster.kube.patch(k.IMAGECACHE, None, name, {"spec": {"namespaces": [team]}})

        async def reported() -> Any:
            entry = await cluster.copy_entry(name, team)
            return entry if "belongs to another cache" in entry.get("message", "") else None

        entry = await eventually(reported, "the taken name reported in status", within=60)
        assert entry["readyToUse"] is False
        assert await cluster.kube.find(k.SNAPSHOT, team, entry["snapshotName"]) is None
        warnings = [m for t, r, m in cluster.events(name) if r == "SnapshotCopyFailed"]
        assert warnings and squatter in warnings[0], warnings
        assert "taken" in process.tail(400)  # and in the log
    finally:
        await cluster.kube.delete(k.CONTENT, None, squatter)
    await cluster.delete_cache(name)
    await cluster.gone(name)


async def test_copies_are_made_before_pods_ask_and_failures_are_visible(
    cluster: Cluster, running: tuple[ControllerProcess, str, str]
) -> None:
    """Issue 10.1: spec.namespaces and namespaces labelled use-image-cache get a copy as soon
    as the cache is Ready, published in status.namespaces once ready; a namespace the copy
    cannot go to (404) is said in status, an Event and the log, and retried, never a crash."""
    process, ns, selector = running
    name = unique("early")
    listed = await cluster.namespace(unique("listed"))
    missing = unique("later")
    await cluster.cache(name, {"images": ["nginx:1"], "namespaces": [listed, missing]}, selector)
    await make_ready(cluster, ns, name, IMAGES, "h-early")
    copy = await _copy_of(cluster, name, listed)
    assert (await cluster.copy_entry(name, listed))["readyToUse"] is False
    await cluster.ready_copy(listed, copy["metadata"]["name"])
    await cluster.copy_entry(name, listed, ready=True)

    entry = await cluster.copy_entry(name, missing)
    assert entry["readyToUse"] is False
    assert f"namespace {missing} does not exist" in entry.get("message", ""), entry
    reasons = [(t, r) for t, r, _ in cluster.events(name)]
    assert ("Warning", "SnapshotCopyFailed") in reasons, reasons
    assert f"copy into namespace {missing}" in process.tail(400)
    # The namespace appears: the copy is made on a retry.
    await cluster.namespace(missing)
    await eventually(
        lambda: cluster.kube.find(k.SNAPSHOT, missing, entry["snapshotName"]),
        "copy once the namespace exists",
        within=90,
    )

    # Usable from every namespace now: one labelled for automatic caching gets its copy
    # without any pod.
    await cluster.kube.patch(k.IMAGECACHE, None, name, {"spec": {"namespaces": None}})
    labelled = unique("auto")
    await cluster.kube.create(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": labelled, "labels": {"imagecache.dev/use-image-cache": "auto"}},
        }
    )
    await _copy_of(cluster, name, labelled)
    await cluster.delete_cache(name)
    await cluster.gone(name)
    assert process.popen is not None and process.popen.poll() is None


async def test_a_pull_secret_outside_the_allowed_namespaces_is_refused(
    apiserver: Any, cluster: Cluster
) -> None:
    """Issue 10.4: with the product's default (the controller's namespace only), a cache that
    names another namespace's secret fails with the field and the fix named; no Job runs and
    the secret is never read. A secret in an allowed namespace still works."""
    own = await cluster.namespace(unique("imc-system"))
    await cluster.snapshot_class()
    allowed = await cluster.namespace(unique("allowed"))
    selector = f"test={unique('t')}"
    process = ControllerProcess(
        apiserver, own, selector, "--pull-secret-namespace", allowed, pull_secret_namespace=None
    ).start()
    try:
        for namespace in (allowed, "kube-system"):
            await cluster.pull_secret(namespace)
        mine = unique("mine")
        await cluster.cache(
            mine,
            {
                "images": ["registry.example/app:1"],
                "imagePullSecrets": ["kube-system/regcred", f"{allowed}/regcred"],
                "namespaces": [allowed, "mallory"],
            },
            selector,
        )
        failed = await cluster.phase(mine, "Failed", within=60)
        message = failed["status"]["message"]
        assert message.startswith(
            "spec.imagePullSecrets[0] kube-system/regcred: the controller may not read "
            "Secrets in namespace kube-system"
        ), message
        assert "controller.pullSecretNamespaces" in message
        built = next(c for c in failed["status"]["conditions"] if c["type"] == "Built")
        assert built["reason"] == "PullSecretNotAllowed"
        assert await cluster.owned(k.JOB, own, mine) == []
        assert await cluster.owned(k.SECRET, own, mine) == []
        assert ("Warning", "PullSecretNotAllowed") in [(t, r) for t, r, _ in cluster.events(mine)]

        ok = unique("ok")
        await cluster.cache(
            ok,
            {"images": ["registry.example/app:1"], "imagePullSecrets": [f"{allowed}/regcred"],
             "namespaces": [allowed, "mallory"]},
            selector,
        )  # fmt: skip
        await cluster.one(k.SECRET, own, ok, "the allowed pull secret copied")
        await make_ready(cluster, own, ok, [("registry.example/app:1", D1, 5)], "h-ok")
        await cluster.copy_entry(ok, allowed)
        # spec.namespaces may not widen the secret's namespaces: no copy for mallory.
        status = (await cluster.get_cache(ok) or {})["status"]
        assert [e["namespace"] for e in status["namespaces"]] == [allowed]
        for cache in (mine, ok):
            await cluster.delete_cache(cache)
            await cluster.gone(cache)
    finally:
        process.kill()
        await cluster.kube.delete(k.SECRET, "kube-system", "regcred")
