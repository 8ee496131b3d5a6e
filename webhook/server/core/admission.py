"""The webhook's answer to one pod, without I/O: leave it alone, or decide and build the patch.

The admission path (`webhook.server.core.review`) and `imagecache explain` both ask `admit`, so
what explain says is what the webhook does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from webhook.core import names
from webhook.core.caches import CacheIndex
from webhook.server.core.matching import Decision, decide, read_request
from webhook.server.core.patch import Op, conflict, patch_ops
from webhook.server.core.pod_facts import PodFacts

AdmitOutcome = Literal["patched", "unchanged", "denied", "ignored"]

MIRROR_POD = (
    f"a mirror pod ({names.MIRROR_POD}): the kubelet runs it from a file and never reads "
    "this object, so the webhook leaves it alone"
)
DECIDED = (
    f"decided already ({names.DECISION} is set: a reinvocation, or a copy of a decided pod); "
    "the webhook leaves it unchanged"
)


@dataclass(frozen=True, slots=True)
class Admission:
    outcome: AdmitOutcome
    decision: Decision | None  # None: skipped (see `skipped`)
    ops: list[Op] = field(default_factory=list)  # the JSONPatch ([]: nothing to change)
    skipped: str | None = None  # why the pod was not decided on

    @property
    def denied(self) -> str | None:
        return self.decision.denied if self.decision is not None else None


def admit(
    facts: PodFacts,
    namespace: str,
    index: CacheIndex,
    now: datetime,
    *,
    default_auto: bool = False,
    explain: bool = False,
) -> Admission:
    """What the webhook does with a pod of `facts` created in `namespace`. `default_auto`:
    the namespace is labelled for auto; `explain`: list every rejected cache (the decision
    and the patch are the same)."""
    if facts.mirror:
        return Admission("ignored", None, skipped=MIRROR_POD)
    if facts.decided:
        return Admission("unchanged", None, skipped=DECIDED)
    request = read_request(facts.option_annotations(), namespace_auto=default_auto)
    decision = decide(facts.images, namespace, request, index, now, explain=explain)
    if decision.outcome is None:
        return Admission("ignored", decision)
    if decision.cache is not None:
        blocked = conflict(facts)
        if blocked:
            decision = decision.unavailable(blocked)
    if decision.denied:
        return Admission("denied", decision)
    ops = patch_ops(facts, decision)
    return Admission("patched" if ops else "unchanged", decision, ops)
