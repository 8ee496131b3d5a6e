"""The pure half of a Kubernetes LIST+WATCH: what each watch line means, and how long to wait.

The loop (webhook.kube.informer.ListWatch) does the I/O; here a line of the watch stream becomes
one step: apply an event, move the resourceVersion on (BOOKMARK), start over with a fresh
LIST (410 Gone: the version we hold is compacted away), or reconnect after an error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GONE = 410
OBJECT_EVENTS = frozenset({"ADDED", "MODIFIED", "DELETED"})


@dataclass(frozen=True, slots=True)
class Apply:
    """An ADDED/MODIFIED/DELETED event; `resource_version` is where to resume from."""

    event_type: str
    obj: Mapping[str, Any]
    resource_version: str | None


@dataclass(frozen=True, slots=True)
class Bookmark:
    resource_version: str


@dataclass(frozen=True, slots=True)
class Relist:
    """The resourceVersion is too old (410 Gone): LIST again and replace everything."""

    reason: str


@dataclass(frozen=True, slots=True)
class Reconnect:
    """An error event or an unreadable line: watch again (after a backoff) from where we are."""

    reason: str


Step = Apply | Bookmark | Relist | Reconnect


def resource_version_of(obj: Mapping[str, Any]) -> str | None:
    meta = obj.get("metadata")
    if isinstance(meta, Mapping):
        version = meta.get("resourceVersion")
        if isinstance(version, str) and version:
            return version
    return None


def list_resource_version(listing: object) -> str:
    """The resourceVersion of a LIST answer (where the watch starts); ValueError if absent."""
    if not isinstance(listing, Mapping) or not isinstance(listing.get("items"), list):
        raise ValueError("the LIST answer is not a list object with items")
    version = resource_version_of(listing)
    if version is None:
        raise ValueError("the LIST answer has no metadata.resourceVersion")
    return version


def _status_text(status: Mapping[str, Any]) -> str:
    parts = [str(status.get(k)) for k in ("code", "reason", "message") if status.get(k)]
    return " ".join(parts) or "no details"


def interpret(line: bytes | str) -> Step:
    """One line (one JSON event) of a watch stream."""
    try:
        event = json.loads(line)
    except ValueError:
        text = line.decode(errors="replace") if isinstance(line, bytes) else line
        return Reconnect(f"unreadable watch line: {text[:200]!r}")
    if not isinstance(event, Mapping):
        return Reconnect("watch line is not a JSON object")
    kind = event.get("type")
    obj = event.get("object")
    if not isinstance(obj, Mapping):
        # A bare Status (no type/object) is how some proxies and old servers report errors.
        if event.get("kind") == "Status":
            obj, kind = event, "ERROR"
        else:
            return Reconnect(f"watch event {kind!r} has no object")
    if kind == "ERROR":
        if obj.get("code") == GONE or obj.get("reason") in ("Expired", "Gone"):
            return Relist(f"watch expired: {_status_text(obj)}")
        return Reconnect(f"watch error: {_status_text(obj)}")
    if kind == "BOOKMARK":
        version = resource_version_of(obj)
        if version is None:
            return Reconnect("BOOKMARK event without metadata.resourceVersion")
        return Bookmark(version)
    if kind in OBJECT_EVENTS:
        return Apply(str(kind), obj, resource_version_of(obj))
    return Reconnect(f"unknown watch event type {kind!r}")


def backoff_delay(
    attempt: int, *, jitter: float, base: float = 0.5, cap: float = 30.0
) -> float:
    """Seconds to wait before retry number `attempt` (0 = first retry).

    Exponential (base * 2^attempt, at most `cap`) with "equal jitter": half the delay is fixed,
    half is `jitter` (a random number in [0, 1)), so replicas that lost the apiserver together
    do not all come back in the same instant, yet none retries in a tight loop.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    ceiling = min(cap, base * 2.0 ** min(attempt, 62))
    return ceiling / 2 + ceiling / 2 * jitter
