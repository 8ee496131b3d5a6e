"""Manifests of snapshots: the primary VolumeSnapshot of a build disk, and the
pre-provisioned VolumeSnapshotContent + VolumeSnapshot pair that copies it into a namespace
(DESIGN.md, "Snapshot copies across namespaces")."""

from __future__ import annotations

from webhook.controller.core import reconcile_names as rn
from webhook.controller.core.manifests_build import owner_reference
from webhook.controller.core.reconcile_model import Cache, Obj
from webhook.core import names

SNAPSHOT_API = f"{names.SNAPSHOT_GROUP}/v1"


def primary_snapshot(
    cache: Cache, namespace: str, bid: str, snapshot_class: str | None, result: str
) -> Obj:
    """`result`: the builder's termination message, kept on the snapshot so that status can
    be filled from it when the snapshot is ready (the build pod is gone by then)."""
    meta = {
        "labels": rn.labels(cache.name, rn.PRIMARY, bid),
        "annotations": {rn.CACHE_ANNOTATION: cache.name, rn.RESULT_ANNOTATION: result},
        "ownerReferences": [owner_reference(cache)],
    }
    source = {"persistentVolumeClaimName": rn.pvc_name(cache.name, bid)}
    name = rn.primary_name(cache.name, bid)
    return _volume_snapshot(name, namespace, meta, source, snapshot_class)


def _volume_snapshot(
    name: str, namespace: str, meta: Obj, source: Obj, snapshot_class: str | None
) -> Obj:
    spec: Obj = {"source": source}
    if snapshot_class:
        spec["volumeSnapshotClassName"] = snapshot_class
    return {
        "apiVersion": SNAPSHOT_API,
        "kind": "VolumeSnapshot",
        "metadata": {"name": name, "namespace": namespace, **meta},
        "spec": spec,
    }


def _copy_meta(cache: Cache, bid: str) -> Obj:
    return {
        "labels": rn.labels(cache.name, rn.COPY, bid),
        "annotations": {rn.CACHE_ANNOTATION: cache.name, rn.CACHE_UID_ANNOTATION: cache.uid},
        "ownerReferences": [owner_reference(cache)],
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
        "sourceVolumeMode": "Filesystem",
        "volumeSnapshotRef": {"name": rn.copy_name(cache.name, bid), "namespace": namespace},
    }
    if snapshot_class:
        spec["volumeSnapshotClassName"] = snapshot_class
    return {
        "apiVersion": SNAPSHOT_API,
        "kind": "VolumeSnapshotContent",
        "metadata": {
            "name": rn.copy_content_name(cache.uid, cache.name, namespace, bid),
            **_copy_meta(cache, bid),
        },
        "spec": spec,
    }


def copy_snapshot(cache: Cache, namespace: str, bid: str, snapshot_class: str | None) -> Obj:
    content = rn.copy_content_name(cache.uid, cache.name, namespace, bid)
    source = {"volumeSnapshotContentName": content}
    name = rn.copy_name(cache.name, bid)
    return _volume_snapshot(name, namespace, _copy_meta(cache, bid), source, snapshot_class)


def foreign_copy(existing: Obj, wanted: Obj) -> str | None:
    """Why an object found under a copy's name (a 409 on create) is not that copy, or None
    when it is: the same cache (uid) and, for a content, the same namespace and snapshot;
    for a snapshot, the same content."""
    kind = wanted.get("kind")
    name = (wanted.get("metadata") or {}).get("name")
    uid = ((wanted.get("metadata") or {}).get("annotations") or {}).get(rn.CACHE_UID_ANNOTATION)
    meta = existing.get("metadata") or {}
    owner = (meta.get("annotations") or {}).get(rn.CACHE_UID_ANNOTATION)
    spec, want = existing.get("spec") or {}, wanted.get("spec") or {}
    if owner != uid:
        return f"{kind} {name} exists and belongs to another cache (uid {owner or 'unset'})"
    ref = spec.get("volumeSnapshotRef") or {}
    wanted_ref = want.get("volumeSnapshotRef") or {}
    if kind == "VolumeSnapshotContent" and (ref.get("namespace"), ref.get("name")) != (
        wanted_ref.get("namespace"),
        wanted_ref.get("name"),
    ):
        where = f"{ref.get('namespace')}/{ref.get('name')}"
        return f"{kind} {name} exists and is bound to another snapshot ({where})"
    source = (spec.get("source") or {}).get("volumeSnapshotContentName")
    if kind == "VolumeSnapshot" and source != (want.get("source") or {}).get(
        "volumeSnapshotContentName"
    ):
        return f"{kind} {name} exists and points at another content ({source or 'none'})"
    return None
