"""What a cache's spec asks to build (the build inputs, with the controller's defaults), and
what refuses it before any object is made: bad references, secrets out of bounds, a
snapshot class that does not exist."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webhook.controller.core import manifests_build as mb
from webhook.controller.core import reconcile_failures as rf
from webhook.controller.core import reconcile_names as rn
from webhook.controller.core.reconcile_model import Observed, Settings
from webhook.controller.core.reconcile_status import Problem
from webhook.core.cache_namespaces import refused_pull_secret
from webhook.core.imageref import InvalidReference, parse


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


def spec_problem(spec: Mapping[str, Any], settings: Settings) -> Problem | None:
    """Why the spec cannot be built at all, or None."""
    return _invalid_spec(spec) or _refused_secret(spec, settings)


def _invalid_spec(spec: Mapping[str, Any]) -> Problem | None:
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


def _refused_secret(spec: Mapping[str, Any], settings: Settings) -> Problem | None:
    """A pull secret outside the namespaces the controller may read Secrets in."""
    refused = refused_pull_secret(spec, settings.pull_secret_namespaces, settings.namespace)
    if refused is None:
        return None
    return Problem(
        rf.PULL_SECRET_REFUSED,
        rf.pull_secret_refused(*refused, settings.namespace, settings.pull_secret_namespaces),
    )


def snapshot_class(obs: Observed, wanted: str | None) -> tuple[str | None, Problem | None]:
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
