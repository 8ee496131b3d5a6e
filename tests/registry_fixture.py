"""Real registries and test images for the builder's and the node mirror's tests and benchmarks.

One of each: Debian's docker-registry (distribution 2.8) started on 127.0.0.1 with its own
config (plain HTTP, TLS with htpasswd, or token auth with a small token server) and its
request log; test layers, images and indexes built here (no downloads) and pushed over HTTP;
`sha256`, `skopeo`, `fetch`, and the helpers that start and stop child processes.

Imported by tests/test_builder_*.py, tests/test_mirror_*.py, tests/mirror_testkit.py and the
benchmarks in bench/ (no conftest).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import gzip
import hashlib
import io
import ipaddress
import json
import os
import random
import re
import shutil
import ssl
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from envtest import REPO_ROOT
from multidict import CIMultiDict

from webhook.builder.core.registry_auth import parse_www_authenticate

if TYPE_CHECKING:
    import pytest

    from webhook.core.build_result import BuildError, BuildResult

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ACCEPT_ALL = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])


# ------------------------------------------------------------------ tools and processes


def missing_tools(*tools: str) -> str | None:
    """A skip reason naming the tools not installed, or None. (Each tool is the Debian
    package of the same name: docker-registry, skopeo, containerd, curl.)"""
    absent = [t for t in tools if shutil.which(t) is None]
    if absent:
        return f"needs {', '.join(absent)} (apt-get install {' '.join(absent)})"
    return None


def needs(*tools: str) -> pytest.MarkDecorator:
    """A skipif mark for tests that need these tools installed."""
    import pytest

    reason = missing_tools(*tools)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def wait_for_line(path: Path, pattern: str, proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The first match of `pattern` (its group 1 if it has one) in a growing log file; fails
    naming the log, early if the process exits."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        match = regex.search(text)
        if match:
            return match.group(1) if match.groups() else match.group(0)
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode}; its log:\n{text[-3000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"no {pattern!r} in {path} after {timeout}s:\n{text[-3000:]}")


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after `grace` seconds; the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def main_command(module: str, args: Sequence[str]) -> list[str]:
    """`module.main(argv)` as a child process of this Python (the `imagecache` CLI is wired
    by the lead; tests run the parts' own entry points)."""
    code = f"import sys; from {module} import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, *args]


def repo_env() -> dict[str, str]:
    """This environment with the repository first on PYTHONPATH, for main_command children."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def skopeo(*args: str, timeout: float = 120) -> str:
    """skopeo's stdout; a failure raises naming the command and what skopeo said."""
    proc = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"skopeo {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def fetch(url: str, method: str = "GET", headers: dict[str, str] | None = None,
          data: bytes | IO[bytes] | None = None, context: ssl.SSLContext | None = None,
          timeout: float = 30) -> tuple[int, CIMultiDict[str], bytes]:
    """(status, headers, body) of one HTTP request; error statuses are answers too."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, context=context, timeout=timeout) as response:
            return response.status, CIMultiDict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, CIMultiDict(exc.headers.items()), exc.read()


def manifest_of(base_url: str, repository: str, reference: str, query: str = ""
                ) -> tuple[str, str, bytes]:
    """(Docker-Content-Digest, Content-Type, body) of a manifest GET from any registry."""
    status, headers, body = fetch(f"{base_url}/v2/{repository}/manifests/{reference}{query}",
                                  headers={"Accept": ACCEPT_ALL})
    if status != 200:
        raise RuntimeError(f"{base_url} {repository}:{reference}: {status} {body[:300]!r}")
    return headers["Docker-Content-Digest"], headers["Content-Type"], body


# ------------------------------------------------------------------ TLS material


@dataclass
class TLSFiles:
    ca_cert: Path
    cert: Path
    key: Path


def make_tls(directory: Path, name: str = "registry") -> TLSFiles:
    """A CA and a server certificate for 127.0.0.1 and localhost, signed by it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                       critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = TLSFiles(directory / f"{name}-ca.pem", directory / f"{name}.pem",
                     directory / f"{name}-key.pem")
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return files


