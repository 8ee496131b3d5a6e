"""AdmissionReview in, AdmissionReview out: the whole admission decision, without I/O.

`review()` never raises. A body the apiserver would never send (not JSON, wrong kind,
missing uid or object, over the size limit) gets status 400 and a JSON error naming the
field; everything else gets 200 and an AdmissionReview answer in the request's version.

The answer to a pod depends on its `PodFacts`, its namespace, the index and the clock only:
the replicas of a workload have equal facts, so each distinct question is decided and
encoded once per index version (`_DECIDED`), and later answers differ only by their uid.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from datetime import datetime
from json.encoder import encode_basestring_ascii
from typing import Any, Literal, NamedTuple

from webhook.core.caches import CacheIndex
from webhook.core.matching import Decision, decide, read_request
from webhook.core.patch import conflict, encoded_patch
from webhook.core.pod_facts import BadReview, PodFacts, pod_name, pod_namespace, read_pod

__all__ = ["MAX_BODY_BYTES", "BadReview", "ReviewResult", "review"]

_encode = json.JSONEncoder(separators=(",", ":")).encode
MAX_BODY_BYTES = 4 * 1024 * 1024  # the apiserver's own request limit is 3 MiB
API_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
DECIDED_KEPT = 4096  # distinct (pod facts, namespace, ...) answers kept per process
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
            fields.update(
                decision=detail.outcome,
                reason=detail.reason,
                cache=detail.cache.name if detail.cache else None,
            )
        return fields


_UID_AT = b'"response":{"uid":'


@functools.lru_cache(maxsize=64)
def _answer_around_uid(
    api_version: str,
    audit: tuple[tuple[str, str], ...] = (),
    warnings: tuple[str, ...] = (),
    denied: str | None = None,
    patch: str = "",
) -> tuple[bytes, bytes]:
    """The answer's JSON before and after the uid's value."""
    response: dict[str, Any] = {"uid": "", "allowed": denied is None}
    if denied is not None:
        response["status"] = {"code": 403, "message": denied}
    if audit:
        response["auditAnnotations"] = dict(audit)
    if warnings:
        response["warnings"] = list(warnings)
    if patch:
        response.update(patchType="JSONPatch", patch=patch)
    encoded = _encode({"apiVersion": api_version, "kind": "AdmissionReview", "response": response})
    # apiVersion and kind are fixed strings, so the first `"response":{"uid":` is the key.
    head, _, tail = encoded.encode().partition(_UID_AT)
    return head + _UID_AT, tail.removeprefix(b'""')


class _Decided(NamedTuple):
    """The answer to one distinct question, but for its uid."""

    outcome: ReviewOutcome
    decision: str | None  # detail.outcome
    detail: Decision | None
    head: bytes
    tail: bytes
    notable: bool  # see ReviewResult
    since: datetime  # decided at (a clock set back decides again)
    until: datetime | None  # when the chosen cache expires: decide again from then on


_DECIDED: dict[tuple[object, ...], _Decided] = {}


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
        uid_json = encode_basestring_ascii(uid).encode()
        kind = request.get("kind")
        if kind is None:
            kind = {}
        elif type(kind) is not dict:
            raise BadReview(f"request.kind must be an object, not {type(kind).__name__}")
        namespace = request.get("namespace")
        if (
            kind.get("group", "") != ""
            or kind.get("kind") != "Pod"
            or request.get("operation") != "CREATE"
            or request.get("subResource")
        ):
            head, tail = _answer_around_uid(api_version)
            return ReviewResult(200, head + uid_json + tail, "ignored", request=request)

        pod: Any = request.get("object")  # a dict once read_pod accepts it
        facts = read_pod(pod)
    except BadReview as exc:
        error = str(exc)
        return ReviewResult(400, _encode({"error": error}).encode(), "invalid", error=error)

    if type(namespace) is not str or not namespace:
        namespace = pod_namespace(pod)
    key = (index.version, api_version, default_auto, namespace, facts)
    decided = _DECIDED.get(key)
    if (
        decided is None
        or now < decided.since
        or (decided.until is not None and decided.until <= now)
    ):
        decided = _decide(api_version, default_auto, namespace, facts, index, now)
        if len(_DECIDED) >= DECIDED_KEPT:
            # Start over: cheaper than evicting one by one (deleting a dict's oldest keys
            # makes finding the next oldest slower and slower), and what matters is re-learnt
            # at the first request of each workload.
            _DECIDED.clear()
        _DECIDED[key] = decided
    return ReviewResult(
        200, decided.head + uid_json + decided.tail, decided.outcome, decided.decision,
        decided.detail, decided.notable, request, namespace,
    )  # fmt: skip


def _decide(
    api_version: str,
    default_auto: bool,
    namespace: str,
    facts: PodFacts,
    index: CacheIndex,
    now: datetime,
) -> _Decided:
    plain = _answer_around_uid(api_version)  # allowed, nothing else
    if facts.mirror:
        # A static pod's API copy: the kubelet runs it from a file and never reads this object.
        return _Decided("ignored", None, None, *plain, False, now, None)
    if facts.decided:
        # Decided already (reinvocation, or a pod copied from a decided one): idempotent.
        return _Decided("unchanged", None, None, *plain, False, now, None)
    wanted = read_request(facts.option_annotations(), namespace_auto=default_auto)
    decision = decide(facts.images, namespace, wanted, index, now)
    if decision.outcome is None:
        return _Decided("ignored", None, decision, *plain, False, now, None)
    # Time only makes caches unusable (expiry): those passed over stay so, and the decision
    # holds while the chosen one lasts (even when the pod cannot take it, below).
    until = decision.cache.expire_time if decision.cache is not None else None
    if decision.cache is not None:
        blocked = conflict(facts)
        if blocked:
            decision = decision.unavailable(blocked)
    audit: tuple[tuple[str, str], ...] = (
        ("decision", str(decision.outcome)),
        ("reason", decision.reason[:1000]),
    )
    if decision.cache is not None:
        audit += (("cache", decision.cache.name),)
    notable = decision.outcome != "hit" or bool(decision.warnings)
    denied = decision.denied
    if denied:
        parts = _answer_around_uid(api_version, audit, decision.warnings, denied)
        return _Decided("denied", decision.outcome, decision, *parts, notable, now, until)
    patch = encoded_patch(facts, decision)
    parts = _answer_around_uid(api_version, audit, decision.warnings, None, patch)
    outcome: ReviewOutcome = "patched" if patch else "unchanged"
    return _Decided(outcome, decision.outcome, decision, *parts, notable, now, until)
