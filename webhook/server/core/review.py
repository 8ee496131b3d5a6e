"""AdmissionReview in, AdmissionReview out: the whole admission answer, without I/O.

`review()` never raises. A body the apiserver would never send (not JSON, wrong kind,
missing uid or object, over the size limit) gets status 400 and a JSON error naming the
field; everything else gets 200 and an AdmissionReview answer in the request's version,
with what `webhook.server.core.admission.admit` decides for the pod.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, NamedTuple

from webhook.core.caches import CacheIndex
from webhook.server.core.admission import Admission, admit
from webhook.server.core.matching import Decision
from webhook.server.core.pod_facts import BadReview, pod_name, pod_namespace, read_pod

__all__ = ["MAX_BODY_BYTES", "BadReview", "ReviewResult", "review"]

_encode = json.JSONEncoder(separators=(",", ":")).encode
MAX_BODY_BYTES = 4 * 1024 * 1024  # the apiserver's own request limit is 3 MiB
API_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
ReviewOutcome = Literal["patched", "unchanged", "denied", "invalid", "ignored"]


class ReviewResult(NamedTuple):
    status: int  # HTTP status to answer with
    answer: bytes  # the HTTP body: the AdmissionReview answer, or {"error": ...} with 400
    outcome: ReviewOutcome
    decision: str | None = None  # hit, mismatch, miss, unavailable
    detail: Decision | None = None
    # The pod opted in and is left without its cache, or its author is warned: the answers
    # to "why did my pod not get a cache" (a plain hit is not).
    notable: bool = False
    request: Mapping[str, Any] | None = None  # the review's request (None: not a review)
    namespace: str | None = None  # the pod's, as decided; None: not a pod CREATE
    error: str | None = None

    @property
    def body(self) -> dict[str, Any]:
        """The answer as JSON data (for tests and tools; the server sends `answer`)."""
        body: dict[str, Any] = json.loads(self.answer)
        return body

    def log_fields(self) -> dict[str, Any]:
        """The fields of the structured log line for this answer (read from the request only
        when a line is written)."""
        request = self.request
        if request is None:
            return {"error": self.error}
        fields: dict[str, Any] = {
            "uid": request.get("uid"),
            "namespace": self.namespace or request.get("namespace"),
            "operation": request.get("operation"),
        }
        if self.namespace is not None:
            fields.update(pod=pod_name(request["object"]), dry_run=request.get("dryRun") is True)
        detail = self.detail
        if detail is not None and detail.outcome is not None:
            named = detail.cache or detail.waiting
            fields.update(
                decision=detail.outcome, reason=detail.reason, cache=named.name if named else None
            )
        return fields


def _answer(api_version: str, uid: str, admitted: Admission | None = None) -> bytes:
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    decision = admitted.decision if admitted is not None else None
    if admitted is None or decision is None or decision.outcome is None:
        return _encode({"apiVersion": api_version, "kind": "AdmissionReview",
                        "response": response}).encode()  # fmt: skip
    denied = admitted.denied
    if denied is not None:
        response["allowed"] = False
        response["status"] = {"code": 403, "message": denied}
    audit = {"decision": decision.outcome, "reason": decision.reason[:1000]}
    if decision.cache is not None:
        audit["cache"] = decision.cache.name
    response["auditAnnotations"] = audit
    if decision.warnings:
        response["warnings"] = list(decision.warnings)
    if admitted.ops:
        patch = base64.b64encode(_encode(admitted.ops).encode()).decode()
        response.update(patchType="JSONPatch", patch=patch)
    return _encode({"apiVersion": api_version, "kind": "AdmissionReview",
                    "response": response}).encode()  # fmt: skip


def review(
    body: bytes, index: CacheIndex, *, now: datetime, default_auto: bool = False
) -> ReviewResult:
    """Answer one AdmissionReview request body."""
    try:
        if len(body) > MAX_BODY_BYTES:
            raise BadReview(
                f"request body is {len(body)} bytes, over the limit of {MAX_BODY_BYTES}"
            )
        try:
            review_obj = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise BadReview(f"request body is not JSON: {str(exc)[:200]}") from None
        if type(review_obj) is not dict:
            raise BadReview(
                "the request body (an AdmissionReview) must be an object, not "
                f"{type(review_obj).__name__}"
            )
        api_version = review_obj.get("apiVersion")
        if review_obj.get("kind") != "AdmissionReview":
            got = str(review_obj.get("kind"))[:100]
            raise BadReview(f"kind must be AdmissionReview, not {got!r}")
        if api_version not in API_VERSIONS:
            raise BadReview(
                f"apiVersion {str(api_version)[:100]!r} is not one of {', '.join(API_VERSIONS)}"
            )
        request = review_obj.get("request")
        if type(request) is not dict:
            raise BadReview(f"request {'is missing' if request is None else 'must be an object'}")
        uid = request.get("uid")
        if type(uid) is not str or not uid:
            raise BadReview("request.uid must be a non-empty string")
        kind = request.get("kind")
        if kind is None:
            kind = {}
        elif type(kind) is not dict:
            raise BadReview(f"request.kind must be an object, not {type(kind).__name__}")
        if (
            kind.get("group", "") != ""
            or kind.get("kind") != "Pod"
            or request.get("operation") != "CREATE"
            or request.get("subResource")
        ):
            return ReviewResult(200, _answer(api_version, uid), "ignored", request=request)
        pod: Any = request.get("object")  # a dict once read_pod accepts it
        facts = read_pod(pod)
    except BadReview as exc:
        error = str(exc)
        return ReviewResult(400, _encode({"error": error}).encode(), "invalid", error=error)

    namespace = request.get("namespace")
    if type(namespace) is not str or not namespace:
        namespace = pod_namespace(pod)
    admitted = admit(facts, namespace, index, now, default_auto=default_auto)
    decision = admitted.decision
    outcome = decision.outcome if decision is not None else None
    notable = outcome is not None and (outcome != "hit" or bool(decision and decision.warnings))
    return ReviewResult(
        200, _answer(api_version, uid, admitted), admitted.outcome, outcome, decision, notable,
        request, namespace,
    )  # fmt: skip
