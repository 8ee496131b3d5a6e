"""Manifests of a build: the builder Job (and the sizing Job), its disk and its pull secret.

The builder runs as non-root with a read-only root filesystem, no privilege escalation and
no capabilities; it writes only to the cache disk and an emptyDir for temporary files.
With `builder_layers` (the node snapshotter's unpacked layers) the build Job alone runs as
root with exactly LAYER_CAPABILITIES, never privileged: file owners, setuid bits, 0:0
whiteout devices and trusted.overlay.opaque need them (docs/builder.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from webhook.controller.core import reconcile_names as rn
from webhook.controller.core.reconcile_model import Cache, Obj, Settings
from webhook.core import names

CACHE_MOUNT = "/cache"
SECRETS_MOUNT = "/var/run/imagecache/pull-secrets"
TMP_MOUNT = "/tmp"
TERMINATION_LOG = "/dev/termination-log"
NON_ROOT_UID = 65532
DOCKERCONFIG_KEY = ".dockerconfigjson"
LAYER_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "MKNOD", "SETFCAP",
                      "SYS_ADMIN")


def owner_reference(cache: Cache) -> Obj:
    # blockOwnerDeletion needs update rights on the owner's finalizers; the finalizer does
    # the ordered cleanup, the garbage collector is only the safety net.
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "name": cache.name,
        "uid": cache.uid,
        "controller": True,
        "blockOwnerDeletion": False,
    }


def _metadata(cache: Cache, name: str, namespace: str | None, labels: dict[str, str]) -> Obj:
    meta: Obj = {
        "name": name,
        "labels": labels,
        "annotations": {rn.CACHE_ANNOTATION: cache.name},
        "ownerReferences": [owner_reference(cache)],
    }
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


@dataclass(frozen=True, slots=True)
class BuildInputs:
    """What one build pulls, resolved from the spec and the controller's settings."""

    bid: str
    images: tuple[str, ...]
    platforms: tuple[str, ...]
    insecure_registries: tuple[str, ...]
    pull_secrets: tuple[str, ...]  # namespace/name of the sources
    storage_class: str | None
    snapshot_class: str | None
    size_gib: int | None  # None: sized automatically (a sizing Job runs first)
    serve_credentialed: bool


def pvc(cache: Cache, settings: Settings, inputs: BuildInputs, size_gib: int) -> Obj:
    spec: Obj = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": f"{size_gib}Gi"}},
    }
    if inputs.storage_class:
        spec["storageClassName"] = inputs.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(
            cache,
            rn.pvc_name(cache.name, inputs.bid),
            settings.namespace,
            rn.labels(cache.name, rn.DISK, inputs.bid),
        ),
        "spec": spec,
    }


def pull_secret(cache: Cache, settings: Settings, inputs: BuildInputs) -> Obj:
    """The temporary Secret, without data: the shell fills it from the sources."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(
            cache,
            rn.secret_name(cache.name, inputs.bid),
            settings.namespace,
            rn.labels(cache.name, rn.PULL_SECRET, inputs.bid),
        ),
    }


def secret_key(index: int) -> str:
    return f"{index}.json"


def _args(cache: Cache, inputs: BuildInputs, settings: Settings, output: str,
          resolve_only: bool, layers: bool = False) -> list[str]:
    args = ["build", "--name", cache.name]
    for image in inputs.images:
        args += ["--image", image]
    args += ["--output", output]
    for platform in inputs.platforms:
        args += ["--platform", platform]
    for index in range(len(inputs.pull_secrets)):
        args += ["--pull-secret-file", f"{SECRETS_MOUNT}/{secret_key(index)}"]
    for host in inputs.insecure_registries:
        args += ["--insecure-registry", host]
    args += ["--termination-log", TERMINATION_LOG]
    args += ["--log-level", settings.log_level, "--log-format", settings.log_format]
    if inputs.serve_credentialed:
        args.append("--serve-credentialed")
    if resolve_only:
        args.append("--resolve-only")
    if layers:
        args.append("--layers")
    return args


def _unpacking_privileges(pod_spec: Obj) -> None:
    """Root with the unpacking capabilities, nothing more (no privileged, no escalation)."""
    pod_spec["securityContext"] = {
        "runAsNonRoot": False, "runAsUser": 0, "runAsGroup": 0,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod_spec["containers"][0]["securityContext"]["capabilities"] = {
        "drop": ["ALL"], "add": list(LAYER_CAPABILITIES)}


def _job(
    cache: Cache,
    settings: Settings,
    inputs: BuildInputs,
    *,
    name: str,
    component: str,
    volumes: Sequence[Obj],
    mounts: Sequence[Obj],
    args: list[str],
) -> Obj:
    pod_spec: Obj = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": NON_ROOT_UID,
            "runAsGroup": NON_ROOT_UID,
            "fsGroup": NON_ROOT_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": component,
                "image": settings.builder_image,
                "imagePullPolicy": settings.image_pull_policy,
                "command": list(settings.builder_command),
                "args": args,
                "terminationMessagePath": TERMINATION_LOG,
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "resources": {
                    "requests": {"cpu": settings.cpu, "memory": settings.memory},
                    "limits": {
                        "memory": settings.memory,
                        **({"cpu": settings.cpu_limit} if settings.cpu_limit else {}),
                    },
                },
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [{"name": "tmp", "mountPath": TMP_MOUNT}, *mounts],
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {}}, *volumes],
    }
    if settings.builder_layers and component == rn.BUILDER:
        _unpacking_privileges(pod_spec)
    if settings.builder_service_account:
        pod_spec["serviceAccountName"] = settings.builder_service_account
    if inputs.pull_secrets:
        secret = rn.secret_name(cache.name, inputs.bid)
        pod_spec["volumes"].append({"name": "pull-secrets", "secret": {"secretName": secret}})
        pod_spec["containers"][0]["volumeMounts"].append(
            {"name": "pull-secrets", "mountPath": SECRETS_MOUNT, "readOnly": True}
        )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(
            cache, name, settings.namespace, rn.labels(cache.name, component, inputs.bid)
        ),
        "spec": {
            "backoffLimit": settings.backoff_limit,
            "activeDeadlineSeconds": settings.build_deadline_seconds,
            "template": {
                "metadata": {
                    "labels": rn.builder_pod_labels(cache.name, component, inputs.bid),
                    "annotations": {rn.CACHE_ANNOTATION: cache.name},
                },
                "spec": pod_spec,
            },
        },
    }


def builder_job(cache: Cache, settings: Settings, inputs: BuildInputs) -> Obj:
    return _job(
        cache,
        settings,
        inputs,
        name=rn.job_name(cache.name, inputs.bid),
        component=rn.BUILDER,
        volumes=[
            {
                "name": "cache",
                "persistentVolumeClaim": {"claimName": rn.pvc_name(cache.name, inputs.bid)},
            }
        ],
        mounts=[{"name": "cache", "mountPath": CACHE_MOUNT}],
        args=_args(cache, inputs, settings, CACHE_MOUNT, resolve_only=False,
                   layers=settings.builder_layers),
    )


def sizer_job(cache: Cache, settings: Settings, inputs: BuildInputs) -> Obj:
    """Resolves the images and reports their sizes without pulling layers (auto-sizing)."""
    return _job(
        cache,
        settings,
        inputs,
        name=rn.sizer_name(cache.name, inputs.bid),
        component=rn.SIZER,
        volumes=[],
        mounts=[],
        args=_args(cache, inputs, settings, f"{TMP_MOUNT}/layout", resolve_only=True,
                   layers=settings.builder_layers),
    )
