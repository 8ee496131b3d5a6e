"""ImageCache objects for tests, shaped as the apiserver returns them."""

from __future__ import annotations

import hashlib
from typing import Any

from webhook.core.imageref import normalize

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def _given(**fields: Any) -> dict[str, Any]:
    """The fields that are not None."""
    return {k: v for k, v in fields.items() if v is not None}


def fake_digest(image: str) -> str:
    return "sha256:" + hashlib.sha256(image.encode()).hexdigest()


def cache(
    name: str,
    images: list[str],
    *,
    phase: str = "Ready",
    size: int | None = None,
    restore: str | None = None,
    created: str = "2026-01-01T00:00:00Z",
    expire: str | None = None,
    namespaces: list[str] | None = None,
    secrets: list[str] | None = None,
    digests: dict[str, str] | None = None,
    storage_class: str | None = None,
    status_storage_class: str | None = None,
    copies: list[str] | None = None,
    copies_not_ready: list[str] | None = None,
) -> dict[str, Any]:
    """An ImageCache; `copies`: the namespaces with a ready copy of its snapshot (default:
    `default`, spec.namespaces and the pull secrets' namespaces), `copies_not_ready`: those
    with one being made."""
    spec = _given(images=images, imageCacheSize=size, namespaces=namespaces,
                  imagePullSecrets=secrets, storageClassName=storage_class)  # fmt: skip
    status = _given(phase=phase, restoreSize=restore, expireTime=expire)
    if digests is not None:
        # As the controller writes it after a build: every spec image with its digest.
        status["images"] = [
            {"image": normalize(i), "digest": digests.get(normalize(i), fake_digest(i)), "size": 1}
            for i in images
        ]
    if status_storage_class is not None:
        status["storageClassName"] = status_storage_class
    if copies is None:
        copies = ["default", *(namespaces or []), *(s.partition("/")[0] for s in secrets or [])]
    ready = copies
    status["namespaces"] = [
        {"namespace": n, "snapshotName": f"imagecache-{name}", "readyToUse": True}
        for n in dict.fromkeys(ready)
    ] + [
        {"namespace": n, "snapshotName": f"imagecache-{name}", "readyToUse": False}
        for n in copies_not_ready or ()
    ]
    return {
        "apiVersion": "imagecache.dev/v1alpha1",
        "kind": "ImageCache",
        "metadata": {"name": name, "creationTimestamp": created},
        "spec": spec,
        "status": status,
    }


def pod(
    images: list[str],
    *,
    annotations: dict[str, str] | None = None,
    init: list[str] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    mounts: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    containers: list[dict[str, Any]] = [
        {"name": f"c{n}", "image": image} for n, image in enumerate(images)
    ]
    if mounts is not None:
        containers[0]["volumeMounts"] = mounts
    spec: dict[str, Any] = {"containers": containers}
    if init:
        spec["initContainers"] = [{"name": f"i{n}", "image": i} for n, i in enumerate(init)]
    if volumes is not None:
        spec["volumes"] = volumes
    meta: dict[str, Any] = {"generateName": "web-", "namespace": "default"}
    if annotations is not None:
        meta["annotations"] = annotations
    if labels is not None:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
