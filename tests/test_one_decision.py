"""`imagecache explain` says what the webhook does (issue 10.7): every recorded and fixture pod
shape, through the admission path (`review()`) and through `explain()`, gets the same
decision, the same denial and the same patch."""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from envtest import SHARED

from tests.cachefactory import cache, pod
from webhook.core.caches import CacheIndex
from webhook.server.core.explain import explain
from webhook.server.core.review import review

NOW = datetime(2026, 6, 1, tzinfo=UTC)
AUTO = {"imagecache.dev/use-image-cache": "auto"}
INDEX = CacheIndex.from_objects([
    cache("web", ["nginx:1.25", "busybox:1.36"], restore="10Gi", digests={}),
    cache("big", ["nginx:1.25", "busybox:1.36", "redis:7"], restore="40Gi", digests={}),
    cache("team", ["registry.example.test/team/web:2.3.1"], digests={}),
    cache("elsewhere", ["memcached:1.6"], copies=["other"]),
])  # fmt: skip


def shapes() -> dict[str, tuple[dict[str, Any], str]]:
    """(pod, namespace) by name: the recorded reviews' pods and the shapes of the tests."""
    found: dict[str, tuple[dict[str, Any], str]] = {}
    for path in sorted((SHARED / "testdata" / "admission").glob("*.json")):
        request = json.loads(path.read_text())["request"]
        found[path.stem] = (request["object"], request["namespace"])
    mirror = pod(["nginx:1.25"], annotations={**AUTO, "kubernetes.io/config.mirror": "abc"})
    decided = pod(["nginx:1.25"], annotations={**AUTO, "imagecache.dev/decision": "hit"})
    no_metadata: dict[str, Any] = {"spec": {"containers": [{"name": "c", "image": "nginx:1.25"}]}}
    found.update({
        "mirror pod": (mirror, "default"),
        "hit, pinned": (pod(["nginx:1.25"], init=["busybox:1.36"], annotations=AUTO), "default"),
        "hit, pin false": (pod(["nginx:1.25"], annotations={**AUTO, "imagecache.dev/pin": "false"}),
                           "default"),
        "no ready copy in the namespace": (pod(["nginx:1.25"], annotations=AUTO), "shop"),
        "no ready copy, required": (
            pod(["nginx:1.25"], annotations={**AUTO, "imagecache.dev/required": "true"}), "shop"),
        "copy only elsewhere": (pod(["memcached:1.6"], annotations=AUTO), "default"),
        "partial": (pod(["nginx:1.25", "postgres:16"],
                        annotations={**AUTO, "imagecache.dev/match": "partial"}), "default"),
        "manual hit": (pod(["nginx:1.25"], annotations={"imagecache.dev/use-image-cache": "big"}),
                       "default"),
        "manual mismatch": (pod(["nginx:1.25", "postgres:16"],
                                annotations={"imagecache.dev/use-image-cache": "web"}), "default"),
        "manual, no such cache": (
            pod(["nginx:1.25"], annotations={"imagecache.dev/use-image-cache": "gone"}), "default"),
        "manual, no ready copy": (
            pod(["nginx:1.25"], annotations={"imagecache.dev/use-image-cache": "web"}), "shop"),
        "miss": (pod(["postgres:16"], annotations=AUTO), "default"),
        "required miss": (
            pod(["postgres:16"], annotations={**AUTO, "imagecache.dev/required": "true"}),
            "default"),
        "not opted in": (pod(["nginx:1.25"]), "default"),
        "decided already": (decided, "default"),
        "volume named imagecache": (
            pod(["nginx:1.25"], annotations=AUTO,
                volumes=[{"name": "imagecache", "emptyDir": {}}]), "default"),
        "no metadata": (no_metadata, "default"),
        "invalid image": (pod(["Bad:Image"], annotations=AUTO), "default"),
    })  # fmt: skip
    return found


SHAPES = shapes()


def by_review(obj: dict[str, Any], namespace: str, auto: bool) -> tuple[Any, ...]:
    body = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "namespace": namespace, "operation": "CREATE", "object": obj},
    }  # fmt: skip
    result = review(json.dumps(body).encode(), INDEX, now=NOW, default_auto=auto)
    assert result.status == 200
    response = result.body["response"]
    decision = (response.get("auditAnnotations") or {}).get("decision")
    ops = json.loads(base64.b64decode(response["patch"])) if "patch" in response else []
    return decision, not response["allowed"], ops


def by_explain(obj: dict[str, Any], namespace: str, auto: bool) -> tuple[Any, ...]:
    text = explain(obj, INDEX, namespace=namespace, now=NOW, namespace_auto=auto).text
    line = next(x for x in text.splitlines() if x.startswith("Decision: "))
    decision: str | None = line.removeprefix("Decision: ").split(":", 1)[0]
    if decision == "none":
        decision = None
    denied = "The pod would be DENIED" in text
    _, found, patch = text.partition("\nPatch:\n")
    return decision, denied, json.loads(patch) if found else []


@pytest.mark.parametrize("auto", [False, True], ids=["annotation", "namespace-auto"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_explain_and_admission_decide_alike(name: str, auto: bool) -> None:
    obj, namespace = SHAPES[name]
    admitted = by_review(copy.deepcopy(obj), namespace, auto)
    explained = by_explain(copy.deepcopy(obj), namespace, auto)
    assert explained == admitted


def test_the_shapes_cover_every_outcome() -> None:
    outcomes = {by_review(obj, ns, False)[0] for obj, ns in SHAPES.values()}
    assert outcomes == {None, "hit", "mismatch", "miss", "unavailable"}
    assert any(by_review(obj, ns, False)[1] for obj, ns in SHAPES.values())  # a denial
    mirror, namespace = SHAPES["mirror pod"]
    assert by_review(mirror, namespace, True) == (None, False, [])
