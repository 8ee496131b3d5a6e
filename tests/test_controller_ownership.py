"""`helm uninstall` leaves nothing (issue 12): the webhook TLS Secret and the leader Lease the
controller creates at run time are owned by its Deployment (`--owner-deployment`), so the
garbage collector deletes them with it. On the real apiserver and kube-controller-manager,
under the chart's own RBAC (it may `get` that one Deployment)."""

from __future__ import annotations

from pathlib import Path

import pytest
from controller_harness import (
    Cluster,
    ControllerProcess,
    eventually,
    unique,
    webhook_cert_args,
)
from envtest import ControlPlane
from helm_chart import RBAC_KINDS, apply_server_side, only_kinds, render_text
from sa_kubeconfig import service_account_kubeconfig

from webhook.controller.certificates import WEBHOOK_CONFIG
from webhook.controller.ownership import lacks_owner, with_owner
from webhook.kube import client as k

RELEASE = "owned"
FULL = "owned-imagecache"


def test_with_owner_adds_once_and_keeps_other_owners() -> None:
    owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "c", "uid": "u1"}
    other = {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "u0"}
    meta = with_owner({"name": "s", "ownerReferences": [other]}, owner)
    assert meta["ownerReferences"] == [other, owner]
    assert with_owner(meta, owner) == meta
    assert with_owner({"name": "s"}, None) == {"name": "s"}
    assert lacks_owner({"metadata": {"name": "s"}}, owner)
    assert not lacks_owner({"metadata": meta}, owner)
    assert not lacks_owner({"metadata": {}}, None)


@pytest.mark.envtest
async def test_the_secret_and_the_lease_go_with_the_controller_deployment(
    apiserver: ControlPlane, cluster: Cluster, tmp_path: Path
) -> None:
    ns = await cluster.namespace(unique("owned"))
    text = render_text({}, release=RELEASE, namespace=ns, kube_version="1.20.2")
    apply_server_side(apiserver, only_kinds(text, RBAC_KINDS | {"ServiceAccount"}))
    apiserver.apply({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": FULL},
        "webhooks": [{
            "name": "pods.imagecache.dev",
            "clientConfig": {"url": "https://127.0.0.1:9/mutate"},
            "namespaceSelector": {"matchLabels": {"imagecache.dev/never": "true"}},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["pods"]}],
            "failurePolicy": "Ignore", "sideEffects": "None", "admissionReviewVersions": ["v1"],
        }],
    })  # fmt: skip
    # The controller's Deployment as the chart names it (no replicas: only its uid matters).
    labels = {"app": "owned-controller"}
    deployment = await cluster.kube.create({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": f"{FULL}-controller", "namespace": ns},
        "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "c", "image": "x:1"}]}}},
    })  # fmt: skip
    uid = deployment["metadata"]["uid"]
    kubeconfig = service_account_kubeconfig(
        apiserver, ns, f"{FULL}-controller", tmp_path / "controller.kubeconfig"
    )
    process = ControllerProcess(
        apiserver, ns, f"test={unique('owned')}",
        "--owner-deployment", f"{FULL}-controller",
        "--lease-name", f"{FULL}-controller",
        *webhook_cert_args(FULL),
        kubeconfig=kubeconfig,
    ).start()  # fmt: skip
    try:

        async def owned(res: k.Resource, name: str) -> bool:
            try:
                obj = await cluster.kube.get(res, ns, name)
            except k.ApiError:
                return False
            refs = obj["metadata"].get("ownerReferences") or []
            return any(r["uid"] == uid and r["kind"] == "Deployment" for r in refs)

        await eventually(
            lambda: owned(k.SECRET, f"{FULL}-webhook-tls"),
            "the TLS Secret owned by the Deployment",
            within=60,
        )
        await eventually(
            lambda: owned(k.LEASE, f"{FULL}-controller"),
            "the Lease owned by the Deployment",
            within=60,
        )
    finally:
        process.kill()
    # helm uninstall deletes the Deployment: the garbage collector takes the rest
    await cluster.kube.delete(k.DEPLOYMENT, ns, f"{FULL}-controller")

    async def gone() -> bool:
        for res, name in ((k.SECRET, f"{FULL}-webhook-tls"), (k.LEASE, f"{FULL}-controller")):
            try:
                await cluster.kube.get(res, ns, name)
                return False
            except k.ApiError as exc:
                if exc.status != 404:
                    raise
        return True

    await eventually(gone, "the Secret and the Lease deleted with the Deployment", within=90)
    await cluster.kube.delete(WEBHOOK_CONFIG, None, FULL)
