"""`imagecache explain`: the decision for a pod, why, and the patch, as text for people."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from webhook.core.caches import CacheIndex
from webhook.core.imageref import InvalidReference, parse
from webhook.core.matching import decide, read_request
from webhook.core.names import DECISION
from webhook.core.patch import build_patch, conflict
from webhook.core.pod_facts import pod_name, read_pod

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


def explain(
    pod: Mapping[str, Any],
    index: CacheIndex,
    *,
    namespace: str,
    now: datetime,
    namespace_auto: bool = False,
) -> str:
    """Explain what the webhook would do with `pod` given the caches in `index`."""
    facts = read_pod(pod, "the pod")
    name = pod_name(pod)
    images = facts.images
    lines = [
        f"Pod {name or '(unnamed)'} "
        f"in namespace {namespace}; {len(index)} ImageCache(s) known",
        "Images:",
    ]
    for image in images:
        try:
            lines.append(f"  {image}  ->  {parse(image).match_key}")
        except InvalidReference as exc:
            lines.append(f"  {image}  ->  invalid: {exc.reason}")
    if facts.decided:
        lines.append(
            f"Decision: already decided ({DECISION}={pod['metadata']['annotations'][DECISION]}); "
            "the webhook leaves this pod unchanged"
        )
        return "\n".join(lines) + "\n"
    request = read_request(facts.option_annotations(), namespace_auto=namespace_auto)
    decision = decide(images, namespace, request, index, now, explain=True)
    if decision.cache is not None and (blocked := conflict(facts)):
        decision = decision.unavailable(blocked)
    if request.mode is None:
        lines.append("Request: none (no opt-in annotation, namespace not labelled auto)")
    else:
        what = f"cache {request.cache_name!r}" if request.mode == "manual" else "auto"
        match = "partial" if request.partial else "exact"
        lines.append(
            f"Request: {what}, {match} match, required={str(request.required).lower()} "
            f"(from {request.source})"
        )
    lines.append(f"Decision: {decision.outcome or 'none'}: {decision.reason}")
    if decision.cache is not None:
        cache = decision.cache
        created = cache.created.isoformat() if cache.created else "unknown"
        disk = cache.restore_size or f"{cache.size_bytes} bytes"
        lines.append(
            f"Chosen cache: {cache.name} (phase {cache.phase}, disk {disk}, created {created})"
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
    if decision.denied:
        lines.append(f"The pod would be DENIED: {decision.denied}")
        return "\n".join(lines) + "\n"
    ops = build_patch(pod, decision) if decision.outcome else []
    lines.append("Patch:" if ops else "Patch: none")
    if ops:
        lines.append(json.dumps(ops, indent=2))
    return "\n".join(lines) + "\n"
