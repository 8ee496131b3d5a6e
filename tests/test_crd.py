"""The ImageCache CRD against the real kube-apiserver: what it accepts, what it refuses and why."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import yaml
from envtest import ControlPlane

pytestmark = pytest.mark.envtest

GROUP, VERSION, PLURAL = "imagecache.dev", "v1alpha1", "imagecaches"
MERGE = "application/merge-patch+json"


def _name(prefix: str = "crd") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _cache(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ImageCache",
        "metadata": {"name": name},
        "spec": spec,
    }


def _create(apiserver: ControlPlane, manifest: dict[str, Any]) -> tuple[int, str]:
    # --validate=false: the apiserver's schema must refuse bad values, not kubectl's copy of it.
    result = apiserver.kubectl(
        "create", "--validate=false", "-f", "-", input=yaml.safe_dump(manifest), check=False
    )
    return result.returncode, result.stderr + result.stdout


def _get(apiserver: ControlPlane, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(apiserver.kubectl("get", "imc", name, "-o", "json").stdout)
    return data


FULL_SPEC: dict[str, Any] = {
    "images": ["nginx:1.25", "ghcr.io/org/app@sha256:" + "a" * 64, "registry.local:5000/x/y"],
    "imageCacheSize": 30,
    "retentionDays": 7,
    "imagePullSecrets": ["team-a/regcred", "team-b/ghcr.io-token"],
    "storageClassName": "fast-ssd",
    "volumeSnapshotClassName": "csi-snapclass",
    "platforms": ["linux/amd64", "linux/arm64/v8"],
    "insecureRegistries": ["registry.local:5000", "10.0.0.5"],
    "namespaces": ["team-a", "default"],
}


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(FULL_SPEC, id="every-field"),
        pytest.param({"images": ["busybox"]}, id="images-only"),
        pytest.param({"images": ["busybox"], "imageCacheSize": 0}, id="auto-size"),
        pytest.param({"images": ["busybox"], "imageCacheSize": 10000}, id="max-size"),
        pytest.param({"images": ["busybox"], "retentionDays": 0}, id="never-expires"),
    ],
)
def test_valid_caches_are_accepted_unchanged(apiserver: ControlPlane, spec: dict[str, Any]) -> None:
    name = _name()
    code, output = _create(apiserver, _cache(name, spec))
    assert code == 0, output
    assert _get(apiserver, name)["spec"] == spec
    apiserver.kubectl("delete", "imc", name, "--wait=false")


def test_a_tke_manifest_works_with_only_the_api_version_changed(apiserver: ControlPlane) -> None:
    # As written for TKE (eks.tke.cloud.tencent.com/v1), apiVersion swapped.
    tke = """
apiVersion: imagecache.dev/v1alpha1
kind: ImageCache
metadata:
  name: {name}
spec:
  images:
    - nginx:latest
    - ccr.ccs.tencentyun.com/library/redis:6
  imageCacheSize: 20
  retentionDays: 7
