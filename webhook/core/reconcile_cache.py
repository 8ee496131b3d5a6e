"""The reconcile plan for one ImageCache: observed state + settings + now -> actions + status.

The plan is derived from what exists, never from memory of earlier passes: every object a
build makes has the build id in its name and labels, so a controller that was killed at any
point and started again computes the same next step. Steps, for build id B (a hash of the
spec fields that change the disk's content, see reconcile_names.build_id):

  (sizing Job, for auto-size) -> pull Secret + PVC + builder Job -> primary VolumeSnapshot
  -> Ready (status from the snapshot) -> the Job, its pods, the PVC and the Secret deleted.

A previous Ready snapshot keeps serving (phase stays Ready) while B builds and goes only once
B is Ready. Failures set Built=False with a terminal reason; they are not retried until the
spec (or the rebuild annotation) changes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from webhook.core import manifests_build as mb
from webhook.core import manifests_snapshot as ms
from webhook.core import reconcile_copies as rcp
from webhook.core import reconcile_failures as rf
from webhook.core import reconcile_names as rn
from webhook.core.build_result import (
    BuildError,
    BuildResult,
    InvalidBuildResult,
    decode_build_result,
)
from webhook.core.cache_namespaces import refused_pull_secret
from webhook.core.caches import parse_time
from webhook.core.imageref import InvalidReference, parse
from webhook.core.quantity import GIB, InvalidQuantity, parse_bytes
from webhook.core.reconcile_model import (
    Action,
    AddFinalizer,
    BuilderPod,
    CopyPullSecrets,
    Create,
    Delete,
    DeleteCache,
    Emit,
    JobState,
    Obj,
    Observed,
    OwnedObject,
    PatchStatus,
    Plan,
    RemoveFinalizer,
    Settings,
    SnapshotState,
)

PENDING, CREATING, READY, FAILED, EXPIRED = "Pending", "Creating", "Ready", "Failed", "Expired"
MAX_SIZE_GIB = 10000
WAIT_SECONDS = 10.0  # requeue while waiting on something no watch event announces
NORMAL, WARNING = "Normal", "Warning"


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def auto_size_gib(total_bytes: int) -> int:
    """DESIGN.md: the images' compressed sizes x 1.3 + 1 GiB, rounded up."""
    return max(1, min(MAX_SIZE_GIB, math.ceil(total_bytes * 1.3 / GIB + 1)))


@dataclass(frozen=True, slots=True)
class Problem:
    reason: str
    message: str


def _spec_problem(spec: Mapping[str, Any]) -> Problem | None:
    """What the CRD schema cannot check: image references as a registry parses them."""
    images = spec.get("images")
    if not isinstance(images, list) or not images:
        return Problem(rf.INVALID_SPEC, "spec.images is empty: list the images to cache")
    for index, image in enumerate(images):
        try:
            parse(str(image))
        except InvalidReference as exc:
            return Problem(rf.INVALID_SPEC, f"spec.images[{index}]: {exc}")
    for index, ref in enumerate(spec.get("imagePullSecrets") or []):
        namespace, slash, name = str(ref).partition("/")
        if not (slash and namespace and name and "/" not in name):
            return Problem(
                rf.INVALID_SPEC,
                f"spec.imagePullSecrets[{index}] {ref!r} must be namespace/name",
            )
    return None


def build_inputs(obs: Observed, settings: Settings) -> mb.BuildInputs:
    cache = obs.cache
    spec = cache.spec
    size = spec.get("imageCacheSize")
    if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
        size_gib: int | None = size or None
    else:
        size_gib = settings.default_size_gib or None
    return mb.BuildInputs(
        bid=rn.build_id(spec, cache.annotations, str(size if size is not None else "default")),
        images=tuple(str(i) for i in spec.get("images") or ()),
        platforms=tuple(spec.get("platforms") or settings.platforms),
        insecure_registries=tuple(spec.get("insecureRegistries") or ()),
        pull_secrets=tuple(spec.get("imagePullSecrets") or ()),
        storage_class=spec.get("storageClassName") or settings.storage_class,
        snapshot_class=spec.get("volumeSnapshotClassName") or settings.snapshot_class,
        size_gib=size_gib,
        serve_credentialed=cache.annotations.get(rn.SERVE_CREDENTIALED_ANNOTATION) == "true",
    )


