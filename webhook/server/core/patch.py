"""The JSONPatch that gives a pod its cache (DESIGN.md, "The patch").

`add` operations for what is not there yet, and the `replace` of the image fields that
pinning makes: applying the patch to a pod that already went through the webhook
(reinvocation, a second webhook call) changes nothing, and a field the user wrote is never
replaced (an RFC 6902 `add` on an existing member would), apart from a cached image's tag
getting the digest the cache holds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NamedTuple

from webhook.core import names
from webhook.core.caches import CacheView
from webhook.core.imageref import InvalidReference, parse
from webhook.core.quantity import format_gib
from webhook.server.core.matching import Decision, Request
from webhook.server.core.pod_facts import Container, PodFacts, read_pod

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


class Pin(NamedTuple):
    container: Container
    pinned: str  # the image as written, with @digest


def pins(containers: tuple[Container, ...], cache: CacheView, request: Request) -> list[Pin]:
    """The containers whose image the cache holds, pinned to the digest it holds: the pod
    then runs what its disk holds, and no tag is ever resolved from a disk (DESIGN.md,
    "Pinning"). That digest is the one the builder resolved the reference to (status.images:
    the index of a multi-platform image, else the manifest), which is what containerd asks
    the mirror for first. References with a digest already are left as written."""
    if not request.pin:
        return []
    found: list[Pin] = []
    for container in containers:
        try:
            ref = parse(container.image)
        except InvalidReference:
            continue
        digest = cache.digests.get(ref.match_key) if ref.digest is None else None
        if digest:
            found.append(Pin(container, f"{container.image}@{digest}"))
    return found


def _append(present: bool | None, path: str, item: Mapping[str, Any]) -> list[Op]:
    if present is None:
        return [{"op": "add", "path": path, "value": [dict(item)]}]
    if present:
        return []
    return [{"op": "add", "path": f"{path}/-", "value": dict(item)}]


def _volume(cache: CacheView, snapshot: str, disk_size: int | None) -> dict[str, Any]:
    storage = cache.restore_size or format_gib(cache.size_bytes)
    if disk_size is not None and disk_size > cache.size_bytes:
        storage = format_gib(disk_size)
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"]}
    if cache.storage_class:
        spec["storageClassName"] = cache.storage_class
    spec["resources"] = {"requests": {"storage": storage}}
    spec["dataSource"] = {"apiGroup": names.SNAPSHOT_GROUP, "kind": "VolumeSnapshot",
                          "name": snapshot}  # fmt: skip
    template: dict[str, Any] = {"spec": spec}
    if len(cache.name) <= LABEL_VALUE_MAX:
        template["metadata"] = {"labels": {names.CACHE: cache.name}}
    return {"name": names.VOLUME_NAME, "ephemeral": {"volumeClaimTemplate": template}}


def decision_annotations(decision: Decision, pinned: list[Pin] | None = None) -> dict[str, str]:
    """The annotations that record `decision` (and the images pinned) on the pod."""
    if decision.outcome is None:
        return {}
    written: dict[str, str] = {names.DECISION: decision.outcome}
    named = decision.cache or decision.waiting
    if named is not None:
        written[names.CACHE] = named.name
    if decision.missing:
        written[names.MISSING_IMAGES] = ",".join(decision.missing)
    if pinned:
        asked = {p.container.name: p.container.image for p in pinned}
        written[names.PINNED_IMAGES] = json.dumps(asked, separators=(",", ":"))
    return written


def _entries(path: str, present: tuple[str, ...] | None, entries: dict[str, str]) -> list[Op]:
    """Add `entries` to the map at `path`, but those `present` there (None: no map yet)."""
    if not entries:
        return []
    if present is None:
        return [{"op": "add", "path": path, "value": entries}]
    return [
        {"op": "add", "path": f"{path}/{escape(k)}", "value": v}
        for k, v in entries.items()
        if k not in present
    ]


def patch_ops(facts: PodFacts, decision: Decision) -> list[Op]:
    """The operations that record `decision` on the pod and, on a hit or mismatch, add the
    cache (its copy in the pod's namespace) and pin the images it holds."""
    # A pod object always has metadata once stored, but not always in the request.
    ops: list[Op] = [] if facts.has_metadata else [{"op": "add", "path": "/metadata", "value": {}}]
    cache = decision.cache
    pinned = pins(facts.containers, cache, decision.request) if cache is not None else []
    ops += _entries("/metadata/annotations", facts.annotations,
                    decision_annotations(decision, pinned))  # fmt: skip
    # Labels let the controller watch only the pods the webhook decided on, by cache too.
    labels: dict[str, str] = {names.DECISION: decision.outcome} if decision.outcome else {}
    named = cache or decision.waiting
    if named is not None and len(named.name) <= LABEL_VALUE_MAX:
        labels[names.CACHE] = named.name
    ops += _entries("/metadata/labels", facts.labels, labels)
    if cache is None or decision.snapshot is None:
        return ops
    ops += [{"op": "replace", "path": f"{p.container.path}/image", "value": p.pinned}
            for p in pinned]  # fmt: skip
    volume = _volume(cache, decision.snapshot, decision.request.disk_size)
    ops += _append(facts.volume, "/spec/volumes", volume)
    mount = {"name": names.VOLUME_NAME, "mountPath": names.MOUNT_PATH, "readOnly": True}
    ops += _append(facts.mount, "/spec/containers/0/volumeMounts", mount)
    return ops


def build_patch(pod: Mapping[str, Any], decision: Decision) -> list[Op]:
    """patch_ops for a pod object."""
    return patch_ops(read_pod(pod, "the pod"), decision)
