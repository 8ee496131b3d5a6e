"""Controller benchmark against a real apiserver + controller-manager (envtest).

N ImageCaches are reconciled to Ready (this process plays kubelet and the snapshot controller),
then M pods with webhook decisions get their Events; the controller's API requests are
counted by verb. Then (--rss-pods, default 20,000) that many more decided pods are created and
a fresh `imagecache controller` process is started on the cluster: its resident memory
(VmRSS once it has written every pod's Event, and its peak VmHWM) is what a controller
restarted in a big cluster needs. Usage:

    KUBEBUILDER_ASSETS=$PWD/.envtest .venv/bin/python bench/controller_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from controller_harness import scrape_metrics  # noqa: E402
from envtest import control_plane, free_port  # noqa: E402

from webhook.controller.controller import Controller  # noqa: E402
from webhook.controller.core import reconcile_names as rn  # noqa: E402
from webhook.controller.core.reconcile_model import Settings  # noqa: E402
from webhook.core.build_result import encode_build_result  # noqa: E402
from webhook.kube import client as k  # noqa: E402
from webhook.kube.client import ApiError, Kube, load_configuration  # noqa: E402

NS = "imagecache-system"
APP = "bench-app"
DIGEST = "sha256:" + "b" * 64


async def gather_limited(limit: int, coros: list[Any]) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def one(coro: Any) -> None:
        async with semaphore:
            try:
                await coro
            except ApiError as exc:
                if exc.status not in (404, 409):
                    raise

    await asyncio.gather(*(one(c) for c in coros))


async def play_kubelet(kube: Kube, stop: asyncio.Event) -> None:
    """Builder pods succeed at once with a one-image result."""
    done: set[str] = set()
    message = encode_build_result([("docker.io/library/nginx:latest", DIGEST, 1000)], 1000)
    while not stop.is_set():
        listed = await kube.list(k.POD, NS, rn.BUILD_OF_LABEL)
        todo = [p for p in listed["items"] if p["metadata"]["uid"] not in done]
        patches = []
        for pod in todo:
            done.add(pod["metadata"]["uid"])
            status = {"phase": "Succeeded", "containerStatuses": [{
                "name": "builder", "image": "x", "imageID": "", "ready": False,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                         "message": message}}}]}  # fmt: skip
            name = pod["metadata"]["name"]
            patches.append(kube.patch(k.POD, NS, name, {"status": status}, subresource="status"))
        await gather_limited(16, patches)
        await asyncio.sleep(0.5)


async def play_snapshot_controller(kube: Kube, stop: asyncio.Event) -> None:
    """Primary snapshots get a content and become ready."""
    done: set[str] = set()
    while not stop.is_set():
        listed = await kube.list(k.SNAPSHOT, NS, f"{rn.COMPONENT_LABEL}={rn.PRIMARY}")
        work = []
        for snap in listed["items"]:
            meta = snap["metadata"]
            if meta["uid"] in done:
                continue
            done.add(meta["uid"])
            work.append(_ready(kube, meta))
        await gather_limited(16, work)
        await asyncio.sleep(0.5)


async def _ready(kube: Kube, meta: dict[str, Any]) -> None:
    content = f"snapcontent-{meta['uid']}"
    await kube.create({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
        "metadata": {"name": content},
        "spec": {"deletionPolicy": "Delete", "driver": "bench.csi",
                 "source": {"volumeHandle": "v"},
                 "volumeSnapshotRef": {"name": meta["name"], "namespace": NS}}})  # fmt: skip
    await kube.patch(k.CONTENT, None, content,
                     {"status": {"snapshotHandle": f"h-{meta['uid']}", "readyToUse": True}},
                     subresource="status")  # fmt: skip
    await kube.patch(k.SNAPSHOT, NS, meta["name"],
                     {"status": {"boundVolumeSnapshotContentName": content, "readyToUse": True,
                                 "restoreSize": "20Gi"}}, subresource="status")  # fmt: skip


async def count_ready(kube: Kube) -> int:
    listed = await kube.list(k.IMAGECACHE)
    return sum(1 for c in listed["items"] if (c.get("status") or {}).get("phase") == "Ready")


async def bench(kubeconfig: str, caches: int, pods: int, rss_pods: int) -> dict[str, Any]:
    tester = Kube(await load_configuration(kubeconfig))
    mine = Kube(await load_configuration(kubeconfig))
    for name in (NS, APP):
        await tester.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    await tester.create({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
                         "metadata": {"name": "bench"}, "driver": "bench.csi",
                         "deletionPolicy": "Delete"})  # fmt: skip
    while True:  # the default ServiceAccount (pods need it) comes from the controller-manager
        try:
            await tester.request("GET", f"/api/v1/namespaces/{APP}/serviceaccounts/default")
            break
        except ApiError:
            await asyncio.sleep(0.2)
    settings = Settings(namespace=NS, builder_image="bench", snapshot_class="bench",
                        backoff_limit=0, in_use_grace_seconds=0)  # fmt: skip
    controller = Controller(mine, settings, workers=8, status_batch_seconds=1.0)
    stop = asyncio.Event()
    helpers = [
        asyncio.create_task(controller.run(stop)),
        asyncio.create_task(play_kubelet(tester, stop)),
        asyncio.create_task(play_snapshot_controller(tester, stop)),
    ]
    result: dict[str, Any] = {"caches": caches, "pods": pods}
    try:
        start = time.monotonic()
        await gather_limited(16, [
            tester.create({"apiVersion": "imagecache.dev/v1alpha1", "kind": "ImageCache",
                           "metadata": {"name": f"bench-{n}"},
                           "spec": {"images": [f"nginx:{n}"], "imageCacheSize": 1}})
            for n in range(caches)
        ])  # fmt: skip
        while True:
            if await count_ready(tester) >= caches:
                break
            await asyncio.sleep(1)
        ready_seconds = time.monotonic() - start
        # Build objects are gone once all are Ready (a pass after Ready cleans up).
        while True:
            if not (await tester.list(k.JOB, NS))["items"]:
                break
            await asyncio.sleep(1)
        settled = time.monotonic() - start
        build_requests = Counter(mine.requests)
        result.update(
            ready_seconds=round(ready_seconds, 1),
            settled_seconds=round(settled, 1),
            requests_to_ready=dict(build_requests),
            requests_per_cache=round(sum(build_requests.values()) / caches, 1),
            reconciles_per_cache=round(controller.reconcile_count / caches, 1),
        )

        # The pods use 10 caches: lastMatchedTime is then written per cache and batch, not
        # per pod, and 10 copies are made in the pods' namespace.
        used = min(caches, 10)
        start = time.monotonic()
        await gather_limited(16, [
            tester.create({"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": f"p{n}", "namespace": APP,
                                        "labels": {"imagecache.dev/cache": f"bench-{n % used}",
                                                   "imagecache.dev/decision": "hit"},
                                        "annotations": {"imagecache.dev/decision": "hit",
                                                        "imagecache.dev/cache":
                                                            f"bench-{n % used}"}},
                           "spec": {"automountServiceAccountToken": False,
                                    "containers": [{"name": "c", "image": "nginx"}]}})
            for n in range(pods)
        ])  # fmt: skip
        created = time.monotonic() - start
        while True:
            events = await tester.list(k.EVENT, APP)
            ours = [e for e in events["items"] if e.get("reason") == "ImageCacheHit"]
            if len(ours) >= pods:
                break
            await asyncio.sleep(0.5)
        events_seconds = time.monotonic() - start
        copies = used
        while True:
            listed = await tester.list(k.SNAPSHOT, APP)
            if len(listed["items"]) >= copies:
                break
            await asyncio.sleep(0.5)
        copies_seconds = time.monotonic() - start
        await asyncio.sleep(2 * controller.status_batch_seconds)  # lastMatchedTime batch
        pod_requests = Counter(mine.requests) - build_requests
        matched = sum(
            1
            for c in (await tester.list(k.IMAGECACHE))["items"]
            if (c.get("status") or {}).get("lastMatchedTime")
        )
        result.update(
            pod_create_seconds=round(created, 1),
            pod_events_seconds=round(events_seconds, 1),
            copies=copies,
            caches_with_last_matched_time=matched,
            copies_seconds=round(copies_seconds, 1),
            requests_for_pods=dict(pod_requests),
            requests_per_pod=round(sum(pod_requests.values()) / max(1, pods), 2),
        )
    finally:
        stop.set()
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        await mine.close()
    try:
        if rss_pods:
            result.update(await controller_memory(kubeconfig, tester, rss_pods, used, pods))
    finally:
        await tester.close()
    return result


def decided_pod(n: int, cache: str) -> dict[str, Any]:
    """A pod as a Deployment makes it and the webhook decides it (hit, pinned): a few labels
    and annotations, env, resources, probes, the cache volume; the apiserver adds
    managedFields. About 4 KB of JSON, as a small real pod."""
    labels = {"app": "shop", "pod-template-hash": "5d8f7c9b4", "tier": "web",
              "imagecache.dev/cache": cache, "imagecache.dev/decision": "hit"}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": f"shop-5d8f7c9b4-{n:06d}", "namespace": APP, "labels": labels,
            "annotations": {
                "imagecache.dev/decision": "hit", "imagecache.dev/cache": cache,
                "imagecache.dev/pinned-images": json.dumps({"web": "nginx:1.25"}),
                "kubectl.kubernetes.io/restartedAt": "2026-12-01T10:00:00Z",
                "prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
        },
        "spec": {
            "automountServiceAccountToken": False,
            "containers": [{
                "name": "web", "image": f"nginx:1.25@{DIGEST}",
                "ports": [{"containerPort": 8080, "name": "http"}],
                "env": [{"name": f"SETTING_{i}", "value": f"value-{i}-" + "x" * 24}
                        for i in range(8)],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                              "limits": {"memory": "256Mi"}},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
                "livenessProbe": {"httpGet": {"path": "/live", "port": 8080}},
                "volumeMounts": [{"name": "imagecache", "mountPath": "/var/lib/imagecache",
                                  "readOnly": True}],
            }],
            "volumes": [{"name": "imagecache", "ephemeral": {"volumeClaimTemplate": {"spec": {
                "accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                "resources": {"requests": {"storage": "20Gi"}},
                "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                               "name": f"imagecache-{cache}"}}}}}],
        },
    }  # fmt: skip


def memory_of(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


async def _metric(port: int, name: str) -> float | None:
    text = await scrape_metrics(port)
    if text is None:
        return None
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name)]
    return sum(values) if values else None


async def controller_memory(kubeconfig: str, tester: Kube, pods: int, used: int,
                            first: int) -> dict[str, Any]:
    """Create `pods` decided pods (on `used` caches), start `imagecache controller` as its own
    process, and measure its memory once it has caught up with every pod."""
    start = time.monotonic()
    await gather_limited(32, [
        tester.create(decided_pod(first + n, f"bench-{n % used}")) for n in range(pods)
    ])  # fmt: skip
    created = time.monotonic() - start
    port = free_port()
    argv = [sys.executable, "-c",
            "import sys; from webhook.controller.command import main; sys.exit(main(sys.argv[1:]))",
            "--kubeconfig", kubeconfig, "--namespace", NS, "--builder-image", "bench",
            "--snapshot-class", "bench", "--listen", f"127.0.0.1:{port}",
            "--identity", "bench-rss", "--log-level", "WARNING"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = Path(tempfile.mkdtemp(prefix="controller-bench-")) / "controller.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(*argv, env=env, stderr=out)
    start = time.monotonic()
    rss = peak = 0.0
    try:
        # Wait until the controller has listed every pod and written the Event of each new
        # one (the older pods' Events exist: 409, not counted), then for its memory to settle.
        while (await _metric(port, "imagecache_pod_events_total") or 0) < pods:
            await asyncio.sleep(1)
            if process.returncode is not None:
                raise RuntimeError(
                    f"the controller exited with {process.returncode} after {rss:.0f} MiB "
                    f"resident (peak {peak:.0f} MiB); its log: {log}"
                )
            with contextlib.suppress(OSError, KeyError):  # gone meanwhile: the check above
                rss, peak = memory_of(process.pid)
        await asyncio.sleep(3)
        settled = time.monotonic() - start
        rss, peak = memory_of(process.pid)
        return {
            "rss_pods_created": pods,
            "rss_pods_create_seconds": round(created, 1),
            "rss_settle_seconds": round(settled, 1),
            "controller_rss_mib": round(rss, 1),
            "controller_peak_rss_mib": round(peak, 1),
            "controller_api_requests": await _metric(port, "imagecache_api_requests_total"),
            "controller_log": str(log),
        }
    finally:
        if process.returncode is None:
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100 caches and 100 pods")
    parser.add_argument("--caches", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--rss-pods", type=int, default=20000,
                        help="decided pods for the controller process's memory (0: skip)")
    args = parser.parse_args()
    if args.quick:
        args.caches, args.pods, args.rss_pods = 100, 100, 1000
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if not assets:
        print("KUBEBUILDER_ASSETS is not set: run hack/envtest-setup.sh", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    with control_plane(Path(assets)) as plane:
        result = asyncio.run(
            bench(str(plane.kubeconfig), args.caches, args.pods, args.rss_pods)
        )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
