"""Operating the controller: SIGKILL mid-build and restart, two controllers and one leader,
auto-sizing, the build deadline, /healthz and /metrics; against the real apiserver."""

from __future__ import annotations

import time

import aiohttp
import pytest
from controller_harness import (
    Cluster,
    ControllerProcess,
    eventually,
    make_ready,
    scrape_metrics,
    unique,
)
from envtest import ControlPlane

from webhook.controller.core import reconcile_names as rn
from webhook.core.build_result import encode_build_result
from webhook.kube import client as k

pytestmark = pytest.mark.envtest
D1 = "sha256:" + "1" * 64
GIB = 1024**3


@pytest.fixture
async def setup(cluster: Cluster) -> tuple[str, str]:
    namespace = await cluster.namespace(unique("imc-system"))
    await cluster.snapshot_class()
    return namespace, f"test={unique('t')}"


async def metric(process: ControllerProcess, name: str) -> float | None:
    text = await scrape_metrics(process.port)
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    return None


async def test_sigkill_mid_build_and_restart_ends_in_the_same_state(
    apiserver: ControlPlane, cluster: Cluster, setup: tuple[str, str]
) -> None:
    ns, selector = setup
    name = unique("kill")
    first = ControllerProcess(apiserver, ns, selector).start()
    await cluster.cache(name, {"images": ["nginx"], "imageCacheSize": 3}, selector)
    await cluster.one(k.JOB, ns, name, "builder Job")

    async def announced() -> bool:  # the Event follows the Job: killed before it, none
        return "BuildStarted" in [reason for _, reason, _ in cluster.events(name)]

    await eventually(announced, "the BuildStarted Event")
    first.kill()  # SIGKILL: no lease release, no cleanup
    # The build finishes while no controller runs.
    pod = await cluster.builder_pod(ns, name)
    result = encode_build_result([("docker.io/library/nginx:latest", D1, 9)], 9)
    await cluster.finish_pod(pod, result, succeeded=True)

    second = ControllerProcess(apiserver, ns, selector).start()
    try:
        snapshot = await cluster.one(k.SNAPSHOT, ns, name, "primary snapshot after restart")
        second.kill()  # and once more, between snapshot and Ready
        await cluster.ready_snapshot(snapshot, "h-kill", "3Gi")
        third = ControllerProcess(apiserver, ns, selector).start()
        try:
            ready = await cluster.phase(name, "Ready", within=40)
            assert ready["status"]["snapshotHandle"] == "h-kill"
            assert len(await cluster.owned(k.SNAPSHOT, ns, name)) == 1
            builds = [e for e in cluster.events(name) if e[1] in ("BuildStarted", "Built", "Ready")]
            assert [r for _, r, _ in builds].count("BuildStarted") == 1, builds
            await cluster.delete_cache(name)
            try:
                await cluster.gone(name)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{third.tail(80)}") from None
            assert await cluster.leftovers(ns, name) == {}
        finally:
            third.kill()
    finally:
        second.kill()


async def test_two_controllers_one_leader_and_takeover(
    apiserver: ControlPlane, cluster: Cluster, setup: tuple[str, str]
) -> None:
    ns, selector = setup
    a = ControllerProcess(apiserver, ns, selector).start()
    b = ControllerProcess(apiserver, ns, selector).start()
    try:

        async def one_leader() -> tuple[ControllerProcess, ControllerProcess] | None:
            la, lb = await metric(a, "imagecache_leader"), await metric(b, "imagecache_leader")
            if {la, lb} == {0.0, 1.0}:
                return (a, b) if la == 1.0 else (b, a)
            return None

        leader, standby = await eventually(one_leader, "exactly one leader")
        name = unique("ha")
        await cluster.cache(name, {"images": ["nginx"]}, selector)
        await cluster.one(k.JOB, ns, name, "builder Job")
        # The standby does nothing: only the leader made API writes for the cache.
        assert await metric(standby, "imagecache_reconcile_total") == 0.0
        lease = await cluster.kube.get(k.LEASE, ns, "imagecache-controller")
        duration = lease["spec"]["leaseDurationSeconds"]

        leader.kill()
        killed = time.monotonic()

        async def took_over() -> bool:
            return await metric(standby, "imagecache_leader") == 1.0

        await eventually(took_over, "standby takes over", within=duration + 10)
        takeover = time.monotonic() - killed
        assert takeover < duration + 3, takeover
        await make_ready(cluster, ns, name, [("docker.io/library/nginx:latest", D1, 9)], "h-ha")
        await cluster.delete_cache(name)
        await cluster.gone(name)
        assert await cluster.leftovers(ns, name) == {}
    finally:
        a.kill()
        b.kill()


