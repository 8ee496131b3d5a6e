"""A cache that is Ready: its status, and its expiry (retentionDays after readyTime), which
deletes the cache once no claim clones its snapshots."""

from __future__ import annotations

from datetime import timedelta

from webhook.controller.core import manifests_build as mb
from webhook.controller.core import reconcile_in_use as ru
from webhook.controller.core import reconcile_status as rs
from webhook.controller.core.reconcile_cleanup import clean_stale
from webhook.controller.core.reconcile_model import DeleteCache, Emit, SnapshotState
from webhook.controller.core.reconcile_pass import Pass
from webhook.core.caches import parse_time


def expire_time(step: Pass, ready_time: str | None) -> str | None:
    days = step.obs.cache.spec.get("retentionDays")
    ready = parse_time(ready_time)
    if not isinstance(days, int) or days <= 0 or ready is None:
        return None
    return rs.rfc3339(ready + timedelta(days=days))


def plan_ready(step: Pass, served: SnapshotState, inputs: mb.BuildInputs) -> None:
    status = step.status
    status["phase"] = rs.READY
    status["buildId"] = inputs.bid
    status["message"] = rs.cached_message(len(status.get("images") or []), served.name)
    expire = expire_time(step, status.get("readyTime"))
    if expire is None:
        status.pop("expireTime", None)
    else:
        status["expireTime"] = expire
    step.set_conditions(rs.serving(served.name), rs.built(inputs.bid))
    clean_stale(step, served, keep=None)
    expires = parse_time(expire)
    if expires is None:
        return
    if expires > step.now:
        step.wait(max(1.0, (expires - step.now).total_seconds()))
        return
    busy = step.in_use(step.obs.snapshots)
    if busy:
        message = f"expired at {expire}; deleting once no claim clones it ({ru.few(busy)})"
        if message != step.obs.cache.status.get("message"):
            step.emit(rs.NORMAL, "ExpiryDeferred", message)
        status["message"] = message
        return
    status["phase"] = rs.EXPIRED
    days = step.obs.cache.spec["retentionDays"]
    status["message"] = f"expired at {expire} (retentionDays {days})"
    step.set_conditions(("False", rs.EXPIRED, status["message"]), ("True", "Built", "built"))
    expired = Emit(rs.NORMAL, rs.EXPIRED, f"{status['message']}: deleting the cache")
    step.actions.append(DeleteCache(expired))
