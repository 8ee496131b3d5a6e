"""The controller against the real apiserver and controller-manager, from create to Ready to
expiry to deletion; the test plays kubelet and the snapshot controller."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from controller_harness import (
    DRIVER,
    Cluster,
    ControllerProcess,
    decided_pod,
    eventually,
    unique,
)

from webhook.controller.core import reconcile_names as rn
from webhook.kube import client as k

pytestmark = pytest.mark.envtest
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def _labels_of(cache: str) -> str:
    return rn.label_value(cache)


async def test_build_ready_copy_expire_delete(
    cluster: Cluster, running: tuple[ControllerProcess, str, str]
) -> None:
    process, ns, selector = running
    team = await cluster.namespace(unique("team"))
    await cluster.pull_secret(team)
    name = unique("web")
    spec: dict[str, Any] = {
        "images": ["registry.example/app:1", "nginx"],
        "imageCacheSize": 7,
        "imagePullSecrets": [f"{team}/regcred"],
        "platforms": ["linux/arm64"],
        "insecureRegistries": ["registry.example"],
    }
    await cluster.cache(name, spec, selector)

    # The build: pull secret copied, PVC of the requested size, hardened builder Job.
    job = await cluster.one(k.JOB, ns, name, "builder Job")
    pvc = await cluster.one(k.PVC, ns, name, "build PVC")
    secret = await cluster.one(k.SECRET, ns, name, "copied pull secret")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "7Gi"
    assert json.loads(base64.b64decode(secret["data"]["0.json"]))["auths"]["registry.example"]
    pod_spec = job["spec"]["template"]["spec"]
    container = pod_spec["containers"][0]
    assert container["resources"]["requests"] == {"cpu": "500m", "memory": "4Gi"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 600
    args = container["args"]
    assert args[:3] == ["build", "--name", name]
    assert args.count("--image") == 2 and "--serve-credentialed" not in args
    assert args[args.index("--platform") + 1] == "linux/arm64"
    assert args[args.index("--insecure-registry") + 1] == "registry.example"
    assert args[args.index("--pull-secret-file") + 1].endswith("/0.json")
    # Issue 10.10: the status is written after the Job; wait for it, never read it early.
    await cluster.phase(name, "Creating")

    # kubelet: the builder succeeded; the controller snapshots the disk.
    await cluster.build(
        ns,
        name,
        [
            ("registry.example/app:1", DIGEST_A, 1000),
            ("docker.io/library/nginx:latest", DIGEST_B, 2000),
        ],
    )
    snapshot = await cluster.one(k.SNAPSHOT, ns, name, "primary VolumeSnapshot")
    assert snapshot["spec"] == {
        "source": {"persistentVolumeClaimName": pvc["metadata"]["name"]},
        "volumeSnapshotClassName": "csi-snapclass",
    }
    # snapshot controller: ready.
    await cluster.ready_snapshot(snapshot, handle="snap-handle-1", restore_size="7Gi")
    ready = await cluster.phase(name, "Ready")
    status = ready["status"]
    assert status["snapshotName"] == snapshot["metadata"]["name"]
    assert status["restoreSize"] == "7Gi"
    assert status["images"] == [
        {"image": "registry.example/app:1", "digest": DIGEST_A, "size": 1000},
        {"image": "docker.io/library/nginx:latest", "digest": DIGEST_B, "size": 2000},
    ]
    assert status["imageCount"] == 2 and status["snapshotHandle"] == "snap-handle-1"
    assert "expireTime" not in status  # retentionDays unset: never

    # The build's Job, pods, PVC and Secret go once Ready.
    async def build_gone() -> bool:
        left = await cluster.leftovers(ns, name)
        return set(left) <= {"VolumeSnapshot", "VolumeSnapshotContent"}

    await eventually(build_gone, "build objects deleted")

    # A copy in the pull secret's namespace (the only one allowed) once a pod there asks.
    await cluster.kube.create(decided_pod(team, "user", "unavailable", name, labelled=True))
    entry = await cluster.copy_entry(name, team, ready=False)
    copy = await eventually(
        lambda: cluster.kube.find(k.SNAPSHOT, team, entry["snapshotName"]), "copy"
    )
    content = await cluster.kube.get(
        k.CONTENT, None, copy["spec"]["source"]["volumeSnapshotContentName"]
    )
    assert content["spec"]["source"] == {"snapshotHandle": "snap-handle-1"}
    assert content["spec"]["deletionPolicy"] == "Retain" and content["spec"]["driver"] == DRIVER
    assert content["spec"]["sourceVolumeMode"] == "Filesystem"
    assert content["spec"]["volumeSnapshotRef"]["namespace"] == team
    assert copy["metadata"]["ownerReferences"][0]["name"] == name
    await cluster.ready_copy(team, entry["snapshotName"], "7Gi")
    await cluster.copy_entry(name, team, ready=True)

    # `kubectl describe imc` tells the story.
    described = cluster.plane.kubectl("describe", "imc", name).stdout
    for step in ("BuildStarted", "Built", "Ready", "SnapshotCopied", "SnapshotCopyReady"):
        assert step in described.partition("Events:")[2], described

    # retentionDays: expireTime follows readyTime; once past, Expired and deleted.
    await cluster.kube.patch(k.IMAGECACHE, None, name, {"spec": {"retentionDays": 2}})

    async def expire_set() -> Any:
        obj = await cluster.get_cache(name)
        return (obj or {}).get("status", {}).get("expireTime")

    ready_time = datetime.fromisoformat(status["readyTime"].replace("Z", "+00:00"))
    expected = (ready_time + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert await eventually(expire_set, "expireTime") == expected
    # A pod's claim clones the copy (Pending: not provisioned yet).
    await cluster.claim(team, "user-imagecache", name, entry["snapshotName"])
    # Time travel: Ready three days ago. The claim still clones the copy: the cache waits for
    # it (in-use protection) until it is Bound.
    long_ago = (datetime.now(UTC) - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    await cluster.kube.patch(
        k.IMAGECACHE, None, name, {"status": {"readyTime": long_ago}}, subresource="status"
    )

    async def waiting() -> Any:
        obj = await cluster.get_cache(name)
        message = (obj or {}).get("status", {}).get("message", "")
        return "expired at" in message and f"claim {team}/user-imagecache" in message

    await eventually(waiting, "in-use protection message")
    assert await cluster.kube.find(k.SNAPSHOT, team, entry["snapshotName"]) is not None
    await cluster.bind_claim(team, "user-imagecache")
    try:
        await cluster.gone(name)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{process.tail(60)}") from None
    assert await cluster.leftovers(ns, name) == {}
    reasons = [reason for _, reason, _ in cluster.events(name)]
    for step in [
        "BuildStarted",
        "Built",
        "Ready",
        "BuildCleanedUp",
        "SnapshotCopied",
        "ExpiryDeferred",
        "Expired",
        "CleanedUp",
    ]:
        assert step in reasons, (step, reasons, process.tail())


@pytest.mark.parametrize(
    ("spec_extra", "outcome", "reason", "expected"),
    [
        pytest.param(
            {}, ("ImageNotFound", "manifest unknown: registry.example/app:1"), "ImageNotFound",
            "Check spec.images", id="image-not-found",
        ),
        pytest.param(
            {}, ("Unauthorized", "401 from registry.example"), "Unauthorized",
            "spec.imagePullSecrets as namespace/name (now: none)", id="unauthorized",
        ),
        pytest.param(
            {}, ("DiskFull", "needs 9.1 GiB, 7 GiB free"), "DiskFull",
            "the 7Gi cache disk is too small: set spec.imageCacheSize larger", id="disk-full",
        ),
        pytest.param(
            {"volumeSnapshotClassName": "nope"}, None, "SnapshotClassMissing",
            "VolumeSnapshotClass 'nope' does not exist", id="snapshot-class-missing",
        ),
        pytest.param(
            {"imagePullSecrets": ["nowhere/regcred"]}, None, "PullSecretMissing",
            "pull secret nowhere/regcred (spec.imagePullSecrets): no such Secret",
            id="pull-secret-missing",
        ),
        pytest.param(
            {"images": ["Registry.Example/App"]}, None, "InvalidSpec",
            "spec.images[0]: invalid image reference 'Registry.Example/App'", id="bad-reference",
        ),
        pytest.param(
            {}, "snapshot-error", "SnapshotFailed", "failed: driver said no. Check the CSI driver",
            id="snapshot-error",
        ),
    ],
)  # fmt: skip
async def test_failures_set_failed_with_what_to_do(
    cluster: Cluster,
    running: tuple[ControllerProcess, str, str],
    spec_extra: dict[str, Any],
    outcome: tuple[str, str] | str | None,
    reason: str,
    expected: str,
) -> None:
    process, ns, selector = running
    name = unique("bad")
    await cluster.cache(
        name, {"images": ["registry.example/app:1"], "imageCacheSize": 7, **spec_extra}, selector
    )
    if isinstance(outcome, tuple):
        await cluster.fail_build(ns, name, *outcome)
    elif outcome == "snapshot-error":
        await cluster.build(ns, name, [("registry.example/app:1", DIGEST_A, 10)])
        snapshot = await cluster.one(k.SNAPSHOT, ns, name, "primary VolumeSnapshot")
        await cluster.kube.patch(
            k.SNAPSHOT,
            ns,
            snapshot["metadata"]["name"],
            {"status": {"readyToUse": False, "error": {"message": "driver said no"}}},
            subresource="status",
        )
    failed = await cluster.phase(name, "Failed")
    assert expected in failed["status"]["message"], failed["status"]["message"]
    built = next(c for c in failed["status"]["conditions"] if c["type"] == "Built")
    assert built["reason"] == reason
    # A failed build leaves nothing running or holding a disk.
    try:
        await eventually(lambda: _clean(cluster, ns, name), "failed build cleaned up")
    except AssertionError as exc:
        left = await cluster.leftovers(ns, name)
        raise AssertionError(f"{exc}: {left}\n{process.tail(40)}") from None
    warnings = [(r, m) for t, r, m in cluster.events(name) if t == "Warning"]
    assert warnings == [(reason, failed["status"]["message"])], process.tail()
    await cluster.delete_cache(name)
    await cluster.gone(name)


async def _clean(cluster: Cluster, ns: str, name: str) -> bool:
    return await cluster.leftovers(ns, name) == {}


async def test_a_builder_that_cannot_run_says_why_and_what_to_do(
    cluster: Cluster, running: tuple[ControllerProcess, str, str]
) -> None:
    """Issue 12 ("already seen" 1): a builder pod no node fits, or whose image cannot be
    pulled, shows in status and a Warning Event instead of "is pulling the images". The
    test plays the scheduler and kubelet by writing the pod's status."""
    process, ns, selector = running
    name = unique("stuck")
    await cluster.cache(name, {"images": ["registry.example/app:1"], "imageCacheSize": 5}, selector)
    pod = await cluster.builder_pod(ns, name)
    meta = pod["metadata"]
    unschedulable = {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient cpu.",
            }
        ],
    }
    await cluster.kube.patch(
        k.POD, ns, meta["name"], {"status": unschedulable}, subresource="status"
    )

    async def says(text: str) -> Any:
        status = ((await cluster.get_cache(name)) or {}).get("status") or {}
        return status if text in status.get("message", "") else None

    status = await eventually(lambda: says("cannot be scheduled"), "unschedulable builder")
    assert "Insufficient cpu" in status["message"] and "builder.cpu" in status["message"]
    assert status["phase"] == "Creating"
    built = next(c for c in status["conditions"] if c["type"] == "Built")
    assert built["reason"] == "BuilderUnschedulable"

    pulling = {
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "True"}],
        "containerStatuses": [
            {
                "name": pod["spec"]["containers"][0]["name"],
                "image": pod["spec"]["containers"][0]["image"],
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {
                    "waiting": {
                        "reason": "ImagePullBackOff",
                        "message": 'Back-off pulling image "registry.example/imagecache:test"',
                    }
                },
            }
        ],
    }
    await cluster.kube.patch(k.POD, ns, meta["name"], {"status": pulling}, subresource="status")
    status = await eventually(lambda: says("cannot pull its image"), "image pull failing builder")
    assert "builder.image" in status["message"]
    warnings = [r for t, r, _ in cluster.events(name) if t == "Warning"]
    assert {"BuilderUnschedulable", "BuilderImagePullFailed"} <= set(warnings), warnings

    # It can run after all: the build goes on as usual.
    await cluster.build(ns, name, [("registry.example/app:1", DIGEST_A, 10)])
    snapshot = await cluster.one(k.SNAPSHOT, ns, name, "primary VolumeSnapshot")
    await cluster.ready_snapshot(snapshot, handle="h-stuck")
    await cluster.phase(name, "Ready")
    await cluster.delete_cache(name)
    await cluster.gone(name)
    assert "Traceback" not in process.tail(400)
