"""The admission path's shortcut gives exactly what the plain definition gives: the auto/exact
walk that jumps to the caches with a ready copy in the pod's namespace once the logged
rejections are full."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.cachefactory import cache
from webhook.core.caches import CacheIndex, no_ready_copy
from webhook.core.imageref import parse
from webhook.server.core.matching import REJECTED_LOGGED, Rejected, decide, read_request

NOW = datetime(2026, 6, 1, tzinfo=UTC)
AUTO = {"imagecache.dev/use-image-cache": "auto"}
IMAGES = ["nginx", "redis:7", "busybox"]


def walk_every_holder(
    images: list[str], namespace: str, index: CacheIndex
) -> tuple[str | None, str | None, tuple[Rejected, ...]]:
    """auto/exact admission by definition: every holder of the rarest image, in order; the
    first usable one holding every image wins; else the first that would be usable but for
    its copy in the namespace is waited for; the first REJECTED_LOGGED rejections kept."""
    keys = {parse(i).match_key for i in images}
    rarest = min(keys, key=lambda k: len(index.with_key(k)))
    rejected: list[Rejected] = []
    waiting: str | None = None
    for view in index.in_order(rarest):
        why = view.closed_reason(namespace, NOW)
        if why is None and not keys <= view.keys:
            why = "lacks " + ", ".join(i for i in images if parse(i).match_key not in view.keys)
        if why is None and namespace not in view.copies:
            why = no_ready_copy(namespace)
            waiting = waiting or view.name
        if why is None:
            return view.name, None, tuple(rejected)
        if len(rejected) < REJECTED_LOGGED:
            rejected.append(Rejected(view.name, why))
    return None, waiting, tuple(rejected)


COPIES = st.sampled_from([None, None, [], ["default"], ["other"], ["team1", "default"]])
CACHE = st.tuples(
    st.sampled_from([["nginx"], ["nginx", "redis:7"], ["nginx", "busybox"], ["redis:7"], IMAGES]),
    st.sampled_from([None, 5, 10]),
    st.sampled_from(["Ready", "Ready", "Ready", "Creating"]),
    st.sampled_from([None, ["other"], ["team1"], ["default"], ["other", "default"], []]),
    st.sampled_from([None, None, "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z"]),
    st.integers(1, 3),
    COPIES,
)
# Smallest, so first in order, holding every image, and not usable from `default`: they fill
# the logged rejections, and the rest is looked through the namespace's own runs.
BLOCKER = st.tuples(
    st.just(IMAGES),
    st.just(1),
    st.sampled_from(["Ready", "Creating"]),
    st.sampled_from([["other"], ["team1"], []]),
    st.sampled_from([None, "2026-01-01T00:00:00Z"]),
    st.integers(1, 3),
    COPIES,
)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(BLOCKER, min_size=8, max_size=14),
    st.lists(CACHE, max_size=30),
    st.sampled_from([["nginx"], ["nginx", "redis:7"], ["redis:7", "nginx"], IMAGES]),
    st.sampled_from(["default", "default", "other", "team1"]),
)
def test_namespace_jump_decides_as_the_full_walk(
    blockers: list[tuple[Any, ...]],
    specs: list[tuple[Any, ...]],
    images: list[str],
    namespace: str,
) -> None:
    index = CacheIndex.from_objects(
        cache(f"c{n:02d}", imgs, size=size, phase=phase, namespaces=ns, expire=expire,
              created=f"2026-01-{day:02d}T00:00:00Z", copies=copies)
        for n, (imgs, size, phase, ns, expire, day, copies) in enumerate(blockers + specs)
    )  # fmt: skip
    decision = decide(images, namespace, read_request(AUTO), index, NOW)
    chosen, waiting, rejected = walk_every_holder(images, namespace, index)
    assert (decision.cache.name if decision.cache else None) == chosen
    assert (decision.waiting.name if decision.waiting else None) == waiting
    assert decision.outcome == ("hit" if chosen else "unavailable" if waiting else "miss")
    assert decision.rejected == rejected


def test_namespaced_caches_past_the_logged_rejections() -> None:
    # 30 caches of other namespaces come first in order; the pod's own is found after them.
    others = [cache(f"a{n:02d}", ["nginx"], namespaces=[f"team{n}"]) for n in range(30)]
    index = CacheIndex.from_objects([*others, cache("z-own", ["nginx"], namespaces=["shop"])])
    decision = decide(["nginx"], "shop", read_request(AUTO), index, NOW)
    assert decision.cache is not None and decision.cache.name == "z-own"
    assert [r.cache for r in decision.rejected] == [f"a{n:02d}" for n in range(10)]
    assert decide(["nginx"], "elsewhere", read_request(AUTO), index, NOW).outcome == "miss"
    # The index follows changes: the pod's cache removed, then one for every namespace added.
    index.apply("DELETED", cache("z-own", ["nginx"]))
    assert decide(["nginx"], "shop", read_request(AUTO), index, NOW).outcome == "miss"
    index.apply("ADDED", cache("z-all", ["nginx"], copies=[]))
    waiting = decide(["nginx"], "shop", read_request(AUTO), index, NOW)
    assert waiting.outcome == "unavailable" and waiting.waiting is not None
    index.apply("MODIFIED", cache("z-all", ["nginx"], copies=["shop"]))
    found = decide(["nginx"], "shop", read_request(AUTO), index, NOW)
    assert found.cache is not None and found.cache.name == "z-all"
