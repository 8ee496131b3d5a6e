"""The sizing and builder Jobs of a build: what a running one's pods say (blocked or not),
and what a finished one left in its termination message (a result, or why it failed)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime

from webhook.controller.core import manifests_build as mb
from webhook.controller.core import reconcile_failures as rf
from webhook.controller.core import reconcile_names as rn
from webhook.controller.core import reconcile_status as rs
from webhook.controller.core.reconcile_model import (
    BuilderPod,
    CopyPullSecrets,
    Create,
    Emit,
    JobState,
    OwnedObject,
    SnapshotState,
)
from webhook.controller.core.reconcile_pass import Pass
from webhook.controller.core.reconcile_status import Problem
from webhook.core.build_result import (
    BuildError,
    BuildResult,
    InvalidBuildResult,
    decode_build_result,
)
from webhook.core.quantity import GIB

MAX_SIZE_GIB = 10000


def auto_size_gib(total_bytes: int) -> int:
    """DESIGN.md: the images' compressed sizes x 1.3 + 1 GiB, rounded up."""
    return max(1, min(MAX_SIZE_GIB, math.ceil(total_bytes * 1.3 / GIB + 1)))


def ensure_secret(step: Pass, inputs: mb.BuildInputs, owned: Mapping[str, OwnedObject]) -> None:
    """The build's copy of the pull secrets, made before the Job that mounts it."""
    if inputs.pull_secrets and "Secret" not in owned:
        step.actions.append(
            CopyPullSecrets(
                mb.pull_secret(step.obs.cache, step.settings, inputs), inputs.pull_secrets
            )
        )


def plan_sizing(
    step: Pass,
    served: SnapshotState | None,
    inputs: mb.BuildInputs,
    jobs: list[JobState],
    pods: list[BuilderPod],
    owned: Mapping[str, OwnedObject],
) -> int | None:
    """Auto-sizing: a Job resolves the images (manifests only) and reports their total size."""
    bid = inputs.bid
    sizer = next((j for j in jobs if j.component == rn.SIZER), None)
    name = rn.sizer_name(step.cache_name, bid)
    sizer_pods = [p for p in pods if p.component == rn.SIZER]
    if sizer is None:
        ensure_secret(step, inputs, owned)
        started = Emit(
            rs.NORMAL, "SizingStarted", f"Job {name} resolves the images to size the disk"
        )
        step.actions.append(Create(mb.sizer_job(step.obs.cache, step.settings, inputs), started))
        step.progress(served, "Sizing", f"Job {name} is measuring the images", bid)
        return None
    if sizer.deleting or not (sizer.succeeded or sizer.failed):
        if not blocked(step, served, sizer_pods, bid):
            step.progress(served, "Sizing", f"Job {name} is measuring the images", bid)
        return None
    outcome = job_outcome(step, inputs, sizer, sizer_pods)
    if isinstance(outcome, Problem):
        step.fail(served, outcome, bid)
        return None
    size = auto_size_gib(outcome[0].total_bytes)
    step.emit(
        rs.NORMAL,
        "Sized",
        f"the images take {outcome[0].total_bytes} bytes compressed: a {size}Gi disk",
    )
    return size


def blocked(step: Pass, served: SnapshotState | None, pods: Iterable[BuilderPod], bid: str) -> bool:
    """A running Job whose pod cannot run (no node fits it, its image cannot be pulled):
    said in status and, once, in a Warning Event. Not a failure: it may still start."""
    pod = next((p for p in pods if p.blocked is not None), None)
    if pod is None or pod.blocked is None:
        return False
    settings = step.settings
    reason, message = rf.builder_blocked(
        pod.name, *pod.blocked, settings.cpu, settings.memory, settings.builder_image
    )
    before = step.obs.cache.status.get("message")
    step.progress(served, reason, message, bid)
    if step.status.get("message") != before:
        step.emit(rs.WARNING, reason, message)
    return True


def _newest_first(pods: Iterable[BuilderPod]) -> list[BuilderPod]:
    return sorted(pods, key=lambda p: p.created or datetime.min, reverse=True)


def _read_result(
    pods: Iterable[BuilderPod], requested: tuple[str, ...]
) -> tuple[BuildResult | BuildError, str] | str:
    """The newest readable termination message of a build's pods, decoded and raw, or why
    there is none."""
    problem = "no builder pod with a termination message is left"
    for pod in _newest_first(pods):
        if not pod.termination_message:
            continue
        try:
            return decode_build_result(pod.termination_message, requested), pod.termination_message
        except InvalidBuildResult as exc:
            problem = str(exc)
    return problem


def job_outcome(
    step: Pass, inputs: mb.BuildInputs, job: JobState, pods: list[BuilderPod]
) -> tuple[BuildResult, str] | Problem:
    """A finished Job's result and its raw termination message, or why it failed."""
    ns = step.settings.namespace
    logs = f"kubectl logs -n {ns} job/{job.name}"
    read = _read_result(pods, inputs.images)
    decoded = read if isinstance(read, str) else read[0]
    if isinstance(decoded, BuildError):
        reason = decoded.reason or rf.BUILD_FAILED
        message = rf.builder_failure(
            reason,
            decoded.message,
            size_gib=inputs.size_gib,
            secrets=inputs.pull_secrets,
            logs=logs,
        )
        return Problem(reason if reason in rf.TERMINAL else rf.BUILD_FAILED, message)
    if job.succeeded:
        if isinstance(decoded, BuildResult) and not isinstance(read, str):
            return decoded, read[1]
        return Problem(rf.RESULT_UNREADABLE, rf.result_unreadable(job.name, str(decoded)))
    if job.reason == "DeadlineExceeded":
        return Problem(
            rf.DEADLINE_EXCEEDED,
            rf.deadline_exceeded(step.settings.build_deadline_seconds, job.name),
        )
    if any(p.reason == "OOMKilled" for p in pods):
        return Problem(rf.OUT_OF_MEMORY, rf.out_of_memory(step.settings.memory))
    return Problem(rf.BUILD_FAILED, rf.unknown_job_failure(job.name, job.reason, job.message, logs))
