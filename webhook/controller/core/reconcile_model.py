"""What the reconcile planner reads (observed objects, reduced to what matters) and what it
returns (actions for the shell to carry out). Plain data: the shell builds these from API
objects with the `*_state` readers below, the planner never sees a client."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from webhook.controller.core import reconcile_names as rn
from webhook.core import names
from webhook.core.caches import parse_time

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Settings:
    namespace: str  # where builds and primary snapshots live
    builder_image: str
    builder_command: tuple[str, ...] = ("imagecache",)
    storage_class: str | None = None
    snapshot_class: str | None = None  # None: the cluster's default VolumeSnapshotClass
    default_size_gib: int = 20  # for caches without imageCacheSize; 0 = size automatically
    platforms: tuple[str, ...] = ("linux/amd64",)
    cpu: str = "500m"  # request: a build fits beside other pods on a small node
    cpu_limit: str | None = "2"
    memory: str = "4Gi"
    build_deadline_seconds: int = 3600
    backoff_limit: int = 1
    in_use_grace_seconds: int = 300
    builder_service_account: str | None = None
    image_pull_policy: str = "IfNotPresent"
    resync_seconds: int = 600
    # Where spec.imagePullSecrets may point besides `namespace`; ("*",): anywhere.
    pull_secret_namespaces: tuple[str, ...] = ()
    # Unpack layers under /layers/ for the node snapshotter (issue 11): the builder then runs
    # as root with the capabilities LAYER_CAPABILITIES names (docs/builder.md).
    builder_layers: bool = False
    # The builder Jobs log as the controller does (its --log-level and --log-format).
    log_level: str = "info"
    log_format: str = "json"


@dataclass(frozen=True, slots=True)
class Cache:
    name: str
    uid: str
    generation: int
    deleting: bool
    finalizers: tuple[str, ...]
    annotations: Mapping[str, str]
    spec: Mapping[str, Any]
    status: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class JobState:
    name: str
    bid: str
    component: str  # rn.BUILDER or rn.SIZER
    succeeded: bool
    failed: bool
    reason: str = ""  # the Failed condition's reason (BackoffLimitExceeded, DeadlineExceeded)
    message: str = ""
    start: datetime | None = None
    deleting: bool = False


@dataclass(frozen=True, slots=True)
class BuilderPod:
    name: str
    bid: str
    component: str
    phase: str
    termination_message: str | None
    exit_code: int | None
    reason: str  # the terminated state's reason: Completed, Error, OOMKilled, ...
    created: datetime | None
    # Why it cannot run: (Unschedulable | ImagePullBackOff | ..., the kubelet's or the
    # scheduler's message); None while it can.
    blocked: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class OwnedObject:
    """A PVC or Secret of a build: its existence and size is all the planner needs."""

    kind: str
    name: str
    bid: str
    size: str | None = None
    deleting: bool = False


@dataclass(frozen=True, slots=True)
class SnapshotState:
    name: str
    namespace: str
    bid: str
    component: str  # rn.PRIMARY or rn.COPY
    ready: bool
    error: str | None
    bound_content: str | None
    restore_size: str | None
    result: str | None  # RESULT_ANNOTATION: the builder's termination message
    source_content: str | None = None  # copies: spec.source.volumeSnapshotContentName
    deleting: bool = False


@dataclass(frozen=True, slots=True)
class ContentState:
    name: str
    bid: str
    handle: str | None
    driver: str | None
    ref_namespace: str | None  # spec.volumeSnapshotRef.namespace
    component: str = ""  # rn.COPY for the copies' contents; a primary's has no labels of ours
    deleting: bool = False


@dataclass(frozen=True, slots=True)
class UserPod:
    namespace: str
    name: str
    uid: str
    created: datetime | None
    phase: str
    annotations: Mapping[str, str] = field(default_factory=dict)
    clones: str | None = None  # the VolumeSnapshot its imagecache volume's claim clones


@dataclass(frozen=True, slots=True)
class ClaimState:
    """A PersistentVolumeClaim labelled with a cache: a pod's disk being cloned."""

    namespace: str
    name: str
    snapshot: str | None  # spec.dataSource, when it is a VolumeSnapshot
    bound: bool
    deleting: bool = False


@dataclass(frozen=True, slots=True)
class SnapshotClass:
    name: str
    driver: str
    default: bool


@dataclass(frozen=True, slots=True)
class Observed:
    """Everything the planner may look at for one cache."""

    cache: Cache
    jobs: tuple[JobState, ...] = ()
    builder_pods: tuple[BuilderPod, ...] = ()
    owned: tuple[OwnedObject, ...] = ()  # PVCs and Secrets
    snapshots: tuple[SnapshotState, ...] = ()  # primaries and copies
    contents: tuple[ContentState, ...] = ()  # copies' contents and fetched primary contents
    pods: tuple[UserPod, ...] = ()
    snapshot_classes: tuple[SnapshotClass, ...] = ()
    classes_known: bool = True  # False: VolumeSnapshotClasses could not be listed
    claims: tuple[ClaimState, ...] = ()  # pods' claims labelled with this cache
    labelled_namespaces: tuple[str, ...] = ()  # namespaces labelled use-image-cache
    copy_problems: Mapping[str, str] = field(default_factory=dict)  # namespace -> why not


