"""Manifests of snapshots: the primary VolumeSnapshot of a build disk, and the
pre-provisioned VolumeSnapshotContent + VolumeSnapshot pair that copies it into a namespace
(DESIGN.md, "Snapshot copies across namespaces")."""

from __future__ import annotations

from webhook.core import names
from webhook.core import reconcile_names as rn
from webhook.core.manifests_build import owner_reference
from webhook.core.reconcile_model import Cache, Obj

SNAPSHOT_API = f"{names.SNAPSHOT_GROUP}/v1"


def primary_snapshot(
    cache: Cache, namespace: str, bid: str, snapshot_class: str | None, result: str
) -> Obj:
    """`result`: the builder's termination message, kept on the snapshot so that status can
    be filled from it when the snapshot is ready (the build pod is gone by then)."""
    spec: Obj = {"source": {"persistentVolumeClaimName": rn.pvc_name(cache.name, bid)}}
    if snapshot_class:
        spec["volumeSnapshotClassName"] = snapshot_class
    return {
        "apiVersion": SNAPSHOT_API,
        "kind": "VolumeSnapshot",
        "metadata": {
            "name": rn.primary_name(cache.name, bid),
            "namespace": namespace,
            "labels": rn.labels(cache.name, rn.PRIMARY, bid),
            "annotations": {rn.CACHE_ANNOTATION: cache.name, rn.RESULT_ANNOTATION: result},
            "ownerReferences": [owner_reference(cache)],
        },
        "spec": spec,
    }


def copy_content(
    cache: Cache,
    namespace: str,
    bid: str,
    handle: str,
    driver: str,
    snapshot_class: str | None,
) -> Obj:
    spec: Obj = {
        "deletionPolicy": "Retain",  # only the primary's content deletes the real snapshot
        "driver": driver,
        "source": {"snapshotHandle": handle},
        "volumeSnapshotRef": {"name": rn.copy_name(cache.name), "namespace": namespace},
    }
    if snapshot_class:
        spec["volumeSnapshotClassName"] = snapshot_class
    return {
        "apiVersion": SNAPSHOT_API,
        "kind": "VolumeSnapshotContent",
        "metadata": {
            "name": rn.copy_content_name(cache.name, namespace, bid),
            "labels": rn.labels(cache.name, rn.COPY, bid),
            "annotations": {rn.CACHE_ANNOTATION: cache.name},
            "ownerReferences": [owner_reference(cache)],
        },
        "spec": spec,
    }


def copy_snapshot(cache: Cache, namespace: str, bid: str, snapshot_class: str | None) -> Obj:
    spec: Obj = {
        "source": {"volumeSnapshotContentName": rn.copy_content_name(cache.name, namespace, bid)}
    }
    if snapshot_class:
        spec["volumeSnapshotClassName"] = snapshot_class
    return {
        "apiVersion": SNAPSHOT_API,
        "kind": "VolumeSnapshot",
        "metadata": {
            "name": rn.copy_name(cache.name),
            "namespace": namespace,
            "labels": rn.labels(cache.name, rn.COPY, bid),
            "annotations": {rn.CACHE_ANNOTATION: cache.name},
            "ownerReferences": [owner_reference(cache)],
        },
        "spec": spec,
    }
