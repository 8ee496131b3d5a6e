"""Test helpers for the controller against a real apiserver: the controller as a subprocess,
and the test playing the parts envtest has not got (kubelet, snapshot controller)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from envtest import ControlPlane, die_with_parent, free_port

from webhook.controller.core import reconcile_names as rn
from webhook.core.build_result import encode_build_error, encode_build_result
from webhook.kube import client as k
from webhook.kube.client import ApiError, Kube

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")
DRIVER = "hostpath.csi.example.com"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def eventually(
    probe: Callable[[], Awaitable[T | None]], what: str, within: float = 30.0
) -> T:
    """Poll `probe` until it returns something other than None/False."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last is not None and last is not False:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {within}s waiting for {what} (last: {last!r})")


def webhook_cert_args(full: str) -> tuple[str, ...]:
    """The controller's certificate flags as the chart passes them for release name `full`."""
    return (
        "--webhook-configuration", full,
        "--webhook-secret", f"{full}-webhook-tls",
        "--webhook-service", f"{full}-webhook",
    )  # fmt: skip


def decided_pod(
    namespace: str,
    name: str,
    decision: str,
    cache: str | None,
    missing: str = "",
    labelled: bool | None = None,
) -> dict[str, Any]:
    """A pod as the webhook leaves it (labels and annotations), created directly. The cache
    label goes on a hit or mismatch, or with `labelled` (a pod waiting for a copy)."""
    annotations = {"imagecache.dev/decision": decision}
    labels = {"imagecache.dev/decision": decision}
    if cache:
        annotations["imagecache.dev/cache"] = cache
        if labelled if labelled is not None else decision in ("hit", "mismatch"):
            labels["imagecache.dev/cache"] = cache
    if missing:
        annotations["imagecache.dev/missing-images"] = missing
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            "automountServiceAccountToken": False,
            "containers": [{"name": "app", "image": "nginx"}],
        },
    }


async def scrape_metrics(port: int) -> str | None:
    """The /metrics text of a controller listening on `port`; None while it does not
    answer 200."""
    import aiohttp

    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as response,
        ):
            text = await response.text()
    except aiohttp.ClientError:
        return None
    return text if response.status == 200 else None