def htpasswd_line(user: str, password: str) -> str:
    import bcrypt  # PyPI bcrypt: distribution's htpasswd accepts bcrypt only

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{user}:{hashed}\n"


# ------------------------------------------------------------------ aiohttp in a thread


class ThreadedApp:
    """An aiohttp app served from its own thread and loop, so blocking test code (and a
    builder running in the test's thread) never starves it. Port 0 binds a free port
    (no race with a port picked beforehand); `port` is the bound one once started."""

    def __init__(self, app: web.Application, port: int = 0) -> None:
        self.app = app
        self.port = port
        self.loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> ThreadedApp:
        self._thread.start()

        async def up() -> None:
            self._runner = web.AppRunner(self.app, shutdown_timeout=0.2, handle_signals=False)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            self.port = self._runner.addresses[0][1]

        asyncio.run_coroutine_threadsafe(up(), self.loop).result(10)
        return self

    def call(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(30)
            self._runner = None
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


# ------------------------------------------------------------------ token server


@dataclass
class TokenServer:
    """Issues distribution tokens (ES256 JWT with an x5c chain) for known users."""

    directory: Path
    users: dict[str, str]
    service: str = "imagecache-test"
    issuer: str = "imagecache-test-issuer"
    requests: list[dict[str, str]] = field(default_factory=list)
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # token -> user
    app: ThreadedApp | None = None

    def __post_init__(self) -> None:
        now = dt.datetime.now(dt.UTC)
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token signer")])
        self._cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        self.bundle = self.directory / "token-signer.pem"
        self.bundle.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    @property
    def realm(self) -> str:
        assert self.app is not None
        return f"{self.app.url}/token"

    def _jwt(self, subject: str, access: list[dict[str, Any]]) -> str:
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).decode().rstrip("=")

        header = {"typ": "JWT", "alg": "ES256",
                  "x5c": [base64.b64encode(self._cert.public_bytes(
                      serialization.Encoding.DER)).decode()]}
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    async def _token(self, request: web.Request) -> web.Response:
        scope = request.query.get("scope", "")
        auth = request.headers.get("Authorization", "")
        user = ""
        if request.method == "POST":  # OAuth2 refresh-token grant (dockerconfig identitytoken)
            form = await request.post()
            scope = str(form.get("scope", ""))
            user = self.refresh_tokens.get(str(form.get("refresh_token", "")), "")
            if form.get("grant_type") != "refresh_token" or not user:
                self.requests.append({"scope": scope, "user": "", "result": "denied"})
                return web.json_response({"error": "invalid_grant"}, status=401)
        elif auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            if self.users.get(user) != password:
                self.requests.append({"scope": scope, "user": user, "result": "denied"})
                return web.json_response({"errors": [{"code": "UNAUTHORIZED",
                                                      "message": "bad credentials"}]}, status=401)
        self.requests.append({"scope": scope, "user": user, "result": "issued"})
        access = []
        for item in scope.split(" "):
            parts = item.split(":")
            if len(parts) == 3 and parts[0] == "repository" and user:
                access.append({"type": "repository", "name": parts[1],
                               "actions": parts[2].split(",")})
        token = self._jwt(user or "anonymous", access)
        return web.json_response({"token": token, "access_token": token, "expires_in": 300})

    def start(self) -> TokenServer:
        app = web.Application()
        app.router.add_get("/token", self._token)
        app.router.add_post("/token", self._token)
        self.app = ThreadedApp(app).start()
        return self

    def stop(self) -> None:
        if self.app is not None:
            self.app.stop()


# ------------------------------------------------------------------ the registry