def _snapshot_class(obs: Observed, wanted: str | None) -> tuple[str | None, Problem | None]:
    """The class to use, or why there is none."""
    if not obs.classes_known:
        return wanted, None
    known = sorted(c.name for c in obs.snapshot_classes)
    if wanted is not None:
        if wanted in known:
            return wanted, None
        return None, Problem(rf.SNAPSHOT_CLASS_MISSING, rf.snapshot_class_missing(wanted, known))
    defaults = sorted(c.name for c in obs.snapshot_classes if c.default)
    if defaults:
        return defaults[0], None
    return None, Problem(rf.SNAPSHOT_CLASS_MISSING, rf.snapshot_class_missing(None, known))


def _condition(
    old: Iterable[Mapping[str, Any]], kind: str, status: str, reason: str, message: str, now: str
) -> Obj:
    for condition in old:
        if condition.get("type") == kind and condition.get("status") == status:
            now = str(condition.get("lastTransitionTime") or now)
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message or reason,
        "lastTransitionTime": now,
    }


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


def _read_result(
    pods: Iterable[BuilderPod], requested: tuple[str, ...]
) -> BuildResult | BuildError | str:
    """The newest readable termination message of a build's pods, or why there is none."""
    problem = "no builder pod with a termination message is left"
    for pod in sorted(pods, key=lambda p: p.created or datetime.min, reverse=True):
        if not pod.termination_message:
            continue
        try:
            return decode_build_result(pod.termination_message, requested)
        except InvalidBuildResult as exc:
            problem = str(exc)
    return problem


@dataclass
class _Pass:
    """One planning pass: accumulates actions and the status to write."""

    obs: Observed
    settings: Settings
    now: datetime
    actions: list[Action] = field(default_factory=list)
    status: Obj = field(default_factory=dict)
    requeue: float | None = None

    def __post_init__(self) -> None:
        self.status = dict(self.obs.cache.status)
        self.stamp = rfc3339(self.now)

    # --- helpers -------------------------------------------------------------------------

    @property
    def cache_name(self) -> str:
        return self.obs.cache.name

    def wait(self, seconds: float) -> None:
        self.requeue = seconds if self.requeue is None else min(self.requeue, seconds)

    def emit(self, kind: str, reason: str, message: str) -> None:
        self.actions.append(Emit(kind, reason, message))

    def in_use(self, snapshots: Iterable[SnapshotState]) -> list[str]:
        """Who still clones one of `snapshots` (claims not Bound yet): they must not go."""
        users = rcp.in_use(self.obs, snapshots, self.now, self.settings.in_use_grace_seconds)
        if users:
            self.wait(rcp.POLL_SECONDS)
        return users

    def set_conditions(self, ready: tuple[str, str, str], built: tuple[str, str, str]) -> None:
        old = self.status.get("conditions") or []
        self.status["conditions"] = [
            _condition(old, "Ready", *ready, self.stamp),
            _condition(old, "Built", *built, self.stamp),
        ]

    def finish(self) -> Plan:
        self.status["observedGeneration"] = self.obs.cache.generation
        patch = status_patch(self.obs.cache.status, self.status)
        if patch:
            self.actions.append(PatchStatus(patch))
        return Plan(tuple(self.actions), self.requeue)

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        self.actions.append(Delete(api_version, kind, namespace, name))

    def delete_build(self, bid: str) -> int:
        """Delete the Job(s), their pods, the PVC and the Secret of build `bid`."""
        ns = self.settings.namespace
        before = len(self.actions)
        for job in self.obs.jobs:
            if job.bid == bid and not job.deleting:
                self.delete("batch/v1", "Job", ns, job.name)
        for pod in self.obs.builder_pods:
            if pod.bid == bid:
                self.delete("v1", "Pod", ns, pod.name)
        for owned in self.obs.owned:
            if owned.bid == bid and not owned.deleting:
                self.delete("v1", owned.kind, ns, owned.name)
        return len(self.actions) - before

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

    # --- outcomes ------------------------------------------------------------------------

    def progress(self, served: SnapshotState | None, reason: str, message: str, bid: str) -> None:
        self.status["buildId"] = bid
        if served is None:
            self.status["phase"] = CREATING
            self.status["message"] = message
            self.set_conditions(("False", reason, message), ("False", reason, message))
        else:
            self.status["phase"] = READY
            self.status["message"] = f"rebuilding for the changed spec ({message}); " + (
                f"serving snapshot {served.name} meanwhile"
            )
            self.set_conditions(
                ("True", "SnapshotReady", f"serving snapshot {served.name}"),
                ("False", reason, message),
            )

    def fail(self, served: SnapshotState | None, problem: Problem, bid: str) -> None:
        already = self._failed_for(bid)
        self.status["buildId"] = bid
        if served is None:
            self.status["phase"] = FAILED
            self.status["message"] = problem.message
            self.set_conditions(
                ("False", problem.reason, problem.message),
                ("False", problem.reason, problem.message),
            )
        else:
            self.status["phase"] = READY
            self.status["message"] = (
                f"rebuild failed: {problem.message}; still serving snapshot {served.name}"
            )
            self.set_conditions(
                ("True", "SnapshotReady", f"serving snapshot {served.name}"),
                ("False", problem.reason, problem.message),
            )
        if not already:
            self.emit(WARNING, problem.reason, problem.message)

    def _failed_for(self, bid: str) -> bool:
        if self.obs.cache.status.get("buildId") != bid:
            return False
        for condition in self.obs.cache.status.get("conditions") or []:
            if condition.get("type") == "Built" and condition.get("status") == "False":
                return condition.get("reason") in rf.TERMINAL
        return False


