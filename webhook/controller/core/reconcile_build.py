"""Building build id B (a hash of the spec fields that change the disk's content, see
reconcile_names.build_id): (sizing Job, for auto-size) -> pull Secret + PVC + builder Job ->
primary VolumeSnapshot -> Ready, with status from the snapshot. A previous Ready snapshot keeps
serving (phase stays Ready) while B builds. Failures set Built=False with a terminal reason;
they are not retried until the spec (or the rebuild annotation) changes."""

from __future__ import annotations

import math

from webhook.controller.core import manifests_build as mb
from webhook.controller.core import manifests_snapshot as ms
from webhook.controller.core import reconcile_failures as rf
from webhook.controller.core import reconcile_names as rn
from webhook.controller.core import reconcile_status as rs
from webhook.controller.core.reconcile_cleanup import WAIT_SECONDS, clean_stale
from webhook.controller.core.reconcile_expiry import expire_time
from webhook.controller.core.reconcile_jobs import blocked, ensure_secret, job_outcome, plan_sizing
from webhook.controller.core.reconcile_model import (
    BuilderPod,
    Create,
    Emit,
    JobState,
    Obj,
    SnapshotState,
)
from webhook.controller.core.reconcile_pass import Pass
from webhook.controller.core.reconcile_spec import snapshot_class
from webhook.controller.core.reconcile_status import Problem
from webhook.core.build_result import BuildResult, InvalidBuildResult, decode_build_result
from webhook.core.quantity import GIB, InvalidQuantity, parse_bytes


def plan_build(step: Pass, served: SnapshotState | None, inputs: mb.BuildInputs) -> None:
    bid = inputs.bid
    if step.failed_for(bid):
        clean_stale(step, served, keep=None)
        for failed in step.primaries():  # a snapshot that failed goes too
            if failed.bid == bid and not failed.deleting and not failed.ready:
                step.delete(ms.SNAPSHOT_API, "VolumeSnapshot", failed.namespace, failed.name)
        return
    clean_stale(step, served, keep=bid)
    klass, problem = snapshot_class(step.obs, inputs.snapshot_class)
    snap = next((s for s in step.primaries() if s.bid == bid), None)
    if snap is not None:
        _plan_snapshot(step, served, inputs, snap, klass)
        return
    if problem is not None:
        step.fail(served, problem, bid)
        return
    jobs = [j for j in step.obs.jobs if j.bid == bid]
    pods = [p for p in step.obs.builder_pods if p.bid == bid]
    builder = next((j for j in jobs if j.component == rn.BUILDER), None)
    if builder is not None:
        _plan_builder(step, served, inputs, builder, pods, klass)
        return
    owned = {o.kind: o for o in step.obs.owned if o.bid == bid}
    size = inputs.size_gib
    disk = owned.get("PersistentVolumeClaim")
    if disk is not None and disk.size:
        try:
            size = math.ceil(parse_bytes(disk.size) / GIB)
        except InvalidQuantity:
            size = inputs.size_gib
    if size is None:
        size = plan_sizing(step, served, inputs, jobs, pods, owned)
        if size is None:
            return
    if any(o.deleting for o in owned.values()):
        step.progress(served, "Cleaning", "waiting for the previous attempt's objects to go", bid)
        step.wait(WAIT_SECONDS)
        return
    ensure_secret(step, inputs, owned)
    if disk is None:
        step.actions.append(Create(mb.pvc(step.obs.cache, step.settings, inputs, size)))
    job = rn.job_name(step.cache_name, bid)
    count = len(inputs.images)
    started = Emit(
        rs.NORMAL,
        "BuildStarted",
        f"builder Job {step.settings.namespace}/{job} pulls {count} image{'s' * (count != 1)} "
        f"onto a {size}Gi disk ({rn.pvc_name(step.cache_name, bid)}, storage class "
        f"{inputs.storage_class or 'default'})",
    )
    step.actions.append(Create(mb.builder_job(step.obs.cache, step.settings, inputs), started))
    step.progress(served, "Building", f"builder Job {job} is pulling the images", bid)


