"""A real build and a real start from the cache, on the node, through the installed chart.

Real: the builder Job's pod (pulling from two registries on the node's bridge, one behind
htpasswd with a pull secret), the local PV it writes, the controller reading its
termination message, the webhook (in the cluster, through its Service), kubelet mounting each
pod's clone, containerd pulling through the node mirror. Stood in (tests/node/csi_standin.py,
only because these machines have no CSI driver with snapshots): marking snapshots ready and
providing each pod's clone as a PV pre-bound to its `<pod>-imagecache` claim.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from node_harness import Node, Registry, eventually
from node_site import Site

WEB, SHOP = "web", "shop"  # namespaces: the public cache's users; the pull secret's home
Obj = dict[str, Any]


@dataclass
class Built:
    public_image: str  # as pods write it
    public_digest: str
    public_layers: list[str]
    private_image: str
    private_digest: str
    public_cache: str
    private_cache: str


def tke_manifest(name: str, images: list[str], registries: list[Registry], **extra: Any) -> Obj:
    """An ImageCache as written for TKE, with only apiVersion changed (plus the fields that
    say the test registries are plain HTTP and which namespaces get copies up front)."""
    return {
        "apiVersion": "imagecache.dev/v1alpha1",
        "kind": "ImageCache",
        "metadata": {"name": name},
        "spec": {
            "images": images,
            "imageCacheSize": 20,
            "retentionDays": 7,
            "insecureRegistries": [r.host for r in registries],
            **extra,
        },
    }


def wait_cache_ready(node: Node, name: str, namespace: str | None, timeout: float = 300) -> Obj:
    def ready() -> Obj | None:
        cache = node.get("imc", name) or {}
        status = cache.get("status") or {}
        if status.get("phase") == "Failed":
            raise AssertionError(f"cache {name} failed: {status.get('message')}")
        copies = {c.get("namespace"): c for c in status.get("namespaces") or []}
        copy = copies.get(namespace) or {}
        copied = namespace is None or copy.get("readyToUse") is True
        return cache if status.get("phase") == "Ready" and copied else None

    def explain() -> str:
        out = node.describe("imc", name)
        out += node.kubectl(
            "get", "pods,pvc,jobs", "-n", "imagecache-system", "-o", "wide", check=False
        ).stdout
        return out

    return eventually(
        f"cache {name} Ready with a ready copy in {namespace}",
        ready,
        timeout,
        interval=1,
        explain=explain,
    )


@pytest.fixture(scope="module")
def built(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    node = site.node
    tmp = tmp_path_factory.mktemp("images")
    public_image = f"{site.public.host}/shop/app:1"
    private_image = f"{site.private.host}/shop/secret-app:1"
    node.make_image(public_image, tmp / "app.tar", salt="app")
    node.make_image(private_image, tmp / "secret.tar", salt="secret")
    public_digest = site.public.push(tmp / "app.tar", "shop/app:1")
    private_digest = site.private.push(tmp / "secret.tar", "shop/secret-app:1")
    for ns in (WEB, SHOP):
        node.kubectl("create", "namespace", ns, check=False)
    node.apply(node.pull_secret(SHOP, "regcred", site.private))
    node.apply(
        tke_manifest("app", [public_image], [site.public], namespaces=[WEB]),
        tke_manifest(
            "secret-app", [private_image], [site.private], imagePullSecrets=[f"{SHOP}/regcred"]
        ),
    )
    wait_cache_ready(node, "app", WEB)
    layers = [public_digest, *site.public.layers("shop/app:1")]
    yield Built(
        public_image, public_digest, layers, private_image, private_digest, "app", "secret-app"
    )
    node.kubectl("delete", "imc", "app", "secret-app", "--wait=false", check=False)


def test_the_builder_job_runs_on_the_node_and_the_controller_reads_its_result(
    site: Site, built: Built
) -> None:
    node = site.node
    cache = node.get("imc", built.public_cache) or {}
    status = cache["status"]
    # status.images comes from the builder's termination message: the digests it resolved
    assert [(i["image"], i["digest"]) for i in status["images"]] == [
        (built.public_image, built.public_digest)
    ]
    assert status["storageClassName"] == "imagecache-local"
    # the build disk was a real local PV written by the builder pod (uid 65532); the snapshot
    # the stand-in took of it after the Job completed is a copy of that directory
    disk = site.node.dir / "csi" / "snapshots" / status["snapshotHandle"]
    manifest = json.loads((disk / "imagecache.json").read_text())
    assert manifest["name"] == built.public_cache
    assert (disk / "oci" / "index.json").stat().st_uid == 65532
    # the registry served the builder's GETs (a pod on the node, through the bridge)
    assert site.public.blob_gets(0, "shop/app")


def test_a_cache_built_with_a_pull_secret(site: Site, built: Built) -> None:
    # Ready; its copy in shop is made when a pod there first asks (DESIGN: copies on first use)
    cache = wait_cache_ready(site.node, built.private_cache, None)
    status = cache["status"]
    assert [(i["image"], i["digest"]) for i in status["images"]] == [
        (built.private_image, built.private_digest)
    ]
    # the registry refused anonymous requests, so the builder's pulls were authenticated
    log = site.private.log.read_text()
    assert '"GET /v2/shop/secret-app/blobs/' in log and "puller" in log


def _deployment(
    name: str, namespace: str, image: str, replicas: int, annotations: dict[str, str]
) -> Obj:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "app",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["sleep", "3600"],
                        }
                    ],
                },
            },
        },
    }


def test_a_deployment_starts_from_the_cache(site: Site, built: Built) -> None:
    node = site.node
    node.forget_image(built.public_image, built.public_layers)
    mark = site.public.mark()
    node.apply(
        _deployment(
            "cached", WEB, built.public_image, 3, {"imagecache.dev/use-image-cache": "auto"}
        )
    )
    try:
        pods = node.wait_pods(WEB, "app=cached", 3, timeout=240)
        for pod in pods:
            meta, spec = pod["metadata"], pod["spec"]
            assert meta["annotations"]["imagecache.dev/decision"] == "hit"
            assert meta["annotations"]["imagecache.dev/cache"] == built.public_cache
            # pinned to the digest the disk holds
            assert spec["containers"][0]["image"] == f"{built.public_image}@{built.public_digest}"
            volume = next(v for v in spec["volumes"] if v["name"] == "imagecache")
            source = volume["ephemeral"]["volumeClaimTemplate"]["spec"]["dataSource"]
            assert source["kind"] == "VolumeSnapshot"
            claim = node.get("pvc", f"{meta['name']}-imagecache", WEB) or {}
            assert claim["status"]["phase"] == "Bound"
            assert claim["spec"]["volumeName"].startswith("standin-clone-")
            reasons = eventually(
                f"an ImageCacheHit Event on {meta['name']}",
                lambda m=meta: (
                    {e["reason"] for e in node.events(WEB, m["name"])} & {"ImageCacheHit"} or None
                ),
                60,
            )
            assert reasons == {"ImageCacheHit"}
        # containerd got every byte from the disk, through the mirror: no blob from upstream
        assert site.public.blob_gets(mark, "shop/app") == []
        mirror_log = node.kubectl(
            "logs", "-n", "imagecache-system", "daemonset/imagecache-mirror", "-c", "mirror"
        ).stdout
        assert "/v2/shop/app/blobs/" in mirror_log and "-> 200 hit" in mirror_log
    finally:
        node.kubectl("delete", "deployment", "cached", "-n", WEB, "--wait=false")


def test_the_same_image_without_a_cache_is_pulled_from_the_registry(
    site: Site, built: Built
) -> None:
    node = site.node
    eventually("the cached pods to be gone", lambda: not node.list("pods", WEB, "app=cached"), 120)
    node.forget_image(built.public_image, built.public_layers)
    mark = site.public.mark()
    node.apply(_deployment("uncached", WEB, built.public_image, 1, {}))
    try:
        pod = node.wait_pods(WEB, "app=uncached", 1, timeout=240)[0]
        assert "imagecache.dev/decision" not in (pod["metadata"].get("annotations") or {})
        assert not any(v["name"] == "imagecache" for v in pod["spec"]["volumes"])
        assert site.public.blob_gets(mark, "shop/app"), "the image did not come from the registry"
    finally:
        node.kubectl("delete", "deployment", "uncached", "-n", WEB, "--wait=false")
        eventually(
            "the uncached pod to be gone", lambda: not node.list("pods", WEB, "app=uncached"), 120
        )