def plan(obs: Observed, settings: Settings, now: datetime) -> Plan:
    """The next actions for `obs.cache`."""
    step = _Pass(obs, settings, now)
    if obs.cache.deleting:
        return _plan_deletion(step)
    if rn.FINALIZER not in obs.cache.finalizers:
        step.actions.append(AddFinalizer())
    inputs = build_inputs(obs, settings)
    served = step.served()
    problem = _spec_problem(obs.cache.spec) or _refused_secret(obs.cache.spec, settings)
    if problem is not None:
        step.fail(served, problem, inputs.bid)
        _clean_stale(step, served, keep=None)
    elif served is not None and served.bid == inputs.bid:
        _plan_ready(step, served, inputs)
    else:
        _plan_build(step, served, inputs)
    if DeleteCache() not in step.actions:
        _plan_copies(step)
    return step.finish()


def _refused_secret(spec: Mapping[str, Any], settings: Settings) -> Problem | None:
    """A pull secret outside the namespaces the controller may read Secrets in."""
    refused = refused_pull_secret(spec, settings.pull_secret_namespaces, settings.namespace)
    if refused is None:
        return None
    return Problem(
        rf.PULL_SECRET_REFUSED,
        rf.pull_secret_refused(
            *refused, settings.namespace, settings.pull_secret_namespaces
        ),
    )


def _clean_stale(step: _Pass, served: SnapshotState | None, keep: str | None) -> None:
    """Delete builds other than `keep`, and primaries neither served nor being built, once
    no copy points at them and no claim still clones from them."""
    for bid in sorted(step.build_bids() - {keep}):
        if step.delete_build(bid):
            step.emit(
                NORMAL,
                "BuildCleanedUp",
                f"deleted build {bid}: its Job, pods, PVC and pull Secret",
            )
    keep_snapshots = {keep, served.bid if served else None}
    copies = [s for s in step.obs.snapshots if s.component == rn.COPY]
    for snap in step.primaries():
        if snap.bid in keep_snapshots or snap.deleting:
            continue
        if snap.ready and (any(c.bid == snap.bid for c in copies) or step.in_use([snap])):
            continue  # its copies go first (see reconcile_copies)
        step.delete(ms.SNAPSHOT_API, "VolumeSnapshot", snap.namespace, snap.name)
        if snap.ready:
            step.emit(NORMAL, "SnapshotDeleted", f"deleted superseded snapshot {snap.name}")