class ControllerProcess:
    """`imagecache controller` in a subprocess (its own process group), log in a file."""

    def __init__(
        self,
        plane: ControlPlane,
        namespace: str,
        selector: str,
        *extra: str,
        kubeconfig: Path | None = None,  # default: the admin's
        pull_secret_namespace: str | None = "*",  # None: the product's default (its own)
    ) -> None:
        self.plane = plane
        self.port = free_port()
        self.log = plane.workdir / f"controller-{namespace}-{uuid.uuid4().hex[:4]}.log"
        self.argv = [
            sys.executable,
            "-c",
            "import sys; from webhook.controller.command import main; sys.exit(main(sys.argv[1:]))",
            "--kubeconfig",
            str(kubeconfig or plane.kubeconfig),
            "--namespace",
            namespace,
            "--builder-image",
            "registry.example/imagecache:test",
            "--snapshot-class",
            "csi-snapclass",
            "--backoff-limit",
            "0",
            "--build-deadline",
            "600",
            "--in-use-grace",
            "60",
            "--cache-selector",
            selector,
            "--status-batch",
            "0.5",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--lease-duration",
            "3",
            "--renew-deadline",
            "2",
            "--retry-period",
            "0.5",
            "--log-level",
            "DEBUG",
            *(["--pull-secret-namespace", pull_secret_namespace] if pull_secret_namespace else []),
            *extra,
        ]
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> ControllerProcess:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        return self

    def kill(self, sig: int = signal.SIGKILL) -> int | None:
        if self.popen is None or self.popen.poll() is not None:
            return None if self.popen is None else self.popen.returncode
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)
        try:
            return self.popen.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            return self.popen.wait(5)

    def send(self, sig: int) -> None:
        """Send `sig` (e.g. SIGSTOP, SIGCONT) to the process group, without waiting."""
        assert self.popen is not None and self.popen.poll() is None, self.tail()
        os.killpg(self.popen.pid, sig)

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Cluster:
    """The test's own client, and the kubelet / snapshot controller it plays."""

    def __init__(self, plane: ControlPlane, kube: Kube) -> None:
        self.plane = plane
        self.kube = kube

    async def namespace(self, name: str) -> str:
        with contextlib.suppress(ApiError):
            await self.kube.create(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
            )

        async def has_account() -> bool:
            try:
                await self.kube.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")
            except ApiError:
                return False
            return True

        await eventually(has_account, f"default ServiceAccount in {name}")
        return name

    async def snapshot_class(self, name: str = "csi-snapclass") -> None:
        with contextlib.suppress(ApiError):
            await self.kube.create(
                {
                    "apiVersion": "snapshot.storage.k8s.io/v1",
                    "kind": "VolumeSnapshotClass",
                    "metadata": {"name": name},
                    "driver": DRIVER,
                    "deletionPolicy": "Delete",
                }
            )

    async def pull_secret(self, namespace: str, name: str = "regcred") -> None:
        """A kubernetes.io/dockerconfigjson Secret for registry.example."""
        await self.kube.create(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/dockerconfigjson",
                "metadata": {"name": name, "namespace": namespace},
                "data": {".dockerconfigjson": dockerconfig("registry.example", "u", "p")},
            }
        )

    async def cache(self, name: str, spec: dict[str, Any], selector: str) -> dict[str, Any]:
        key, _, value = selector.partition("=")
        return await self.kube.create(
            {
                "apiVersion": "imagecache.dev/v1alpha1",
                "kind": "ImageCache",
                "metadata": {"name": name, "labels": {key: value}},
                "spec": spec,
            }
        )

    async def get_cache(self, name: str) -> dict[str, Any] | None:
        return await self.kube.find(k.IMAGECACHE, None, name)

    async def phase(self, name: str, phase: str, within: float = 30) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            obj = await self.get_cache(name)
            if obj and (obj.get("status") or {}).get("phase") == phase:
                return obj
            return None

        try:
            return await eventually(probe, f"{name} in phase {phase}", within)
        except AssertionError as exc:
            obj = await self.get_cache(name)
            raise AssertionError(
                f"{exc}\nstatus: {json.dumps((obj or {}).get('status'))}"
            ) from None

    async def owned(self, res: k.Resource, namespace: str | None, cache: str) -> list[Any]:
        listed = await self.kube.list(
            res, namespace, f"{rn.MANAGED_BY}={rn.MANAGER},{rn.CACHE_LABEL}={cache}"
        )
        return list(listed.get("items") or [])

    async def one(self, res: k.Resource, namespace: str | None, cache: str, what: str) -> Any:
        async def probe() -> Any:
            items = await self.owned(res, namespace, cache)
            return items[0] if items else None

        return await eventually(probe, what)

    async def builder_pod(self, namespace: str, cache: str, component: str = rn.BUILDER) -> Any:
        """The Job controller's pod for the build (the Job must exist)."""

        async def probe() -> Any:
            listed = await self.kube.list(
                k.POD,
                namespace,
                f"{rn.BUILD_OF_LABEL}={cache},{rn.COMPONENT_LABEL}={component}",
            )
            return (listed.get("items") or [None])[0]

        return await eventually(probe, f"{component} pod of {cache}")

    async def finish_pod(self, pod: dict[str, Any], message: str, succeeded: bool) -> None:
        """Play kubelet: the container terminated with `message` as termination message."""
        container = pod["spec"]["containers"][0]
        status = {
            "phase": "Succeeded" if succeeded else "Failed",
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container["image"],
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {
                        "terminated": {
                            "exitCode": 0 if succeeded else 10,
                            "reason": "Completed" if succeeded else "Error",
                            "message": message,
                        }
                    },
                }
            ],
        }
        await self.kube.patch(
            k.POD, pod["metadata"]["namespace"], pod["metadata"]["name"], {"status": status},
            subresource="status",
        )  # fmt: skip

    async def build(self, namespace: str, cache: str, images: list[tuple[str, str, int]]) -> None:
        pod = await self.builder_pod(namespace, cache)
        total = sum(size for _, _, size in images)
        await self.finish_pod(pod, encode_build_result(images, total), succeeded=True)

    async def fail_build(self, namespace: str, cache: str, reason: str, message: str) -> None:
        pod = await self.builder_pod(namespace, cache)
        await self.finish_pod(pod, encode_build_error(reason, message), succeeded=False)

    async def ready_snapshot(
        self, snapshot: dict[str, Any], handle: str, restore_size: str = "20Gi"
    ) -> str:
        """Play the snapshot controller: a content with the handle, bound and ready."""
        meta = snapshot["metadata"]
        content = f"snapcontent-{meta['uid']}"
        with contextlib.suppress(ApiError):
            await self.kube.create(
                {
                    "apiVersion": "snapshot.storage.k8s.io/v1",
                    "kind": "VolumeSnapshotContent",
                    "metadata": {"name": content},
                    "spec": {
                        "deletionPolicy": "Delete",
                        "driver": DRIVER,
                        "source": {"volumeHandle": f"pvc-{meta['uid']}"},
                        "volumeSnapshotClassName": "csi-snapclass",
                        "volumeSnapshotRef": {
                            "name": meta["name"],
                            "namespace": meta["namespace"],
                            "uid": meta["uid"],
                        },
                    },
                }
            )
        await self.kube.patch(
            k.CONTENT, None, content,
            {"status": {"snapshotHandle": handle, "readyToUse": True}}, subresource="status",
        )  # fmt: skip
        await self.kube.patch(
            k.SNAPSHOT, meta["namespace"], meta["name"],
            {"status": {"boundVolumeSnapshotContentName": content, "readyToUse": True,
                        "restoreSize": restore_size}},
            subresource="status",
        )  # fmt: skip
        return content

    async def copy_entry(
        self, name: str, namespace: str, ready: bool | None = None, within: float = 30
    ) -> dict[str, Any]:
        """The cache's status.namespaces entry for `namespace` (readyToUse as asked)."""

        async def probe() -> dict[str, Any] | None:
            status = (await self.get_cache(name) or {}).get("status") or {}
            for entry in status.get("namespaces") or []:
                if entry["namespace"] == namespace and ready in (None, entry["readyToUse"]):
                    return dict(entry)
            return None

        try:
            return await eventually(probe, f"{name}'s copy in {namespace} (ready {ready})", within)
        except AssertionError as exc:
            obj = await self.get_cache(name) or {}
            raise AssertionError(f"{exc}\nstatus: {json.dumps(obj.get('status'))}") from None

    async def ready_copy(self, namespace: str, snapshot: str, restore_size: str = "20Gi") -> None:
        """Play the snapshot controller for a pre-provisioned copy: bind and mark ready."""
        copy = await eventually(
            lambda: self.kube.find(k.SNAPSHOT, namespace, snapshot), f"copy {namespace}/{snapshot}"
        )
        content = copy["spec"]["source"]["volumeSnapshotContentName"]
        await self.kube.patch(
            k.CONTENT, None, content, {"status": {"readyToUse": True}}, subresource="status"
        )
        await self.kube.patch(
            k.SNAPSHOT, namespace, snapshot,
            {"status": {"boundVolumeSnapshotContentName": content, "readyToUse": True,
                        "restoreSize": restore_size}},
            subresource="status",
        )  # fmt: skip

    async def claim(self, namespace: str, name: str, cache: str, snapshot: str) -> dict[str, Any]:
        """A pod's cache claim as the ephemeral volume controller makes it from the webhook's
        template: labelled with the cache, cloning `snapshot`, Pending until provisioned."""
        return await self.kube.create(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "namespace": namespace,
                             "labels": {"imagecache.dev/cache": cache}},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "csi-hostpath",
                    "resources": {"requests": {"storage": "20Gi"}},
                    "dataSource": {"apiGroup": "snapshot.storage.k8s.io",
                                   "kind": "VolumeSnapshot", "name": snapshot},
                },
            }
        )  # fmt: skip

    async def bind_claim(self, namespace: str, name: str) -> None:
        """Play the CSI provisioner (no PV binder runs here): the clone is made, Bound."""
        await self.kube.patch(
            k.PVC, namespace, name, {"status": {"phase": "Bound"}}, subresource="status"
        )

    async def delete_cache(self, name: str) -> None:
        with contextlib.suppress(ApiError):
            await self.kube.delete(k.IMAGECACHE, None, name)

    async def gone(self, name: str, within: float = 30) -> None:
        async def probe() -> bool:
            return await self.get_cache(name) is None

        try:
            await eventually(probe, f"{name} deleted", within)
        except AssertionError as exc:
            obj = await self.get_cache(name) or {}
            raise AssertionError(
                f"{exc}\nfinalizers: {obj.get('metadata', {}).get('finalizers')}, "
                f"status: {json.dumps(obj.get('status'))}\nleft: {await self._all_left(name)}"
            ) from None

    async def _all_left(self, cache: str) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for res in (k.JOB, k.PVC, k.SECRET, k.SNAPSHOT, k.CONTENT):
            names = [o["metadata"]["name"] for o in await self.owned(res, None, cache)]
            if names:
                found[res.kind] = names
        return found

    async def leftovers(self, namespace: str, cache: str) -> dict[str, list[str]]:
        """Everything of `cache` still there, by kind (empty when clean)."""
        found: dict[str, list[str]] = {}
        for res, ns in [
            (k.JOB, namespace),
            (k.PVC, namespace),
            (k.SECRET, namespace),
            (k.SNAPSHOT, None),
            (k.CONTENT, None),
        ]:
            names = [o["metadata"]["name"] for o in await self.owned(res, ns, cache)]
            if names:
                found[res.kind] = names
        pods = await self.kube.list(k.POD, namespace, f"{rn.BUILD_OF_LABEL}={cache}")
        if pods.get("items"):
            found["Pod"] = [p["metadata"]["name"] for p in pods["items"]]
        return found

    def events(self, name: str) -> list[tuple[str, str, str]]:
        out = self.plane.kubectl(
            "get", "events", "-A", "--field-selector", f"involvedObject.name={name}",
            "-o", "json",
        ).stdout  # fmt: skip
        return [(e["type"], e["reason"], e["message"]) for e in json.loads(out).get("items") or []]