"""
    name = _name("tke")
    result = apiserver.kubectl("apply", "-f", "-", input=tke.format(name=name), check=False)
    assert result.returncode == 0, result.stderr
    spec = _get(apiserver, name)["spec"]
    assert spec["images"] == ["nginx:latest", "ccr.ccs.tencentyun.com/library/redis:6"]
    assert (spec["imageCacheSize"], spec["retentionDays"]) == (20, 7)
    apiserver.kubectl("delete", "imc", name, "--wait=false")


# kube-apiserver 1.20 names a list item's field without its index (spec.platforms, not
# spec.platforms[0]) but quotes the bad value, which is what a user needs to find it.
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param({}, "spec.images: Required value", id="no-images-field"),
        pytest.param({"images": []}, "spec.images: Invalid value", id="empty-images"),
        pytest.param(
            {"images": [""]},
            "spec.images in body should be at least 1 chars long",
            id="empty-image-string",
        ),
        pytest.param(
            {"images": ["x" * 513]},
            "spec.images in body should be at most 512 chars long",
            id="image-too-long",
        ),
        pytest.param(
            {"images": ["nginx"], "imageCacheSize": -1},
            "spec.imageCacheSize: Invalid value: -1: spec.imageCacheSize in body should be "
            "greater than or equal to 0",
            id="negative-size",
        ),
        pytest.param(
            {"images": ["nginx"], "imageCacheSize": 10001},
            "spec.imageCacheSize",
            id="size-too-big",
        ),
        pytest.param(
            {"images": ["nginx"], "imageCacheSize": "20Gi"},
            'spec.imageCacheSize: Invalid value: "string"',
            id="size-as-quantity",
        ),
        pytest.param(
            {"images": ["nginx"], "retentionDays": -3}, "spec.retentionDays", id="negative-days"
        ),
        pytest.param(
            {"images": ["nginx"], "imagePullSecrets": ["regcred"]},
            'spec.imagePullSecrets: Invalid value: "regcred"',
            id="secret-without-namespace",
        ),
        pytest.param(
            {"images": ["nginx"], "imagePullSecrets": ["Team/regcred"]},
            'spec.imagePullSecrets: Invalid value: "Team/regcred"',
            id="secret-uppercase-namespace",
        ),
        pytest.param(
            {"images": ["nginx"], "imagePullSecrets": ["a/b/c"]},
            'spec.imagePullSecrets: Invalid value: "a/b/c"',
            id="secret-three-parts",
        ),
        pytest.param(
            {"images": ["nginx"], "platforms": ["plan9/amd64"]},
            'spec.platforms: Invalid value: "plan9/amd64"',
            id="unknown-os",
        ),
        pytest.param(
            {"images": ["nginx"], "platforms": ["linux/x86"]},
            'spec.platforms: Invalid value: "linux/x86"',
            id="unknown-arch",
        ),
        pytest.param(
            {"images": ["nginx"], "platforms": ["amd64"]},
            'spec.platforms: Invalid value: "amd64"',
            id="no-os",
        ),
        pytest.param(
            {"images": ["nginx"], "namespaces": ["Team_A"]},
            'spec.namespaces: Invalid value: "Team_A"',
            id="bad-namespace",
        ),
        pytest.param(
            {"images": ["nginx"], "insecureRegistries": ["http://reg"]},
            'spec.insecureRegistries: Invalid value: "http://reg"',
            id="insecure-registry-with-scheme",
        ),
    ],
)
def test_bad_specs_are_refused_with_the_field_named(
    apiserver: ControlPlane, spec: dict[str, Any], expected: str
) -> None:
    code, output = _create(apiserver, _cache(_name("bad"), spec))
    assert code != 0, f"accepted: {spec}"
    assert "is invalid" in output, output
    assert expected in output, output


def test_unknown_fields_are_pruned(apiserver: ControlPlane) -> None:
    name = _name()
    manifest = _cache(name, {"images": ["nginx"], "imageCacheSizeGB": 5})
    code, output = _create(apiserver, manifest)
    assert code == 0, output
    assert _get(apiserver, name)["spec"] == {"images": ["nginx"]}
    apiserver.kubectl("delete", "imc", name, "--wait=false")


async def test_status_is_a_subresource_and_printer_columns_show_it(
    apiserver: ControlPlane,
) -> None:
    from kubernetes_asyncio import client

    name = _name("status")
    code, output = _create(apiserver, _cache(name, {"images": ["nginx", "redis"]}))
    assert code == 0, output
    status = {
        "phase": "Ready",
        "message": "2 images cached",
        "images": [
            {"image": "docker.io/library/nginx:latest", "digest": "sha256:" + "1" * 64, "size": 7},
            {"image": "docker.io/library/redis:latest", "digest": "sha256:" + "2" * 64, "size": 9},
        ],
        "imageCount": 2,
        "snapshotName": f"imagecache-{name}",
        "restoreSize": "3Gi",
        "readyTime": "2024-01-02T03:04:05Z",
        "expireTime": "2024-01-09T03:04:05Z",
        "observedGeneration": 1,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "SnapshotReady",
                "message": "snapshot is ready to use",
                "lastTransitionTime": "2024-01-02T03:04:05Z",
            }
        ],
    }
    async with await apiserver.api_client() as api:
        custom = client.CustomObjectsApi(api)
        # A write to the main resource does not touch status...
        await custom.patch_cluster_custom_object(
            GROUP, VERSION, PLURAL, name, {"status": {"phase": "Failed"}}, _content_type=MERGE
        )
        obj = await custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        assert "status" not in obj
        # ...and one to /status does not touch spec.
        await custom.patch_cluster_custom_object_status(
            GROUP,
            VERSION,
            PLURAL,
            name,
            {"status": status, "spec": {"images": ["other"]}},
            _content_type=MERGE,
        )
        obj = await custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        assert obj["status"] == status
        assert obj["spec"]["images"] == ["nginx", "redis"]
        # The status schema is enforced too.
        with pytest.raises(client.ApiException) as refused:
            await custom.patch_cluster_custom_object_status(
                GROUP, VERSION, PLURAL, name, {"status": {"phase": "Done"}}, _content_type=MERGE
            )
        assert refused.value.status == 422
        assert "status.phase" in refused.value.body

    table = apiserver.kubectl("get", "imc", name).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "SIZE", "IMAGES", "AGE"]
    assert table[1].split()[:4] == [name, "Ready", "3Gi", "2"]
    wide = apiserver.kubectl("get", "imagecache", name, "-o", "wide").stdout.splitlines()
    assert wide[0].split()[5:] == ["REQUESTED", "EXPIRES", "MESSAGE"]
    assert wide[1].split()[-3:] == ["2", "images", "cached"]
    apiserver.kubectl("delete", "imc", name)


def test_the_crd_is_cluster_scoped_with_the_short_name(apiserver: ControlPlane) -> None:
    resources = apiserver.kubectl("api-resources", "--api-group", GROUP).stdout.splitlines()
    assert resources[1].split() == [
        "imagecaches",
        "imc",
        f"{GROUP}/{VERSION}",
        "false",
        "ImageCache",
    ]