def _plan_builder(
    step: Pass,
    served: SnapshotState | None,
    inputs: mb.BuildInputs,
    job: JobState,
    pods: list[BuilderPod],
    klass: str | None,
) -> None:
    bid = inputs.bid
    builder_pods = [p for p in pods if p.component == rn.BUILDER]
    if job.deleting or not (job.succeeded or job.failed):
        if not blocked(step, served, builder_pods, bid):
            step.progress(served, "Building", f"builder Job {job.name} is pulling the images", bid)
        return
    outcome = job_outcome(step, inputs, job, builder_pods)
    if isinstance(outcome, Problem):
        step.fail(served, outcome, bid)
        return
    result, raw = outcome
    snapshot = ms.primary_snapshot(step.obs.cache, step.settings.namespace, bid, klass, raw)
    name = snapshot["metadata"]["name"]
    taken = Emit(
        rs.NORMAL,
        "Built",
        f"pulled {len(result.images)} images ({result.total_bytes} bytes); taking snapshot {name}",
    )
    step.actions.append(Create(snapshot, taken))
    step.progress(served, "Snapshotting", f"waiting for snapshot {name} to be ready", bid)
    if served is None:  # a rebuild keeps showing the images the served snapshot holds
        images = rs.images_from_result(result)
        step.status.update(images=images, imageCount=len(images))


def _plan_snapshot(
    step: Pass,
    served: SnapshotState | None,
    inputs: mb.BuildInputs,
    snap: SnapshotState,
    klass: str | None,
) -> None:
    bid = inputs.bid
    if snap.error and not snap.ready:
        failed = rf.snapshot_failed(snap.name, snap.namespace, snap.error, klass)
        step.fail(served, Problem(rf.SNAPSHOT_FAILED, failed), bid)
        return
    content = next((c for c in step.obs.contents if c.name == snap.bound_content), None)
    if not snap.ready or content is None or not content.handle or not content.driver:
        step.progress(served, "Snapshotting", f"waiting for snapshot {snap.name} to be ready", bid)
        if snap.ready:
            step.wait(WAIT_SECONDS)  # the content's handle is not watched
        return
    images = _snapshot_images(snap, inputs)
    disk = next(
        (o for o in step.obs.owned if o.bid == bid and o.kind == "PersistentVolumeClaim"), None
    )
    restore = snap.restore_size or (disk.size if disk else None)
    status = step.status
    status.update(
        phase=rs.READY,
        buildId=bid,
        snapshotName=snap.name,
        snapshotHandle=content.handle,
        snapshotDriver=content.driver,
        images=images,
        imageCount=len(images),
        readyTime=step.stamp,
    )
    if restore:
        status["restoreSize"] = restore
    if inputs.storage_class:
        status["storageClassName"] = inputs.storage_class
    else:
        status.pop("storageClassName", None)
    if klass:
        status["snapshotClassName"] = klass
    expire = expire_time(step, step.stamp)
    if expire:
        status["expireTime"] = expire
    else:
        status.pop("expireTime", None)
    status["message"] = rs.cached_message(len(images), snap.name)
    step.set_conditions(rs.serving(snap.name), rs.built(bid))
    step.emit(
        rs.NORMAL,
        rs.READY,
        f"snapshot {snap.name} is ready (restore size {restore or 'unknown'})"
        + (f"; expires at {expire}" if expire else ""),
    )


def _snapshot_images(snap: SnapshotState, inputs: mb.BuildInputs) -> list[Obj]:
    """status.images from the build result the snapshot carries (none if unreadable)."""
    if not snap.result:
        return []
    try:
        decoded = decode_build_result(snap.result, inputs.images)
    except InvalidBuildResult:
        return []
    return rs.images_from_result(decoded) if isinstance(decoded, BuildResult) else []
