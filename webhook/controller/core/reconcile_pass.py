"""One planning pass over one ImageCache: what it observed, and the actions and status it
accumulates. The planners by concern (build, expiry, cleanup, copies) all write into it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime

from webhook.controller.core import reconcile_failures as rf
from webhook.controller.core import reconcile_in_use as ru
from webhook.controller.core import reconcile_names as rn
from webhook.controller.core import reconcile_status as rs
from webhook.controller.core.reconcile_model import (
    Action,
    Delete,
    Emit,
    Obj,
    Observed,
    PatchStatus,
    Plan,
    Settings,
    SnapshotState,
)


@dataclass
class Pass:
    obs: Observed
    settings: Settings
    now: datetime
    actions: list[Action] = field(default_factory=list)
    status: Obj = field(default_factory=dict)
    requeue: float | None = None

    def __post_init__(self) -> None:
        self.status = dict(self.obs.cache.status)
        self.stamp = rs.rfc3339(self.now)

    @property
    def cache_name(self) -> str:
        return self.obs.cache.name

    def wait(self, seconds: float) -> None:
        self.requeue = seconds if self.requeue is None else min(self.requeue, seconds)

    def emit(self, kind: str, reason: str, message: str) -> None:
        self.actions.append(Emit(kind, reason, message))

    def in_use(self, snapshots: Iterable[SnapshotState]) -> list[str]:
        """Who still clones one of `snapshots` (claims not Bound yet): they must not go."""
        users = ru.in_use(self.obs, snapshots, self.now, self.settings.in_use_grace_seconds)
        if users:
            self.wait(ru.POLL_SECONDS)
        return users

    def set_conditions(self, ready: rs.Condition, built: rs.Condition) -> None:
        self.status["conditions"] = rs.conditions(self.status, ready, built, self.stamp)

    def finish(self) -> Plan:
        self.status["observedGeneration"] = self.obs.cache.generation
        patch = rs.status_patch(self.obs.cache.status, self.status)
        if patch:
            self.actions.append(PatchStatus(patch))
        return Plan(tuple(self.actions), self.requeue)

    def delete(
        self, api_version: str, kind: str, namespace: str | None, name: str,
        event: Emit | None = None,
    ) -> None:  # fmt: skip
        self.actions.append(Delete(api_version, kind, namespace, name, event))

    def delete_build(self, bid: str, event: Emit | None = None) -> bool:
        """Delete the Job(s), their pods, the PVC and the Secret of build `bid`; `event` goes
        with the last of them. False if nothing was left to delete."""
        ns = self.settings.namespace
        deletes = [
            Delete("batch/v1", "Job", ns, job.name)
            for job in self.obs.jobs
            if job.bid == bid and not job.deleting
        ]
        deletes += [
            Delete("v1", "Pod", ns, pod.name) for pod in self.obs.builder_pods if pod.bid == bid
        ]
        deletes += [
            Delete("v1", owned.kind, ns, owned.name)
            for owned in self.obs.owned
            if owned.bid == bid and not owned.deleting
        ]
        if deletes and event is not None:
            deletes[-1] = replace(deletes[-1], event=event)
        self.actions += deletes
        return bool(deletes)

    def build_bids(self) -> set[str]:
        return (
            {j.bid for j in self.obs.jobs}
            | {p.bid for p in self.obs.builder_pods}
            | {o.bid for o in self.obs.owned}
        )

    def primaries(self) -> list[SnapshotState]:
        return [
            s
            for s in self.obs.snapshots
            if s.component == rn.PRIMARY and s.namespace == self.settings.namespace
        ]

    def served(self) -> SnapshotState | None:
        name = self.status.get("snapshotName")
        for snap in self.primaries():
            if snap.name == name and snap.ready and not snap.deleting:
                return snap
        return None

    # --- outcomes of a build -------------------------------------------------------------

    def progress(self, served: SnapshotState | None, reason: str, message: str, bid: str) -> None:
        self.status["buildId"] = bid
        if served is None:
            self.status["phase"] = rs.CREATING
            self.status["message"] = message
            self.set_conditions(("False", reason, message), ("False", reason, message))
        else:
            self.status["phase"] = rs.READY
            self.status["message"] = f"rebuilding for the changed spec ({message}); " + (
                f"serving snapshot {served.name} meanwhile"
            )
            self.set_conditions(rs.serving(served.name), ("False", reason, message))

    def fail(self, served: SnapshotState | None, problem: rs.Problem, bid: str) -> None:
        already = self.failed_for(bid)
        self.status["buildId"] = bid
        failure = ("False", problem.reason, problem.message)
        if served is None:
            self.status["phase"] = rs.FAILED
            self.status["message"] = problem.message
            self.set_conditions(failure, failure)
        else:
            self.status["phase"] = rs.READY
            self.status["message"] = (
                f"rebuild failed: {problem.message}; still serving snapshot {served.name}"
            )
            self.set_conditions(rs.serving(served.name), failure)
        if not already:
            self.emit(rs.WARNING, problem.reason, problem.message)

    def failed_for(self, bid: str) -> bool:
        """Build `bid` failed for good in an earlier pass: not retried until the spec changes."""
        if self.obs.cache.status.get("buildId") != bid:
            return False
        for condition in self.obs.cache.status.get("conditions") or []:
            if condition.get("type") == "Built" and condition.get("status") == "False":
                return condition.get("reason") in rf.TERMINAL
        return False
