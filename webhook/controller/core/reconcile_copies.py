"""Snapshot copies in the namespaces that use a cache, and what "in use" means
(DESIGN.md, "Snapshot copies across namespaces").

A pod's claim can only clone a VolumeSnapshot of its own namespace, and the webhook gives a
pod the cache only where status.namespaces says its copy is readyToUse. So copies are made
before pods need them: in spec.namespaces, in namespaces labelled use-image-cache, and where
a pod was decided on (hit, mismatch, or unavailable for want of a copy). A copy is per build:
a rebuild's copy is made beside the one in use, status.namespaces switches to it once it is
ready, and the old one goes once no claim clones from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from webhook.controller.core import manifests_snapshot as ms
from webhook.controller.core import reconcile_names as rn
from webhook.controller.core.reconcile_in_use import POLL_SECONDS, cloning, few
from webhook.controller.core.reconcile_model import (
    Action,
    Create,
    Delete,
    Emit,
    Obj,
    Observed,
    Settings,
    SnapshotState,
)
from webhook.controller.core.reconcile_pass import Pass
from webhook.controller.core.reconcile_spec import build_inputs
from webhook.core.cache_namespaces import usable_namespaces

COPIED, COPY_READY, COPY_PROBLEM, COPY_KEPT = (
    "SnapshotCopied",
    "SnapshotCopyReady",
    "SnapshotCopyFailed",
    "SnapshotInUse",
)
RETRY_SECONDS = 30.0  # a copy that could not be made is tried again (namespace, RBAC fixed)


@dataclass(frozen=True, slots=True)
class Served:
    """The primary snapshot pods get, and what a copy of it needs."""

    bid: str
    name: str
    handle: str
    driver: str
    snapshot_class: str | None


@dataclass(frozen=True, slots=True)
class CopyPlan:
    actions: tuple[Action, ...]
    namespaces: tuple[Obj, ...]  # status.namespaces
    requeue: float | None


def wanted_namespaces(obs: Observed, settings: Settings) -> set[str]:
    """Where the cache should have a copy: where it is asked for or already has one, as far
    as it is usable from there; never the controller's own namespace (the primary's)."""
    spec = obs.cache.spec
    listed = spec.get("namespaces")
    wanted = {n for n in listed if isinstance(n, str)} if isinstance(listed, list) else set()
    wanted |= set(obs.labelled_namespaces)
    wanted |= {p.namespace for p in obs.pods}
    wanted |= {s.namespace for s in obs.snapshots if s.component == rn.COPY}
    usable = usable_namespaces(spec)
    if usable is not None:
        wanted &= usable
    wanted.discard(settings.namespace)
    return wanted


def _published(
    name: str, ready: Mapping[str, SnapshotState], old: Mapping[str, object]
) -> str | None:
    """The copy pods get: this build's once ready, else the one they got, while ready."""
    if name in ready:
        return name
    before = old.get("snapshotName")
    if old.get("readyToUse") is True and isinstance(before, str) and before in ready:
        return before
    return None


def publish_copies(step: Pass) -> None:
    """Copies of the served snapshot where the cache is used; status.namespaces."""
    status = step.status
    name, handle, driver = (
        status.get("snapshotName"),
        status.get("snapshotHandle"),
        status.get("snapshotDriver"),
    )
    snap = next((s for s in step.primaries() if s.name == name and s.ready), None)
    if snap is None or not handle or not driver or snap.deleting:
        status.pop("namespaces", None)
        return
    klass = status.get("snapshotClassName") or build_inputs(step.obs, step.settings).snapshot_class
    served = Served(snap.bid, snap.name, str(handle), str(driver), klass)
    copies = plan_copies(step.obs, step.settings, served, step.now)
    step.actions += copies.actions
    if copies.requeue is not None:
        step.wait(copies.requeue)
    if copies.namespaces:
        status["namespaces"] = list(copies.namespaces)
    else:
        status.pop("namespaces", None)


