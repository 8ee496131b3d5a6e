"""The few API reads the snapshotter makes (a disk's origin, webhook.snapshotter.core.disk_origin):
plain
GETs, synchronous like the rest of the process (gRPC worker threads), each bounded by a
timeout so that an API outage delays a pull by at most that much (then the pull goes on
without the disk).

Configuration: a kubeconfig file (token, client certificate, CA, as kubectl writes them), or
in a pod its service account (the token file is read on each request: projected tokens are
rotated by the kubelet).
"""

from __future__ import annotations

import base64
import http.client
import os
import ssl
import tempfile
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import yaml

from webhook.core.jsondoc import json_object

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
MAX_BODY = 4 << 20

Obj = dict[str, Any]

PATHS = {  # webhook.snapshotter.core.disk_origin's kinds
    "pv": "/api/v1/persistentvolumes/{name}",
    "pvc": "/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}",
    "pod": "/api/v1/namespaces/{namespace}/pods/{name}",
    "snapshot": "/apis/snapshot.storage.k8s.io/v1/namespaces/{namespace}/volumesnapshots/{name}",
    "content": "/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents/{name}",
}


class KubeConfigError(Exception):
    """No usable API configuration; the message says what was tried."""


class KubeReadError(Exception):
    """The API did not answer a read (unreachable, timeout, 401/403, 5xx)."""


@dataclass
class _Config:
    server: str
    context: ssl.SSLContext
    token: str = ""
    token_file: str = ""


def _data_file(data: str, directory: str, name: str) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(base64.b64decode(data))
    return path


def _from_kubeconfig(path: str) -> _Config:
    try:
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
        current = doc.get("current-context") or ""
        context = next(c["context"] for c in doc.get("contexts") or []
                       if c.get("name") == current)
        cluster = next(c["cluster"] for c in doc.get("clusters") or []
                       if c.get("name") == context.get("cluster"))
        user = next((u.get("user") or {} for u in doc.get("users") or []
                     if u.get("name") == context.get("user")), {})
    except (OSError, yaml.YAMLError, StopIteration, KeyError, TypeError, AttributeError) as exc:
        raise KubeConfigError(f"--kubeconfig {path}: cannot read its current context, "
                              f"cluster and user ({type(exc).__name__}: {exc})") from None
    base = os.path.dirname(os.path.abspath(path))

    def file_of(key: str) -> str:
        value = str(user.get(key) or cluster.get(key) or "")
        return value if not value or os.path.isabs(value) else os.path.join(base, value)

    with tempfile.TemporaryDirectory(prefix="imagecache-kubeconfig-") as tmp:
        try:
            ca = file_of("certificate-authority") or (
                _data_file(cluster["certificate-authority-data"], tmp, "ca")
                if cluster.get("certificate-authority-data") else "")
            context_ = ssl.create_default_context(cafile=ca or None)
            if cluster.get("insecure-skip-tls-verify"):
                context_.check_hostname = False
                context_.verify_mode = ssl.CERT_NONE
            cert = file_of("client-certificate") or (
                _data_file(user["client-certificate-data"], tmp, "cert")
                if user.get("client-certificate-data") else "")
            key = file_of("client-key") or (
                _data_file(user["client-key-data"], tmp, "key")
                if user.get("client-key-data") else "")
            if cert:
                context_.load_cert_chain(cert, keyfile=key or None)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise KubeConfigError(f"--kubeconfig {path}: cannot load its certificates "
                                  f"({exc})") from None
    return _Config(str(cluster.get("server") or ""), context_, str(user.get("token") or ""),
                   file_of("tokenFile"))


def _in_cluster() -> _Config:
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    token = os.path.join(SERVICE_ACCOUNT, "token")
    if not host or not os.path.exists(token):
        raise KubeConfigError("not in a pod with a service account token "
                              f"({SERVICE_ACCOUNT}/token); pass --kubeconfig FILE")
    try:
        context = ssl.create_default_context(cafile=os.path.join(SERVICE_ACCOUNT, "ca.crt"))
    except (OSError, ssl.SSLError) as exc:
        raise KubeConfigError(f"{SERVICE_ACCOUNT}/ca.crt: {exc}") from None
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return _Config(server, context, token_file=token)


class KubeReader:
    def __init__(self, config: _Config, timeout: float = 3.0) -> None:
        parts = urlsplit(config.server)
        if parts.scheme != "https" or not parts.hostname:
            raise KubeConfigError(f"API server {config.server!r}: an https:// URL is needed")
        self._config = config
        self._host = parts.hostname
        self._port = parts.port or 443
        self._prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self._connection: http.client.HTTPSConnection | None = None
        self._lock = threading.Lock()

    @classmethod
    def load(cls, kubeconfig: str, timeout: float = 3.0) -> KubeReader:
        """From `kubeconfig`, else the pod's service account. KubeConfigError if neither."""
        return cls(_from_kubeconfig(kubeconfig) if kubeconfig else _in_cluster(), timeout)

    def _request(self, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        if self._connection is None:
            self._connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=self._config.context)
        self._connection.request("GET", path, headers=headers)
        response = self._connection.getresponse()
        body = response.read(MAX_BODY + 1)
        if response.will_close or len(body) > MAX_BODY:
            self._close()
        return response.status, body

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _token(self) -> str:
        if self._config.token_file:
            try:
                with open(self._config.token_file) as f:
                    return f.read().strip()
            except OSError as exc:
                raise KubeReadError(f"token file {self._config.token_file}: {exc}") from None
        return self._config.token

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        """The object, or None when it does not exist (404). KubeReadError otherwise."""
        path = self._prefix + PATHS[kind].format(namespace=quote(namespace, safe=""),
                                                 name=quote(name, safe=""))
        headers = {"Accept": "application/json"}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        with self._lock:  # one kept-alive connection: the reads of a check share a handshake
            for attempt in (1, 2):
                reused = self._connection is not None
                try:
                    status, body = self._request(path, headers)
                    break
                except (OSError, http.client.HTTPException) as exc:
                    self._close()
                    if not reused or attempt == 2:  # else the server closed it meanwhile
                        raise KubeReadError(f"GET {path}: {type(exc).__name__}: {exc}") from None
        if status == 404:
            return None
        if status != 200 or len(body) > MAX_BODY:
            raise KubeReadError(f"GET {path}: HTTP {status}: "
                                f"{body[:300].decode(errors='replace')}")
        return json_object(body, f"GET {path}: the answer", KubeReadError)
