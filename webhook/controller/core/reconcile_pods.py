"""Events on pods from the webhook's decision annotations, and lastMatchedTime batching.

At admission a pod has no name or uid to hang an Event on; the controller sees the pod once
it exists and reports the decision there. The Event's name is derived from the pod's uid, so
creating it twice fails: a pod gets its Event once, across controller restarts too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from webhook.controller.core import reconcile_names as rn
from webhook.controller.core.reconcile_model import Obj, UserPod
from webhook.core import names

HIT, MISMATCH, MISS, UNAVAILABLE = "hit", "mismatch", "miss", "unavailable"
MATCHED = frozenset({HIT, MISMATCH})


@dataclass(frozen=True, slots=True)
class PodEvent:
    type: str
    reason: str
    message: str


def pod_event(annotations: Mapping[str, str]) -> PodEvent | None:
    """The Event for a pod's decision, or None for a pod the webhook did not decide on."""
    decision = annotations.get(names.DECISION)
    cache = annotations.get(names.CACHE, "")
    missing = [m.strip() for m in annotations.get(names.MISSING_IMAGES, "").split(",") if m.strip()]
    if decision == HIT:
        return PodEvent(
            "Normal",
            "ImageCacheHit",
            f"images come from image cache {cache} (disk cloned from snapshot "
            f"{names.snapshot_name(cache)})",
        )
    if decision == MISMATCH:
        listed = ", ".join(missing) if missing else "some images"
        return PodEvent(
            "Warning",
            "ImageCacheMismatch",
            f"image cache {cache} lacks {listed}: pulled from the registry as usual; "
            f"add them to the cache's spec.images to cache them",
        )
    if decision == MISS:
        return PodEvent(
            "Normal",
            "ImageCacheMiss",
            "no Ready image cache holds this pod's images: pulled from the registries as usual",
        )
    if decision == UNAVAILABLE:
        named = f"image cache {cache}" if cache else "the requested image cache"
        return PodEvent(
            "Warning",
            "ImageCacheUnavailable",
            f"{named} cannot be used here now (no ready copy in this namespace yet, or it "
            "does not exist, is not Ready or is not usable from this namespace): images are "
            "pulled as usual (kubectl get imc NAME -o yaml: phase, status.namespaces)",
        )
    return None


def event_manifest(pod: UserPod, event: PodEvent, now: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": rn.pod_event_name(pod.name, pod.uid), "namespace": pod.namespace},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": pod.namespace,
            "name": pod.name,
            "uid": pod.uid,
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message,
        "source": {"component": rn.EVENT_SOURCE},
        "reportingComponent": rn.EVENT_SOURCE,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


def latest_matches(pods: Iterable[UserPod]) -> dict[str, datetime]:
    """Per cache, the creation time of the newest pod that was given it (hit or mismatch)."""
    latest: dict[str, datetime] = {}
    for pod in pods:
        cache = pod.annotations.get(names.CACHE)
        if not cache or pod.annotations.get(names.DECISION) not in MATCHED or not pod.created:
            continue
        if cache not in latest or pod.created > latest[cache]:
            latest[cache] = pod.created
    return latest


def last_matched_updates(
    pending: Mapping[str, datetime], current: Mapping[str, datetime | None]
) -> dict[str, datetime]:
    """The lastMatchedTime writes worth making: newer than what the cache's status says
    (by a whole second: status keeps seconds). A cache no longer known is skipped."""
    updates: dict[str, datetime] = {}
    for cache, seen in pending.items():
        if cache not in current:
            continue
        known = current[cache]
        if known is None or seen.replace(microsecond=0) > known:
            updates[cache] = seen
    return updates
