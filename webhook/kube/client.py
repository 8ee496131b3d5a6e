"""A small Kubernetes REST client over aiohttp: JSON in, JSON out, watches as line streams.

kubernetes_asyncio loads the configuration (kubeconfig or in-cluster, token refresh); the
requests themselves go straight through aiohttp so that objects stay plain dicts (what the
functional core reads) and every request is counted (the controller benchmark reports them).
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

Obj = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
MAX_LINE = 16 * 1024 * 1024  # one watch event; objects are a few KiB, annotations can be big
JSON_PATCH = "application/json-patch+json"


@dataclass(frozen=True, slots=True)
class Resource:
    api_version: str
    kind: str
    plural: str
    namespaced: bool

    def path(
        self, namespace: str | None = None, name: str | None = None, sub: str | None = None
    ) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{quote(name, safe='')}"
        if sub is not None:
            base += f"/{sub}"
        return base


_KNOWN = [
    Resource("v1", "Pod", "pods", True),
    Resource("v1", "PersistentVolumeClaim", "persistentvolumeclaims", True),
    Resource("v1", "Secret", "secrets", True),
    Resource("v1", "Event", "events", True),
    Resource("v1", "ConfigMap", "configmaps", True),
    Resource("v1", "Namespace", "namespaces", False),
    Resource("batch/v1", "Job", "jobs", True),
    Resource("apps/v1", "Deployment", "deployments", True),
    Resource("coordination.k8s.io/v1", "Lease", "leases", True),
    Resource("imagecache.dev/v1alpha1", "ImageCache", "imagecaches", False),
    Resource("snapshot.storage.k8s.io/v1", "VolumeSnapshot", "volumesnapshots", True),
    Resource(
        "snapshot.storage.k8s.io/v1", "VolumeSnapshotContent", "volumesnapshotcontents", False
    ),
    Resource("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass", "volumesnapshotclasses", False),
]
RESOURCES: dict[tuple[str, str], Resource] = {(r.api_version, r.kind): r for r in _KNOWN}


def resource(api_version: str, kind: str) -> Resource:
    try:
        return RESOURCES[(api_version, kind)]
    except KeyError:
        raise ValueError(f"no resource known for {api_version} {kind}") from None


POD = resource("v1", "Pod")
PVC = resource("v1", "PersistentVolumeClaim")
SECRET = resource("v1", "Secret")
NAMESPACE = resource("v1", "Namespace")
EVENT = resource("v1", "Event")
JOB = resource("batch/v1", "Job")
DEPLOYMENT = resource("apps/v1", "Deployment")
LEASE = resource("coordination.k8s.io/v1", "Lease")
IMAGECACHE = resource("imagecache.dev/v1alpha1", "ImageCache")
SNAPSHOT = resource("snapshot.storage.k8s.io/v1", "VolumeSnapshot")
CONTENT = resource("snapshot.storage.k8s.io/v1", "VolumeSnapshotContent")
SNAPSHOT_CLASS = resource("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass")


class ApiError(Exception):
    """A non-2xx answer; `status` is the HTTP code, `reason` the Status reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def _ssl_context(configuration: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, keyfile=configuration.key_file)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class NotLeading(ApiError):
    """A write refused before it was sent: this process's leadership has ended (fence)."""

    def __init__(self) -> None:
        super().__init__(0, "NotLeading", "this controller is no longer the leader: not writing")


WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class ClusterConfigError(Exception):
    """No way to reach the apiserver; the message says what was tried."""


async def load_configuration(kubeconfig: str | None) -> Any:
    """A client Configuration from `kubeconfig`, else the in-cluster service account, else the
    default kubeconfig (KUBECONFIG or ~/.kube/config). ClusterConfigError if none works."""
    # Imported here: kubernetes_asyncio takes longer to import than the rest together, and
    # `serve --caches FILE` never needs it.
    from kubernetes_asyncio import client, config

    configuration = client.Configuration()
    try:
        if kubeconfig:
            await config.load_kube_config(
                config_file=kubeconfig, client_configuration=configuration
            )
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            try:
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            except config.ConfigException:  # a pod without a service account token
                await config.load_kube_config(client_configuration=configuration)
        else:
            await config.load_kube_config(client_configuration=configuration)
    except (config.ConfigException, OSError, ValueError, TypeError) as exc:
        where = f"--kubeconfig {kubeconfig}" if kubeconfig else "in-cluster or default kubeconfig"
        raise ClusterConfigError(
            f"cannot configure the Kubernetes client ({where}): {exc}; pass --kubeconfig FILE"
        ) from None
    return configuration