def dockerconfig(registry: str, user: str, password: str) -> str:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    raw = json.dumps({"auths": {registry: {"auth": auth}}})
    return base64.b64encode(raw.encode()).decode()


async def make_ready(
    cluster: Cluster,
    namespace: str,
    name: str,
    images: list[tuple[str, str, int]],
    handle: str,
    restore_size: str = "20Gi",
) -> dict[str, Any]:
    """Drive a cache's current build to Ready: builder pod succeeds, snapshot gets ready."""
    await cluster.build(namespace, name, images)

    async def new_snapshot() -> Any:
        obj = await cluster.get_cache(name) or {}
        served = (obj.get("status") or {}).get("snapshotName")
        for snap in await cluster.owned(k.SNAPSHOT, namespace, name):
            if snap["metadata"]["name"] != served and not (snap.get("status") or {}).get(
                "readyToUse"
            ):
                return snap
        return None

    snapshot = await eventually(new_snapshot, f"new primary snapshot of {name}")
    await cluster.ready_snapshot(snapshot, handle, restore_size)

    async def serving() -> Any:
        obj = await cluster.get_cache(name) or {}
        status = obj.get("status") or {}
        ok = status.get("phase") == "Ready" and status.get("snapshotHandle") == handle
        return obj if ok else None

    result: dict[str, Any] = await eventually(serving, f"{name} Ready with {handle}")
    return result
