"""The matching policy of DESIGN.md as a table: pod + caches -> decision."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.cachefactory import DIGEST_A, DIGEST_B, cache
from webhook.core.caches import CacheIndex
from webhook.server.core.matching import decide, read_request

NOW = datetime(2026, 6, 1, tzinfo=UTC)
AUTO = {"imagecache.dev/use-image-cache": "auto"}
PARTIAL = {**AUTO, "imagecache.dev/match": "partial"}


def manual(name: str, **more: str) -> dict[str, str]:
    return {"imagecache.dev/use-image-cache": name, **more}


# (id, caches, pod images, annotations, namespace, expected outcome, expected cache, missing)
CASES: list[
    tuple[
        str,
        list[dict[str, Any]],
        list[str],
        dict[str, str],
        str,
        str | None,
        str | None,
        tuple[str, ...],
    ]
] = [
    ("not opted in", [cache("a", ["nginx"])], ["nginx"], {}, "default", None, None, ()),
    (
        "auto exact hit",
        [cache("a", ["nginx:1.25"])],
        ["nginx:1.25"],
        AUTO,
        "default",
        "hit",
        "a",
        (),
    ),
    (
        "normalized spellings match",
        [cache("a", ["docker.io/library/nginx:1.25"])],
        ["index.docker.io/nginx:1.25"],
        AUTO,
        "default",
        "hit",
        "a",
        (),
    ),
    (
        "tag mismatch is a miss",
        [cache("a", ["nginx:1.25"])],
        ["nginx:1.24"],
        AUTO,
        "default",
        "miss",
        None,
        (),
    ),
    (
        "latest is not 1.25",
        [cache("a", ["nginx:1.25"])],
        ["nginx"],
        AUTO,
        "default",
        "miss",
        None,
        (),
    ),
    (
        "exact needs every image",
        [cache("a", ["nginx:1.25"])],
        ["nginx:1.25", "redis:7"],
        AUTO,
        "default",
        "miss",
        None,
        (),
    ),
    (
        "init containers count",
        [cache("a", ["nginx:1.25"])],
        ["nginx:1.25", "busybox"],
        AUTO,
        "default",
        "miss",
        None,
        (),
    ),
    (
        "init images held too",
        [cache("a", ["nginx:1.25", "busybox"])],
        ["nginx:1.25", "busybox"],
        AUTO,
        "default",
        "hit",
        "a",
        (),
    ),
    (
        "smaller cache first",
        [cache("big", ["nginx"], size=50), cache("small", ["nginx"], size=10)],
        ["nginx"],
        AUTO,
        "default",
        "hit",
        "small",
        (),
    ),
    (
        "restoreSize beats spec size",
        [cache("a", ["nginx"], size=10, restore="30Gi"), cache("b", ["nginx"], size=20)],
        ["nginx"],
        AUTO,
        "default",
        "hit",
        "b",
        (),
    ),
    (
        "same size: newer first",
        [
            cache("old", ["nginx"], created="2026-01-01T00:00:00Z"),
            cache("new", ["nginx"], created="2026-02-01T00:00:00Z"),
        ],
        ["nginx"],
        AUTO,
        "default",
        "hit",
        "new",
        (),
    ),
    (
        "same size and age: by name",
        [cache("b", ["nginx"]), cache("a", ["nginx"]), cache("c", ["nginx"])],
        ["nginx"],
        AUTO,
        "default",
        "hit",
        "a",
        (),
    ),
    (
        "pending caches do not take part",
        [cache("a", ["nginx"], phase="Creating")],
        ["nginx"],
        AUTO,
        "default",
        "miss",
        None,
        (),
    ),
    (
        "failed caches do not take part",
        [cache("a", ["nginx"], phase="Failed")],
        ["nginx"],
        AUTO,
        "default",
        "miss",
        None,
        (),
    ),
    (
        "expired by phase",
        [cache("a", ["nginx"], phase="Expired")],
        ["nginx"],
        AUTO,
        "default",
        "miss",
        None,
        (),
    ),
    (
        "expired by time",
        [cache("a", ["nginx"], expire="2026-05-31T00:00:00Z")],
        ["nginx"],
        AUTO,
        "default",
        "miss",
        None,
        (),
    ),
    (
        "not yet expired",
        [cache("a", ["nginx"], expire="2026-06-02T00:00:00Z")],
        ["nginx"],
        AUTO,
        "default",
        "hit",
        "a",
        (),
    ),
    (
        "expired loses to usable",
        [cache("a", ["nginx"], size=1, phase="Expired"), cache("b", ["nginx"], size=9)],
        ["nginx"],
        AUTO,
        "default",
        "hit",
        "b",
        (),
    ),
    (
        "namespace scoping",
        [cache("a", ["nginx"], namespaces=["shop"])],
        ["nginx"],
        AUTO,
        "default",
        "miss",
        None,
        (),
    ),
    (
        "namespace listed",
        [cache("a", ["nginx"], namespaces=["shop"])],
        ["nginx"],
        AUTO,
        "shop",
        "hit",
        "a",
        (),
    ),
    (
        "pull secret limits namespaces",
        [cache("a", ["nginx"], secrets=["team/creds"])],
        ["nginx"],
        AUTO,
        "default",
        "miss",
        None,
        (),
    ),
    (
        "pull secret namespace may use it",
        [cache("a", ["nginx"], secrets=["team/creds"])],
        ["nginx"],
        AUTO,
        "team",
        "hit",
        "a",
        (),
    ),
    (
        "digest reference, resolved digest",
        [cache("a", ["nginx:1.25"], digests={"docker.io/library/nginx:1.25": DIGEST_A})],
        [f"nginx@{DIGEST_A}"],
        AUTO,
        "default",
        "hit",
        "a",
        (),
    ),
    (
        "digest reference, other digest",
        [cache("a", ["nginx:1.25"], digests={"docker.io/library/nginx:1.25": DIGEST_A})],
        [f"nginx@{DIGEST_B}"],
        AUTO,
        "default",
        "miss",
        None,
        (),
    ),
    (
        "tag@digest matches by digest",
        [cache("a", ["nginx:1.25"], digests={"docker.io/library/nginx:1.25": DIGEST_A})],
        [f"nginx:9.9@{DIGEST_A}"],
        AUTO,
        "default",
        "hit",
        "a",
        (),
    ),
    (
        "digest in the cache spec",
        [cache("a", [f"nginx@{DIGEST_A}"])],
        [f"nginx@{DIGEST_A}"],
        AUTO,
        "default",
        "hit",
        "a",
        (),
    ),
    (
        "same digest, other repository",
        [cache("a", ["nginx:1.25"], digests={"docker.io/library/nginx:1.25": DIGEST_A})],
        [f"redis@{DIGEST_A}"],
        AUTO,
        "default",
        "miss",
        None,
        (),
    ),
    (
        "invalid pod image is a miss",
        [cache("a", ["nginx"])],
        ["nginx", "Bad:Ref"],
        AUTO,
        "default",
        "miss",
        None,
        (),
    ),
    (
        "partial: most images first",
        [cache("one", ["nginx", "x"], size=1), cache("two", ["nginx", "redis"], size=50)],
        ["nginx", "redis", "postgres"],
        PARTIAL,
        "default",
        "mismatch",
        "two",
        ("postgres",),
    ),
    (
        "partial: full holder is a hit",
        [cache("a", ["nginx", "redis"])],
        ["nginx", "redis"],
        PARTIAL,
        "default",
        "hit",
        "a",
        (),
    ),
    (
        "partial: tie by size",
        [cache("s", ["nginx"], size=5), cache("l", ["nginx"], size=9)],
        ["nginx", "redis"],
        PARTIAL,
        "default",
        "mismatch",
        "s",
        ("redis",),
    ),
    ("partial: none held", [cache("a", ["x"])], ["nginx"], PARTIAL, "default", "miss", None, ()),
    (
        "manual hit",
        [cache("a", ["nginx"]), cache("b", ["nginx"], size=1)],
        ["nginx"],
        manual("a"),
        "default",
        "hit",
        "a",
        (),
    ),
    (
        "manual mismatch",
        [cache("a", ["nginx"])],
        ["nginx", "redis:7"],
        manual("a"),
        "default",
        "mismatch",
        "a",
        ("redis:7",),
    ),
    ("manual missing cache", [], ["nginx"], manual("nope"), "default", "unavailable", None, ()),
    (
        "manual not ready",
        [cache("a", ["nginx"], phase="Creating")],
        ["nginx"],
        manual("a"),
        "default",
        "unavailable",
        None,
        (),
    ),
    (
        "manual expired",
        [cache("a", ["nginx"], phase="Expired")],
        ["nginx"],
        manual("a"),
        "default",
        "unavailable",
        None,
        (),
    ),
    (
        "manual wrong namespace",
        [cache("a", ["nginx"], namespaces=["x"])],
        ["nginx"],
        manual("a"),
        "default",
        "unavailable",
        None,
        (),
    ),
    (
        "TKE auto",
        [cache("a", ["nginx"])],
        ["nginx"],
        {"eks.tke.cloud.tencent.com/use-image-cache": "auto"},
        "default",
        "hit",
        "a",
        (),
    ),
    (
        "TKE manual",
        [cache("a", ["nginx"])],
        ["nginx"],
        {"eks.tke.cloud.tencent.com/use-image-cache": "a"},
        "default",
        "hit",
        "a",
        (),
    ),
    (
        "ECI auto",
        [cache("a", ["nginx"])],
        ["nginx"],
        {"k8s.aliyun.com/eci-auto-imc": "true"},
        "default",
        "hit",
        "a",
        (),
    ),
    (
        "ECI auto false",
        [cache("a", ["nginx"])],
        ["nginx"],
        {"k8s.aliyun.com/eci-auto-imc": "false"},
        "default",
        None,
        None,
        (),
    ),
    (
        "ECI id",
        [cache("a", ["nginx"]), cache("b", ["nginx"], size=1)],
        ["nginx"],
        {"k8s.aliyun.com/eci-imc-id": "a"},
        "default",
        "hit",
        "a",
        (),
    ),
    (
        "imagecache.dev wins over TKE",
        [cache("a", ["nginx"]), cache("b", ["nginx"], size=1)],
        ["nginx"],
        {
            "imagecache.dev/use-image-cache": "a",
            "eks.tke.cloud.tencent.com/use-image-cache": "auto",
        },
        "default",
        "hit",
        "a",
        (),
    ),
    # Issue 10.1: only a ready copy in the pod's namespace makes a cache a candidate.
    ("Ready, no copy in the namespace", [cache("a", ["nginx"], copies=[])], ["nginx"], AUTO,
     "default", "unavailable", None, ()),
    ("copy being made", [cache("a", ["nginx"], copies=[], copies_not_ready=["default"])],
     ["nginx"], AUTO, "default", "unavailable", None, ()),
    ("a copy in another namespace does not count", [cache("a", ["nginx"], copies=["other"])],
     ["nginx"], AUTO, "default", "unavailable", None, ()),
    ("a ready copy beats a smaller cache without one",
     [cache("small", ["nginx"], size=1, copies=[]), cache("big", ["nginx"], size=50)],
     ["nginx"], AUTO, "default", "hit", "big", ()),
    ("partial, no ready copy", [cache("a", ["nginx"], copies=[])], ["nginx", "redis"], PARTIAL,
     "default", "unavailable", None, ()),
    ("lacking an image and a copy: miss", [cache("a", ["nginx"], copies=[])],
     ["nginx", "redis"], AUTO, "default", "miss", None, ()),
    ("not usable from the namespace and no copy: miss",
     [cache("a", ["nginx"], namespaces=["x"], copies=[])], ["nginx"], AUTO, "default", "miss",
     None, ()),
    ("manual, no ready copy", [cache("a", ["nginx"], copies=[])], ["nginx"], manual("a"),
     "default", "unavailable", None, ()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("caches", "images", "annotations", "namespace", "outcome", "chosen", "missing"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_decision(
    caches: list[dict[str, Any]],
    images: list[str],
    annotations: dict[str, str],
    namespace: str,
    outcome: str | None,
    chosen: str | None,
    missing: tuple[str, ...],
) -> None:
    index = CacheIndex.from_objects(caches)
    decision = decide(images, namespace, read_request(annotations), index, NOW)
    assert decision.outcome == outcome, decision.reason
    assert (decision.cache.name if decision.cache else None) == chosen
    assert decision.missing == missing
    assert decision.reason


def test_a_rebuilding_cache_holds_what_its_snapshot_was_built_from() -> None:
    # spec.images gained redis; the served snapshot (status.images) still holds only nginx.
    rebuilding = cache("a", ["nginx", "redis"], digests={})
    rebuilding["status"]["images"] = rebuilding["status"]["images"][:1]
    index = CacheIndex.from_objects([rebuilding])
    assert decide(["nginx"], "default", read_request(AUTO), index, NOW).outcome == "hit"
    assert decide(["redis"], "default", read_request(AUTO), index, NOW).outcome == "miss"


def test_namespace_label_makes_auto_the_default() -> None:
    index = CacheIndex.from_objects([cache("a", ["nginx"], copies=["ns"])])
    assert decide(["nginx"], "ns", read_request({}, namespace_auto=True), index, NOW).outcome == (
        "hit"
    )
    # A pod may still name its cache in an auto namespace.
    request = read_request(manual("other"), namespace_auto=True)
    assert request.mode == "manual"


def test_rejected_candidates_say_why() -> None:
    index = CacheIndex.from_objects(
        [
            cache("small", ["nginx"], size=5),
            cache("big", ["nginx"], size=50),
            cache("pending", ["nginx"], phase="Creating"),
            cache("partial", ["nginx", "x"]),
            cache("elsewhere", ["nginx", "redis"], namespaces=["other"]),
            cache("lacks", ["redis"]),
        ]
    )
    decision = decide(["nginx", "redis"], "default", read_request(AUTO), index, NOW, explain=True)
    assert decision.outcome == "miss"
    reasons = {r.cache: r.reason for r in decision.rejected}
    assert reasons == {
        "small": "lacks redis",
        "big": "lacks redis",
        "pending": "phase is Creating, not Ready",
        "partial": "lacks redis",
        "elsewhere": "not usable from namespace 'default' (spec.namespaces: other)",
        "lacks": "lacks nginx",
    }
    decision = decide(["nginx"], "default", read_request(AUTO), index, NOW, explain=True)
    assert decision.cache is not None and decision.cache.name == "small"
    assert {r.cache: r.reason for r in decision.rejected}["big"] == (
        "usable, but 'small' comes first"
    )


@pytest.mark.parametrize(
    ("annotations", "required", "denied"),
    [
        ({**AUTO, "imagecache.dev/required": "true"}, True, True),
        ({**AUTO, "imagecache.dev/required": "false"}, False, False),
        (manual("nope", **{"imagecache.dev/required": "true"}), True, True),
    ],
)
def test_required_denies_when_no_cache(
    annotations: dict[str, str], required: bool, denied: bool
) -> None:
    decision = decide(["nginx"], "default", read_request(annotations), CacheIndex(), NOW)
    assert decision.request.required is required
    assert bool(decision.denied) is denied
    if denied:
        assert "imagecache.dev/required=true" in str(decision.denied)


def test_required_with_a_hit_is_allowed() -> None:
    index = CacheIndex.from_objects([cache("a", ["nginx"])])
    request = read_request({**AUTO, "imagecache.dev/required": "true"})
    assert decide(["nginx"], "default", request, index, NOW).denied is None


def test_manual_mismatch_and_unavailable_warn() -> None:
    index = CacheIndex.from_objects([cache("a", ["nginx"])])
    mismatch = decide(["nginx", "redis"], "default", read_request(manual("a")), index, NOW)
    assert any("lacks redis" in w for w in mismatch.warnings)
    unavailable = decide(["nginx"], "default", read_request(manual("zzz")), index, NOW)
    assert any("does not exist" in w for w in unavailable.warnings)


@pytest.mark.parametrize(
    ("annotations", "problem"),
    [
        ({**AUTO, "imagecache.dev/match": "fuzzy"}, "not exact or partial"),
        ({**AUTO, "imagecache.dev/disk-size": "lots"}, "disk-size ignored"),
    ],
)
def test_bad_options_are_warned_not_fatal(annotations: dict[str, str], problem: str) -> None:
    index = CacheIndex.from_objects([cache("a", ["nginx"])])
    decision = decide(["nginx"], "default", read_request(annotations), index, NOW)
    assert decision.outcome == "hit"
    assert any(problem in w for w in decision.warnings)


def test_index_follows_watch_events() -> None:
    index = CacheIndex()
    index.apply("ADDED", cache("a", ["nginx"]))
    assert index.with_key("docker.io/library/nginx:latest") == {"a"}
    index.apply("MODIFIED", cache("a", ["redis"]))
    assert index.with_key("docker.io/library/nginx:latest") == set()
    assert index.with_key("docker.io/library/redis:latest") == {"a"}
    index.apply("DELETED", cache("a", ["redis"]))
    assert len(index) == 0 and index.with_key("docker.io/library/redis:latest") == set()


def test_lookup_does_not_scan_unrelated_caches() -> None:
    # 10,000 caches of other images: the decision reads only the one that holds nginx.
    caches = [cache(f"c{n}", [f"img{n}:1"]) for n in range(10_000)] + [cache("hit", ["nginx"])]
    index = CacheIndex.from_objects(caches)
    decision = decide(["nginx"], "default", read_request(AUTO), index, NOW)
    assert decision.cache is not None and decision.cache.name == "hit"
    assert decision.rejected == ()


IMAGES = st.sampled_from(["nginx", "redis:7", "busybox", "Bad:Ref", f"nginx@{DIGEST_A}"])
CACHES = st.lists(
    st.builds(
        lambda n, imgs, size, phase, ns, day: cache(
            f"c{n}",
            imgs,
            size=size,
            phase=phase,
            namespaces=ns,
            created=f"2026-01-{day:02d}T00:00:00Z",
            digests={"docker.io/library/nginx:latest": DIGEST_A},
        ),
        st.integers(0, 30),
        st.lists(IMAGES.filter(lambda i: i != "Bad:Ref"), min_size=1, max_size=3),
        st.sampled_from([None, 5, 10]),
        st.sampled_from(["Ready", "Ready", "Creating"]),
        st.sampled_from([None, ["default"], ["other"]]),
        st.integers(1, 3),
    ),
    max_size=12,
)


@settings(max_examples=500, deadline=None)
@given(CACHES, st.lists(IMAGES, min_size=1, max_size=3), st.booleans())
def test_admission_fast_path_agrees_with_explain(
    caches: list[dict[str, Any]], images: list[str], partial: bool
) -> None:
    index = CacheIndex.from_objects(caches)
    request = read_request(PARTIAL if partial else AUTO)
    fast = decide(images, "default", request, index, NOW)
    full = decide(images, "default", request, index, NOW, explain=True)
    assert (fast.outcome, fast.cache, fast.missing) == (full.outcome, full.cache, full.missing)
    assert {r.cache for r in fast.rejected} <= {r.cache for r in full.rejected}


def test_decision_is_flat_when_many_caches_hold_the_image() -> None:
    caches = [cache(f"c{n:05d}", ["nginx"], size=20) for n in range(10_000)]
    index = CacheIndex.from_objects([*caches, cache("small", ["nginx"], size=1)])
    decide(["nginx"], "default", read_request(AUTO), index, NOW)  # sorts once
    start = time.perf_counter()
    for _ in range(100):
        decision = decide(["nginx"], "default", read_request(AUTO), index, NOW)
    per_call = (time.perf_counter() - start) / 100
    assert decision.cache is not None and decision.cache.name == "small"
    assert per_call < 0.001, f"{per_call * 1e6:.0f} us per decision with 10,000 holders"


@pytest.mark.parametrize("explain", [False, True])
@pytest.mark.parametrize("annotations", [AUTO, PARTIAL, manual("slow")])
def test_waiting_for_a_copy_names_the_cache_and_why(
    annotations: dict[str, str], explain: bool
) -> None:
    index = CacheIndex.from_objects([
        cache("slow", ["nginx"], size=1, copies=["other"], copies_not_ready=["shop"]),
        cache("later", ["nginx"], size=9, copies=[]),
        cache("closed", ["nginx"], phase="Creating", copies=["shop"]),
    ])  # fmt: skip
    decision = decide(["nginx"], "shop", read_request(annotations), index, NOW, explain=explain)
    assert decision.outcome == "unavailable" and decision.cache is None
    assert decision.waiting is not None and decision.waiting.name == "slow"
    assert "no ready copy in namespace shop yet" in decision.reason
    assert any("no ready copy in namespace shop yet" in w for w in decision.warnings)
    assert decision.denied is None
    required = read_request({**annotations, "imagecache.dev/required": "true"})
    assert "no ready copy" in str(decide(["nginx"], "shop", required, index, NOW).denied)


def test_the_chosen_copy_is_the_namespace_snapshot() -> None:
    web = cache("web", ["nginx"], copies=[])
    web["status"]["namespaces"] = [
        {"namespace": "shop", "snapshotName": "imagecache-web-2f6c", "readyToUse": True},
        {"namespace": "default", "snapshotName": "imagecache-web", "readyToUse": True},
        {"namespace": "broken", "readyToUse": True},  # no snapshotName: not a usable copy
    ]
    index = CacheIndex.from_objects([web])
    for namespace, snapshot in (("shop", "imagecache-web-2f6c"), ("default", "imagecache-web")):
        decision = decide(["nginx"], namespace, read_request(AUTO), index, NOW)
        assert decision.outcome == "hit" and decision.snapshot == snapshot
    assert decide(["nginx"], "broken", read_request(AUTO), index, NOW).outcome == "unavailable"
