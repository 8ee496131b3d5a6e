"""`helm uninstall` leaves nothing behind (issue 12): not the webhook's TLS Secret nor the
leader Lease (the controller creates both; they are owned by its Deployment, so the garbage
collector removes them), nor the `helm test` pod and its RBAC (deleted when the test passes).
Runs last: it removes the session's caches and release."""

from __future__ import annotations

import json

from node_harness import eventually
from node_site import NAMESPACE, RELEASE, Site

# Kinds a release or its controller can leave in a namespace or the cluster.
NAMESPACED = ",".join(
    [
        "pods",
        "secrets",
        "configmaps",
        "serviceaccounts",
        "services",
        "deployments",
        "daemonsets",
        "jobs",
        "pvc",
        "roles",
        "rolebindings",
        "leases",
        "poddisruptionbudgets",
    ]
)
CLUSTER = "clusterroles,clusterrolebindings,mutatingwebhookconfigurations"


def _leftovers(site: Site) -> list[str]:
    node = site.node
    names: list[str] = []
    for ns in (NAMESPACE, "default"):
        listed = json.loads(node.kubectl("get", NAMESPACED, "-n", ns, "-o", "json").stdout)
        for item in listed["items"]:
            name = item["metadata"]["name"]
            kind = item["kind"]
            if kind == "ServiceAccount" and name == "default":
                continue
            if kind == "Secret" and name.startswith("default-token-"):
                continue
            if kind == "ConfigMap" and name == "kube-root-ca.crt":
                continue
            if ns == "default" and kind == "Service" and name == "kubernetes":
                continue
            if ns == "default" and not name.startswith(RELEASE):
                continue  # the other tests' objects in default
            names.append(f"{kind} {ns}/{name}")
    cluster = json.loads(node.kubectl("get", CLUSTER, "-o", "json").stdout)
    names += [
        f"{i['kind']} {i['metadata']['name']}"
        for i in cluster["items"]
        if i["metadata"]["name"].startswith(RELEASE)
    ]
    return names


def test_helm_uninstall_leaves_nothing_behind(site: Site) -> None:
    node = site.node
    # as a user would: caches first, while the controller can still clean up after them
    node.kubectl("delete", "imc", "--all", "--timeout=180s", timeout=200)
    node.helm("test", RELEASE, "--namespace", NAMESPACE, "--timeout", "180s")
    # what the controller made at run time is there before the uninstall
    assert node.get("secret", f"{RELEASE}-webhook-tls", NAMESPACE) is not None
    assert node.get("lease", f"{RELEASE}-controller", NAMESPACE) is not None
    node.helm("uninstall", RELEASE, "--namespace", NAMESPACE)
    eventually(
        "nothing of the release left",
        lambda: not _leftovers(site),
        120,
        explain=lambda: "\n".join(_leftovers(site)),
    )
