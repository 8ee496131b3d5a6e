"""Helpers for the webhook server tests: certificates made by `imagecache certs generate`,
HTTPS clients that trust them, the real server on a free 127.0.0.1 port, a Secret-like
certificate directory whose `..data` symlink is swapped the way kubelet does it."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from envtest import SHARED

from certs.command import main as certs_main
from webhook.kube.informer import WatchOptions
from webhook.server.runtime import Options, Webhook

ADMISSION = SHARED / "testdata" / "admission"
REVIEWS = sorted(ADMISSION.glob("*.json"))
NO_REVIEWS = f"no recorded AdmissionReviews in {ADMISSION} (set IMAGECACHE_SHARED)"

CACHES_YAML = """\
apiVersion: imagecache.dev/v1alpha1
kind: ImageCache
metadata: {name: nginx, creationTimestamp: "2026-01-10T00:00:00Z"}
spec: {images: ["nginx:1.25"], imageCacheSize: 10}
status:
  phase: Ready
  restoreSize: 10Gi
  namespaces: [{namespace: default, snapshotName: imagecache-nginx, readyToUse: true}]
---
apiVersion: imagecache.dev/v1alpha1
kind: ImageCache
metadata: {name: tools, creationTimestamp: "2026-01-11T00:00:00Z"}
spec: {images: ["busybox:1.36"]}
status:
  phase: Ready
  restoreSize: 5Gi
  namespaces: [{namespace: default, snapshotName: imagecache-tools, readyToUse: true}]
"""


def generate_certs(directory: Path, *names: str) -> Path:
    """ca.crt/ca.key/tls.crt/tls.key in `directory` for 127.0.0.1 and localhost (+ names)."""
    argv = ["generate", "--out", str(directory), "--ip", "127.0.0.1", "--dns", "localhost"]
    for name in names:
        argv += ["--dns", name]
    assert certs_main(argv) == 0
    return directory


def client_context(*cafiles: Path) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.load_verify_locations(cadata="".join(p.read_text() for p in cafiles))
    return context


def issuer_of(writer: asyncio.StreamWriter) -> str:
    """The issuer of the certificate the server presented on this connection."""
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).issuer.rfc4514_string()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response: status, headers (lowercase names), body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def request_bytes(method: str, path: str, body: bytes = b"", *, close: bool = False) -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
    )
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + body


class Connection:
    """One TLS connection, by hand: which certificate it got, and requests over it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, context: ssl.SSLContext) -> Connection:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="localhost"
        )
        return cls(reader, writer)

    @property
    def issuer(self) -> str:
        return issuer_of(self.writer)

    async def request(
        self, method: str, path: str, body: bytes = b"", *, close: bool = False
    ) -> tuple[int, bytes]:
        self.writer.write(request_bytes(method, path, body, close=close))
        status, _, answer = await read_response(self.reader)
        return status, answer

    def close(self) -> None:
        self.writer.close()


async def fresh_issuer(port: int, *cafiles: Path) -> str:
    """Connect anew, GET /healthz, and say who issued the certificate the server presented."""
    connection = await Connection.open(port, client_context(*cafiles))
    try:
        status, _ = await connection.request("GET", "/healthz", close=True)
        assert status == 200
        return connection.issuer
    finally:
        connection.close()


def ca_subject(cafile: Path) -> str:
    return x509.load_pem_x509_certificate(cafile.read_bytes()).subject.rfc4514_string()


def server_logger() -> logging.Logger:
    logger = logging.getLogger("imagecache.webhook.test")
    logger.setLevel(logging.DEBUG)
    return logger


def options(cert: Path, key: Path, **overrides: Any) -> Options:
    values: dict[str, Any] = {
        "tls_cert": cert,
        "tls_key": key,
        "host": "127.0.0.1",
        "port": 0,
        "reload_interval": 0.2,
        "shutdown_timeout": 5.0,
        "watch": WatchOptions(backoff_base=0.1, backoff_cap=0.5),
    }
    values.update(overrides)
    return Options(**values)


@asynccontextmanager
async def running(opts: Options) -> AsyncIterator[Webhook]:
    webhook = Webhook(opts, server_logger())
    try:
        await webhook.start()
        yield webhook
    finally:
        await webhook.stop()


def url(webhook: Webhook, path: str) -> str:
    return f"https://127.0.0.1:{webhook.port}{path}"


def require_reviews() -> Sequence[Path]:
    if not REVIEWS:
        pytest.skip(NO_REVIEWS)
    return REVIEWS


class SecretVolume:
    """A directory laid out like a mounted Kubernetes Secret: `tls.crt -> ..data/tls.crt`,
    `..data -> ..<version>`; `update()` swaps `..data` atomically, as kubelet's AtomicWriter."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.version = 0

    @property
    def cert(self) -> Path:
        return self.root / "tls.crt"

    @property
    def key(self) -> Path:
        return self.root / "tls.key"

    def update(self, files: dict[str, bytes]) -> None:
        self.version += 1
        target = self.root / f"..v{self.version}"
        target.mkdir()
        for name, data in files.items():
            (target / name).write_bytes(data)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(target.name)
        os.replace(tmp, self.root / "..data")  # the atomic step
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")
        old = self.root / f"..v{self.version - 1}"
        if old.exists():
            for child in old.iterdir():
                child.unlink()
            old.rmdir()

    def update_from(self, directory: Path) -> None:
        self.update(
            {
                "tls.crt": (directory / "tls.crt").read_bytes(),
                "tls.key": (directory / "tls.key").read_bytes(),
            }
        )


async def post_json(
    session: aiohttp.ClientSession, target: str, body: bytes, **kwargs: Any
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    async with session.post(target, data=body, headers=headers, **kwargs) as response:
        return response.status, await response.json(content_type=None)


async def wait_for(predicate: Any, within: float = 15.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
