"""The webhook behind a real kube-apiserver (v1.20) and kube-controller-manager.

`imagecache serve` runs as a subprocess over TLS on 127.0.0.1, watching ImageCaches in the
apiserver; a MutatingWebhookConfiguration points at it by `url`. Pods are created the ways
users create them (kubectl create with generateName, a Deployment, a Job, a server-side dry
run); the test plays the controller by writing ImageCache status (phase, the images with
their digests, the copies in status.namespaces).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from envtest import ControlPlane, free_port

from tests.cachefactory import fake_digest
from tests.https_probe import https_ok
from webhook.core.imageref import normalize

pytestmark = pytest.mark.envtest
ANNOTATED = {"imagecache.dev/use-image-cache": "auto"}


class Webhook:
    def __init__(self, plane: ControlPlane, workdir: Path) -> None:
        self.plane = plane
        self.workdir = workdir
        self.certs = workdir / "certs"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "webhook.log"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "webhook",
                "certs",
                "generate",
                "--out",
                str(self.certs),
                "--ip",
                "127.0.0.1",
                "--dns",
                "localhost",
            ],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "webhook",
                    "serve",
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    "--tls-cert",
                    str(self.certs / "tls.crt"),
                    "--tls-key",
                    str(self.certs / "tls.key"),
                    "--kubeconfig",
                    str(self.plane.kubeconfig),
                    "--log-level",
                    "debug",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if https_ok(f"https://127.0.0.1:{self.port}/readyz", self.certs / "ca.crt"):
                return
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            time.sleep(0.2)
        raise AssertionError(f"webhook not ready:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)

    def configuration(self) -> dict[str, Any]:
        ca = (self.certs / "ca.crt").read_bytes()
        import base64

        def hook(name: str, path: str, operator: str) -> dict[str, Any]:
            return {
                "name": name,
                "clientConfig": {
                    "url": f"https://127.0.0.1:{self.port}{path}",
                    "caBundle": base64.b64encode(ca).decode(),
                },
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": {
                    "matchExpressions": [
                        {
                            "key": "imagecache.dev/use-image-cache",
                            "operator": operator,
                            "values": ["auto"],
                        },
                        {
                            "key": "imagecache.dev/webhook",
                            "operator": "NotIn",
                            "values": ["disabled"],
                        },
                    ]
                },
                "failurePolicy": "Ignore",
                "sideEffects": "None",
                "timeoutSeconds": 3,
                "reinvocationPolicy": "IfNeeded",
                "admissionReviewVersions": ["v1", "v1beta1"],
            }

        return {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "imagecache-test"},
            "webhooks": [
                hook("pods.imagecache.dev", "/mutate", "NotIn"),
                hook("auto.pods.imagecache.dev", "/mutate/auto", "In"),
            ],
        }


@pytest.fixture(scope="module")
def webhook(apiserver: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    hook = Webhook(apiserver, tmp_path_factory.mktemp("webhook"))
    hook.start()
    apiserver.apply(hook.configuration())
    for name in ("web", "team"):
        apiserver.kubectl("create", "namespace", f"wh-{name}", check=False)
    apiserver.kubectl(
        "label", "namespace", "wh-team", "imagecache.dev/use-image-cache=auto", "--overwrite"
    )
    make_cache(apiserver, "wh-web", ["nginx:1.25", "busybox:1.36"], restore="10Gi")
    make_cache(apiserver, "wh-big", ["nginx:1.25", "busybox:1.36", "redis:7"], restore="40Gi")
    wait_for(
        lambda: decision_of(dry_run(apiserver, "wh-web", pod_manifest(["nginx:1.25"]))) == "hit",
        "the webhook to see the Ready cache",
        hook,
    )
    yield hook
    hook.stop()
    apiserver.kubectl("delete", "mutatingwebhookconfiguration", "imagecache-test", check=False)


def copy_entry(name: str, namespace: str, ready: bool = True, snapshot: str = "") -> dict[str, Any]:
    snapshot = snapshot or f"imagecache-{name}"
    return {"namespace": namespace, "snapshotName": snapshot, "readyToUse": ready}


def make_cache(
    plane: ControlPlane,
    name: str,
    images: list[str],
    *,
    restore: str,
    copies: list[dict[str, Any]] | None = None,
) -> None:
    """A Ready cache built from `images` (status.images with digests), with ready copies in
    wh-web and wh-team unless `copies` says otherwise."""
    plane.apply(
        {
            "apiVersion": "imagecache.dev/v1alpha1",
            "kind": "ImageCache",
            "metadata": {"name": name},
            "spec": {"images": images},
        }
    )
    if copies is None:
        copies = [copy_entry(name, "wh-web"), copy_entry(name, "wh-team")]
    built = [{"image": normalize(i), "digest": fake_digest(i), "size": 1} for i in images]
    status = {
        "status": {"phase": "Ready", "restoreSize": restore, "snapshotName": f"imagecache-{name}",
                   "images": built, "namespaces": copies}
    }  # fmt: skip
    plane.kubectl(
        "patch",
        "imagecache",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )


def wait_for(
    check: Callable[[], bool], what: str, hook: Webhook | None = None, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    logs = hook.log.read_text()[-3000:] if hook else ""
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def pod_manifest(images: list[str], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-",
            "annotations": dict(ANNOTATED if annotations is None else annotations),
        },
        "spec": {
            "automountServiceAccountToken": False,
            "containers": [{"name": f"c{n}", "image": i} for n, i in enumerate(images)],
        },
    }


def dry_run(plane: ControlPlane, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
    out = plane.kubectl(
        "create",
        "--dry-run=server",
        "-n",
        namespace,
        "-o",
        "json",
        "-f",
        "-",
        input=yaml.safe_dump(manifest),
    )
    created: dict[str, Any] = json.loads(out.stdout)
    return created


def create(
    plane: ControlPlane, namespace: str, manifest: dict[str, Any]
) -> tuple[dict[str, Any], str]:
    out = plane.kubectl(
        "create", "-n", namespace, "-o", "json", "-f", "-", input=yaml.safe_dump(manifest)
    )
    created: dict[str, Any] = json.loads(out.stdout)
    return created, out.stderr


def decision_of(pod: dict[str, Any]) -> str | None:
    return (pod["metadata"].get("annotations") or {}).get("imagecache.dev/decision")


def get(plane: ControlPlane, *args: str) -> dict[str, Any]:
    got: dict[str, Any] = json.loads(plane.kubectl("get", "-o", "json", *args).stdout)
    return got


def assert_cached(
    pod: dict[str, Any], cache: str, storage: str, snapshot: str = ""
) -> None:
    assert decision_of(pod) == "hit", pod["metadata"]
    assert pod["metadata"]["annotations"]["imagecache.dev/cache"] == cache
    assert pod["metadata"]["labels"]["imagecache.dev/cache"] == cache
    assert pod["metadata"]["labels"]["imagecache.dev/decision"] == "hit"
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "imagecache")
    claim = volume["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim["dataSource"] == {
        "apiGroup": "snapshot.storage.k8s.io",
        "kind": "VolumeSnapshot",
        "name": snapshot or f"imagecache-{cache}",
    }
    assert claim["resources"]["requests"]["storage"] == storage
    assert {"name": "imagecache", "mountPath": "/var/lib/imagecache", "readOnly": True} in (
        pod["spec"]["containers"][0]["volumeMounts"]
    )


def test_pod_created_with_generate_name_gets_the_cache_and_its_pvc(
    apiserver: ControlPlane, webhook: Webhook
) -> None:
    pod, _ = create(apiserver, "wh-web", pod_manifest(["nginx:1.25", "busybox:1.36"]))
    name = pod["metadata"]["name"]
    stored = get(apiserver, "pod", "-n", "wh-web", name)
    assert_cached(stored, "wh-web", "10Gi")  # the smaller of the two caches that hold both
    # The ephemeral-volume controller turned the template into <pod>-imagecache.
    claim_name = f"{name}-imagecache"
    wait_for(
        lambda: (
            apiserver.kubectl("get", "pvc", "-n", "wh-web", claim_name, check=False).returncode == 0
        ),
        f"PVC {claim_name}",
    )
    claim = get(apiserver, "pvc", "-n", "wh-web", claim_name)
    assert claim["spec"]["dataSource"] == {
        "apiGroup": "snapshot.storage.k8s.io",
        "kind": "VolumeSnapshot",
        "name": "imagecache-wh-web",
    }
    assert claim["metadata"]["ownerReferences"][0]["name"] == name
    assert claim["metadata"]["labels"]["imagecache.dev/cache"] == "wh-web"


def test_deployment_and_job_pods_are_patched(apiserver: ControlPlane, webhook: Webhook) -> None:
    template = {
        "metadata": {"labels": {"app": "d"}, "annotations": ANNOTATED},
        "spec": {
            "automountServiceAccountToken": False,
            "containers": [{"name": "web", "image": "nginx:1.25"}],
        },
    }
    apiserver.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "d", "namespace": "wh-web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "d"}},
                "template": template,
            },
        }
    )
    job_template = json.loads(json.dumps(template))
    job_template["metadata"]["labels"] = {"app": "j"}
    job_template["spec"]["restartPolicy"] = "Never"
    apiserver.apply(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "j", "namespace": "wh-web"},
            "spec": {"template": job_template},
        }
    )
    for selector, count in (("app=d", 2), ("app=j", 1)):
        wait_for(
            lambda s=selector, c=count: (
                len(  # type: ignore[misc]
                    get(apiserver, "pods", "-n", "wh-web", "-l", s)["items"]
                )
                == c
            ),
            f"pods {selector}",
        )
        for pod in get(apiserver, "pods", "-n", "wh-web", "-l", selector)["items"]:
            assert_cached(pod, "wh-web", "10Gi")
            # Pinned (issue 10.5); the workload's own template keeps the tag.
            pinned = f"nginx:1.25@{fake_digest('nginx:1.25')}"
            assert pod["spec"]["containers"][0]["image"] == pinned
            assert json.loads(pod["metadata"]["annotations"]["imagecache.dev/pinned-images"]) == {
                "web": "nginx:1.25"
            }
    deployment = get(apiserver, "deployment", "-n", "wh-web", "d")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.25"


def test_server_side_dry_run_is_patched_and_not_stored(
    apiserver: ControlPlane, webhook: Webhook
) -> None:
    manifest = pod_manifest(["nginx:1.25"])
    manifest["metadata"] = {"name": "dry", "annotations": ANNOTATED}
    pod = dry_run(apiserver, "wh-web", manifest)
    assert_cached(pod, "wh-web", "10Gi")
    assert apiserver.kubectl("get", "pod", "-n", "wh-web", "dry", check=False).returncode != 0


def test_warnings_reach_kubectl(apiserver: ControlPlane, webhook: Webhook) -> None:
    _, stderr = create(
        apiserver,
        "wh-web",
        pod_manifest(["nginx:1.25", "postgres:16"], {"imagecache.dev/use-image-cache": "wh-web"}),
    )
    assert "Warning: imagecache: ImageCache 'wh-web' lacks postgres:16" in stderr
    pod, stderr = create(
        apiserver,
        "wh-web",
        pod_manifest(["nginx:1.25"], {"imagecache.dev/use-image-cache": "no-such-cache"}),
    )
    assert "Warning: imagecache: ImageCache 'no-such-cache' does not exist" in stderr
    assert decision_of(pod) == "unavailable"


def test_required_pod_is_denied_with_the_reason(apiserver: ControlPlane, webhook: Webhook) -> None:
    result = apiserver.kubectl(
        "create",
        "-n",
        "wh-web",
        "-f",
        "-",
        check=False,
        input=yaml.safe_dump(
            pod_manifest(["postgres:16"], {**ANNOTATED, "imagecache.dev/required": "true"})
        ),
    )
    assert result.returncode != 0
    assert "requires an image cache" in result.stderr


def test_namespace_label_makes_pods_opt_in(apiserver: ControlPlane, webhook: Webhook) -> None:
    pod, _ = create(
        apiserver,
        "wh-team",
        pod_manifest(["nginx:1.25", "busybox:1.36", "redis:7"], annotations={}),
    )
    assert_cached(pod, "wh-big", "40Gi")
    # Without the label, the same pod is left alone.
    pod, _ = create(apiserver, "wh-web", pod_manifest(["nginx:1.25"], annotations={}))
    assert decision_of(pod) is None and "imagecache" not in json.dumps(pod["spec"])


def test_cache_status_changes_reach_the_webhook(apiserver: ControlPlane, webhook: Webhook) -> None:
    make_cache(apiserver, "wh-redis", ["memcached:1.6"], restore="5Gi")
    wait_for(
        lambda: decision_of(dry_run(apiserver, "wh-web", pod_manifest(["memcached:1.6"]))) == "hit",
        "the new cache to be used",
        webhook,
    )
    apiserver.kubectl(
        "patch",
        "imagecache",
        "wh-redis",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"phase": "Expired"}}),
    )
    wait_for(
        lambda: (
            decision_of(dry_run(apiserver, "wh-web", pod_manifest(["memcached:1.6"]))) == "miss"
        ),
        "the expired cache to be dropped",
        webhook,
    )
    apiserver.kubectl("delete", "imagecache", "wh-redis")


def test_explain_reads_the_cluster(
    apiserver: ControlPlane, webhook: Webhook, tmp_path: Path
) -> None:
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(yaml.safe_dump(pod_manifest(["nginx:1.25", "busybox:1.36"])))
    def explain(namespace: str) -> subprocess.CompletedProcess[str]:
        argv = ["explain", str(manifest), "--cluster", "--kubeconfig", str(apiserver.kubeconfig)]
        return subprocess.run([sys.executable, "-m", "webhook", *argv, "-n", namespace],
                              capture_output=True, text=True, check=False)  # fmt: skip

    run = explain("wh-web")
    assert run.returncode == 0, run.stderr
    assert "Decision: hit: ImageCache 'wh-web' holds every image" in run.stdout
    assert "wh-big: usable, but 'wh-web' comes first" in run.stdout
    missing = explain("no-such-namespace")
    assert missing.returncode == 1 and "404" in missing.stderr  # the cluster said no (13.4)
    assert "Traceback" not in missing.stderr


def test_pods_get_their_images_pinned_to_the_cached_digests(
    apiserver: ControlPlane, webhook: Webhook
) -> None:
    """Issue 10.5: the pod runs what its disk holds, whatever the tag points at upstream."""
    manual = {"imagecache.dev/use-image-cache": "wh-web"}
    manifest = pod_manifest(["nginx:1.25", "postgres:16"], manual)
    manifest["spec"]["initContainers"] = [{"name": "init", "image": "busybox:1.36"}]
    created, _ = create(apiserver, "wh-web", manifest)
    pod = get(apiserver, "pod", "-n", "wh-web", created["metadata"]["name"])
    assert decision_of(pod) == "mismatch"
    assert [c["image"] for c in pod["spec"]["initContainers"] + pod["spec"]["containers"]] == [
        f"busybox:1.36@{fake_digest('busybox:1.36')}",
        f"nginx:1.25@{fake_digest('nginx:1.25')}",
        "postgres:16",  # not in the cache: as written
    ]
    assert json.loads(pod["metadata"]["annotations"]["imagecache.dev/pinned-images"]) == {
        "init": "busybox:1.36", "c0": "nginx:1.25"
    }  # fmt: skip
    off = pod_manifest(["nginx:1.25"], {**ANNOTATED, "imagecache.dev/pin": "false"})
    created, _ = create(apiserver, "wh-web", off)
    assert created["spec"]["containers"][0]["image"] == "nginx:1.25"
    assert_cached(created, "wh-web", "10Gi")


def test_a_cache_is_used_only_where_its_copy_is_ready(
    apiserver: ControlPlane, webhook: Webhook
) -> None:
    """Issue 10.1: a Ready cache whose copy in the pod's namespace is not ready leaves the pod
    unchanged (decision unavailable, no volume, so no claim that cannot be provisioned); once
    the copy is ready, pods clone that copy's snapshot."""
    apiserver.kubectl("create", "namespace", "wh-copy", check=False)
    make_cache(apiserver, "wh-copy", ["httpd:2.4"], restore="3Gi",
               copies=[copy_entry("wh-copy", "wh-copy", ready=False)])  # fmt: skip
    manifest = pod_manifest(["httpd:2.4"])
    wait_for(
        lambda: decision_of(dry_run(apiserver, "wh-copy", manifest)) == "unavailable",
        "the webhook to see the cache without a ready copy",
        webhook,
    )
    created, stderr = create(apiserver, "wh-copy", manifest)
    pod = get(apiserver, "pod", "-n", "wh-copy", created["metadata"]["name"])
    assert "no ready copy in namespace wh-copy yet" in stderr
    assert pod["metadata"]["annotations"]["imagecache.dev/cache"] == "wh-copy"
    assert pod["metadata"]["labels"]["imagecache.dev/decision"] == "unavailable"
    assert "volumes" not in pod["spec"], pod["spec"]
    assert pod["spec"]["containers"][0]["image"] == "httpd:2.4"
    assert "volumeMounts" not in pod["spec"]["containers"][0]
    # required still means: deny when no cache can be used.
    required = pod_manifest(["httpd:2.4"], {**ANNOTATED, "imagecache.dev/required": "true"})
    denied = apiserver.kubectl("create", "-n", "wh-copy", "-f", "-", check=False,
                               input=yaml.safe_dump(required))  # fmt: skip
    assert denied.returncode != 0 and "no ready copy in namespace wh-copy" in denied.stderr

    # The controller's copy becomes ready, under a name of its choosing.
    apiserver.kubectl(
        "patch", "imagecache", "wh-copy", "--subresource=status", "--type=merge", "-p",
        json.dumps({"status": {"namespaces": [
            copy_entry("wh-copy", "wh-copy", snapshot="imagecache-wh-copy-7f3a")
        ]}}),
    )  # fmt: skip
    wait_for(
        lambda: decision_of(dry_run(apiserver, "wh-copy", manifest)) == "hit",
        "the webhook to see the ready copy",
        webhook,
    )
    created, _ = create(apiserver, "wh-copy", manifest)
    name = created["metadata"]["name"]
    assert_cached(get(apiserver, "pod", "-n", "wh-copy", name), "wh-copy", "3Gi",
                  "imagecache-wh-copy-7f3a")  # fmt: skip
    claim_name = f"{name}-imagecache"
    wait_for(
        lambda: apiserver.kubectl(
            "get", "pvc", "-n", "wh-copy", claim_name, check=False
        ).returncode == 0,
        f"PVC {claim_name}",
    )
    claim = get(apiserver, "pvc", "-n", "wh-copy", claim_name)
    assert claim["spec"]["dataSource"]["name"] == "imagecache-wh-copy-7f3a"
    # Only the pod that got the cache has a claim.
    claims = get(apiserver, "pvc", "-n", "wh-copy")["items"]
    assert [c["metadata"]["name"] for c in claims] == [claim_name]
    apiserver.kubectl("delete", "imagecache", "wh-copy")


# Last: it stops the module's webhook.
def test_with_the_webhook_down_pods_are_still_created(
    apiserver: ControlPlane, webhook: Webhook
) -> None:
    webhook.stop()
    pod, _ = create(apiserver, "wh-web", pod_manifest(["nginx:1.25"]))
    assert decision_of(pod) is None  # failurePolicy Ignore: admitted unchanged
    assert pod["metadata"]["name"]