class Kube:
    def __init__(self, configuration: Any, request_timeout: float = 30.0) -> None:
        self._configuration = configuration
        self._host = str(configuration.host).rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=_ssl_context(configuration), limit=32)
        )
        self.requests: Counter[str] = Counter()  # by verb
        self.in_flight = 0  # requests sent and not yet answered (watches not counted)
        self.observer: Callable[[str], None] | None = None  # told each request's verb
        # Seconds writes may still take (the leader's time left); None: writes are not fenced.
        self.fence: Callable[[], float] | None = None

    @classmethod
    async def connect(cls, kubeconfig: str | None) -> Kube:
        """ClusterConfigError if the configuration does not load (or its files do not)."""
        configuration = await load_configuration(kubeconfig)
        try:
            return cls(configuration)
        except (OSError, ValueError, ssl.SSLError) as exc:
            raise ClusterConfigError(
                f"cannot use the Kubernetes client certificates ({kubeconfig or 'default'}): "
                f"{exc}; check the kubeconfig's certificate-authority and client-certificate"
            ) from None

    @property
    def host(self) -> str:
        """The API server's URL."""
        return self._host

    async def close(self) -> None:
        await self._session.close()

    def _count(self, verb: str) -> None:
        self.requests[verb] += 1
        if self.observer is not None:
            self.observer(verb)

    async def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        auth = (await self._configuration.auth_settings()).get("BearerToken")
        if auth and auth.get("value"):
            headers["Authorization"] = auth["value"]
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        verb: str | None = None,
    ) -> Obj:
        timeout = self._timeout
        if self.fence is not None and method in WRITES:
            left = self.fence()
            if left <= 0:
                raise NotLeading()
            timeout = aiohttp.ClientTimeout(total=min(left, self._timeout.total or left))
        self._count(verb or method.lower())
        data = None if body is None else json.dumps(body)
        self.in_flight += 1
        try:
            async with self._session.request(
                method,
                self._host + path,
                params=params,
                data=data,
                headers=await self._headers(content_type if data is not None else None),
                timeout=timeout,
            ) as response:
                text = await response.text()
        finally:
            self.in_flight -= 1
        if response.status >= 300:
            raise _error(response.status, text)
        result: Obj = json.loads(text) if text else {}
        return result

    async def get(self, res: Resource, namespace: str | None, name: str) -> Obj:
        return await self.request("GET", res.path(namespace, name), verb="get")

    async def find(self, res: Resource, namespace: str | None, name: str) -> Obj | None:
        """The object, or None if there is none (404); any other error is raised."""
        try:
            return await self.get(res, namespace, name)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        label_selector: str | None = None,
        *,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> Obj:
        """One LIST; with `limit`, one page of it (`metadata.continue` names the next page;
        a continue token too old for the server's history is a 410)."""
        params = {"labelSelector": label_selector} if label_selector else {}
        if limit:
            params["limit"] = str(limit)
        if continue_token:
            params["continue"] = continue_token
        return await self.request("GET", res.path(namespace), params=params or None, verb="list")

    async def create(self, obj: Mapping[str, Any]) -> Obj:
        res = resource(str(obj.get("apiVersion")), str(obj.get("kind")))
        namespace = (obj.get("metadata") or {}).get("namespace")
        return await self.request("POST", res.path(namespace), body=obj, verb="create")

    async def delete(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        propagation: str | None = None,
        uid: str | None = None,
    ) -> Obj:
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if propagation:
            body["propagationPolicy"] = propagation
        if uid:
            body["preconditions"] = {"uid": uid}
        return await self.request("DELETE", res.path(namespace, name), body=body, verb="delete")

    async def patch(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        patch: object,
        *,
        subresource: str | None = None,
        content_type: str = MERGE_PATCH,
    ) -> Obj:
        return await self.request(
            "PATCH",
            res.path(namespace, name, subresource),
            body=patch,
            content_type=content_type,
            verb="patch",
        )

    async def replace(self, res: Resource, obj: Mapping[str, Any]) -> Obj:
        meta = obj.get("metadata") or {}
        return await self.request(
            "PUT", res.path(meta.get("namespace"), meta["name"]), body=obj, verb="update"
        )

    async def watch(
        self,
        res: Resource,
        namespace: str | None,
        resource_version: str,
        label_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncGenerator[bytes, None]:
        """The watch stream's lines (one JSON event each, see webhook.core.watch_plan) from
        `resource_version` until the server ends it. ApiError for an HTTP error (410 Gone:
        that version is compacted away); a 410 can also arrive as an ERROR event."""
        params = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        if label_selector:
            params["labelSelector"] = label_selector
        self._count("watch")
        # The server closes the stream at timeout_seconds; a stream silent for much longer
        # than that is a dead connection.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_seconds + 30)
        async with self._session.get(
            self._host + res.path(namespace),
            params=params,
            headers=await self._headers(None),
            timeout=timeout,
        ) as response:
            if response.status >= 300:
                raise _error(response.status, (await response.text())[:2000])
            # Split lines ourselves: aiohttp's readline refuses long lines, and an object with
            # big annotations makes one.
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                while (end := buffer.find(b"\n")) >= 0:
                    line, buffer = buffer[:end], buffer[end + 1 :]
                    if line.strip():
                        yield line
                if len(buffer) > MAX_LINE:
                    raise ValueError(f"a watch event is larger than {MAX_LINE} bytes")
            if buffer.strip():
                yield buffer


def _error(status: int, text: str) -> ApiError:
    try:
        doc = json.loads(text)
    except ValueError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    return ApiError(status, str(doc.get("reason") or status), str(doc.get("message") or text))


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep; True if `stop` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True
