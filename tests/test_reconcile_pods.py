"""Pod Events from decision annotations, lastMatchedTime batching, names and manifests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from webhook.controller.core import manifests_build as mb
from webhook.controller.core import reconcile_names as rn
from webhook.controller.core import reconcile_pods as rp
from webhook.controller.core.reconcile_model import Cache, Settings, UserPod

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
DECISION, CACHE, MISSING = (
    "imagecache.dev/decision",
    "imagecache.dev/cache",
    ("imagecache.dev/missing-images"),
)


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({DECISION: "hit", CACHE: "web"}, ("Normal", "ImageCacheHit", "image cache web")),
        (
            {DECISION: "mismatch", CACHE: "web", MISSING: "docker.io/library/a:1, b.io/c:2"},
            ("Warning", "ImageCacheMismatch", "lacks docker.io/library/a:1, b.io/c:2"),
        ),
        ({DECISION: "miss"}, ("Normal", "ImageCacheMiss", "no Ready image cache")),
        (
            {DECISION: "unavailable", CACHE: "gone"},
            ("Warning", "ImageCacheUnavailable", "image cache gone cannot be used here now (no "
             "ready copy in this namespace yet, or it does not exist"),
        ),
        ({DECISION: "unavailable"}, ("Warning", "ImageCacheUnavailable", "the requested")),
        ({CACHE: "web"}, None),
        ({DECISION: "bogus"}, None),
        ({}, None),
    ],
)
def test_pod_event(annotations: dict[str, str], expected: tuple[str, str, str] | None) -> None:
    event = rp.pod_event(annotations)
    if expected is None:
        assert event is None
        return
    assert event is not None
    assert (event.type, event.reason) == expected[:2]
    assert expected[2] in event.message


def test_event_name_is_one_per_pod() -> None:
    pod = UserPod("ns", "p" * 250, "0123456789abcdef", T0, "Pending")
    event = rp.pod_event({DECISION: "miss"})
    assert event is not None
    manifest = rp.event_manifest(pod, event, "2024-05-01T12:00:00Z")
    name = manifest["metadata"]["name"]
    assert len(name) <= 253 and name == rn.pod_event_name(pod.name, pod.uid)
    assert manifest["involvedObject"]["uid"] == pod.uid


def _pod(cache: str, decision: str, seconds: int) -> UserPod:
    return UserPod("ns", f"p{seconds}", "u", T0 + timedelta(seconds=seconds), "Pending",
                   {DECISION: decision, CACHE: cache})  # fmt: skip


def test_latest_matches_counts_hits_and_mismatches_only() -> None:
    pods = [_pod("a", "hit", 1), _pod("a", "mismatch", 5), _pod("a", "unavailable", 9),
            _pod("b", "hit", 2)]  # fmt: skip
    assert rp.latest_matches(pods) == {
        "a": T0 + timedelta(seconds=5),
        "b": T0 + timedelta(seconds=2),
    }


@pytest.mark.parametrize(
    ("pending", "current", "expected"),
    [
        ({"a": T0}, {"a": None}, {"a": T0}),
        ({"a": T0}, {"a": T0}, {}),
        ({"a": T0 + timedelta(milliseconds=400)}, {"a": T0}, {}),  # same second
        ({"a": T0 + timedelta(seconds=1)}, {"a": T0}, {"a": T0 + timedelta(seconds=1)}),
        ({"a": T0}, {"a": T0 + timedelta(seconds=1)}, {}),
        ({"gone": T0}, {}, {}),
    ],
)
def test_last_matched_updates(
    pending: dict[str, datetime], current: dict[str, datetime | None], expected: dict[str, datetime]
) -> None:
    assert rp.last_matched_updates(pending, current) == expected


@pytest.mark.parametrize("length", [1, 40, 63, 64, 200, 253])
def test_names_fit_kubernetes_limits(length: int) -> None:
    cache = "c" * length
    bid = "0123456789"
    assert len(rn.job_name(cache, bid)) <= 63
    assert len(rn.sizer_name(cache, bid)) <= 63
    assert len(rn.label_value(cache)) <= 63
    names = [
        rn.pvc_name(cache, bid),
        rn.primary_name(cache, bid),
        rn.copy_name(cache, bid),
        rn.copy_content_name("0f8c7a1e-uid", cache, "n" * 63, bid),
        rn.secret_name(cache, bid),
    ]
    assert all(len(name) <= 253 for name in names)
    # Cut names stay unique: two long names differing at the end do not collide.
    assert rn.job_name(cache + "a", bid) != rn.job_name(cache + "b", bid)


@pytest.mark.parametrize(
    ("change", "rebuilds"),
    [
        ({"images": ["b", "a"]}, False),  # order does not change the content
        ({"images": ["a", "b", "c"]}, True),
        ({"retentionDays": 3}, False),
        ({"namespaces": ["x"]}, False),
        ({"platforms": ["linux/arm64"]}, True),
        ({"imagePullSecrets": ["n/s"]}, True),
        ({"storageClassName": "fast"}, True),
    ],
)
def test_build_id_changes_only_with_the_disk_content(
    change: dict[str, object], rebuilds: bool
) -> None:
    spec: dict[str, object] = {"images": ["a", "b"]}
    assert (rn.build_id({**spec, **change}, {}, "20") != rn.build_id(spec, {}, "20")) is rebuilds


def test_builder_job_is_hardened() -> None:
    cache = Cache("web", "uid", 1, False, (), {rn.SERVE_CREDENTIALED_ANNOTATION: "true"},
                  {"images": ["nginx"]}, {})  # fmt: skip
    settings = Settings(namespace="imc", builder_image="img:1", builder_service_account="builder")
    inputs = mb.BuildInputs("b1", ("nginx",), ("linux/amd64",), (), ("a/x",), None, None, 5, True)
    job = mb.builder_job(cache, settings, inputs)
    spec = job["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert spec["restartPolicy"] == "Never" and spec["serviceAccountName"] == "builder"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "4Gi"},  # fits beside other pods on 2 CPUs
        "limits": {"cpu": "2", "memory": "4Gi"},
    }
    assert "--serve-credentialed" in container["args"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[mb.SECRETS_MOUNT]["readOnly"] is True and "/tmp" in mounts
    assert job["spec"]["backoffLimit"] == 1 and job["spec"]["activeDeadlineSeconds"] == 3600
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert CACHE not in labels  # builder pods must not look like pods using the cache