async def test_auto_size_measures_the_images_first(
    apiserver: ControlPlane, cluster: Cluster, setup: tuple[str, str]
) -> None:
    ns, selector = setup
    process = ControllerProcess(apiserver, ns, selector).start()
    try:
        name = unique("auto")
        await cluster.cache(name, {"images": ["nginx"], "imageCacheSize": 0}, selector)
        sizer = await cluster.one(k.JOB, ns, name, "sizing Job")
        assert sizer["metadata"]["labels"][rn.COMPONENT_LABEL] == rn.SIZER
        assert "--resolve-only" in sizer["spec"]["template"]["spec"]["containers"][0]["args"]
        assert await cluster.owned(k.PVC, ns, name) == []  # no disk before the size is known
        pod = await cluster.builder_pod(ns, name, rn.SIZER)
        total = 5 * GIB  # x 1.3 + 1 = 7.5 -> 8Gi
        message = encode_build_result([("docker.io/library/nginx:latest", D1, total)], total)
        await cluster.finish_pod(pod, message, succeeded=True)
        pvc = await cluster.one(k.PVC, ns, name, "build PVC")
        assert pvc["spec"]["resources"]["requests"]["storage"] == "8Gi"
        await make_ready(
            cluster, ns, name, [("docker.io/library/nginx:latest", D1, total)], "h-auto", "8Gi"
        )

        async def sizer_gone() -> bool:
            jobs = await cluster.owned(k.JOB, ns, name)
            return not jobs

        await eventually(sizer_gone, "sizing and build Jobs deleted")
        await cluster.delete_cache(name)
        await cluster.gone(name)
    finally:
        process.kill()


async def test_build_deadline_fails_with_what_to_do(
    apiserver: ControlPlane, cluster: Cluster, setup: tuple[str, str]
) -> None:
    ns, selector = setup
    process = ControllerProcess(apiserver, ns, selector, "--build-deadline", "2").start()
    try:
        name = unique("slow")
        await cluster.cache(name, {"images": ["nginx"]}, selector)
        failed = await cluster.phase(name, "Failed", within=40)
        message = failed["status"]["message"]
        assert "did not finish within 2s" in message and "--build-deadline" in message
        await cluster.delete_cache(name)
        await cluster.gone(name)
        assert await cluster.leftovers(ns, name) == {}
    finally:
        process.kill()


async def test_healthz_metrics_and_bad_arguments(
    apiserver: ControlPlane, cluster: Cluster, setup: tuple[str, str]
) -> None:
    ns, selector = setup
    process = ControllerProcess(apiserver, ns, selector).start()
    try:

        async def healthz() -> int | None:
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"http://127.0.0.1:{process.port}/healthz") as response,
                ):
                    return response.status
            except aiohttp.ClientError:
                return None

        assert await eventually(healthz, "/healthz") == 200

        async def leading() -> bool:  # 0.0 until the Lease is ours: wait for 1, not for any
            return await metric(process, "imagecache_leader") == 1.0

        await eventually(leading, "leader")
        ready = await eventually(
            lambda: metric(process, 'imagecache_caches{phase="Ready"}'), "phase gauge"
        )
        assert ready == 0.0  # this controller's selector matches no cache
    finally:
        assert process.kill() is not None

    from webhook.controller.command import main

    assert main(["--namespace", ns]) == 2  # no builder image: says so, no traceback
