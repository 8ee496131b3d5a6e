"""The patch: add-only, idempotent, never replacing what the user wrote."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import jsonpatch
import pytest

from tests.cachefactory import cache, fake_digest, pod
from webhook.core.caches import CacheIndex
from webhook.server.core.matching import Decision, decide, read_request
from webhook.server.core.patch import build_patch, conflict, escape
from webhook.server.core.pod_facts import read_pod

NOW = datetime(2026, 6, 1, tzinfo=UTC)
AUTO = {"imagecache.dev/use-image-cache": "auto"}
INDEX = CacheIndex.from_objects(
    [
        cache("web", ["nginx:1.25", "busybox"], restore="12Gi", storage_class="fast"),
        cache("plain", ["redis:7"], size=7),
    ]
)
OUR_VOLUME = {
    "name": "imagecache",
    "ephemeral": {
        "volumeClaimTemplate": {
            "spec": {
                "dataSource": {
                    "apiGroup": "snapshot.storage.k8s.io",
                    "kind": "VolumeSnapshot",
                    "name": "imagecache-web",
                }
            }
        }
    },
}


def decision_for(p: dict[str, Any], index: CacheIndex = INDEX) -> Decision:
    meta = p["metadata"]
    containers = p["spec"].get("initContainers", []) + p["spec"]["containers"]
    images = [c["image"] for c in containers if c.get("image")]
    return decide(images, "default", read_request(meta.get("annotations") or {}), index, NOW)


def apply(p: dict[str, Any], index: CacheIndex = INDEX) -> dict[str, Any]:
    ops = build_patch(p, decision_for(p, index))
    # add, but for the image fields that pinning replaces
    assert all(op["op"] == "add" or op["path"].endswith("/image") for op in ops), ops
    patched: dict[str, Any] = jsonpatch.apply_patch(p, ops)
    return patched


PODS = {
    "no annotations at all": pod(["nginx:1.25"], annotations=None),
    "annotations, no volumes": pod(["nginx:1.25"], annotations=dict(AUTO)),
    "existing volumes and mounts": pod(
        ["nginx:1.25"],
        annotations=dict(AUTO),
        volumes=[{"name": "data", "emptyDir": {}}],
        mounts=[{"name": "data", "mountPath": "/data"}],
    ),
    "labels already there": pod(["nginx:1.25"], annotations=dict(AUTO), labels={"app": "web"}),
    "init container holds an image": pod(["nginx:1.25"], annotations=dict(AUTO), init=["busybox"]),
    "two containers": pod(["nginx:1.25", "busybox"], annotations=dict(AUTO)),
}


@pytest.mark.parametrize("name", list(PODS))
def test_patch_adds_cache_and_is_idempotent(name: str) -> None:
    original = PODS[name]
    if "annotations" not in original["metadata"]:
        original = copy.deepcopy(original)
        original["metadata"]["annotations"] = dict(AUTO)
    before = copy.deepcopy(original)
    once = apply(original)
    assert original == before  # the input is not mutated
    meta = once["metadata"]
    assert meta["annotations"]["imagecache.dev/decision"] == "hit"
    assert meta["annotations"]["imagecache.dev/cache"] == "web"
    assert meta["labels"]["imagecache.dev/cache"] == "web"
    assert meta["labels"]["imagecache.dev/decision"] == "hit"
    for key, value in before["metadata"].get("labels", {}).items():
        assert meta["labels"][key] == value
    volume = next(v for v in once["spec"]["volumes"] if v["name"] == "imagecache")
    claim = volume["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim == {
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": "fast",
        "resources": {"requests": {"storage": "12Gi"}},
        "dataSource": {
            "apiGroup": "snapshot.storage.k8s.io",
            "kind": "VolumeSnapshot",
            "name": "imagecache-web",
        },
    }
    first = once["spec"]["containers"][0]
    assert {"name": "imagecache", "mountPath": "/var/lib/imagecache", "readOnly": True} in first[
        "volumeMounts"
    ]
    # Only the first container mounts it; others are untouched.
    for other, was in zip(
        once["spec"]["containers"][1:], before["spec"]["containers"][1:], strict=True
    ):
        assert other == was
    # User volumes and mounts are kept in place, in order.
    assert once["spec"]["volumes"][: len(before["spec"].get("volumes", []))] == before["spec"].get(
        "volumes", []
    )
    # Applying the webhook's patch again (a reinvocation) adds nothing.
    assert build_patch(once, decision_for(original)) == []


def test_patch_after_another_webhook_keeps_its_changes() -> None:
    p = pod(["nginx:1.25"], annotations=dict(AUTO))
    # Another webhook added a sidecar volume and an annotation first.
    p["spec"]["volumes"] = [{"name": "istio-envoy", "emptyDir": {}}]
    p["metadata"]["annotations"]["sidecar.istio.io/status"] = "{}"
    once = apply(p)
    assert [v["name"] for v in once["spec"]["volumes"]] == ["istio-envoy", "imagecache"]
    assert once["metadata"]["annotations"]["sidecar.istio.io/status"] == "{}"
    assert build_patch(once, decision_for(p)) == []


def test_user_written_values_are_never_replaced() -> None:
    p = pod(["nginx:1.25"], annotations={**AUTO, "imagecache.dev/cache": "mine"})
    p["metadata"]["labels"] = {"imagecache.dev/cache": "mine-too"}
    once = apply(p)
    assert once["metadata"]["annotations"]["imagecache.dev/cache"] == "mine"
    assert once["metadata"]["labels"]["imagecache.dev/cache"] == "mine-too"
    assert once["metadata"]["annotations"]["imagecache.dev/decision"] == "hit"


@pytest.mark.parametrize(
    ("volumes", "mounts", "problem"),
    [
        ([{"name": "imagecache", "emptyDir": {}}], None, "already has a volume named"),
        (
            [{"name": "x", "emptyDir": {}}],
            [{"name": "x", "mountPath": "/var/lib/imagecache"}],
            "already mounts something",
        ),
        ([OUR_VOLUME], None, None),
    ],
)
def test_conflicts(
    volumes: list[dict[str, Any]], mounts: list[dict[str, Any]] | None, problem: str | None
) -> None:
    p = pod(["nginx:1.25"], annotations=dict(AUTO), volumes=volumes, mounts=mounts)
    found = conflict(read_pod(p))
    assert (found is None) if problem is None else (problem in str(found))


def test_our_existing_volume_is_not_added_twice() -> None:
    p = pod(["nginx:1.25"], annotations=dict(AUTO), volumes=[OUR_VOLUME])
    once = apply(p)
    assert [v["name"] for v in once["spec"]["volumes"]] == ["imagecache"]


def test_miss_records_only_the_decision() -> None:
    p = pod(["postgres:16"], annotations=dict(AUTO))
    once = apply(p)
    assert once["metadata"]["annotations"]["imagecache.dev/decision"] == "miss"
    # The decision label lets the controller watch only decided pods; no cache label.
    assert once["metadata"]["labels"] == {"imagecache.dev/decision": "miss"}
    assert "volumes" not in once["spec"]


def test_mismatch_records_missing_images() -> None:
    p = pod(["nginx:1.25", "redis:7"], annotations={"imagecache.dev/use-image-cache": "web"})
    once = apply(p)
    assert once["metadata"]["annotations"]["imagecache.dev/missing-images"] == "redis:7"
    assert once["metadata"]["annotations"]["imagecache.dev/decision"] == "mismatch"


@pytest.mark.parametrize(
    ("disk", "storage"), [("40Gi", "40Gi"), ("5Gi", "12Gi"), ("20000000000", "19Gi")]
)
def test_disk_size_only_grows(disk: str, storage: str) -> None:
    p = pod(["nginx:1.25"], annotations={**AUTO, "imagecache.dev/disk-size": disk})
    once = apply(p)
    claim = once["spec"]["volumes"][0]["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim["resources"]["requests"]["storage"] == storage


def test_storage_class_the_controller_used_wins() -> None:
    index = CacheIndex.from_objects(
        [cache("web", ["nginx:1.25"], storage_class="spec-class", status_storage_class="used")]
    )
    p = pod(["nginx:1.25"], annotations=dict(AUTO))
    decision = decide(["nginx:1.25"], "default", read_request(AUTO), index, NOW)
    claim = jsonpatch.apply_patch(p, build_patch(p, decision))["spec"]["volumes"][0]
    assert claim["ephemeral"]["volumeClaimTemplate"]["spec"]["storageClassName"] == "used"


def test_size_from_spec_when_no_restore_size() -> None:
    p = pod(["redis:7"], annotations=dict(AUTO))
    claim = apply(p)["spec"]["volumes"][0]["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim["resources"]["requests"]["storage"] == "7Gi"
    assert "storageClassName" not in claim  # the cluster's default class


@pytest.mark.parametrize(
    ("token", "escaped"),
    [("imagecache.dev/cache", "imagecache.dev~1cache"), ("a~b", "a~0b"), ("~/", "~0~1")],
)
def test_json_pointer_escaping(token: str, escaped: str) -> None:
    assert escape(token) == escaped


# Issue 10.5: pinning. `digests={}`: status.images as a build writes it (fake digests).
PINNING = CacheIndex.from_objects(
    [cache("web", ["nginx:1.25", "busybox", "redis:7"], restore="12Gi", digests={})]
)
NGINX_DIGEST = fake_digest("nginx:1.25")
PINNED_ALREADY = "nginx@" + "sha256:" + "c" * 64


def pinned_pod(annotations: dict[str, str]) -> dict[str, Any]:
    p = pod(["nginx:1.25", "postgres:16", PINNED_ALREADY], init=["busybox"],
            annotations=annotations)  # fmt: skip
    p["spec"]["initContainers"].append({"name": "no-image"})
    return p


@pytest.mark.parametrize("ask", [AUTO | {"imagecache.dev/match": "partial"}, {
    "imagecache.dev/use-image-cache": "web"}], ids=["partial", "manual"])
def test_cached_images_are_pinned_to_the_digest_the_cache_holds(ask: dict[str, str]) -> None:
    p = pinned_pod(ask)
    decision = decision_for(p, PINNING)
    assert decision.outcome == "mismatch"  # postgres is not cached; the others are pinned
    ops = build_patch(p, decision)
    replaced = [op for op in ops if op["op"] == "replace"]
    assert replaced == [
        {"op": "replace", "path": "/spec/initContainers/0/image",
         "value": f"busybox@{fake_digest('busybox')}"},
        {"op": "replace", "path": "/spec/containers/0/image",
         "value": f"nginx:1.25@{NGINX_DIGEST}"},
    ]  # fmt: skip
    once: dict[str, Any] = jsonpatch.apply_patch(p, ops)
    asked = json.loads(once["metadata"]["annotations"]["imagecache.dev/pinned-images"])
    assert asked == {"i0": "busybox", "c0": "nginx:1.25"}
    assert [c["image"] for c in once["spec"]["containers"]] == [
        f"nginx:1.25@{NGINX_DIGEST}", "postgres:16", PINNED_ALREADY
    ]
    # Idempotent: a pinned image has a digest, and the record of what was asked stays.
    assert build_patch(once, decision) == []
    # The pinned pod still matches the cache (by digest), and pinning it again changes nothing.
    again = decision_for(once, PINNING)
    assert again.cache is not None and again.cache.name == "web"
    assert not [op for op in build_patch(once, again) if op["op"] == "replace"]


def test_a_hit_pins_and_pin_false_turns_it_off() -> None:
    hit = pod(["nginx:1.25"], annotations=dict(AUTO))
    once = apply(hit, PINNING)
    assert once["spec"]["containers"][0]["image"] == f"nginx:1.25@{NGINX_DIGEST}"
    assert json.loads(once["metadata"]["annotations"]["imagecache.dev/pinned-images"]) == {
        "c0": "nginx:1.25"
    }
    off = pod(["nginx:1.25"], annotations={**AUTO, "imagecache.dev/pin": "false"})
    once = apply(off, PINNING)
    assert once["metadata"]["annotations"]["imagecache.dev/decision"] == "hit"
    assert once["spec"]["containers"][0]["image"] == "nginx:1.25"
    assert "imagecache.dev/pinned-images" not in once["metadata"]["annotations"]


def test_nothing_is_pinned_without_the_cache() -> None:
    index = CacheIndex.from_objects([cache("web", ["nginx:1.25"], digests={}, copies=[])])
    p = pod(["nginx:1.25"], annotations=dict(AUTO))
    decision = decision_for(p, index)
    assert decision.outcome == "unavailable"
    once = apply(p, index)
    assert once["spec"]["containers"][0]["image"] == "nginx:1.25"
    assert "imagecache.dev/pinned-images" not in once["metadata"]["annotations"]
    # The cache waited for is recorded (annotation and label), no volume.
    assert once["metadata"]["annotations"]["imagecache.dev/cache"] == "web"
    assert once["metadata"]["labels"]["imagecache.dev/cache"] == "web"
    assert "volumes" not in once["spec"]


def test_a_cache_without_status_images_pins_nothing() -> None:
    # No digest known (a cache object written by hand): the pod gets the cache, unpinned.
    once = apply(pod(["nginx:1.25"], annotations=dict(AUTO)))
    assert once["spec"]["containers"][0]["image"] == "nginx:1.25"
    assert "imagecache.dev/pinned-images" not in once["metadata"]["annotations"]


def test_the_volume_clones_the_namespace_copy() -> None:
    web = cache("web", ["nginx:1.25"], copies=[])
    web["status"]["namespaces"] = [
        {"namespace": "default", "snapshotName": "imagecache-web-5d1a", "readyToUse": True}
    ]
    once = apply(pod(["nginx:1.25"], annotations=dict(AUTO)), CacheIndex.from_objects([web]))
    claim = once["spec"]["volumes"][0]["ephemeral"]["volumeClaimTemplate"]
    assert claim["spec"]["dataSource"]["name"] == "imagecache-web-5d1a"
    # Reinvoked: recognised as ours by the cache label, not added twice.
    assert build_patch(once, decision_for(once, CacheIndex.from_objects([web]))) == []