def _expire_time(step: _Pass, ready_time: str | None) -> str | None:
    days = step.obs.cache.spec.get("retentionDays")
    ready = parse_time(ready_time)
    if not isinstance(days, int) or days <= 0 or ready is None:
        return None
    return rfc3339(ready + timedelta(days=days))


def _plan_ready(step: _Pass, served: SnapshotState, inputs: mb.BuildInputs) -> None:
    status = step.status
    status["phase"] = READY
    status["buildId"] = inputs.bid
    count = len(status.get("images") or [])
    status["message"] = f"{count} image{'s' * (count != 1)} cached in snapshot {served.name}"
    expire = _expire_time(step, status.get("readyTime"))
    if expire is None:
        status.pop("expireTime", None)
    else:
        status["expireTime"] = expire
    step.set_conditions(
        ("True", "SnapshotReady", f"serving snapshot {served.name}"),
        ("True", "Built", f"built from the current spec (build {inputs.bid})"),
    )
    _clean_stale(step, served, keep=None)
    expires = parse_time(expire)
    if expires is None:
        return
    if expires > step.now:
        step.wait(max(1.0, (expires - step.now).total_seconds()))
        return
    busy = step.in_use(step.obs.snapshots)
    if busy:
        message = f"expired at {expire}; deleting once no claim clones it ({rcp.few(busy)})"
        if message != step.obs.cache.status.get("message"):
            step.emit(NORMAL, "ExpiryDeferred", message)
        status["message"] = message
        return
    status["phase"] = EXPIRED
    days = step.obs.cache.spec["retentionDays"]
    status["message"] = f"expired at {expire} (retentionDays {days})"
    step.set_conditions(("False", EXPIRED, status["message"]), ("True", "Built", "built"))
    step.emit(NORMAL, EXPIRED, f"{status['message']}: deleting the cache")
    step.actions.append(DeleteCache())


def _plan_copies(step: _Pass) -> None:
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
    served = rcp.Served(snap.bid, snap.name, str(handle), str(driver), klass)
    copies = rcp.plan_copies(step.obs, step.settings, served, step.now)
    step.actions += copies.actions
    if copies.requeue is not None:
        step.wait(copies.requeue)
    if copies.namespaces:
        status["namespaces"] = list(copies.namespaces)
    else:
        status.pop("namespaces", None)


def _plan_build(step: _Pass, served: SnapshotState | None, inputs: mb.BuildInputs) -> None:
    bid = inputs.bid
    if step._failed_for(bid):
        _clean_stale(step, served, keep=None)
        for failed in step.primaries():  # a snapshot that failed goes too
            if failed.bid == bid and not failed.deleting and not failed.ready:
                step.delete(ms.SNAPSHOT_API, "VolumeSnapshot", failed.namespace, failed.name)
        return
    _clean_stale(step, served, keep=bid)
    snapshot_class, problem = _snapshot_class(step.obs, inputs.snapshot_class)
    snap = next((s for s in step.primaries() if s.bid == bid), None)
    if snap is not None:
        _plan_snapshot(step, served, inputs, snap, snapshot_class)
        return
    if problem is not None:
        step.fail(served, problem, bid)
        return
    ns = step.settings.namespace
    jobs = [j for j in step.obs.jobs if j.bid == bid]
    pods = [p for p in step.obs.builder_pods if p.bid == bid]
    builder = next((j for j in jobs if j.component == rn.BUILDER), None)
    if builder is not None:
        _plan_builder(step, served, inputs, builder, pods, snapshot_class)
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
        size = _plan_sizing(step, served, inputs, jobs, pods, owned)
        if size is None:
            return
    if any(o.deleting for o in owned.values()):
        step.progress(served, "Cleaning", "waiting for the previous attempt's objects to go", bid)
        step.wait(WAIT_SECONDS)
        return
    _ensure_secret(step, inputs, owned)
    if disk is None:
        step.actions.append(Create(mb.pvc(step.obs.cache, step.settings, inputs, size)))
    step.actions.append(Create(mb.builder_job(step.obs.cache, step.settings, inputs)))
    job = rn.job_name(step.cache_name, bid)
    count = len(inputs.images)
    step.emit(
        NORMAL,
        "BuildStarted",
        f"builder Job {ns}/{job} pulls {count} image{'s' * (count != 1)} onto a {size}Gi disk "
        f"({rn.pvc_name(step.cache_name, bid)}, storage class "
        f"{inputs.storage_class or 'default'})",
    )
    step.progress(served, "Building", f"builder Job {job} is pulling the images", bid)


