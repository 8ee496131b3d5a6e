"""What the node tests share: the release's names and values for this node, install and
readiness helpers, and `Site` (the node with its registries, storage and CSI stand-in)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csi_standin import DRIVER, CsiStandIn, build_pv
from node_harness import (
    AUTH_REGISTRY,
    MIRROR_PORT,
    PUBLIC_REGISTRY,
    REPO_ROOT,
    SNAPSHOT_CRDS,
    Node,
    NodeError,
    Registry,
    eventually,
    run,
)

RELEASE, NAMESPACE = "imagecache", "imagecache-system"
STORAGE_CLASS, SNAPSHOT_CLASS = "imagecache-local", "imagecache-standin"
IMAGE = "localhost/imagecache:dev"  # what hack/image.sh names it; the chart gets a tag by digest
BUILD_PVS = 4  # static local PVs for build disks


@dataclass
class Site:
    """The node with everything the tests share on it."""

    node: Node
    public: Registry
    private: Registry
    standin: CsiStandIn
    values: dict[str, Any]


def prepare_storage(node: Node) -> None:
    node.kubectl(
        "apply", *[a for p in sorted(SNAPSHOT_CRDS.glob("*.yaml")) for a in ("-f", str(p))]
    )
    node.apply(
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS},
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "WaitForFirstConsumer",
        },
        {
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshotClass",
            "metadata": {"name": SNAPSHOT_CLASS},
            "driver": DRIVER,
            "deletionPolicy": "Delete",
        },
    )
    pvs = []
    for i in range(BUILD_PVS):
        path = node.dir / "pvs" / f"build-{i}"
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o777)  # the builder runs as 65532; a local PV gets no fsGroup chown
        pvs.append(build_pv(f"imagecache-build-{i}", path, STORAGE_CLASS, NAMESPACE))
    node.apply(*pvs)


def chart_values(node: Node, registries: list[Registry]) -> dict[str, Any]:
    """The chart's values for this node: only where the node differs from a cloud node."""
    hosts = [r.host for r in registries]
    return {
        "kubeletDir": str(node.dir / "kubelet"),
        "image": {"repository": IMAGE.rsplit(":", 1)[0], "tag": node.image_tag},
        # the private cache's pull secret lives in the namespace of the pods that use it
        "controller": {"pullSecretNamespaces": ["imagecache-system", "shop"]},
        # 2 allocatable CPUs: the default builder request (2) could never be scheduled here.
        "builder": {
            "cpu": "250m",
            "memory": "1Gi",
            "storageClassName": STORAGE_CLASS,
            "volumeSnapshotClassName": SNAPSHOT_CLASS,
        },
        "mirror": {
            "enabled": True,
            "port": node.base + MIRROR_PORT,  # 5005 may be another node's on this machine
            "registries": hosts,
            "plainHttpRegistries": hosts,
            "containerdConfigPath": str(node.dir / "certs.d"),
            # no CSI driver: the stand-in's clones are local PVs
            "diskGlobs": [
                "*/volumes/kubernetes.io~csi/*/mount",
                "*/volumes/kubernetes.io~local-volume/*",
            ],
        },
    }


def install(node: Node, values: dict[str, Any], tmp: Path, upgrade: bool = False) -> None:
    path = tmp / "values.json"
    path.write_text(json.dumps(values))
    # `helm install` as README says; a node kept from an earlier session has the release already
    installed = node.kubectl(
        "get", "secret", "-n", NAMESPACE, "-l", f"owner=helm,name={RELEASE}", "-o", "name"
    ).stdout.strip()
    verb = ["upgrade"] if upgrade or installed else ["install"]
    node.helm(
        *verb,
        RELEASE,
        str(REPO_ROOT / "charts" / "imagecache"),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--values",
        str(path),
        timeout=300,
    )


def wait_release_ready(node: Node) -> None:
    for kind, name in (
        ("deployment", f"{RELEASE}-webhook"),
        ("deployment", f"{RELEASE}-controller"),
        ("daemonset", f"{RELEASE}-mirror"),
    ):
        done = node.kubectl(
            "rollout",
            "status",
            f"{kind}/{name}",
            "-n",
            NAMESPACE,
            "--timeout=240s",
            check=False,
            timeout=300,
        )
        if done.returncode != 0:
            pods = node.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide", check=False).stdout
            raise NodeError(
                f"{kind} {name} not ready: {done.stderr}\n{pods}\n"
                f"{node.kubectl('get', 'events', '-n', NAMESPACE, check=False).stdout[-3000:]}"
            )

    def webhook_has_bundle() -> bool:
        config = node.get("mutatingwebhookconfiguration", RELEASE) or {}
        return all(
            (w.get("clientConfig") or {}).get("caBundle") for w in config.get("webhooks") or [{}]
        )

    eventually("the controller to inject the webhook's caBundle", webhook_has_bundle, 120)


# namespaces: the public cache's users; the pull secret's home; one that never gets a copy
WEB, SHOP, FRESH = "web", "shop", "fresh"
Obj = dict[str, Any]


@dataclass
class Built:
    public_image: str  # as pods write it
    public_digest: str
    public_layers: list[str]  # manifest and layer digests
    public_chains: list[str]  # layer chain IDs
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


def deployment(
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


def build_image() -> Path:
    """hack/image.sh: the chart's image as an OCI archive (cached by its inputs)."""
    out = run(["bash", str(REPO_ROOT / "hack" / "image.sh")], timeout=1200)
    return Path(out.stdout.strip().splitlines()[-1])


def set_up_site(node: Node, tmp: Path) -> Site:
    """Registries, storage, the CSI stand-in and the chart installed (README's install
    section); the caller stops site.standin."""
    public = node.registry("public", PUBLIC_REGISTRY)
    private = node.registry("private", AUTH_REGISTRY, users={"puller": "s3cret-pull"})
    prepare_storage(node)
    standin = CsiStandIn(node.api, node.dir / "csi", STORAGE_CLASS, NAMESPACE).start()
    try:
        # 1.20 namespaces have no kubernetes.io/metadata.name label: exclude these two by
        # the chart's opt-out label, as README says.
        # the release namespace, and the pods' (shop holds the pull secret the controller may
        # read: the chart binds that right there, so the namespace must exist first)
        for ns in (NAMESPACE, WEB, SHOP):
            node.kubectl("create", "namespace", ns, check=False)
        for ns in ("kube-system", NAMESPACE):
            node.kubectl("label", "namespace", ns, "imagecache.dev/webhook=disabled", "--overwrite")
        values = chart_values(node, [public, private])
        install(node, values, tmp)
        wait_release_ready(node)
    except BaseException:
        standin.stop()
        raise
    return Site(node, public, private, standin, values)
