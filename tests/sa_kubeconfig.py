"""A kubeconfig that authenticates as a ServiceAccount, for running a part under exactly the
RBAC the chart gives it.

1.20 style, which later versions still honour: a Secret of type
kubernetes.io/service-account-token annotated with the account's name; the token controller
(kube-controller-manager) fills in `data.token`.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

from envtest import ControlPlane, write_kubeconfig


def service_account_token(
    plane: ControlPlane, namespace: str, name: str, timeout: float = 30
) -> str:
    """The account's bearer token (created on first use)."""
    found = plane.kubectl("get", "serviceaccount", name, "-n", namespace, check=False)
    if found.returncode != 0:
        raise AssertionError(
            f"ServiceAccount {namespace}/{name} does not exist (create it first: the token "
            f"controller deletes token Secrets of unknown accounts): {found.stderr.strip()}"
        )
    secret = f"{name}-test-token"
    plane.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/service-account-token",
            "metadata": {
                "name": secret,
                "namespace": namespace,
                "annotations": {"kubernetes.io/service-account.name": name},
            },
        }
    )
    deadline = time.monotonic() + timeout
    while True:
        token = plane.kubectl(
            "get", "secret", secret, "-n", namespace, "-o", "jsonpath={.data.token}", check=False
        ).stdout.strip()
        if token:
            return base64.b64decode(token).decode()
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the token controller did not fill Secret {namespace}/{secret} in {timeout}s: "
                "is kube-controller-manager running with --service-account-private-key-file?"
            )
        time.sleep(0.2)


def service_account_kubeconfig(
    plane: ControlPlane, namespace: str, name: str, path: Path, timeout: float = 30
) -> Path:
    """Write a kubeconfig for system:serviceaccount:NAMESPACE:NAME to `path`; returns it."""
    token = service_account_token(plane, namespace, name, timeout)
    write_kubeconfig(path, plane.url, token, plane.ca_file, user=f"{namespace}-{name}")
    return path