# Actions. The shell carries them out in order and stops at the first failure (the queue
# retries with backoff); every one of them is safe to repeat. An action that deserves an
# Event carries it: the shell writes it once the action is done (for a Create, only when it
# made the object), or just before an action the cache may not outlive (`event_first`), so
# no Event ever depends on where it sits in the plan.


@dataclass(frozen=True, slots=True)
class Emit:
    """An Event on the cache. As an action of its own it tells the cache's state (a failure,
    a deferral); as another action's `event` it tells what that action did."""

    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Create:
    obj: Obj
    event: Emit | None = None  # written only if this Create made the object


@dataclass(frozen=True, slots=True)
class Delete:
    api_version: str
    kind: str
    namespace: str | None
    name: str
    event: Emit | None = None


@dataclass(frozen=True, slots=True)
class CopyPullSecrets:
    """Read the `sources` (namespace/name), put each one's .dockerconfigjson under key
    `<n>.json` of `secret` (a manifest without data), and create it."""

    secret: Obj
    sources: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PatchStatus:
    status: Obj


@dataclass(frozen=True, slots=True)
class AddFinalizer:
    pass


@dataclass(frozen=True, slots=True)
class RemoveFinalizer:
    event: Emit | None = None


@dataclass(frozen=True, slots=True)
class DeleteCache:
    event: Emit | None = None


Action = (
    Create
    | Delete
    | CopyPullSecrets
    | PatchStatus
    | AddFinalizer
    | RemoveFinalizer
    | Emit
    | DeleteCache
)


@dataclass(frozen=True, slots=True)
class Plan:
    actions: tuple[Action, ...]
    requeue_after: float | None = None  # seconds; None: wait for a watch event


def event_of(action: Action) -> Emit | None:
    """The Event an action writes: its own if it is one, else the one it carries."""
    if isinstance(action, Emit):
        return action
    if isinstance(action, Create | Delete | RemoveFinalizer | DeleteCache):
        return action.event
    return None


def event_first(action: Action) -> bool:
    """Whether the action's Event is written before it: the cache may be gone right after
    these, and whoever saw it go must find the Event already written."""
    return isinstance(action, RemoveFinalizer | DeleteCache)


# Readers: API objects (dicts as the API returns them) -> the states above.


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return _meta(obj).get("labels") or {}


def _deleting(obj: Mapping[str, Any]) -> bool:
    return bool(_meta(obj).get("deletionTimestamp"))


def cache_state(obj: Mapping[str, Any]) -> Cache:
    meta = _meta(obj)
    return Cache(
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation") or 0),
        deleting=_deleting(obj),
        finalizers=tuple(meta.get("finalizers") or ()),
        annotations=dict(meta.get("annotations") or {}),
        spec=obj.get("spec") or {},
        status=obj.get("status") or {},
    )


def job_state(obj: Mapping[str, Any]) -> JobState:
    status = obj.get("status") or {}
    labels = _labels(obj)
    succeeded = failed = False
    reason = message = ""
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            succeeded = True
        elif condition.get("type") == "Failed":
            failed = True
            reason = str(condition.get("reason") or "")
            message = str(condition.get("message") or "")
    return JobState(
        name=str(_meta(obj).get("name", "")),
        bid=labels.get(rn.BUILD_LABEL, ""),
        component=labels.get(rn.COMPONENT_LABEL, ""),
        succeeded=succeeded,
        failed=failed,
        reason=reason,
        message=message,
        start=parse_time(status.get("startTime")),
        deleting=_deleting(obj),
    )


def builder_pod_state(obj: Mapping[str, Any]) -> BuilderPod:
    status = obj.get("status") or {}
    labels = _labels(obj)
    message: str | None = None
    exit_code: int | None = None
    reason = ""
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or (
            container.get("lastState") or {}
        ).get("terminated")
        if terminated:
            message = terminated.get("message")
            exit_code = terminated.get("exitCode")
            reason = str(terminated.get("reason") or "")
            break
    return BuilderPod(
        name=str(_meta(obj).get("name", "")),
        bid=labels.get(rn.BUILD_LABEL, ""),
        component=labels.get(rn.COMPONENT_LABEL, ""),
        phase=str(status.get("phase") or ""),
        termination_message=message,
        exit_code=exit_code,
        reason=reason,
        created=parse_time(_meta(obj).get("creationTimestamp")),
        blocked=_blocked(status),
    )


