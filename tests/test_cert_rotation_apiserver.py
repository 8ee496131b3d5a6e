"""Webhook certificates kept by the controller, rotated under load, behind a real apiserver.

The test plays the kubelet (copies the Secret into the webhook's certificate files, late, the
way a Secret volume is refreshed: a `..data` symlink swap) and compresses time (a CA lives 30 s)
so that a whole CA rotation happens while pods are created in a loop. Every pod must
come out patched: with failurePolicy Ignore a refused TLS handshake would show up as a pod
without a decision, not as an error.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import ssl
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from envtest import ControlPlane, free_port

from webhook.controller.certificates import WEBHOOK_CONFIG, CertificateManager, CertSettings
from webhook.kube.client import SECRET, ApiError, Kube, load_configuration

pytestmark = pytest.mark.envtest
NAMESPACE = "rotation"
KUBELET_LAG = 1.5  # seconds between a Secret change and the files changing
# Time compressed: a CA lives 30 s (due for rotation after 20 s), a serving certificate 15 s,
# and the overlap is 3 s, twice the kubelet's lag.
CA_SECONDS = 30
OVERLAP = 3


def mirror_secret(data: dict[str, str], target: Path) -> None:
    """Write the Secret's keys as the kubelet does: a new timestamped dir, then swap `..data`."""
    stamp = target / f"..{time.time_ns()}"
    stamp.mkdir()
    for key, value in data.items():
        (stamp / key).write_bytes(base64.b64decode(value))
    tmp = target / "..data_tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(stamp.name)
    os.replace(tmp, target / "..data")
    for key in ("tls.crt", "tls.key"):
        link = target / key
        if not link.is_symlink():
            link.symlink_to(f"..data/{key}")


async def kubelet(kube: Kube, target: Path, stop: asyncio.Event) -> None:
    seen = None
    while not stop.is_set():
        try:
            secret = await kube.get(SECRET, NAMESPACE, "webhook-tls")
        except ApiError:
            secret = None
        data = (secret or {}).get("data") or {}
        current = (data.get("tls.crt"), data.get("tls.key"))
        if secret and current != seen:
            await asyncio.sleep(KUBELET_LAG)
            mirror_secret(data, target)
            seen = current
        await asyncio.sleep(0.2)


def served_issuer(port: int) -> str:
    pem = ssl.get_server_certificate(("127.0.0.1", port))
    from cryptography import x509

    return x509.load_pem_x509_certificate(pem.encode()).issuer.rfc4514_string()


@pytest.fixture
def plane(apiserver: ControlPlane) -> ControlPlane:
    apiserver.kubectl("create", "namespace", NAMESPACE, check=False)
    deadline = time.monotonic() + 60
    while apiserver.kubectl("get", "sa", "default", "-n", NAMESPACE, check=False).returncode:
        assert time.monotonic() < deadline, "the default ServiceAccount never appeared"
        time.sleep(0.3)
    return apiserver