def _ensure_secret(step: _Pass, inputs: mb.BuildInputs, owned: Mapping[str, OwnedObject]) -> None:
    if inputs.pull_secrets and "Secret" not in owned:
        step.actions.append(
            CopyPullSecrets(
                mb.pull_secret(step.obs.cache, step.settings, inputs), inputs.pull_secrets
            )
        )


def _plan_sizing(
    step: _Pass,
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
    if sizer is None:
        _ensure_secret(step, inputs, owned)
        step.actions.append(Create(mb.sizer_job(step.obs.cache, step.settings, inputs)))
        step.emit(NORMAL, "SizingStarted", f"Job {name} resolves the images to size the disk")
        step.progress(served, "Sizing", f"Job {name} is measuring the images", bid)
        return None
    if sizer.deleting or not (sizer.succeeded or sizer.failed):
        if not _blocked(step, served, [p for p in pods if p.component == rn.SIZER], bid):
            step.progress(served, "Sizing", f"Job {name} is measuring the images", bid)
        return None
    sizer_pods = [p for p in pods if p.component == rn.SIZER]
    outcome = _job_outcome(step, inputs, sizer, sizer_pods)
    if isinstance(outcome, Problem):
        step.fail(served, outcome, bid)
        return None
    size = auto_size_gib(outcome[0].total_bytes)
    step.emit(
        NORMAL,
        "Sized",
        f"the images take {outcome[0].total_bytes} bytes compressed: a {size}Gi disk",
    )
    return size


def _blocked(
    step: _Pass, served: SnapshotState | None, pods: Iterable[BuilderPod], bid: str
) -> bool:
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
        step.emit(WARNING, reason, message)
    return True


def _job_outcome(
    step: _Pass, inputs: mb.BuildInputs, job: JobState, pods: list[BuilderPod]
) -> tuple[BuildResult, str] | Problem:
    """A finished Job's result and its raw termination message, or why it failed."""
    ns = step.settings.namespace
    logs = f"kubectl logs -n {ns} job/{job.name}"
    decoded = _read_result(pods, inputs.images)
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
        if isinstance(decoded, BuildResult):
            raw = next(
                p.termination_message
                for p in sorted(pods, key=lambda p: p.created or datetime.min, reverse=True)
                if p.termination_message
            )
            return decoded, raw
        return Problem(rf.RESULT_UNREADABLE, rf.result_unreadable(job.name, decoded))
    if job.reason == "DeadlineExceeded":
        return Problem(
            rf.DEADLINE_EXCEEDED,
            rf.deadline_exceeded(step.settings.build_deadline_seconds, job.name),
        )
    if any(p.reason == "OOMKilled" for p in pods):
        return Problem(rf.OUT_OF_MEMORY, rf.out_of_memory(step.settings.memory))
    return Problem(rf.BUILD_FAILED, rf.unknown_job_failure(job.name, job.reason, job.message, logs))


def _plan_builder(
    step: _Pass,
    served: SnapshotState | None,
    inputs: mb.BuildInputs,
    job: JobState,
    pods: list[BuilderPod],
    snapshot_class: str | None,
) -> None:
    bid = inputs.bid
    if job.deleting or not (job.succeeded or job.failed):
        if not _blocked(step, served, [p for p in pods if p.component == rn.BUILDER], bid):
            step.progress(served, "Building", f"builder Job {job.name} is pulling the images", bid)
        return
    outcome = _job_outcome(step, inputs, job, [p for p in pods if p.component == rn.BUILDER])
    if isinstance(outcome, Problem):
        step.fail(served, outcome, bid)
        return
    result, raw = outcome
    snapshot = ms.primary_snapshot(
        step.obs.cache, step.settings.namespace, bid, snapshot_class, raw
    )
    step.actions.append(Create(snapshot))
    name = snapshot["metadata"]["name"]
    step.emit(
        NORMAL,
        "Built",
        f"pulled {len(result.images)} images ({result.total_bytes} bytes); taking snapshot {name}",
    )
    step.progress(served, "Snapshotting", f"waiting for snapshot {name} to be ready", bid)
    if served is None:  # a rebuild keeps showing the images the served snapshot holds
        images = images_from_result(result)
        step.status.update(images=images, imageCount=len(images))


def _plan_snapshot(
    step: _Pass,
    served: SnapshotState | None,
    inputs: mb.BuildInputs,
    snap: SnapshotState,
    snapshot_class: str | None,
) -> None:
    bid = inputs.bid
    if snap.error and not snap.ready:
        step.fail(
            served,
            Problem(
                rf.SNAPSHOT_FAILED,
                rf.snapshot_failed(snap.name, snap.namespace, snap.error, snapshot_class),
            ),
            bid,
        )
        return
    content = next((c for c in step.obs.contents if c.name == snap.bound_content), None)
    if not snap.ready or content is None or not content.handle or not content.driver:
        step.progress(served, "Snapshotting", f"waiting for snapshot {snap.name} to be ready", bid)
        if snap.ready:
            step.wait(WAIT_SECONDS)  # the content's handle is not watched
        return
    images: list[Obj] = []
    if snap.result:
        try:
            decoded = decode_build_result(snap.result, inputs.images)
        except InvalidBuildResult:
            decoded = None
        if isinstance(decoded, BuildResult):
            images = images_from_result(decoded)
    disk = next(
        (o for o in step.obs.owned if o.bid == bid and o.kind == "PersistentVolumeClaim"), None
    )
    restore = snap.restore_size or (disk.size if disk else None)
    status = step.status
    status.update(
        phase=READY,
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
    if snapshot_class:
        status["snapshotClassName"] = snapshot_class
    expire = _expire_time(step, step.stamp)
    if expire:
        status["expireTime"] = expire
    else:
        status.pop("expireTime", None)
    count = len(images)
    status["message"] = f"{count} image{'s' * (count != 1)} cached in snapshot {snap.name}"
    step.set_conditions(
        ("True", "SnapshotReady", f"serving snapshot {snap.name}"),
        ("True", "Built", f"built from the current spec (build {bid})"),
    )
    step.emit(
        NORMAL,
        READY,
        f"snapshot {snap.name} is ready (restore size {restore or 'unknown'})"
        + (f"; expires at {expire}" if expire else ""),
    )


def _plan_deletion(step: _Pass) -> Plan:
    obs = step.obs
    if rn.FINALIZER not in obs.cache.finalizers:
        return Plan(())
    busy = step.in_use(obs.snapshots)
    if busy:
        message = f"deleting once no claim clones its snapshots ({rcp.few(busy)})"
        if step.status.get("message") != message:
            step.status["message"] = message
            step.emit(NORMAL, "DeletionDeferred", message)
        return step.finish()
    remaining = 0
    for bid in sorted(step.build_bids()):
        step.delete_build(bid)
    remaining += len(obs.jobs) + len(obs.builder_pods) + len(obs.owned)
    for snap in obs.snapshots:
        remaining += 1
        if not snap.deleting:
            step.delete(ms.SNAPSHOT_API, "VolumeSnapshot", snap.namespace, snap.name)
    for content in obs.contents:
        if content.component != rn.COPY:
            continue  # a primary's content: the snapshot controller deletes it with its snapshot
        remaining += 1
        if not content.deleting:
            step.delete(ms.SNAPSHOT_API, "VolumeSnapshotContent", None, content.name)
    if remaining:
        step.wait(WAIT_SECONDS)
        return Plan(tuple(step.actions), step.requeue)
    step.emit(NORMAL, "CleanedUp", "deleted the snapshots, copies and build objects")
    step.actions.append(RemoveFinalizer())
    return Plan(tuple(step.actions), None)


def pull_secret_failure(obs: Observed, settings: Settings, message: str, now: datetime) -> Plan:
    """The status to write when a pull secret named by the spec cannot be copied."""
    step = _Pass(obs, settings, now)
    inputs = build_inputs(obs, settings)
    step.fail(step.served(), Problem(rf.PULL_SECRET_MISSING, message), inputs.bid)
    return step.finish()