BLOCKING_WAITS = frozenset(
    {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError"}
)


def _claim_not_made_yet(message: str) -> bool:
    """The scheduler's 'persistentvolumeclaim "X" not found': the build disk's claim is
    created right after the Job, so its pod may be tried first."""
    text = message.lower()
    return "persistentvolumeclaim" in text and "not found" in text


def _blocked(status: Mapping[str, Any]) -> tuple[str, str] | None:
    """Why a pod cannot run: the scheduler found no node, or its image cannot be pulled."""
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            message = str(condition.get("message") or "no node fits it")
            if _claim_not_made_yet(message):
                return None  # the Job's pod came before its disk's claim: that passes
            return "Unschedulable", message
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in BLOCKING_WAITS:
            return str(waiting["reason"]), str(waiting.get("message") or waiting["reason"])
    return None


def owned_state(obj: Mapping[str, Any], kind: str) -> OwnedObject:
    """`kind`: items of a LIST carry no kind of their own."""
    spec = obj.get("spec") or {}
    size = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
    return OwnedObject(
        kind=kind,
        name=str(_meta(obj).get("name", "")),
        bid=_labels(obj).get(rn.BUILD_LABEL, ""),
        size=str(size) if size is not None else None,
        deleting=_deleting(obj),
    )


def snapshot_state(obj: Mapping[str, Any]) -> SnapshotState:
    status = obj.get("status") or {}
    labels = _labels(obj)
    error = status.get("error") or {}
    source = (obj.get("spec") or {}).get("source") or {}
    restore = status.get("restoreSize")
    return SnapshotState(
        name=str(_meta(obj).get("name", "")),
        namespace=str(_meta(obj).get("namespace", "")),
        bid=labels.get(rn.BUILD_LABEL, ""),
        component=labels.get(rn.COMPONENT_LABEL, ""),
        ready=status.get("readyToUse") is True,
        error=str(error.get("message")) if error.get("message") else None,
        bound_content=status.get("boundVolumeSnapshotContentName"),
        restore_size=str(restore) if restore not in (None, "") else None,
        result=(_meta(obj).get("annotations") or {}).get(rn.RESULT_ANNOTATION),
        source_content=source.get("volumeSnapshotContentName"),
        deleting=_deleting(obj),
    )


def content_state(obj: Mapping[str, Any]) -> ContentState:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    handle = (spec.get("source") or {}).get("snapshotHandle") or status.get("snapshotHandle")
    return ContentState(
        name=str(_meta(obj).get("name", "")),
        bid=_labels(obj).get(rn.BUILD_LABEL, ""),
        handle=handle,
        driver=spec.get("driver"),
        ref_namespace=(spec.get("volumeSnapshotRef") or {}).get("namespace"),
        component=_labels(obj).get(rn.COMPONENT_LABEL, ""),
        deleting=_deleting(obj),
    )


def user_pod_state(obj: Mapping[str, Any]) -> UserPod:
    meta = _meta(obj)
    return UserPod(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        created=parse_time(meta.get("creationTimestamp")),
        phase=str((obj.get("status") or {}).get("phase") or ""),
        annotations=dict(meta.get("annotations") or {}),
        clones=cloned_snapshot(obj),
    )


def cloned_snapshot(pod: Mapping[str, Any]) -> str | None:
    """The VolumeSnapshot the webhook's ephemeral volume clones (names.VOLUME_NAME)."""
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        if volume.get("name") != names.VOLUME_NAME:
            continue
        template = (volume.get("ephemeral") or {}).get("volumeClaimTemplate") or {}
        source = (template.get("spec") or {}).get("dataSource") or {}
        if source.get("kind") == "VolumeSnapshot" and source.get("name"):
            return str(source["name"])
    return None


def claim_name(pod: str) -> str:
    """The claim the ephemeral volume controller makes for a pod's cache volume."""
    return f"{pod}-{names.VOLUME_NAME}"


def claim_state(obj: Mapping[str, Any]) -> ClaimState:
    spec = obj.get("spec") or {}
    source = spec.get("dataSource") or {}
    snapshot = source.get("name") if source.get("kind") == "VolumeSnapshot" else None
    return ClaimState(
        namespace=str(_meta(obj).get("namespace", "")),
        name=str(_meta(obj).get("name", "")),
        snapshot=str(snapshot) if snapshot else None,
        bound=(obj.get("status") or {}).get("phase") == "Bound",
        deleting=_deleting(obj),
    )


DEFAULT_CLASS_ANNOTATION = "snapshot.storage.kubernetes.io/is-default-class"


def snapshot_class_state(obj: Mapping[str, Any]) -> SnapshotClass:
    annotations = _meta(obj).get("annotations") or {}
    return SnapshotClass(
        name=str(_meta(obj).get("name", "")),
        driver=str(obj.get("driver", "")),
        default=annotations.get(DEFAULT_CLASS_ANNOTATION) == "true",
    )
