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

from node_harness import Node, eventually
from node_site import NAMESPACE, RELEASE, WEB, Built, Site, deployment, wait_cache_ready


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


def test_a_deployment_starts_from_the_cache(site: Site, built: Built) -> None:
    node = site.node
    node.forget_image(built.public_image, built.public_layers, built.public_chains)
    mark = site.public.mark()
    hits_before = _mirror_blob_hits(node)
    node.apply(
        deployment("cached", WEB, built.public_image, 3, {"imagecache.dev/use-image-cache": "auto"})
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
        assert _mirror_blob_hits(node) > hits_before, "the mirror served no blob"
    finally:
        node.kubectl("delete", "deployment", "cached", "-n", WEB, "--wait=false")


def test_the_same_image_without_a_cache_is_pulled_from_the_registry(
    site: Site, built: Built
) -> None:
    node = site.node
    eventually("the cached pods to be gone", lambda: not node.list("pods", WEB, "app=cached"), 120)
    node.forget_image(built.public_image, built.public_layers, built.public_chains)
    mark = site.public.mark()
    node.apply(deployment("uncached", WEB, built.public_image, 1, {}))
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


def _mirror_blob_hits(node: Node) -> int:
    """Blobs the node mirror has served (its log: one line per request)."""
    log = node.kubectl(
        "logs", "-n", NAMESPACE, f"daemonset/{RELEASE}-mirror", "-c", "mirror"
    ).stdout
    return sum("/v2/shop/app/blobs/" in line and "-> 200 hit" in line for line in log.splitlines())
