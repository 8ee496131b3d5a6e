"""`imagecache explain`: the decision, the rejected candidates and the patch, for people."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from tests.cachefactory import cache, pod
from webhook.core.caches import CacheIndex
from webhook.server.core.explain import explain, pod_from_manifest

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def test_explains_choice_rejections_and_patch() -> None:
    index = CacheIndex.from_objects(
        [
            cache("small", ["nginx:1.25"], size=5),
            cache("big", ["nginx:1.25"], size=50),
            cache("building", ["nginx:1.25"], phase="Creating"),
        ]
    )
    text = explain(
        pod(["nginx:1.25"], annotations={"imagecache.dev/use-image-cache": "auto"}),
        index,
        namespace="default",
        now=NOW,
    ).text
    assert "Decision: hit: ImageCache 'small' holds every image" in text
    assert "big: usable, but 'small' comes first" in text
    assert "building: phase is Creating, not Ready" in text
    assert '"name": "imagecache-small"' in text


def test_explains_pinning_waiting_and_mirror_pods() -> None:
    index = CacheIndex.from_objects([cache("web", ["nginx:1.25"], digests={}, copies=["default"])])
    auto = {"imagecache.dev/use-image-cache": "auto"}
    text = explain(pod(["nginx:1.25"], annotations=auto), index, namespace="default", now=NOW).text
    assert "Pinned (the image the disk holds" in text
    assert "  c0: nginx:1.25  ->  nginx:1.25@sha256:" in text
    assert '"op": "replace"' in text and "snapshot imagecache-web in namespace default" in text
    off = explain(pod(["nginx:1.25"], annotations={**auto, "imagecache.dev/pin": "false"}),
                  index, namespace="default", now=NOW).text  # fmt: skip
    assert "Pinning: off" in off and '"op": "replace"' not in off
    waiting = explain(pod(["nginx:1.25"], annotations=auto), index, namespace="shop", now=NOW).text
    assert "Decision: unavailable: no ready copy in namespace shop yet" in waiting
    assert "Waiting for: ImageCache web's copy in namespace shop" in waiting
    assert "web: no ready copy in namespace shop yet" in waiting
    mirror = pod(["nginx:1.25"], annotations={**auto, "kubernetes.io/config.mirror": "x"})
    text = explain(mirror, index, namespace="default", now=NOW).text
    assert "Decision: none: a mirror pod" in text and "Patch: none" in text


def test_explains_a_miss_and_an_invalid_image() -> None:
    text = explain(
        pod(["Bad:Image"], annotations={"imagecache.dev/use-image-cache": "auto"}),
        CacheIndex(),
        namespace="default",
        now=NOW,
    ).text
    assert "invalid: repository name must be lowercase" in text
    assert "Decision: miss" in text and "Patch:" in text


@pytest.mark.parametrize(
    ("manifest", "images"),
    [
        (
            {
                "kind": "Deployment",
                "metadata": {"name": "d"},
                "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}},
            },
            ["x"],
        ),
        (
            {
                "kind": "CronJob",
                "metadata": {"name": "c"},
                "spec": {
                    "jobTemplate": {
                        "spec": {
                            "template": {"spec": {"containers": [{"name": "a", "image": "y"}]}}
                        }
                    }
                },
            },
            ["y"],
        ),
        (pod(["z"]), ["z"]),
    ],
)
def test_pod_from_manifest(manifest: dict[str, object], images: list[str]) -> None:
    got = pod_from_manifest(manifest)
    assert [c["image"] for c in got["spec"]["containers"]] == images


def test_pod_from_manifest_rejects_other_kinds() -> None:
    with pytest.raises(ValueError, match="not kind 'Service'"):
        pod_from_manifest({"kind": "Service"})


def test_command_line(tmp_path: Path) -> None:
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(
        yaml.safe_dump(
            pod(
                ["nginx:1.25", "busybox:1.36"],
                annotations={"imagecache.dev/use-image-cache": "auto"},
            )
        )
    )
    run = subprocess.run(
        [sys.executable, "-m", "webhook", "explain", str(manifest)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "Chosen cache: web " in run.stdout  # from the embedded default caches
    bad = subprocess.run(
        [sys.executable, "-m", "webhook", "explain", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "No such file" in bad.stderr and "Traceback" not in bad.stderr
