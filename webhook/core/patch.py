"""The JSONPatch that gives a pod its cache (DESIGN.md, "The patch").

Only `add` operations, and only for what is not there yet: applying the patch to a pod that
already went through the webhook (reinvocation, a second webhook call) adds nothing, and a
field the user wrote is never replaced (an RFC 6902 `add` on an existing member would).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webhook.core import names
from webhook.core.matching import Decision
from webhook.core.quantity import format_gib

Op = dict[str, Any]
LABEL_VALUE_MAX = 63


def escape(token: str) -> str:
    """A JSON pointer reference token (RFC 6901): `~` -> `~0`, `/` -> `~1`."""
    return token.replace("~", "~0").replace("/", "~1")


def _is_ours(volume: Mapping[str, Any]) -> bool:
    template = (volume.get("ephemeral") or {}).get("volumeClaimTemplate") or {}
    source = (template.get("spec") or {}).get("dataSource") or {}
    return (
        source.get("apiGroup") == names.SNAPSHOT_GROUP
        and source.get("kind") == "VolumeSnapshot"
        and str(source.get("name", "")).startswith(names.snapshot_name(""))
    )


def conflict(pod: Mapping[str, Any]) -> str | None:
    """Why the cache volume cannot be added to `pod` without touching what the user wrote."""
    spec = pod.get("spec") or {}
    containers = spec.get("containers") or []
    if not containers:
        return "the pod has no containers to mount the cache in"
    for volume in spec.get("volumes") or []:
        if volume.get("name") == names.VOLUME_NAME and not _is_ours(volume):
            return (
                f"the pod already has a volume named {names.VOLUME_NAME!r}; "
                "rename it to let the pod use an image cache"
            )
    for mount in containers[0].get("volumeMounts") or []:
        if mount.get("mountPath") == names.MOUNT_PATH and mount.get("name") != names.VOLUME_NAME:
            return (
                f"container {containers[0].get('name', '')!r} already mounts something at "
                f"{names.MOUNT_PATH}; move that mount to let the pod use an image cache"
            )
    return None


def _add_entries(existing: object, path: str, entries: Mapping[str, str]) -> list[Op]:
    if not entries:
        return []
    if not isinstance(existing, dict):
        return [{"op": "add", "path": path, "value": dict(entries)}]
    return [
        {"op": "add", "path": f"{path}/{escape(key)}", "value": value}
        for key, value in entries.items()
        if key not in existing
    ]


def _append(existing: object, path: str, item: Mapping[str, Any]) -> list[Op]:
    if not isinstance(existing, list):
        return [{"op": "add", "path": path, "value": [dict(item)]}]
    if any(isinstance(e, dict) and e.get("name") == item["name"] for e in existing):
        return []
    return [{"op": "add", "path": f"{path}/-", "value": dict(item)}]


def volume_for(decision: Decision) -> dict[str, Any]:
    """The generic ephemeral volume cloned from the cache's snapshot in the pod's namespace."""
    cache = decision.cache
    assert cache is not None
    storage = cache.restore_size or format_gib(cache.size_bytes)
    wanted = decision.request.disk_size
    if wanted is not None and wanted > cache.size_bytes:
        storage = format_gib(wanted)
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"]}
    if cache.storage_class:
        spec["storageClassName"] = cache.storage_class
    spec["resources"] = {"requests": {"storage": storage}}
    spec["dataSource"] = {
        "apiGroup": names.SNAPSHOT_GROUP,
        "kind": "VolumeSnapshot",
        "name": names.snapshot_name(cache.name),
    }
    template: dict[str, Any] = {"spec": spec}
    if len(cache.name) <= LABEL_VALUE_MAX:
        template["metadata"] = {"labels": {names.CACHE: cache.name}}
    return {"name": names.VOLUME_NAME, "ephemeral": {"volumeClaimTemplate": template}}


def decision_annotations(decision: Decision) -> dict[str, str]:
    if decision.outcome is None:
        return {}
    written: dict[str, str] = {names.DECISION: decision.outcome}
    if decision.cache is not None:
        written[names.CACHE] = decision.cache.name
    if decision.missing:
        written[names.MISSING_IMAGES] = ",".join(decision.missing)
    return written


def build_patch(pod: Mapping[str, Any], decision: Decision) -> list[Op]:
    """The operations that record `decision` on `pod` and, on a hit or mismatch, add the cache."""
    meta = pod.get("metadata")
    # A pod object always has metadata once stored, but not always in the request.
    ops: list[Op] = (
        [] if isinstance(meta, dict) else [{"op": "add", "path": "/metadata", "value": {}}]
    )
    meta = meta if isinstance(meta, dict) else {}
    ops += _add_entries(
        meta.get("annotations"), "/metadata/annotations", decision_annotations(decision)
    )
    cache = decision.cache
    if cache is None:
        return ops
    if len(cache.name) <= LABEL_VALUE_MAX:
        ops += _add_entries(meta.get("labels"), "/metadata/labels", {names.CACHE: cache.name})
    spec = pod.get("spec") or {}
    ops += _append(spec.get("volumes"), "/spec/volumes", volume_for(decision))
    first = (spec.get("containers") or [{}])[0]
    mount = {"name": names.VOLUME_NAME, "mountPath": names.MOUNT_PATH, "readOnly": True}
    ops += _append(first.get("volumeMounts"), "/spec/containers/0/volumeMounts", mount)
    return ops
