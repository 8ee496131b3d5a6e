"""AdmissionReview in, AdmissionReview out: the whole admission decision, without I/O.

`review()` never raises. A body the apiserver would never send (not JSON, wrong kind,
missing uid or object, over the size limit) gets status 400 and a JSON error naming the
field; everything else gets 200 and an AdmissionReview answer in the request's version.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from webhook.core.caches import CacheIndex
from webhook.core.matching import Decision, decide, read_request
from webhook.core.names import DECISION, MIRROR_POD
from webhook.core.patch import conflict, encoded_patch

MAX_BODY_BYTES = 4 * 1024 * 1024  # the apiserver's own request limit is 3 MiB
API_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
ReviewOutcome = Literal["patched", "unchanged", "denied", "invalid", "ignored"]


class BadReview(ValueError):
    """The body is not an AdmissionReview this webhook can answer."""


@dataclass(frozen=True, slots=True)
class ReviewResult:
    status: int  # HTTP status to answer with
    body: dict[str, Any]
    outcome: ReviewOutcome
    decision: str | None = None  # hit, mismatch, miss, unavailable
    detail: Decision | None = None
    log: dict[str, Any] = field(default_factory=dict)  # fields for the structured log line


def _object(value: object, where: str, *, required: bool = True) -> Mapping[str, Any]:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        problem = (
            "is missing" if value is None else f"must be an object, not {type(value).__name__}"
        )
        raise BadReview(f"{where} {problem}")
    return value


def _list_of_objects(value: object, where: str, *at: object) -> list[Mapping[str, Any]]:
    """`where` is a format string filled from `at` only for the error (the hot path never
    builds it)."""
    if value is None:
        return []
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, dict):
                break
        else:
            return value
    raise BadReview(f"{where.format(*at)} must be a list of objects")


def _string_map(value: object, where: str) -> Mapping[str, str]:
    mapping = _object(value, where, required=False)
    for k, v in mapping.items():
        if not (isinstance(k, str) and isinstance(v, str)):
            raise BadReview(f"{where} must map strings to strings")
    return mapping


def pod_images(spec: Mapping[str, Any]) -> list[str]:
    images: list[str] = []
    for key in ("initContainers", "containers"):
        containers = _list_of_objects(spec.get(key), "request.object.spec.{}", key)
        for n, container in enumerate(containers):
            _list_of_objects(container.get("volumeMounts"), "spec.{}[{}].volumeMounts", key, n)
            image = container.get("image")
            if image is not None and not isinstance(image, str):
                raise BadReview(f"request.object.spec.{key}[{n}].image must be a string")
            if image:
                images.append(image)
    return images


def _answer(api_version: str, uid: str, **response: Any) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "response": {"uid": uid, "allowed": True, **response},
    }


def _parse(body: bytes) -> Mapping[str, Any]:
    if len(body) > MAX_BODY_BYTES:
        raise BadReview(f"request body is {len(body)} bytes, over the limit of {MAX_BODY_BYTES}")
    try:
        review_obj = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadReview(f"request body is not JSON: {str(exc)[:200]}") from None
    review_obj = _object(review_obj, "the request body (an AdmissionReview)")
    if review_obj.get("kind") != "AdmissionReview":
        raise BadReview(f"kind must be AdmissionReview, not {str(review_obj.get('kind'))[:100]!r}")
    if review_obj.get("apiVersion") not in API_VERSIONS:
        raise BadReview(
            f"apiVersion {str(review_obj.get('apiVersion'))[:100]!r} is not one of "
            f"{', '.join(API_VERSIONS)}"
        )
    return review_obj


def review(
    body: bytes, index: CacheIndex, *, now: datetime, default_auto: bool = False
) -> ReviewResult:
    """Answer one AdmissionReview request body."""
    try:
        return _review(body, index, now=now, default_auto=default_auto)
    except BadReview as exc:
        return ReviewResult(400, {"error": str(exc)}, "invalid", log={"error": str(exc)})


def _review(body: bytes, index: CacheIndex, *, now: datetime, default_auto: bool) -> ReviewResult:
    review_obj = _parse(body)
    api_version = str(review_obj["apiVersion"])
    request = _object(review_obj.get("request"), "request")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadReview("request.uid must be a non-empty string")
    kind = _object(request.get("kind"), "request.kind", required=False)
    namespace = request.get("namespace")
    log: dict[str, Any] = {
        "uid": uid,
        "namespace": namespace,
        "operation": request.get("operation"),
    }
    if (
        kind.get("group", "") != ""
        or kind.get("kind") != "Pod"
        or request.get("operation") != "CREATE"
        or request.get("subResource")
    ):
        return ReviewResult(200, _answer(api_version, uid), "ignored", log=log)

    pod = _object(request.get("object"), "request.object")
    meta = _object(pod.get("metadata"), "request.object.metadata", required=False)
    annotations = _string_map(meta.get("annotations"), "request.object.metadata.annotations")
    _string_map(meta.get("labels"), "request.object.metadata.labels")
    spec = _object(pod.get("spec"), "request.object.spec")
    _list_of_objects(spec.get("volumes"), "request.object.spec.volumes")
    images = pod_images(spec)
    if not isinstance(namespace, str) or not namespace:
        namespace = meta.get("namespace") if isinstance(meta.get("namespace"), str) else "default"
    log.update(
        namespace=namespace,
        pod=meta.get("name") or meta.get("generateName"),
        dry_run=bool(request.get("dryRun")),
    )

    if MIRROR_POD in annotations:
        # A static pod's API copy: the kubelet runs it from a file and never reads this object.
        return ReviewResult(200, _answer(api_version, uid), "ignored", log=log)
    if DECISION in annotations:
        # Decided already (reinvocation, or a pod copied from a decided one): idempotent.
        return ReviewResult(200, _answer(api_version, uid), "unchanged", log=log)
    wanted = read_request(annotations, namespace_auto=default_auto)
    decision = decide(images, str(namespace), wanted, index, now)
    if decision.outcome is None:
        return ReviewResult(200, _answer(api_version, uid), "ignored", log=log)
    if decision.cache is not None:
        blocked = conflict(pod)
        if blocked:
            decision = decision.unavailable(blocked)
    log.update(
        decision=decision.outcome,
        reason=decision.reason,
        cache=decision.cache.name if decision.cache else None,
    )
    audit = {"decision": decision.outcome, "reason": decision.reason[:1000]}
    if decision.cache is not None:
        audit["cache"] = decision.cache.name
    extra: dict[str, Any] = {"auditAnnotations": audit}
    if decision.warnings:
        extra["warnings"] = list(decision.warnings)
    denied = decision.denied
    if denied:
        answer = _answer(api_version, uid, **extra)
        answer["response"].update(allowed=False, status={"code": 403, "message": denied})
        return ReviewResult(200, answer, "denied", decision.outcome, decision, log)
    patch = encoded_patch(pod, decision)
    if patch:
        extra["patchType"] = "JSONPatch"
        extra["patch"] = patch
    outcome: ReviewOutcome = "patched" if patch else "unchanged"
    return ReviewResult(
        200, _answer(api_version, uid, **extra), outcome, decision.outcome, decision, log
    )