def plan_copies(obs: Observed, settings: Settings, served: Served, now: datetime) -> CopyPlan:
    cache = obs.cache
    grace = float(settings.in_use_grace_seconds)
    actions: list[Action] = []
    entries: list[Obj] = []
    requeue: float | None = None
    by_namespace: dict[str, list[SnapshotState]] = {}
    for snap in obs.snapshots:
        if snap.component == rn.COPY:
            by_namespace.setdefault(snap.namespace, []).append(snap)
    old_entries = {
        str(e.get("namespace")): e
        for e in cache.status.get("namespaces") or []
        if isinstance(e, Mapping)
    }
    contents = {c.name for c in obs.contents}
    wanted = wanted_namespaces(obs, settings)
    name = rn.copy_name(cache.name, served.bid)
    for namespace in sorted(wanted):
        mine = by_namespace.get(namespace, [])
        if not any(c.name == name for c in mine):
            content = rn.copy_content_name(cache.uid, cache.name, namespace, served.bid)
            if content not in contents:
                actions.append(
                    Create(
                        ms.copy_content(
                            cache, namespace, served.bid, served.handle, served.driver,
                            served.snapshot_class,
                        )
                    )
                )  # fmt: skip
            copying = Emit(
                "Normal", COPIED, f"copying snapshot {served.name} to {namespace}/{name}"
            )
            snapshot = ms.copy_snapshot(cache, namespace, served.bid, served.snapshot_class)
            actions.append(Create(snapshot, copying))
        ready = {c.name: c for c in mine if c.ready and not c.deleting}
        old = old_entries.get(namespace, {})
        published = _published(name, ready, old)
        entry: Obj = {
            "namespace": namespace,
            "snapshotName": published or name,
            "readyToUse": published is not None,
        }
        notes: list[str] = []
        problem = obs.copy_problems.get(namespace) if published != name else None
        if problem:
            notes.append(problem)
            requeue = RETRY_SECONDS
        for stale in mine:
            if stale.name in (name, published) or stale.deleting:
                continue
            users = cloning(obs, namespace, stale.name, now, grace)
            if users:
                notes.append(f"previous copy {stale.name} kept while {few(users)} clones it")
                requeue = POLL_SECONDS
            else:
                actions.append(Delete(ms.SNAPSHOT_API, "VolumeSnapshot", namespace, stale.name))
        if notes:
            entry["message"] = "; ".join(notes)
        actions += _entry_events(entry, old, failed=problem is not None)
        entries.append(entry)
    for namespace in sorted(set(by_namespace) - wanted):  # no longer usable from there
        for stale in by_namespace[namespace]:
            if not stale.deleting and not cloning(obs, namespace, stale.name, now, grace):
                actions.append(Delete(ms.SNAPSHOT_API, "VolumeSnapshot", namespace, stale.name))
    needed = {rn.copy_content_name(cache.uid, cache.name, n, served.bid) for n in wanted}
    needed |= {s.source_content or "" for s in obs.snapshots if s.component == rn.COPY}
    for held in obs.contents:  # Retain: deleting a content leaves the real snapshot
        if held.component == rn.COPY and not held.deleting and held.name not in needed:
            actions.append(Delete(ms.SNAPSHOT_API, "VolumeSnapshotContent", None, held.name))
    return CopyPlan(tuple(actions), tuple(entries), requeue)


def _entry_events(
    entry: Mapping[str, object], old: Mapping[str, object], failed: bool
) -> list[Action]:
    """An Event when a namespace's copy becomes ready or switches, or its message changes."""
    events: list[Action] = []
    namespace, name = entry["namespace"], entry["snapshotName"]
    if entry["readyToUse"] and (
        old.get("readyToUse") is not True or old.get("snapshotName") != name
    ):
        events.append(
            Emit("Normal", COPY_READY, f"copy {namespace}/{name} is ready: pods there get it")
        )
    message = entry.get("message")
    if message and message != old.get("message"):
        kind, reason = ("Warning", COPY_PROBLEM) if failed else ("Normal", COPY_KEPT)
        events.append(Emit(kind, reason, f"namespace {namespace}: {message}"))
    return events