async def test_rotation_under_load_loses_no_pod(plane: ControlPlane, tmp_path: Path) -> None:
    port = free_port()
    hook = {
        "name": "pods.imagecache.dev",
        "clientConfig": {"url": f"https://127.0.0.1:{port}/mutate"},
        "rules": [
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": ["pods"],
            }
        ],
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
        "failurePolicy": "Ignore",
        "sideEffects": "None",
        "timeoutSeconds": 3,
        "admissionReviewVersions": ["v1"],
    }
    plane.kubectl(
        "label", "namespace", NAMESPACE, f"kubernetes.io/metadata.name={NAMESPACE}", "--overwrite"
    )
    plane.apply(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "imagecache-rotation"},
            "webhooks": [hook],
        }
    )
    caches = tmp_path / "caches.yaml"
    caches.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "imagecache.dev/v1alpha1",
                "kind": "ImageCache",
                "metadata": {"name": "rot"},
                "spec": {"images": ["nginx:1.25"]},
                "status": {
                    "phase": "Ready",
                    "restoreSize": "1Gi",
                    "namespaces": [
                        {"namespace": NAMESPACE, "snapshotName": "imagecache-rot",
                         "readyToUse": True}
                    ],
                },
            }
        )
    )
    certdir = tmp_path / "certs"
    certdir.mkdir()

    kube = Kube(await load_configuration(str(plane.kubeconfig)))
    settings = CertSettings(
        namespace=NAMESPACE,
        secret="webhook-tls",
        webhook_configuration="imagecache-rotation",
        service="imagecache",
        extra_names=("127.0.0.1",),
        ca_days=CA_SECONDS / 86400,
        serving_days=CA_SECONDS / 2 / 86400,
        overlap=timedelta(seconds=OVERLAP),
        interval=0.3,
    )
    manager = CertificateManager(kube, settings)
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(manager.run(stop)),
        asyncio.create_task(kubelet(kube, certdir, stop)),
    ]
    server = None
    try:
        deadline = time.monotonic() + 30
        while not (certdir / "tls.crt").exists():
            assert time.monotonic() < deadline, "the certificates never reached the files"
            await asyncio.sleep(0.2)
        log = (tmp_path / "webhook.log").open("wb")
        server = subprocess.Popen(  # noqa: ASYNC220 (started once, before the load)
            [
                sys.executable,
                "-m",
                "webhook",
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--tls-cert",
                str(certdir / "tls.crt"),
                "--tls-key",
                str(certdir / "tls.key"),
                "--caches",
                str(caches),
                "--reload-interval",
                "0.2",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        first_issuer = await wait_serving(port)

        created: list[dict[str, Any]] = []
        bundles: list[bytes] = []  # the caBundle after each pod, in order
        load_stop = asyncio.Event()

        async def create_pods() -> None:
            body = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "generateName": "rot-",
                    "namespace": NAMESPACE,
                    "annotations": {"imagecache.dev/use-image-cache": "auto"},
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "containers": [{"name": "c", "image": "nginx:1.25"}],
                },
            }
            while not load_stop.is_set():
                try:
                    created.append(await kube.create(body))
                except ApiError as exc:
                    # An overloaded apiserver/etcd timing out is not the webhook's doing.
                    if exc.status not in (429, 500, 503, 504):
                        raise
                    await asyncio.sleep(0.5)
                    continue
                await asyncio.sleep(0.05)  # a steady load, not a flood of etcd writes
                config = await kube.get(WEBHOOK_CONFIG, None, "imagecache-rotation")
                bundles.append(base64.b64decode(config["webhooks"][0]["clientConfig"]["caBundle"]))

        load = [asyncio.create_task(create_pods()) for _ in range(2)]
        # Run until a whole CA rotation has been seen: one CA, two, then one other CA.
        deadline = time.monotonic() + 4 * CA_SECONDS
        while time.monotonic() < deadline:
            counts = [b.count(b"BEGIN CERTIFICATE") for b in bundles]
            if 2 in counts and counts[-1] == 1 and bundles[-1] != bundles[0]:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(2 * KUBELET_LAG)
        load_stop.set()
        await asyncio.gather(*load)
        decisions = [
            (p["metadata"].get("annotations") or {}).get("imagecache.dev/decision") for p in created
        ]
        unpatched = [n for n, d in enumerate(decisions) if d != "hit"]
        refusals = [
            line
            for line in (plane.workdir / "kube-apiserver.log").read_text().splitlines()
            if "failed calling webhook" in line
        ]
        assert len(created) > 20
        assert not unpatched, (
            f"{len(unpatched)} of {len(created)} pods unpatched; the apiserver said:\n"
            + "\n".join(refusals[-5:])
        )
        assert [b.count(b"BEGIN CERTIFICATE") for b in bundles].count(2) > 0
        assert bundles[-1] != bundles[0]  # a new CA, trusted alone after the overlap
        assert served_issuer(port) != first_issuer  # pods now get the new CA's certificate
        secret = await kube.get(SECRET, NAMESPACE, "webhook-tls")
        assert "ca-previous.crt" not in secret["data"] and "ca-next.crt" not in secret["data"]
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=15)
        await kube.close()
        plane.kubectl("delete", "mutatingwebhookconfiguration", "imagecache-rotation", check=False)


async def wait_serving(port: int) -> str:
    deadline = time.monotonic() + 30
    while True:
        try:
            return await asyncio.to_thread(served_issuer, port)
        except OSError:
            assert time.monotonic() < deadline, "the webhook never served"
            await asyncio.sleep(0.2)
