"""AdmissionReview handling: recorded requests, versions, malformed bodies, and a fuzz."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import jsonpatch
import pytest
from envtest import SHARED
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.cachefactory import cache, pod
from webhook.core.caches import CacheIndex
from webhook.server.core.review import MAX_BODY_BYTES, review

NOW = datetime(2026, 6, 1, tzinfo=UTC)
RECORDED = SHARED / "testdata" / "admission"
INDEX = CacheIndex.from_objects(
    [
        cache("web", ["nginx:1.25"], restore="10Gi"),
        cache("team", ["registry.example.test/team/web:2.3.1"]),
    ]
)


def recorded(name: str) -> dict[str, Any]:
    path = RECORDED / name
    if not path.exists():
        pytest.skip(f"recorded AdmissionReviews not found at {RECORDED}")
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def answer(body: dict[str, Any], **kw: Any) -> tuple[int, dict[str, Any]]:
    result = review(json.dumps(body).encode(), INDEX, now=NOW, **kw)
    return result.status, result.body


def patched(request_body: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    ops = json.loads(base64.b64decode(response["patch"]))
    out: dict[str, Any] = jsonpatch.apply_patch(request_body["request"]["object"], ops)
    return out


def review_of(obj: dict[str, Any], *, version: str = "v1", **request: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"admission.k8s.io/{version}",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "default",
            "operation": "CREATE",
            "object": obj,
            **request,
        },
    }


def test_recorded_generatename_pod_gets_the_cache() -> None:
    body = recorded("pod-create-generatename.json")
    status, out = answer(body)
    assert status == 200
    response = out["response"]
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
    assert response["uid"] == body["request"]["uid"] and response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    assert response["auditAnnotations"] == {
        "decision": "hit",
        "reason": "ImageCache 'web' holds every image",
        "cache": "web",
    }
    result = patched(body, response)
    assert [v["name"] for v in result["spec"]["volumes"]] == [
        "scratch",
        "default-token-t48lh",
        "imagecache",
    ]
    mounts = result["spec"]["containers"][0]["volumeMounts"]
    assert mounts[0]["mountPath"] == "/scratch" and mounts[-1]["mountPath"] == "/var/lib/imagecache"


def test_recorded_dry_run_is_answered_the_same() -> None:
    dry = recorded("pod-create-dryrun.json")
    real = recorded("pod-create-generatename.json")
    assert dry["request"]["dryRun"] is True
    _, dry_out = answer(dry)
    _, real_out = answer(real)
    assert dry_out["response"]["patch"] == real_out["response"]["patch"]


def test_recorded_replicaset_pod_without_opt_in_is_untouched() -> None:
    body = recorded("pod-create-by-replicaset.json")
    status, out = answer(body)
    assert status == 200
    assert out["response"] == {"uid": body["request"]["uid"], "allowed": True}
    # In a namespace labelled auto, the same pod opts in.
    _, auto = answer(body, default_auto=True)
    assert auto["response"]["auditAnnotations"]["decision"] == "hit"
    assert patched(body, auto["response"])["metadata"]["labels"]["imagecache.dev/cache"] == "team"


def test_v1beta1_is_answered_in_v1beta1() -> None:
    status, out = answer(
        review_of(
            pod(["nginx:1.25"], annotations={"imagecache.dev/use-image-cache": "auto"}),
            version="v1beta1",
        )
    )
    assert status == 200 and out["apiVersion"] == "admission.k8s.io/v1beta1"
    assert out["response"]["patchType"] == "JSONPatch"


@pytest.mark.parametrize(
    "request_fields",
    [
        {"operation": "UPDATE"},
        {"operation": "CREATE", "subResource": "binding"},
        {"kind": {"group": "apps", "version": "v1", "kind": "Deployment"}},
        {"kind": {"group": "", "version": "v1", "kind": "Service"}},
    ],
)
def test_other_requests_are_allowed_untouched(request_fields: dict[str, Any]) -> None:
    obj = pod(["nginx:1.25"], annotations={"imagecache.dev/use-image-cache": "auto"})
    status, out = answer(review_of(obj, **request_fields))
    assert status == 200 and out["response"] == {"uid": "u-1", "allowed": True}


def test_mirror_pods_are_skipped() -> None:
    obj = pod(
        ["nginx:1.25"],
        annotations={"imagecache.dev/use-image-cache": "auto", "kubernetes.io/config.mirror": "x"},
    )
    result = review(json.dumps(review_of(obj)).encode(), INDEX, now=NOW, default_auto=True)
    assert result.outcome == "ignored"
    assert result.body["response"] == {"uid": "u-1", "allowed": True}


def test_init_container_only_images_count() -> None:
    obj = pod(
        ["busybox"], init=["nginx:1.25"], annotations={"imagecache.dev/use-image-cache": "auto"}
    )
    _, out = answer(review_of(obj))
    assert out["response"]["auditAnnotations"]["decision"] == "miss"  # busybox is not cached
    obj = pod(
        ["nginx:1.25"], init=["nginx:1.25"], annotations={"imagecache.dev/use-image-cache": "auto"}
    )
    _, out = answer(review_of(obj))
    assert out["response"]["auditAnnotations"]["decision"] == "hit"


def test_manual_mismatch_and_unavailable_warn() -> None:
    obj = pod(["nginx:1.25", "redis:7"], annotations={"imagecache.dev/use-image-cache": "web"})
    _, out = answer(review_of(obj))
    assert out["response"]["allowed"] is True
    assert any("lacks redis:7" in w for w in out["response"]["warnings"])
    obj = pod(["nginx:1.25"], annotations={"imagecache.dev/use-image-cache": "gone"})
    _, out = answer(review_of(obj))
    assert any("'gone' does not exist" in w for w in out["response"]["warnings"])
    assert (
        patched(review_of(obj), out["response"])["metadata"]["annotations"][
            "imagecache.dev/decision"
        ]
        == "unavailable"
    )


def test_required_denies_with_a_reason() -> None:
    obj = pod(
        ["postgres:16"],
        annotations={"imagecache.dev/use-image-cache": "auto", "imagecache.dev/required": "true"},
    )
    status, out = answer(review_of(obj))
    assert status == 200
    assert out["response"]["allowed"] is False
    assert out["response"]["status"]["code"] == 403
    assert "required" in out["response"]["status"]["message"]


def test_user_volume_named_imagecache_is_unavailable_not_replaced() -> None:
    obj = pod(
        ["nginx:1.25"],
        annotations={"imagecache.dev/use-image-cache": "auto"},
        volumes=[{"name": "imagecache", "emptyDir": {}}],
    )
    _, out = answer(review_of(obj))
    result = patched(review_of(obj), out["response"])
    assert result["spec"]["volumes"] == [{"name": "imagecache", "emptyDir": {}}]
    assert result["metadata"]["annotations"]["imagecache.dev/decision"] == "unavailable"
    assert any("rename it" in w for w in out["response"]["warnings"])


def test_already_decided_pod_is_unchanged() -> None:
    obj = pod(["nginx:1.25"], annotations={"imagecache.dev/use-image-cache": "auto"})
    first = review_of(obj)
    _, out = answer(first)
    again = review_of(patched(first, out["response"]))
    result = review(json.dumps(again).encode(), INDEX, now=NOW)
    assert result.outcome == "unchanged" and "patch" not in result.body["response"]


MALFORMED: list[tuple[bytes, str]] = [
    (b"", "not JSON"),
    (b"{", "not JSON"),
    (b"[1,2]", "must be an object"),
    (b'"text"', "must be an object"),
    (b'{"kind":"Pod","apiVersion":"v1"}', "kind must be AdmissionReview"),
    (b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v2"}', "apiVersion"),
    (b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}', "request is missing"),
    (
        b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":[]}',
        "request must be an object",
    ),
    (b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{}}', "request.uid"),
    (
        b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":7}}',
        "request.uid",
    ),
    (json.dumps(review_of(None)).encode(), "request.object is missing"),  # type: ignore[arg-type]
    (json.dumps(review_of({"spec": {"containers": "x"}})).encode(), "spec.containers"),
    (
        json.dumps(review_of({"metadata": {"annotations": {"a": 1}}, "spec": {}})).encode(),
        "annotations must map strings",
    ),
    (json.dumps(review_of({"spec": {"containers": [{"image": 5}]}})).encode(), "image must be"),
    (b"[" * 100_000, "not JSON"),
    (b" " * (MAX_BODY_BYTES + 1), "over the limit"),
]


@pytest.mark.parametrize(("body", "problem"), MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_bodies_get_400_naming_the_problem(body: bytes, problem: str) -> None:
    result = review(body, INDEX, now=NOW)
    assert result.status == 400 and result.outcome == "invalid"
    assert problem in result.body["error"]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
POD_KEYS = st.sampled_from(
    [
        "metadata",
        "spec",
        "annotations",
        "labels",
        "containers",
        "initContainers",
        "volumes",
        "image",
        "volumeMounts",
        "name",
        "imagecache.dev/use-image-cache",
        "namespace",
    ]
)
POD_LIKE = st.recursive(
    st.none() | st.text(max_size=10) | st.sampled_from(["auto", "web", "nginx:1.25", "true"]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(POD_KEYS, children, max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()))
def test_fuzz_any_body_is_answered(body: bytes) -> None:
    result = review(body, INDEX, now=NOW)
    assert result.status in (200, 400)
    json.dumps(result.body)


@settings(max_examples=3000, deadline=None)
@given(POD_LIKE, st.sampled_from(["v1", "v1beta1"]), st.booleans())
def test_fuzz_pod_shaped_reviews(obj: Any, version: str, auto: bool) -> None:
    body = json.dumps(review_of(obj, version=version)).encode()
    result = review(body, INDEX, now=NOW, default_auto=auto)
    assert result.status in (200, 400)
    if result.status == 200:
        response = result.body["response"]
        assert response["uid"] == "u-1"
        if "patch" in response:
            ops = json.loads(base64.b64decode(response["patch"]))
            assert all(op["op"] == "add" for op in ops)
            once = jsonpatch.apply_patch(obj, ops)
            again = review(
                json.dumps(review_of(once, version=version)).encode(),
                INDEX,
                now=NOW,
                default_auto=auto,
            )
            assert "patch" not in again.body["response"]
