"""Issue 10's "Done when", end to end on the real apiserver and kube-controller-manager:
the webhook (`imagecache serve`, registered) and the controller (`imagecache controller`).

While the controller is stopped (SIGSTOP), pods that ask for a cache in a namespace that has
no copy yet are all admitted and none waits for imagecache: each one's cache claim either
does not exist or clones a VolumeSnapshot that is readyToUse. Once the controller resumes it
makes the copy; later pods in that namespace hit and their claims clone the ready copy.

What envtest lacks is played by the test, and only that: the kubelet (builder pod finished)
and the CSI snapshot controller (VolumeSnapshot and content marked ready).
"""

from __future__ import annotations

import base64
import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from controller_harness import Cluster, ControllerProcess, eventually, make_ready, unique
from envtest import ControlPlane
from test_webhook_apiserver import Webhook

from webhook.kube import client as k

pytestmark = pytest.mark.envtest
D1 = "sha256:" + "1" * 64
PODS = 6


@pytest.fixture
def webhook(apiserver: ControlPlane, tmp_path: Path) -> Iterator[tuple[Webhook, str]]:
    """`imagecache serve` registered for the namespaces labelled with this test's id only."""
    hook = Webhook(apiserver, tmp_path)
    hook.start()
    run = uuid.uuid4().hex[:6]
    name = f"imagecache-e2e-{run}"
    ca = base64.b64encode((hook.certs / "ca.crt").read_bytes()).decode()
    apiserver.apply(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "pods.imagecache.dev",
                    "clientConfig": {"url": f"https://127.0.0.1:{hook.port}/mutate",
                                     "caBundle": ca},
                    "rules": [{"apiGroups": [""], "apiVersions": ["v1"],
                               "operations": ["CREATE"], "resources": ["pods"],
                               "scope": "Namespaced"}],
                    "namespaceSelector": {"matchLabels": {"imagecache.dev/e2e": run}},
                    "failurePolicy": "Ignore",
                    "sideEffects": "None",
                    "timeoutSeconds": 3,
                    "reinvocationPolicy": "IfNeeded",
                    "admissionReviewVersions": ["v1"],
                }
            ],
        }
    )  # fmt: skip
    try:
        yield hook, run
    finally:
        hook.stop()
        apiserver.kubectl("delete", "mutatingwebhookconfiguration", name, check=False)


def _pod(cache: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "app-",
            "annotations": {"imagecache.dev/use-image-cache": cache},
        },
        "spec": {
            "automountServiceAccountToken": False,
            "containers": [{"name": "app", "image": "nginx:1"}],
        },
    }


def _create(plane: ControlPlane, namespace: str, cache: str) -> dict[str, Any]:
    out = plane.kubectl(
        "create", "-n", namespace, "-o", "json", "-f", "-", input=yaml.safe_dump(_pod(cache))
    )
    created: dict[str, Any] = json.loads(out.stdout)
    return created


def _cloned(pod: dict[str, Any]) -> str | None:
    for volume in pod["spec"].get("volumes") or []:
        template = (volume.get("ephemeral") or {}).get("volumeClaimTemplate")
        if volume["name"] == "imagecache" and template:
            return str(template["spec"]["dataSource"]["name"])
    return None


async def _ready_snapshot(cluster: Cluster, namespace: str, name: str) -> bool:
    try:
        snap = await cluster.kube.get(k.SNAPSHOT, namespace, name)
    except k.ApiError:
        return False
    return bool((snap.get("status") or {}).get("readyToUse"))


async def test_controller_down_never_leaves_a_pod_waiting_and_pods_hit_once_it_is_back(
    apiserver: ControlPlane, cluster: Cluster, webhook: tuple[Webhook, str]
) -> None:
    hook, run = webhook
    system = await cluster.namespace(unique("imc-system"))
    await cluster.snapshot_class()
    selector = f"test={unique('e2e')}"
    # No leader election: a process stopped longer than its lease would (rightly) give up.
    controller = ControllerProcess(apiserver, system, selector, "--no-leader-elect").start()
    stopped = False
    try:
        name = unique("e2e")
        await cluster.cache(name, {"images": ["nginx:1"]}, selector)
        await make_ready(cluster, system, name, [("docker.io/library/nginx:1", D1, 5)], "h-e2e")

        # The controller is stopped for the whole first part.
        controller.send(signal.SIGSTOP)
        stopped = True
        app = unique("app")
        apiserver.apply(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": app, "labels": {"imagecache.dev/e2e": run}},
            }
        )
        await cluster.namespace(app)
        pods = [_create(apiserver, app, name) for _ in range(PODS)]
        decisions = [p["metadata"].get("annotations", {}).get("imagecache.dev/decision")
                     for p in pods]  # fmt: skip
        assert decisions == ["unavailable"] * PODS, (decisions, hook.log.read_text()[-2000:])
        for pod in pods:
            snapshot = _cloned(pod)
            assert snapshot is None or await _ready_snapshot(cluster, app, snapshot), pod
        # The claims kube-controller-manager makes for them (if any) are provisionable.
        claims = await cluster.kube.list(k.PVC, app)
        for claim in claims.get("items") or []:
            source = claim["spec"].get("dataSource") or {}
            assert await _ready_snapshot(cluster, app, source.get("name", "")), claim

        # The controller resumes: it copies the snapshot to the namespace of those pods.
        controller.send(signal.SIGCONT)
        stopped = False
        entry = await cluster.copy_entry(name, app, within=60)
        assert entry["readyToUse"] is False
        await cluster.ready_copy(app, entry["snapshotName"])  # the snapshot controller
        entry = await cluster.copy_entry(name, app, ready=True, within=60)

        # Later pods hit, and their claims clone the ready copy.
        async def hits() -> dict[str, Any] | None:
            pod = _create(apiserver, app, name)
            decided = pod["metadata"].get("annotations", {}).get("imagecache.dev/decision")
            return pod if decided == "hit" else None

        later = await eventually(hits, "a later pod that hits", within=60)
        assert _cloned(later) == entry["snapshotName"]

        async def claim() -> dict[str, Any] | None:
            try:
                found: dict[str, Any] = await cluster.kube.get(
                    k.PVC, app, f"{later['metadata']['name']}-imagecache"
                )
            except k.ApiError:
                return None
            return found

        made = await eventually(claim, "the ephemeral claim of the later pod")
        assert made["metadata"]["labels"]["imagecache.dev/cache"] == name
        assert made["spec"]["dataSource"]["name"] == entry["snapshotName"]
        assert await _ready_snapshot(cluster, app, entry["snapshotName"])
        # Its claim clones the copy: the cache's deletion waits for it (issue 10.2).
        await cluster.delete_cache(name)

        async def deferred() -> bool:
            status = ((await cluster.get_cache(name)) or {}).get("status") or {}
            return "deleting once no claim clones" in status.get("message", "")

        await eventually(deferred, "deletion deferred while the claim clones")
        await cluster.bind_claim(app, made["metadata"]["name"])
        await cluster.gone(name, within=60)
    finally:
        if stopped:
            controller.send(signal.SIGCONT)
        controller.kill()