@dataclass
class Registry:
    """docker-registry on 127.0.0.1: plain HTTP, or TLS with `tls`; htpasswd auth with
    `users` or token auth with `token`. It binds port 0 and says in its log which port it
    got (no race with a port picked beforehand). Storage and log live in `directory`.

    Use as `Registry(dir).start()` ... `.stop()`, or `with Registry(dir) as registry:`."""

    directory: Path
    tls: TLSFiles | None = None
    users: dict[str, str] | None = None  # htpasswd auth
    token: TokenServer | None = None  # token auth
    host: str = ""  # 127.0.0.1:<port>, once started
    process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return int(self.host.rpartition(":")[2])

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def log(self) -> Path:
        return self.directory / "registry.log"

    def _config(self) -> Path:
        lines = [
            "version: 0.1",
            "log:", "  level: info", "  formatter: text", "  accesslog:", "    disabled: true",
            "storage:", f"  filesystem:\n    rootdirectory: {self.directory / 'storage'}",
            "  delete:\n    enabled: true",
            "  maintenance:\n    uploadpurging:\n      enabled: false",
            "http:", "  addr: 127.0.0.1:0", "  secret: imagecache-test-secret",
        ]
        if self.tls:
            lines += ["  tls:", f"    certificate: {self.tls.cert}", f"    key: {self.tls.key}"]
        if self.users is not None:
            htpasswd = self.directory / "htpasswd"
            htpasswd.write_text("".join(htpasswd_line(u, p) for u, p in self.users.items()))
            lines += ["auth:", "  htpasswd:", "    realm: imagecache-test", f"    path: {htpasswd}"]
        elif self.token is not None:
            lines += ["auth:", "  token:", f"    realm: {self.token.realm}",
                      f"    service: {self.token.service}", f"    issuer: {self.token.issuer}",
                      f"    rootcertbundle: {self.token.bundle}"]
        config = self.directory / "config.yml"
        config.write_text("\n".join(lines) + "\n")
        return config

    def start(self) -> Registry:
        missing = missing_tools("docker-registry")
        if missing:
            raise RuntimeError(missing)
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self._config()
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(["docker-registry", "serve", str(config)],
                                            stdout=log, stderr=subprocess.STDOUT)
        try:
            self.host = wait_for_line(self.log, r"listening on (127\.0\.0\.1:\d+)",
                                      self.process, 15)
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
        self.process = None

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    def requests(self) -> list[str]:
        """`METHOD URI` of every request the registry logged, in order."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            # logrus quotes a value only when it has to (a digest's colon, say).
            uri = re.search(r'http\.request\.uri=(?:"([^"]*)"|(\S+))', line)
            method = re.search(r"http\.request\.method=(\w+)", line)
            if uri and method and "response completed" in line:
                out.append(f"{method.group(1)} {uri.group(1) or uri.group(2)}")
        return out

    def client(self, user: str | None = None, password: str | None = None) -> Pusher:
        ctx = ssl.create_default_context(cafile=str(self.tls.ca_cert)) if self.tls else None
        return Pusher(self.url, ctx, user, password)


# ------------------------------------------------------------------ layers, images, indexes


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return sha256(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data),
                **extra}


@dataclass(frozen=True)
class Image:
    manifest: Blob  # media type = the manifest's
    config: Blob
    layers: tuple[Blob, ...]

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def blobs(self) -> tuple[Blob, ...]:
        """What the manifest refers to: layers and config."""
        return (*self.layers, self.config)


@dataclass(frozen=True)
class Index:
    manifest: Blob
    images: tuple[Image, ...]

    @property
    def digest(self) -> str:
        return self.manifest.digest


def random_bytes(size: int, seed: int) -> bytes:
    """Incompressible, reproducible data (so a layer's size is what it says)."""
    return random.Random(seed).randbytes(size)


def layer_of(files: dict[str, bytes], compress: bool = True,
             media_type: str = OCI_LAYER_GZIP) -> Blob:
    """A tar(.gz) layer holding `files`, byte-for-byte reproducible."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    body = raw.getvalue()
    if compress:  # level 1: the test data is random or tiny, more effort buys nothing
        return Blob(media_type, gzip.compress(body, compresslevel=1, mtime=0))
    return Blob(OCI_LAYER_TAR if media_type == OCI_LAYER_GZIP else media_type, body)


def layer(seed: int, size: int, compress: bool = True, media_type: str = OCI_LAYER_GZIP) -> Blob:
    """A layer holding one file of `size` bytes of seeded random data."""
    return layer_of({f"data/file-{seed}.bin": random_bytes(size, seed)}, compress, media_type)


def sparse_layer_file(path: Path, size: int) -> tuple[str, int]:
    """An uncompressed tar layer holding one `size`-byte file of zeros, written sparse (cheap
    to create); returns (digest, blob size). For memory and throughput checks of big layers."""
    info = tarfile.TarInfo("data/big.bin")
    info.size, info.mtime, info.mode = size, 0, 0o644
    header = info.tobuf(format=tarfile.PAX_FORMAT)
    padded = -(-size // 512) * 512
    total = len(header) + padded + 1024  # two zero blocks end the archive
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(total)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest(), total


def image(layers: list[Blob], arch: str = "amd64", os_name: str = "linux",
          docker: bool = False, variant: str = "") -> Image:
    config_doc: dict[str, Any] = {
        "architecture": arch, "os": os_name,
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers",
                   "diff_ids": [sha256(gzip.decompress(b.data) if b.media_type.endswith(
                       "gzip") else b.data) for b in layers]},
    }
    if variant:
        config_doc["variant"] = variant
    config = Blob(DOCKER_CONFIG if docker else OCI_CONFIG, json.dumps(config_doc).encode())
    media = DOCKER_MANIFEST if docker else OCI_MANIFEST
    if docker:  # Docker v2s2 manifests name their layers with Docker media types
        layers = [Blob(DOCKER_LAYER, b.data) if b.media_type == OCI_LAYER_GZIP else b
                  for b in layers]
    doc = {"schemaVersion": 2, "mediaType": media, "config": config.descriptor(),
           "layers": [b.descriptor() for b in layers]}
    return Image(Blob(media, json.dumps(doc, indent=2).encode()), config, tuple(layers))


def index(images: list[Image], docker: bool = False) -> Index:
    media = DOCKER_LIST if docker else OCI_INDEX
    entries = []
    for img in images:
        cfg = json.loads(img.config.data)
        platform = {"architecture": cfg["architecture"], "os": cfg["os"]}
        if cfg.get("variant"):
            platform["variant"] = cfg["variant"]
        entries.append(img.manifest.descriptor(platform=platform))
    doc = {"schemaVersion": 2, "mediaType": media, "manifests": entries}
    return Index(Blob(media, json.dumps(doc, indent=2).encode()), tuple(images))


# ------------------------------------------------------------------ pushing


class Pusher:
    """Minimal blocking distribution client for pushing test content (Basic or Bearer)."""

    def __init__(self, url: str, ctx: ssl.SSLContext | None, user: str | None,
                 password: str | None) -> None:
        self.url, self.ctx, self.user, self.password = url, ctx, user, password
        self._auth: dict[str, str] = {}

    def _basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()

    def request(self, method: str, path: str, repo: str, data: bytes | IO[bytes] | None = None,
                headers: dict[str, str] | None = None, timeout: float = 60,
                ) -> tuple[int, CIMultiDict[str], bytes]:
        url = path if path.startswith("http") else self.url + path
        for _ in range(3):
            hdrs = dict(headers or {})
            if repo in self._auth:
                hdrs["Authorization"] = self._auth[repo]
            status, answer, body = fetch(url, method, hdrs, data, self.ctx, timeout)
            if status != 401:
                return status, answer, body
            challenge = parse_www_authenticate(answer.get("WWW-Authenticate", ""))[0]
            if challenge.scheme == "basic":
                self._auth[repo] = self._basic()
                continue
            query = urllib.parse.urlencode({"service": challenge.params.get("service", ""),
                                            "scope": f"repository:{repo}:pull,push"})
            status, _, body = fetch(f"{challenge.params['realm']}?{query}",
                                    headers={"Authorization": self._basic()})
            assert status == 200, (status, body)
            self._auth[repo] = "Bearer " + json.loads(body)["token"]
        raise RuntimeError(f"{method} {url}: still unauthorized")

    def _upload(self, repo: str, digest: str, data: bytes | IO[bytes], size: int,
                timeout: float = 60) -> None:
        status, headers, body = self.request("POST", f"/v2/{repo}/blobs/uploads/", repo, b"")
        assert status == 202, (status, body)
        location = headers["Location"]
        if not location.startswith("http"):
            location = self.url + location
        sep = "&" if "?" in location else "?"
        status, _, body = self.request(
            "PUT", f"{location}{sep}digest={digest}", repo, data,
            {"Content-Type": "application/octet-stream", "Content-Length": str(size)}, timeout)
        assert status == 201, (status, body)

    def push_blob(self, repo: str, blob: Blob) -> None:
        status, _, _ = self.request("HEAD", f"/v2/{repo}/blobs/{blob.digest}", repo)
        if status != 200:
            self._upload(repo, blob.digest, blob.data, len(blob.data))

    def push_blob_file(self, repo: str, path: Path, digest: str) -> None:
        """Push a blob too big for memory, streamed from a file."""
        with open(path, "rb") as f:
            self._upload(repo, digest, f, path.stat().st_size, timeout=600)

    def push_manifest(self, repo: str, ref: str, manifest: Blob) -> None:
        status, _, body = self.request("PUT", f"/v2/{repo}/manifests/{ref}", repo,
                                       manifest.data, {"Content-Type": manifest.media_type})
        assert status == 201, (status, body)

    def push_image(self, repo: str, tag: str, img: Image) -> None:
        for blob in img.blobs:
            self.push_blob(repo, blob)
        self.push_manifest(repo, tag, img.manifest)

    def push_index(self, repo: str, tag: str, idx: Index) -> None:
        for img in idx.images:
            self.push_image(repo, img.digest, img)
        self.push_manifest(repo, tag, idx.manifest)


# ------------------------------------------------------------------ running the builder


def docker_config(path: Path, entries: dict[str, tuple[str, str]]) -> Path:
    """Write a .dockerconfigjson with `auth` entries {key: (user, password)}."""
    auths = {k: {"auth": base64.b64encode(f"{u}:{p}".encode()).decode()}
             for k, (u, p) in entries.items()}
    path.write_text(json.dumps({"auths": auths}))
    return path


def builder_args(out: Path, term: Path, images: Iterable[str], *extra: str, name: str = "c",
                 retries: int | None = 1, delay: float = 0.05) -> list[str]:
    """`imagecache build` arguments; retries=None leaves the builder's own retry defaults."""
    args = ["--name", name, "--output", str(out), "--termination-log", str(term)]
    if retries is not None:
        args += ["--retries", str(retries), "--retry-delay", str(delay)]
    for ref in images:
        args += ["--image", ref]
    return [*args, *extra]


def run_builder(out: Path, term: Path, images: Sequence[str], *extra: str, name: str = "c",
                retries: int | None = 1, delay: float = 0.05,
                ) -> tuple[int, BuildResult | BuildError]:
    """The builder's main() in this process: (exit code, its termination message)."""
    from webhook.builder.command import main
    from webhook.core.build_result import decode_build_result

    code = main(builder_args(out, term, images, *extra, name=name, retries=retries, delay=delay))
    return code, decode_build_result(term.read_text(), requested=list(images))
