"""The admission path's shortcuts give exactly what the plain definitions give: the auto/exact
walk that jumps to the namespace's own caches once the logged rejections are full, and the
patch encoded once per distinct input."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.cachefactory import cache, pod
from webhook.core.caches import CacheIndex
from webhook.core.imageref import parse
from webhook.core.matching import REJECTED_LOGGED, Decision, Rejected, decide, read_request
from webhook.core.patch import build_patch, encoded_patch

NOW = datetime(2026, 6, 1, tzinfo=UTC)
AUTO = {"imagecache.dev/use-image-cache": "auto"}
IMAGES = ["nginx", "redis:7", "busybox"]


def walk_every_holder(
    images: list[str], namespace: str, index: CacheIndex
) -> tuple[str | None, tuple[Rejected, ...]]:
    """auto/exact admission by definition: every holder of the rarest image, in order; the
    first usable one holding every image wins; the first REJECTED_LOGGED rejections kept."""
    keys = {parse(i).match_key for i in images}
    rarest = min(keys, key=lambda k: len(index.with_key(k)))
    rejected: list[Rejected] = []
    for view in index.in_order(rarest):
        why = view.unusable_reason(namespace, NOW)
        if why is None and not keys <= view.keys:
            why = "lacks " + ", ".join(i for i in images if parse(i).match_key not in view.keys)
        if why is None:
            return view.name, tuple(rejected)
        if len(rejected) < REJECTED_LOGGED:
            rejected.append(Rejected(view.name, why))
    return None, tuple(rejected)


CACHE = st.tuples(
    st.sampled_from([["nginx"], ["nginx", "redis:7"], ["nginx", "busybox"], ["redis:7"], IMAGES]),
    st.sampled_from([None, 5, 10]),
    st.sampled_from(["Ready", "Ready", "Ready", "Creating"]),
    st.sampled_from([None, ["other"], ["team1"], ["default"], ["other", "default"], []]),
    st.sampled_from([None, None, "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z"]),
    st.integers(1, 3),
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
              created=f"2026-01-{day:02d}T00:00:00Z")
        for n, (imgs, size, phase, ns, expire, day) in enumerate(blockers + specs)
    )  # fmt: skip
    decision = decide(images, namespace, read_request(AUTO), index, NOW)
    chosen, rejected = walk_every_holder(images, namespace, index)
    assert (decision.cache.name if decision.cache else None) == chosen
    assert decision.outcome == ("hit" if chosen else "miss")
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
    index.apply("ADDED", cache("z-all", ["nginx"]))
    found = decide(["nginx"], "shop", read_request(AUTO), index, NOW)
    assert found.cache is not None and found.cache.name == "z-all"


OURS = {"imagecache.dev/cache": "x"}
MOUNT = {"name": "imagecache", "mountPath": "/var/lib/imagecache"}
POD_SHAPES: list[dict[str, Any]] = [
    pod(["nginx", "redis:7"], annotations=AUTO),
    pod(["nginx"], annotations=AUTO, labels={"app": "web"}, volumes=[{"name": "data"}],
        mounts=[{"name": "data", "mountPath": "/data"}]),
    pod(["nginx"], annotations={**AUTO, **OURS}, labels=OURS, volumes=[{"name": "imagecache"}],
        mounts=[MOUNT]),
    pod(["nginx"], annotations={**AUTO, "imagecache.dev/disk-size": "80Gi"}),
    {"spec": {"containers": [{"name": "c", "image": "nginx"}]}},  # no metadata at all
]  # fmt: skip


def decisions_for(p: dict[str, Any]) -> list[Decision]:
    index = CacheIndex.from_objects([
        cache("web", ["nginx"], size=10, storage_class="fast"),
        cache("both", ["nginx", "redis:7"], restore="30Gi"),
        cache("a-very-long-name-" + "x" * 60, ["nginx", "redis:7", "busybox"]),
    ])  # fmt: skip
    annotations = (p.get("metadata") or {}).get("annotations") or AUTO
    images = [c["image"] for c in p["spec"]["containers"]]
    manual = ("web", "both", "nope", "a-very-long-name-" + "x" * 60)
    requests = [
        read_request(annotations),
        *(read_request({"imagecache.dev/use-image-cache": m}) for m in manual),
    ]
    return [decide(images, "default", r, index, NOW) for r in requests]


def test_encoded_patch_is_the_patch_encoded() -> None:
    seen = 0
    for _ in range(2):  # the second round answers from the cache of encoded patches
        for p in POD_SHAPES:
            for decision in decisions_for(p):
                ops = build_patch(p, decision)
                expected = base64.b64encode(json.dumps(ops).encode()).decode() if ops else ""
                assert encoded_patch(p, decision) == expected
                seen += bool(ops)
    assert seen > 10
