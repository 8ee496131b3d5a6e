"""The controller's whole lifecycle under the chart's own ServiceAccount and RBAC.

The chart's RBAC is applied to the real apiserver; the controller runs with a token of the
chart's controller account (not admin), with the chart's certificate flags, and must build a
cache to Ready, copy its snapshot to a pod's namespace, keep the webhook's certificates and
caBundle, and delete everything it made: proof that the RBAC is enough.
(test_chart_apiserver.py proves, with `kubectl auth can-i`, that it is not more.)
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from controller_harness import (
    Cluster,
    ControllerProcess,
    eventually,
    make_ready,
    unique,
    webhook_cert_args,
)
from envtest import ControlPlane
from helm_chart import RBAC_KINDS, apply_server_side, only_kinds, render_text
from sa_kubeconfig import service_account_kubeconfig

from webhook.controller.certificates import WEBHOOK_CONFIG
from webhook.kube import client as k

pytestmark = pytest.mark.envtest
RELEASE = "rbac"
FULL = "rbac-imagecache"
NS = "imc-rbac"
D1 = "sha256:" + "1" * 64


async def test_controller_lifecycle_under_the_charts_account(
    apiserver: ControlPlane, cluster: Cluster, tmp_path: Path
) -> None:
    await cluster.namespace(NS)
    text = render_text({}, release=RELEASE, namespace=NS, kube_version="1.20.2")
    apply_server_side(apiserver, only_kinds(text, RBAC_KINDS | {"ServiceAccount"}))
    # The chart's webhook configuration points at a Service, which nothing serves here; this
    # stand-in of the same name selects no namespace, so the apiserver never calls it.
    apiserver.apply(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": FULL},
            "webhooks": [
                {
                    "name": "pods.imagecache.dev",
                    "clientConfig": {"url": "https://127.0.0.1:9/mutate"},
                    "namespaceSelector": {"matchLabels": {"imagecache.dev/never": "true"}},
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["pods"],
                        }
                    ],
                    "failurePolicy": "Ignore",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                }
            ],
        }
    )
    await cluster.snapshot_class()
    kubeconfig = service_account_kubeconfig(
        apiserver, NS, f"{FULL}-controller", tmp_path / "controller.kubeconfig"
    )
    selector = f"test={unique('rbac')}"
    process = ControllerProcess(
        apiserver, NS, selector,
        "--builder-service-account", f"{FULL}-builder",
        "--in-use-grace", "1",  # the pod below would otherwise hold the cache for a minute
        *webhook_cert_args(FULL),
        kubeconfig=kubeconfig,
    ).start()  # fmt: skip
    try:
        # Certificates: the Secret and the caBundle, written with the controller's own rights.
        async def injected() -> bool:
            config = await cluster.kube.get(WEBHOOK_CONFIG, None, FULL)
            bundle = config["webhooks"][0]["clientConfig"].get("caBundle")
            return bool(bundle) and b"BEGIN CERTIFICATE" in base64.b64decode(bundle)

        await eventually(injected, "the caBundle injected by the controller", within=60)
        secret = await cluster.kube.get(k.SECRET, NS, f"{FULL}-webhook-tls")
        assert {"tls.crt", "tls.key", "ca.crt"} <= set(secret["data"])

        # A cache built to Ready, copied to a pod's namespace, then deleted without leftovers.
        name = unique("rbac-web")
        await cluster.cache(name, {"images": ["nginx:1"], "imageCacheSize": 5}, selector)
        await make_ready(cluster, NS, name, [("docker.io/library/nginx:1", D1, 5)], "handle-1")
        team = await cluster.namespace(unique("team"))
        await cluster.kube.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "generateName": "web-",
                    "namespace": team,
                    "labels": {"imagecache.dev/cache": name, "imagecache.dev/decision": "hit"},
                    "annotations": {"imagecache.dev/decision": "hit", "imagecache.dev/cache": name},
                },
                "spec": {"automountServiceAccountToken": False,
                         "containers": [{"name": "c", "image": "nginx:1"}]},
            }
        )  # fmt: skip
        await cluster.one(k.SNAPSHOT, team, name, f"the snapshot copy in {team}")
        await cluster.delete_cache(name)
        await cluster.gone(name, within=60)
        assert await cluster.leftovers(NS, name) == {}
        assert "forbidden" not in process.tail(400).lower(), process.tail(60)
    finally:
        process.kill()
        await cluster.kube.delete(WEBHOOK_CONFIG, None, FULL)
