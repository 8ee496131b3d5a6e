"""The status and its text: phases, conditions, messages and the merge patch that writes
them. Pure functions over status dicts; the planners decide, these say it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from webhook.controller.core.reconcile_model import Obj
from webhook.core.build_result import BuildResult

PENDING, CREATING, READY, FAILED, EXPIRED = "Pending", "Creating", "Ready", "Failed", "Expired"
NORMAL, WARNING = "Normal", "Warning"
SNAPSHOT_READY = "SnapshotReady"

Condition = tuple[str, str, str]  # status, reason, message


@dataclass(frozen=True, slots=True)
class Problem:
    reason: str
    message: str


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    old: Iterable[Mapping[str, Any]], kind: str, status: str, reason: str, message: str, now: str
) -> Obj:
    """A condition that keeps its lastTransitionTime while its status stays."""
    for previous in old:
        if previous.get("type") == kind and previous.get("status") == status:
            now = str(previous.get("lastTransitionTime") or now)
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message or reason,
        "lastTransitionTime": now,
    }


def conditions(
    status: Mapping[str, Any], ready: Condition, built: Condition, now: str
) -> list[Obj]:
    old = status.get("conditions") or []
    return [condition(old, "Ready", *ready, now), condition(old, "Built", *built, now)]


def serving(snapshot: str) -> Condition:
    return ("True", SNAPSHOT_READY, f"serving snapshot {snapshot}")


def built(bid: str) -> Condition:
    return ("True", "Built", f"built from the current spec (build {bid})")


def cached_message(count: int, snapshot: str) -> str:
    return f"{count} image{'s' * (count != 1)} cached in snapshot {snapshot}"


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> Obj:
    """A JSON merge patch from `old` to `new` (None removes a field)."""
    patch: Obj = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch


def images_from_result(result: BuildResult) -> list[Obj]:
    rows: list[Obj] = []
    for image in result.images:
        row: Obj = {"image": image.image or ""}
        if image.digest:
            row["digest"] = image.digest
        if image.size is not None:
            row["size"] = image.size
        rows.append(row)
    return rows
