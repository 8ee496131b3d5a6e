"""The JSONPatch that gives a pod its cache (DESIGN.md, "The patch").

Only `add` operations, and only for what is not there yet: applying the patch to a pod that
already went through the webhook (reinvocation, a second webhook call) adds nothing, and a
field the user wrote is never replaced (an RFC 6902 `add` on an existing member would).
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Mapping
from typing import Any, NamedTuple

from webhook.core import names
from webhook.core.matching import Decision
from webhook.core.pod_facts import PodFacts, read_pod
from webhook.core.quantity import format_gib

Op = dict[str, Any]
LABEL_VALUE_MAX = 63


def escape(token: str) -> str:
    """A JSON pointer reference token (RFC 6901): `~` -> `~0`, `/` -> `~1`."""
    return token.replace("~", "~0").replace("/", "~1")


def conflict(facts: PodFacts) -> str | None:
    """Why the cache volume cannot be added to the pod without touching what the user wrote."""
    if facts.first_container is None:
        return "the pod has no containers to mount the cache in"
    if facts.volume and not facts.volume_ours:
        return (
            f"the pod already has a volume named {names.VOLUME_NAME!r}; "
            "rename it to let the pod use an image cache"
        )
    if facts.mount_taken:
        return (
            f"container {facts.first_container!r} already mounts something at "
            f"{names.MOUNT_PATH}; move that mount to let the pod use an image cache"
        )
    return None


def _append(present: bool | None, path: str, item: Mapping[str, Any]) -> list[Op]:
    if present is None:
        return [{"op": "add", "path": path, "value": [dict(item)]}]
    if present:
        return []
    return [{"op": "add", "path": f"{path}/-", "value": dict(item)}]


class CacheFacts(NamedTuple):
    """The fields of the chosen cache the patch uses."""

    name: str
    restore_size: str | None
    size_bytes: int
    storage_class: str | None


class PatchInput(NamedTuple):
    """All the patch depends on: a few facts about the pod and the decision."""

    has_metadata: bool
    annotations: tuple[str, ...] | None  # ours already on the pod; None: no annotations map
    labels: tuple[str, ...] | None  # our labels already on the pod; None: no labels map
    volume: bool | None  # a volume named imagecache exists; None: no volumes list
    mount: bool | None  # containers[0] mounts one named imagecache; None: no volumeMounts
    outcome: str | None
    missing: tuple[str, ...]
    cache: CacheFacts | None
    disk_size: int | None  # bytes the pod asked for (imagecache.dev/disk-size)


def patch_input(facts: PodFacts, decision: Decision) -> PatchInput:
    cache = decision.cache
    if cache is None:  # nothing but metadata
        return PatchInput(
            facts.has_metadata, facts.annotations, facts.labels, None, None, decision.outcome,
            decision.missing, None, None,
        )  # fmt: skip
    return PatchInput(
        facts.has_metadata,
        facts.annotations,
        facts.labels,
        facts.volume,
        facts.mount,
        decision.outcome,
        decision.missing,
        CacheFacts(cache.name, cache.restore_size, cache.size_bytes, cache.storage_class),
        decision.request.disk_size,
    )


def _volume(cache: CacheFacts, disk_size: int | None) -> dict[str, Any]:
    storage = cache.restore_size or format_gib(cache.size_bytes)
    if disk_size is not None and disk_size > cache.size_bytes:
        storage = format_gib(disk_size)
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


def _annotations(
    outcome: str | None, cache: str | None, missing: tuple[str, ...]
) -> dict[str, str]:
    if outcome is None:
        return {}
    written: dict[str, str] = {names.DECISION: outcome}
    if cache is not None:
        written[names.CACHE] = cache
    if missing:
        written[names.MISSING_IMAGES] = ",".join(missing)
    return written


def decision_annotations(decision: Decision) -> dict[str, str]:
    cache = decision.cache.name if decision.cache is not None else None
    return _annotations(decision.outcome, cache, decision.missing)


def _ops(given: PatchInput) -> list[Op]:
    # A pod object always has metadata once stored, but not always in the request.
    ops: list[Op] = [] if given.has_metadata else [{"op": "add", "path": "/metadata", "value": {}}]
    cache = given.cache
    entries = _annotations(given.outcome, cache.name if cache else None, given.missing)
    if entries:
        if given.annotations is None:
            ops.append({"op": "add", "path": "/metadata/annotations", "value": entries})
        else:
            ops += [
                {"op": "add", "path": f"/metadata/annotations/{escape(k)}", "value": v}
                for k, v in entries.items()
                if k not in given.annotations
            ]
    # Labels let the controller watch only the pods the webhook decided on, by cache too.
    labels = {names.DECISION: given.outcome} if given.outcome else {}
    if cache is not None and len(cache.name) <= LABEL_VALUE_MAX:
        labels[names.CACHE] = cache.name
    if labels:
        if given.labels is None:
            ops.append({"op": "add", "path": "/metadata/labels", "value": labels})
        else:
            ops += [
                {"op": "add", "path": f"/metadata/labels/{escape(k)}", "value": v}
                for k, v in labels.items()
                if k not in given.labels
            ]
    if cache is None:
        return ops
    ops += _append(given.volume, "/spec/volumes", _volume(cache, given.disk_size))
    mount = {"name": names.VOLUME_NAME, "mountPath": names.MOUNT_PATH, "readOnly": True}
    ops += _append(given.mount, "/spec/containers/0/volumeMounts", mount)
    return ops


def build_patch(pod: Mapping[str, Any], decision: Decision) -> list[Op]:
    """The operations that record `decision` on `pod` and, on a hit or mismatch, add the cache."""
    return _ops(patch_input(read_pod(pod, "the pod"), decision))


def encoded_patch(facts: PodFacts, decision: Decision) -> str:
    """The patch as the AdmissionReview's `patch` field (base64 of the JSON), "" when there
    is nothing to add."""
    return _encoded(patch_input(facts, decision))


@functools.lru_cache(maxsize=1024)
def _encoded(given: PatchInput) -> str:
    # Encoded once per distinct input: the pods of one template in many namespaces share it.
    ops = _ops(given)
    return base64.b64encode(json.dumps(ops).encode()).decode() if ops else ""
