"""Which cache disks the snapshotter may take layers from
(webhook.snapshotter.core.disk_origin): the
pure rules over the API objects behind a volume, as the webhook, the controller and the
kubelet make them. tests/test_snapshotter_origin.py runs the same through the real apiserver
and containerd."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from webhook.snapshotter.core.disk_origin import (
    CONTENT,
    POD,
    PV,
    PVC,
    SNAPSHOT,
    Read,
    Verdict,
    Volume,
    judge,
    shared_volumes,
    volume_of,
)

UID = "5214cf4b-2e59-4c55-8c73-bb3dcb64acb9"
PV_NAME = "pvc-0b4b0c2e-7f0e-4f0a-9d59-2b1f1c9a0001"
NS = "team-a"
CTRL = "imagecache-system"
MANAGED = {"app.kubernetes.io/managed-by": "imagecache-controller"}


def objects() -> dict[str, Any]:
    """A pod's cache clone as it is on a cluster: what the webhook, the ephemeral volume
    controller, the CSI provisioner and the imagecache controller make."""
    return {
        PV: {"metadata": {"name": PV_NAME},
             "spec": {"claimRef": {"namespace": NS, "name": "web-imagecache", "uid": "c1"}}},
        PVC: {"metadata": {"name": "web-imagecache", "namespace": NS, "uid": "c1",
                           "labels": {"imagecache.dev/cache": "base"},
                           "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "web",
                                                "uid": UID, "controller": True}]},
              "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": PV_NAME,
                       "dataSource": {"apiGroup": "snapshot.storage.k8s.io",
                                      "kind": "VolumeSnapshot", "name": "imagecache-base-1"}}},
        POD: {"metadata": {"name": "web", "namespace": NS, "uid": UID},
              "spec": {"volumes": [{"name": "imagecache", "ephemeral": {}}],
                       "containers": [{"name": "app", "volumeMounts": [
                           {"name": "imagecache", "mountPath": "/var/lib/imagecache",
                            "readOnly": True}]}, {"name": "side"}]}},
        SNAPSHOT: {"metadata": {"name": "imagecache-base-1", "namespace": NS},
                   "status": {"boundVolumeSnapshotContentName": "imagecache-base-9f"}},
        CONTENT: {"metadata": {"name": "imagecache-base-9f", "labels": dict(MANAGED)},
                  "spec": {"volumeSnapshotRef": {"namespace": NS,
                                                 "name": "imagecache-base-1"}}},
    }


VOLUME = Volume(UID, "kubernetes.io~csi", PV_NAME)


def run(objs: dict[str, Any], volume: Volume = VOLUME, ctrl: str = CTRL) -> Verdict:
    """judge step by step, answering each read from `objs` (absent: it does not exist), as
    the shell does; the reads must name the objects the previous ones point at."""
    facts: dict[str, Any] = {}
    for _ in range(8):
        step = judge(volume, facts, ctrl)
        if isinstance(step, Verdict):
            return step
        assert isinstance(step, Read)
        obj = objs.get(step.kind)
        if obj is not None:
            meta = obj["metadata"]
            assert (meta.get("namespace", ""), meta["name"]) == (step.namespace, step.name)
        facts[step.kind] = obj
    raise AssertionError("judge kept asking")


def test_the_webhooks_clone_of_the_controllers_snapshot_is_trusted() -> None:
    verdict = run(objects())
    assert verdict.trusted, verdict.reason
    assert "imagecache-base-1" in verdict.reason


def edited(path: str, value: Any) -> dict[str, Any]:
    """objects() with one field set (None: removed); path like "pvc.spec.accessModes"."""
    objs = copy.deepcopy(objects())
    *keys, last = path.split(".")
    target = objs
    for key in keys:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is None:
        del target[last]
    else:
        target[last] = value
    return objs


@pytest.mark.parametrize(("path", "value", "why"), [
    ("pv", None, "no PersistentVolume"),
    ("pv.spec.claimRef", None, "bound to no claim"),
    ("pvc", None, "does not exist"),
    ("pvc.spec.volumeName", "pvc-other", "not bound to each other"),
    ("pvc.metadata.uid", "c2", "not bound to each other"),
    ("pvc.spec.accessModes", ["ReadWriteMany"], "several nodes"),
    ("pvc.metadata.ownerReferences", None, "not the ephemeral volume"),
    ("pvc.metadata.ownerReferences.0.uid", "someone-else", "not the ephemeral volume"),
    ("pod", None, "does not exist"),
    ("pod.metadata.uid", "someone-else", "not the pod"),
    ("pod.spec.containers.0.volumeMounts.0.readOnly", False, "container app mounts it writable"),
    ("pod.spec.containers.1.volumeMounts", [{"name": "imagecache", "mountPath": "/w"}],
     "container side mounts it writable"),
    ("pod.spec.volumes", [{"name": "other", "ephemeral": {}}], "no volume for claim"),
    ("pod.spec.volumes", [{"name": "imagecache", "ephemeral": {}},
                          {"name": PV_NAME, "emptyDir": {}}], "named like the PV"),
    ("pvc.spec.dataSource", None, "not cloned from a VolumeSnapshot"),
    ("pvc.spec.dataSource.kind", "PersistentVolumeClaim", "not cloned from a VolumeSnapshot"),
    ("snapshot", None, "does not exist"),
    ("snapshot.status", None, "bound to no content"),
    ("content", None, "does not exist"),
    # A tenant's own snapshot (its content made by the snapshot controller, not ours), even
    # with our labels forged on the snapshot and the claim.
    ("content.metadata.labels", {}, "not made by the imagecache controller"),
    ("content.spec.volumeSnapshotRef.namespace", "team-b", "belongs to another snapshot"),
])  # fmt: skip
def test_anything_else_is_refused_with_the_reason(path: str, value: Any, why: str) -> None:
    verdict = run(edited(path, value))
    assert not verdict.trusted
    assert why in verdict.reason


def test_a_cross_namespace_data_source_is_refused() -> None:
    objs = edited("pvc.spec.dataSourceRef", {"apiGroup": "snapshot.storage.k8s.io",
                                             "kind": "VolumeSnapshot", "name": "x",
                                             "namespace": "team-b"})
    assert "of its namespace" in run(objs).reason


def in_controller_namespace() -> dict[str, Any]:
    objs = objects()
    for kind in (PVC, POD, SNAPSHOT):
        objs[kind]["metadata"]["namespace"] = CTRL
    objs[PV]["spec"]["claimRef"]["namespace"] = CTRL
    objs[CONTENT]["spec"]["volumeSnapshotRef"]["namespace"] = CTRL
    return objs


def test_the_controllers_own_namespace_builder_disk_and_primary() -> None:
    # The builder's disk: the controller's claim in its namespace (tenants write nothing there).
    objs = in_controller_namespace()
    objs[PVC]["metadata"]["labels"] = dict(MANAGED)
    del objs[PVC]["spec"]["dataSource"]
    assert run(objs).trusted
    assert not run(objs, ctrl="").trusted  # unknown controller namespace: not that rule
    # A pod of that namespace cloning the primary (its content is dynamic, unlabelled).
    objs = in_controller_namespace()
    objs[SNAPSHOT]["metadata"]["labels"] = dict(MANAGED)
    del objs[CONTENT]
    assert run(objs).trusted
    # The same in a tenant's namespace needs our content: labels on a snapshot are forgeable.
    objs = edited("snapshot.metadata.labels", dict(MANAGED))
    objs[CONTENT]["metadata"]["labels"] = {}
    assert not run(objs).trusted


@pytest.mark.parametrize(("path", "volume"), [
    (f"{UID}/volumes/kubernetes.io~csi/{PV_NAME}/mount", VOLUME),
    (f"{UID}/volumes/kubernetes.io~local-volume/{PV_NAME}",
     Volume(UID, "kubernetes.io~local-volume", PV_NAME)),
    (f"{UID}/volumes/kubernetes.io~empty-dir/{PV_NAME}", None),  # named by the pod's author
    (f"{UID}/volumes/kubernetes.io~host-path/x", None),
    (f"{UID}/volumes/kubernetes.io~csi/{PV_NAME}", None),  # a CSI volume's content is mount/
    (f"{UID}/volumes/kubernetes.io~csi/{PV_NAME}/mount/deeper", None),
    (f"{UID}/plugins/kubernetes.io~csi/{PV_NAME}/mount", None),
    ("cache-disk", None),  # found by --depth, outside the kubelet's layout
    (f"../volumes/kubernetes.io~local-volume/{PV_NAME}", None),
])  # fmt: skip
def test_only_the_kubelets_mount_of_a_persistent_volume_has_an_origin(
        path: str, volume: Volume | None) -> None:
    assert volume_of(path) == volume


def test_a_pv_mounted_by_two_pods_is_shared() -> None:
    other = Volume("another-pod", "kubernetes.io~csi", PV_NAME)
    lone = Volume(UID, "kubernetes.io~csi", "pvc-lone")
    assert shared_volumes([VOLUME, other, lone]) == {PV_NAME}
    assert shared_volumes([VOLUME, VOLUME, lone]) == frozenset()
