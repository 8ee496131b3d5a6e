"""The admission path's shortcuts give exactly what the plain definitions give: the auto/exact
walk that jumps to the namespace's own caches once the logged rejections are full, and the
patch encoded once per distinct input."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import webhook.core.review as review_module
from tests.cachefactory import cache, pod
from webhook.core.caches import CacheIndex
from webhook.core.imageref import parse
from webhook.core.matching import REJECTED_LOGGED, Decision, Rejected, decide, read_request
from webhook.core.review import review

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


def review_body(p: dict[str, Any], uid: str, annotations: dict[str, str]) -> bytes:
    p = json.loads(json.dumps(p))
    p.setdefault("metadata", {}).setdefault("annotations", {}).update(annotations)
    return json.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "namespace": "default", "operation": "CREATE", "object": p},
    }).encode()  # fmt: skip


def test_remembered_answers_are_the_answers_decided_afresh() -> None:
    index = CacheIndex.from_objects([
        cache("web", ["nginx"], size=10, storage_class="fast"),
        cache("both", ["nginx", "redis:7"], restore="30Gi"),
        cache("a-very-long-name-" + "x" * 60, ["nginx", "redis:7", "busybox"]),
    ])  # fmt: skip
    asks = [AUTO, {"imagecache.dev/required": "true"}] + [
        {"imagecache.dev/use-image-cache": m}
        for m in ("web", "both", "nope", "a-very-long-name-" + "x" * 60)
    ]
    patched = 0
    for p in POD_SHAPES:
        for ask in asks:
            afresh = []
            for n in range(3):
                review_module._DECIDED.clear()
                afresh.append(review(review_body(p, f"uid-{n}", ask), index, now=NOW))
            remembered = [review(review_body(p, f"uid-{n}", ask), index, now=NOW)
                          for n in range(3)]  # fmt: skip
            for new, old in zip(afresh, remembered, strict=True):
                assert new.answer == old.answer
                assert (new.outcome, new.decision, new.log_fields()) == (
                    old.outcome, old.decision, old.log_fields()
                )  # fmt: skip
            assert [r.body["response"]["uid"] for r in remembered] == ["uid-0", "uid-1", "uid-2"]
            patched += "patch" in remembered[0].body["response"]
    assert patched > 10


def test_remembered_answers_follow_the_index_and_the_clock() -> None:
    index = CacheIndex.from_objects([
        cache("small", ["nginx"], size=5, expire="2026-06-01T00:10:00Z"),
        cache("big", ["nginx"], size=50),
    ])  # fmt: skip
    body = review_body(POD_SHAPES[3], "u", AUTO)

    def chosen(now: datetime) -> str | None:
        return review(body, index, now=now).body["response"]["auditAnnotations"].get("cache")

    assert chosen(NOW) == "small"
    assert chosen(datetime(2026, 6, 1, 0, 9, 59, tzinfo=UTC)) == "small"
    assert chosen(datetime(2026, 6, 1, 0, 10, tzinfo=UTC)) == "big"  # small has expired
    assert chosen(NOW) == "small"  # a clock set back decides again
    index.apply("DELETED", cache("small", ["nginx"]))
    assert chosen(NOW) == "big"
    index.apply("MODIFIED", cache("big", ["nginx"], phase="Creating"))
    assert review(body, index, now=NOW).decision == "miss"


def test_a_pod_that_cannot_take_the_cache_is_decided_again_when_the_cache_expires() -> None:
    index = CacheIndex.from_objects([cache("only", ["nginx"], expire="2026-06-01T00:10:00Z")])
    taken = pod(["nginx"], annotations=AUTO, volumes=[{"name": "imagecache", "emptyDir": {}}])
    body = review_body(taken, "u", AUTO)
    assert review(body, index, now=NOW).decision == "unavailable"
    assert review(body, index, now=datetime(2026, 6, 1, 0, 10, tzinfo=UTC)).decision == "miss"
