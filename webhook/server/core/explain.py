"""`imagecache explain`: the decision for a pod, why, and the patch, as text for people."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from webhook.core.caches import CacheIndex, CacheView
from webhook.core.imageref import InvalidReference, parse
from webhook.core.names import PIN
from webhook.server.core.admission import admit
from webhook.server.core.matching import Request
from webhook.server.core.patch import pins
from webhook.server.core.pod_facts import PodFacts, pod_name, read_pod

WORKLOAD_KINDS = (
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "ReplicationController",
)


def pod_from_manifest(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The pod a manifest creates: a Pod itself, a workload's pod template, or a CronJob's."""
    kind = obj.get("kind")
    if kind == "Pod":
        return dict(obj)
    spec = obj.get("spec") or {}
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    elif kind not in WORKLOAD_KINDS:
        raise ValueError(
            f"explain takes a Pod or a workload with a pod template ({', '.join(WORKLOAD_KINDS)}, "
            f"CronJob), not kind {kind!r}"
        )
    template = spec.get("template")
    if not isinstance(template, Mapping):
        raise ValueError(f"{kind} has no spec.template to explain")
    meta = dict(template.get("metadata") or {})
    meta.setdefault("namespace", (obj.get("metadata") or {}).get("namespace"))
    meta.setdefault("generateName", f"{(obj.get('metadata') or {}).get('name', kind)}-")
    return {"kind": "Pod", "metadata": meta, "spec": dict(template.get("spec") or {})}


# `imagecache explain`'s exit status, so scripts can act on the decision (docs/webhook.md).
# A denial wins over the outcome it comes with; 1 and 2 are the command's own errors.
EXIT_HIT = 0
EXIT_MISMATCH = 3
EXIT_MISS = 4
EXIT_UNAVAILABLE = 5
EXIT_DENIED = 6
EXIT_NO_DECISION = 7  # not opted in, or skipped (mirror pod, decided already, ...)
EXIT_CODES = {"hit": EXIT_HIT, "mismatch": EXIT_MISMATCH, "miss": EXIT_MISS,
              "unavailable": EXIT_UNAVAILABLE}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Explanation:
    text: str
    outcome: str | None  # hit, mismatch, miss, unavailable; None: no decision
    denied: bool

    @property
    def exit_code(self) -> int:
        if self.denied:
            return EXIT_DENIED
        return EXIT_CODES.get(self.outcome or "", EXIT_NO_DECISION)


def explain(
    pod: Mapping[str, Any],
    index: CacheIndex,
    *,
    namespace: str,
    now: datetime,
    namespace_auto: bool = False,
    source: str = "",
) -> Explanation:
    """The text, the outcome and the denial of what the webhook would do with `pod` given the
    caches in `index`; `source` says where those came from."""
    facts = read_pod(pod, "the pod")
    name = pod_name(pod)
    known = f"{len(index)} ImageCache(s) " + (f"from {source}" if source else "known")
    lines = [f"Pod {name or '(unnamed)'} in namespace {namespace}; {known}", "Images:"]
    for image in facts.images:
        try:
            lines.append(f"  {image}  ->  {parse(image).match_key}")
        except InvalidReference as exc:
            lines.append(f"  {image}  ->  invalid: {exc.reason}")
    admitted = admit(facts, namespace, index, now, default_auto=namespace_auto, explain=True)
    decision = admitted.decision
    if decision is None:
        lines.append(f"Decision: none: {admitted.skipped}")
        lines.append("Patch: none")
        return Explanation("\n".join(lines) + "\n", None, False)
    request = decision.request
    if request.mode is None:
        lines.append("Request: none (no opt-in annotation, namespace not labelled auto)")
    else:
        what = f"cache {request.cache_name!r}" if request.mode == "manual" else "auto"
        match = "partial" if request.partial else "exact"
        lines.append(
            f"Request: {what}, {match} match, required={str(request.required).lower()}, "
            f"pin={str(request.pin).lower()} (from {request.source})"
        )
    lines.append(f"Decision: {decision.outcome or 'none'}: {decision.reason}")
    if decision.cache is not None:
        cache = decision.cache
        created = cache.created.isoformat() if cache.created else "unknown"
        disk = cache.restore_size or f"{cache.size_bytes} bytes"
        lines.append(
            f"Chosen cache: {cache.name} (phase {cache.phase}, disk {disk}, created {created}; "
            f"snapshot {decision.snapshot} in namespace {namespace})"
        )
        lines += _pinning(facts, cache, request)
    if decision.waiting is not None:
        lines.append(
            f"Waiting for: ImageCache {decision.waiting.name}'s copy in namespace {namespace} "
            "(the controller makes it; later pods get the cache once it is ready)"
        )
    if decision.missing:
        lines.append(
            f"Missing images (pulled from their registries): {', '.join(decision.missing)}"
        )
    if decision.rejected:
        lines.append("Rejected candidates:")
        lines += [f"  {r.cache}: {r.reason}" for r in decision.rejected]
    elif request.mode == "auto":
        lines.append("Rejected candidates: none (no ImageCache holds any of these images)")
    lines += [f"Warning: {w}" for w in decision.warnings]
    if admitted.denied:
        lines.append(f"The pod would be DENIED: {admitted.denied}")
        return Explanation("\n".join(lines) + "\n", decision.outcome, True)
    lines.append("Patch:" if admitted.ops else "Patch: none")
    if admitted.ops:
        lines.append(json.dumps(admitted.ops, indent=2))
    return Explanation("\n".join(lines) + "\n", decision.outcome, False)


def _pinning(facts: PodFacts, cache: CacheView, request: Request) -> list[str]:
    if not request.pin:
        return [f"Pinning: off ({PIN}: false)"]
    pinned = pins(facts.containers, cache, request)
    if not pinned:
        return ["Pinning: none (no image without a digest that the cache knows the digest of)"]
    return ["Pinned (the image the disk holds, whatever the tag points at now):"] + [
        f"  {p.container.name}: {p.container.image}  ->  {p.pinned}" for p in pinned
    ]
