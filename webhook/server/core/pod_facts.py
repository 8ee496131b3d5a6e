"""What the admission decision reads of a pod, in one pass, checked as it is read.

Everything the decision and the patch depend on fits in a small `PodFacts`. A pod of the
wrong shape raises `BadReview` naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from webhook.core import names

# The annotations the matching policy reads, in this order in `PodFacts.options`.
OPTIONS = (
    names.USE_CACHE,
    names.TKE_USE_CACHE,
    names.ECI_CACHE_ID,
    names.ECI_AUTO,
    names.MATCH,
    names.DISK_SIZE,
    names.REQUIRED,
    names.PIN,
)
# the annotations the patch adds
OURS = (names.DECISION, names.CACHE, names.MISSING_IMAGES, names.PINNED_IMAGES)
OUR_LABELS = (names.DECISION, names.CACHE)  # the labels it adds


class BadReview(ValueError):
    """The body is not an AdmissionReview (or the object not a pod) this webhook can answer."""


class Container(NamedTuple):
    """A container with an image, as the pod writes it."""

    path: str  # JSON pointer to the container, e.g. /spec/initContainers/0
    name: str
    image: str


class PodFacts(NamedTuple):
    has_metadata: bool
    options: tuple[str | None, ...]  # the OPTIONS annotations' values (None: not set)
    mirror: bool  # a static pod's API copy
    decided: bool  # carries imagecache.dev/decision already
    annotations: tuple[str, ...] | None  # OURS already on the pod; None: no annotations map
    labels: tuple[str, ...] | None  # OUR_LABELS already on the pod; None: no labels map
    containers: tuple[Container, ...]  # init containers, then containers, with an image
    first_container: str | None  # the name of containers[0] ("" unnamed); None: no containers
    volume: bool | None  # a volume named imagecache exists; None: no volumes list
    volume_ours: bool  # ... and it is one the webhook added
    mount: bool | None  # containers[0] mounts one named imagecache; None: no volumeMounts
    mount_taken: bool  # containers[0] mounts another volume at the cache's mount path

    @property
    def images(self) -> tuple[str, ...]:
        """The containers' images as written, init containers' first."""
        return tuple(c.image for c in self.containers)

    def option_annotations(self) -> dict[str, str]:
        """The option annotations that are set, as the pod has them."""
        return {k: v for k, v in zip(OPTIONS, self.options, strict=True) if v is not None}


def _not_object(value: object) -> str:
    return "is missing" if value is None else f"must be an object, not {type(value).__name__}"


def _objects(value: object, at: str, field: str) -> list[dict[str, Any]] | None:
    """`value` as a list of objects, None if absent; else BadReview naming `field`."""
    if value is None:
        return None
    if type(value) is not list or any(type(item) is not dict for item in value):
        raise BadReview(f"{at}.{field} must be a list of objects")
    return value


def _is_ours(volume: Mapping[str, Any]) -> bool:
    template = (volume.get("ephemeral") or {}).get("volumeClaimTemplate") or {}
    source = (template.get("spec") or {}).get("dataSource") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    named = str(source.get("name", "")).startswith(names.snapshot_name(""))
    return (
        source.get("apiGroup") == names.SNAPSHOT_GROUP
        and source.get("kind") == "VolumeSnapshot"
        and (named or names.CACHE in labels)
    )


_MIRROR_POD, _DECISION = names.MIRROR_POD, names.DECISION
_VOLUME, _MOUNT_PATH = names.VOLUME_NAME, names.MOUNT_PATH


def pod_namespace(pod: Mapping[str, Any]) -> str:
    """metadata.namespace of a pod `read_pod` accepted, else "default"."""
    namespace = (pod.get("metadata") or {}).get("namespace")
    return namespace if isinstance(namespace, str) and namespace else "default"


def pod_name(pod: Mapping[str, Any]) -> str | None:
    """metadata.name of a pod `read_pod` accepted, else its generateName."""
    meta = pod.get("metadata") or {}
    name = meta.get("name") or meta.get("generateName")
    return name if isinstance(name, str) else None


def read_pod(pod: object, at: str = "request.object") -> PodFacts:
    """The facts of `pod`; `at` names the pod in errors. What the decision reads is checked
    as it is read (the annotations' values, the volumes up to ours, each container's image,
    the first one's mounts), and the messages are built only when raising."""
    if type(pod) is not dict:
        raise BadReview(f"{at} {_not_object(pod)}")
    meta = pod.get("metadata")
    has_metadata = meta is not None
    if meta is None:
        meta = {}
    elif type(meta) is not dict:
        raise BadReview(f"{at}.metadata {_not_object(meta)}")
    annotations = meta.get("annotations")
    if annotations is None:
        options: tuple[str | None, ...] = (None,) * len(OPTIONS)
        ours: tuple[str, ...] | None = None
        mirror = decided = False
    elif type(annotations) is not dict:
        raise BadReview(f"{at}.metadata.annotations {_not_object(annotations)}")
    else:
        for k, v in annotations.items():
            if type(v) is not str or type(k) is not str:
                raise BadReview(f"{at}.metadata.annotations must map strings to strings")
        options = tuple(annotations.get(k) for k in OPTIONS)
        mirror = _MIRROR_POD in annotations
        decided = _DECISION in annotations
        ours = tuple(k for k in OURS if k in annotations)
    labels = meta.get("labels")
    our_labels: tuple[str, ...] | None = None
    if labels is not None:
        if type(labels) is not dict:
            raise BadReview(f"{at}.metadata.labels {_not_object(labels)}")
        our_labels = tuple(k for k in OUR_LABELS if k in labels)

    spec = pod.get("spec")
    if type(spec) is not dict:
        raise BadReview(f"{at}.spec {_not_object(spec)}")
    volumes = _objects(spec.get("volumes"), at, "spec.volumes")
    volume: bool | None = None
    volume_ours = False
    if volumes is not None:
        named = next((item for item in volumes if item.get("name") == _VOLUME), None)
        volume, volume_ours = named is not None, named is not None and _is_ours(named)

    with_images: list[Container] = []
    containers = None
    for key in ("initContainers", "containers"):
        containers = _objects(spec.get(key), at, f"spec.{key}")
        for n, container in enumerate(containers or ()):
            image = container.get("image")
            if type(image) is str:
                if image:
                    name = container.get("name")
                    name = name if type(name) is str else ""
                    with_images.append(Container(f"/spec/{key}/{n}", name, image))
            elif image is not None:
                raise BadReview(f"{at}.spec.{key}[{n}].image must be a string")

    mount: bool | None = None
    mount_taken = False
    first_name: str | None = None
    if containers:
        first = containers[0]
        first_name = str(first.get("name") or "")
        mounts = _objects(first.get("volumeMounts"), at, "spec.containers[0].volumeMounts")
        if mounts is not None:
            mount = False
            for item in mounts:
                if item.get("name") == _VOLUME:
                    mount = True
                elif item.get("mountPath") == _MOUNT_PATH:
                    mount_taken = True

    return PodFacts(
        has_metadata, options, mirror, decided, ours, our_labels, tuple(with_images), first_name,
        volume, volume_ours, mount, mount_taken,
    )  # fmt: skip
