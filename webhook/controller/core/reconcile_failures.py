"""Failure messages for ImageCache status: what went wrong and what to do about it."""

from __future__ import annotations

from webhook.controller.core import reconcile_names as rn
from webhook.core.build_errors import Reason

RETRY_HINT = (
    f"to retry with the same spec, set the annotation {rn.REBUILD_ANNOTATION} to a new value"
)

# Condition reasons that end a build attempt; any other Built=False reason is progress.
INVALID_SPEC = "InvalidSpec"
SNAPSHOT_CLASS_MISSING = "SnapshotClassMissing"
SNAPSHOT_FAILED = "SnapshotFailed"
DEADLINE_EXCEEDED = "DeadlineExceeded"
OUT_OF_MEMORY = "OutOfMemory"
BUILD_FAILED = "BuildFailed"
RESULT_UNREADABLE = "BuildResultUnreadable"
PULL_SECRET_MISSING = "PullSecretMissing"
PULL_SECRET_REFUSED = "PullSecretNotAllowed"
TERMINAL = frozenset(
    {
        INVALID_SPEC,
        SNAPSHOT_CLASS_MISSING,
        SNAPSHOT_FAILED,
        DEADLINE_EXCEEDED,
        OUT_OF_MEMORY,
        BUILD_FAILED,
        RESULT_UNREADABLE,
        PULL_SECRET_MISSING,
        PULL_SECRET_REFUSED,
        *(reason.value for reason in Reason),
    }
)


def builder_failure(
    reason: str, message: str, *, size_gib: int | None, secrets: tuple[str, ...], logs: str
) -> str:
    """`logs`: a kubectl command that shows the builder's log (gone once cleaned up)."""
    message = message.rstrip(". ") or "the builder failed without a message"
    if reason == Reason.IMAGE_NOT_FOUND:
        return f"{message}. Check spec.images: registry, repository and tag must exist"
    if reason == Reason.UNAUTHORIZED:
        named = ", ".join(secrets) if secrets else "none"
        return (
            f"{message}. Put a kubernetes.io/dockerconfigjson Secret that can pull it in "
            f"spec.imagePullSecrets as namespace/name (now: {named})"
        )
    if reason == Reason.DISK_FULL:
        disk = f"the {size_gib}Gi cache disk" if size_gib else "the cache disk"
        return (
            f"{message}. {disk} is too small: set spec.imageCacheSize larger, or to 0 to size "
            "it from the images"
        )
    if reason == Reason.REGISTRY_UNREACHABLE:
        return (
            f"{message}. Check the registry host and the network from the controller's "
            f"namespace (plain-HTTP registries go in spec.insecureRegistries); {RETRY_HINT}"
        )
    if reason == Reason.DIGEST_MISMATCH:
        return f"{message}. The registry sent content that does not match its digest; {RETRY_HINT}"
    if reason == Reason.INVALID_ARGUMENT:
        return f"{message}. Fix the ImageCache spec"
    return f"{message}. Builder log: {logs}; {RETRY_HINT}"


def deadline_exceeded(deadline_seconds: int, job: str) -> str:
    return (
        f"the build did not finish within {deadline_seconds}s and builder Job {job} was "
        "stopped: check that the registries are reachable and fast enough, or raise the "
        f"controller's --build-deadline; {RETRY_HINT}"
    )


def out_of_memory(memory: str) -> str:
    return f"the builder ran out of memory ({memory}): raise the controller's --builder-memory"


def unknown_job_failure(job: str, reason: str, message: str, logs: str) -> str:
    detail = f"{reason}: {message}" if message else reason or "no reason given"
    return f"builder Job {job} failed ({detail}). Builder log: {logs}; {RETRY_HINT}"


def result_unreadable(job: str, problem: str) -> str:
    return (
        f"builder Job {job} succeeded but its result could not be read ({problem}); is the "
        f"builder image the same version as the controller? {RETRY_HINT}"
    )


def snapshot_failed(name: str, namespace: str, error: str, snapshot_class: str | None) -> str:
    klass = snapshot_class or "the default class"
    return (
        f"VolumeSnapshot {namespace}/{name} failed: {error}. Check the CSI driver and "
        f"VolumeSnapshotClass {klass}; {RETRY_HINT}"
    )


def snapshot_class_missing(name: str | None, known: list[str]) -> str:
    have = ", ".join(known) if known else "none"
    if name is None:
        return (
            "no VolumeSnapshotClass is named and none is marked default "
            "(snapshot.storage.kubernetes.io/is-default-class=true): set "
            f"spec.volumeSnapshotClassName or the controller's --snapshot-class (classes: {have})"
        )
    return (
        f"VolumeSnapshotClass {name!r} does not exist: create it or set "
        f"spec.volumeSnapshotClassName to one that does (classes: {have})"
    )


def pull_secret_missing(source: str, problem: str) -> str:
    return (
        f"pull secret {source} (spec.imagePullSecrets): {problem}. Create it as a "
        "kubernetes.io/dockerconfigjson Secret or fix the reference"
    )


def pull_secret_refused(index: int, ref: str, own: str, allowed: tuple[str, ...]) -> str:
    namespace = ref.partition("/")[0]
    where = ", ".join(sorted({own, *allowed}))
    return (
        f"spec.imagePullSecrets[{index}] {ref}: the controller may not read Secrets in "
        f"namespace {namespace} (allowed: {where}). Use a pull secret from one of those "
        f"namespaces, or add {namespace} to the chart value controller.pullSecretNamespaces "
        "(the controller's --pull-secret-namespace)"
    )


def builder_blocked(
    pod: str, why: str, detail: str, cpu: str, memory: str, image: str
) -> tuple[str, str]:
    """The condition reason and message of a builder pod that cannot run, with what to do."""
    detail = detail.rstrip(". ")
    if why == "Unschedulable" and "persistentvolumeclaim" in detail.lower():
        return "BuilderUnschedulable", (
            f"builder pod {pod} cannot be scheduled: {detail}. Its disk's claim is not bound: "
            "check the StorageClass (chart value builder.storageClassName, the ImageCache's "
            "spec.storageClassName) and that it can provision a volume on a node"
        )
    if why == "Unschedulable":
        return "BuilderUnschedulable", (
            f"builder pod {pod} cannot be scheduled: {detail}. It requests {cpu} CPU and "
            f"{memory} memory: lower the chart values builder.cpu / builder.memory (the "
            "controller's --builder-cpu / --builder-memory) or add a node that fits"
        )
    if why == "CreateContainerConfigError":
        return "BuilderCannotStart", (
            f"builder pod {pod} cannot start: {detail}. Check the builder's ServiceAccount "
            "and the controller's --builder-* settings"
        )
    return "BuilderImagePullFailed", (
        f"builder pod {pod} cannot pull its image {image} ({why}: {detail}). Check the chart "
        "values image / builder.image (the controller's --builder-image) and that the nodes "
        "can pull it (imagePullSecrets)"
    )
