"""A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager.

Started the way controller-runtime's envtest does it: the binaries come from the directory
named by KUBEBUILDER_ASSETS (`hack/envtest-setup.sh` lays it out; README.md says where the
binaries come from). Each process runs in its own process group with its log in the temp dir, so a
failed start prints what the process said and teardown leaves nothing running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("IMAGECACHE_SHARED", str(REPO_ROOT.parent / "shared")))
SNAPSHOT_CRDS = SHARED / "testdata" / "crds"
IMAGECACHE_CRD = REPO_ROOT / "charts" / "imagecache" / "crds" / "imagecache.dev_imagecaches.yaml"
SKIP_REASON = "KUBEBUILDER_ASSETS is not set: the real kube-apiserver tests need it (see README)"
KUBECTL = os.environ.get("KUBECTL", shutil.which("kubectl") or "/usr/bin/kubectl")

_START_ATTEMPTS = 3  # a free port can be taken by a parallel test run between pick and bind
_READY_TIMEOUT = 60.0
_STOP_GRACE = 5.0


class ControlPlaneError(RuntimeError):
    """The control plane did not start; the message holds the tails of the process logs."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(_STOP_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(_STOP_GRACE)


def die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the test process dies, however it dies
    (a SIGKILLed pytest runs no teardown; its control plane must not outlive it)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _spawn(name: str, argv: Sequence[str], workdir: Path) -> _Process:
    log = workdir / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            start_new_session=True,  # its own process group: killpg takes its children too
            preexec_fn=die_with_parent,
        )
    return _Process(name, popen, log)


def _write_service_account_keys(workdir: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (workdir / "sa.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    (workdir / "sa.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def write_kubeconfig(path: Path, url: str, token: str, ca_file: Path, user: str = "admin") -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "envtest", "cluster": {"server": url, "certificate-authority": str(ca_file)}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": user}}],
        "current-context": "envtest",
    }
    path.write_text(yaml.safe_dump(config))


@dataclass
class ControlPlane:
    """A running control plane. `kubeconfig` works for kubectl and kubernetes_asyncio."""

    url: str
    token: str
    ca_file: Path
    kubeconfig: Path
    workdir: Path
    etcd_url: str = ""
    _processes: list[_Process] = field(default_factory=list, repr=False)

    async def api_client(self) -> Any:
        """A configured `kubernetes_asyncio.client.ApiClient` (close it, or `async with` it)."""
        from kubernetes_asyncio import client, config

        configuration = client.Configuration()
        await config.load_kube_config(
            config_file=str(self.kubeconfig), client_configuration=configuration
        )
        return client.ApiClient(configuration)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `kubectl --kubeconfig ... ARGS`; with check, a failure raises with its stderr."""
        result = subprocess.run(
            [KUBECTL, "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stderr}{result.stdout}"
            )
        return result

    def apply_file(self, path: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
        return self.kubectl("apply", "-f", str(path))

    def apply(self, manifest: dict[str, Any] | str) -> subprocess.CompletedProcess[str]:
        """Apply one manifest given as a dict or YAML text."""
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        return self.kubectl("apply", "-f", "-", input=text)

    def compact_etcd(self) -> int:
        """Compact etcd's history up to now (what the apiserver does every 5 minutes), so
        that watches from older resourceVersions get 410 Gone. Returns the revision."""
        import json as _json

        def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            request = urllib.request.Request(
                self.etcd_url + path, data=_json.dumps(body).encode(), method="POST"
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                answer: dict[str, Any] = _json.loads(response.read())
                return answer

        revision = int(post("/v3/kv/range", {"key": "AA=="})["header"]["revision"])
        post("/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ({p.log}) ---\n{_tail(p.log)}" for p in self._processes)

    def stop(self) -> None:
        # Reverse order: the controller-manager and apiserver need etcd while shutting down.
        for process in reversed(self._processes):
            process.stop()


def _https_get(url: str, token: str, ca_file: Path) -> int:
    if ca_file.exists():
        context = ssl.create_default_context(cafile=str(ca_file))
    else:  # the apiserver writes its self-signed certificate only once it starts serving
        context = ssl._create_unverified_context()
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=5) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code


def _wait_ready(plane: ControlPlane, deadline: float) -> None:
    last = "no answer yet"
    while time.monotonic() < deadline:
        for process in plane._processes:
            if not process.alive():
                raise ControlPlaneError(
                    f"{process.name} exited with {process.popen.returncode}\n{plane.logs()}"
                )
        try:
            status = _https_get(f"{plane.url}/readyz", plane.token, plane.ca_file)
            if status == 200 and plane.ca_file.exists():
                return
            last = f"HTTP {status}"
        except (OSError, ssl.SSLError) as error:
            last = str(error)
        time.sleep(0.3)
    raise ControlPlaneError(f"kube-apiserver not ready: {last}\n{plane.logs()}")


def _etcd_data_dir(workdir: Path) -> Path:
    # etcd fsyncs every write: on tmpfs the tests run several times faster than on disk.
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        data = Path(tempfile.mkdtemp(prefix="imagecache-etcd-", dir=shm))
        (workdir / "etcd-data-dir").write_text(str(data))
        return data
    return workdir / "etcd"


def _remove_etcd_data(workdir: Path) -> None:
    for marker in workdir.glob("*/etcd-data-dir"):
        shutil.rmtree(marker.read_text(), ignore_errors=True)


def _apiserver_argv(assets: Path, workdir: Path, etcd_url: str, port: int) -> list[str]:
    """kube-apiserver on 127.0.0.1:`port`, its certificates in `workdir`/certs, the tokens
    and service-account keys of `workdir`."""
    return [
        str(assets / "kube-apiserver"),
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        "--advertise-address=127.0.0.1",
        f"--cert-dir={workdir / 'certs'}",
        f"--token-auth-file={workdir / 'tokens.csv'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={workdir / 'sa.pub'}",
        f"--service-account-signing-key-file={workdir / 'sa.key'}",
        "--authorization-mode=RBAC",
        "--service-cluster-ip-range=10.0.0.0/24",
        "--feature-gates=GenericEphemeralVolume=true",
        "--allow-privileged=true",
    ]


@contextlib.contextmanager
def second_apiserver(plane: ControlPlane, assets: Path) -> Iterator[tuple[ControlPlane, int]]:
    """Another kube-apiserver on the same etcd (as in an HA control plane), for tests that
    pause one apiserver while the other serves. Yields a ControlPlane view of it (its own
    URL, certificate and kubeconfig; the same token) and its process id."""
    workdir = Path(tempfile.mkdtemp(prefix="apiserver-", dir=plane.workdir))
    for name in ("tokens.csv", "sa.pub", "sa.key"):
        shutil.copy(plane.workdir / name, workdir / name)
    port = free_port()
    other = ControlPlane(
        url=f"https://127.0.0.1:{port}",
        token=plane.token,
        ca_file=workdir / "certs" / "apiserver.crt",
        kubeconfig=workdir / "kubeconfig",
        workdir=workdir,
        etcd_url=plane.etcd_url,
    )
    write_kubeconfig(other.kubeconfig, other.url, plane.token, other.ca_file)
    process = _spawn(
        "kube-apiserver",
        _apiserver_argv(assets.absolute(), workdir, plane.etcd_url, port),
        workdir,
    )
    other._processes.append(process)
    try:
        _wait_ready(other, time.monotonic() + _READY_TIMEOUT)
        yield other, process.popen.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, signal.SIGCONT)  # a paused one cannot stop
        other.stop()


def _start_once(assets: Path, workdir: Path, controller_manager: bool) -> ControlPlane:
    token = os.urandom(16).hex()
    (workdir / "tokens.csv").write_text(f"{token},admin,admin,system:masters\n")
    _write_service_account_keys(workdir)
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    certs = workdir / "certs"
    plane = ControlPlane(
        url=f"https://127.0.0.1:{api_port}",
        token=token,
        ca_file=certs / "apiserver.crt",
        kubeconfig=workdir / "kubeconfig",
        workdir=workdir,
        etcd_url=f"http://127.0.0.1:{etcd_port}",
    )
    write_kubeconfig(plane.kubeconfig, plane.url, token, plane.ca_file)
    etcd_url = plane.etcd_url
    try:
        plane._processes.append(
            _spawn(
                "etcd",
                [
                    str(assets / "etcd"),
                    "--data-dir", str(_etcd_data_dir(workdir)),
                    "--listen-client-urls", etcd_url,
                    "--advertise-client-urls", etcd_url,
                    "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                ],
                workdir,
            )
        )  # fmt: skip
        plane._processes.append(
            _spawn("kube-apiserver", _apiserver_argv(assets, workdir, etcd_url, api_port), workdir)
        )
        _wait_ready(plane, time.monotonic() + _READY_TIMEOUT)
        if controller_manager:
            plane._processes.append(
                _spawn(
                    "kube-controller-manager",
                    [
                        str(assets / "kube-controller-manager"),
                        f"--kubeconfig={plane.kubeconfig}",
                        f"--service-account-private-key-file={workdir / 'sa.key'}",
                        f"--root-ca-file={plane.ca_file}",
                        "--leader-elect=false",
                        "--bind-address=127.0.0.1",
                        "--secure-port=0",
                        "--port=0",
                        "--feature-gates=GenericEphemeralVolume=true",
                        # The default 20 requests/s makes the Job and garbage collectors the
                        # slowest part of any test that makes more than a few objects.
                        "--kube-api-qps=200",
                        "--kube-api-burst=400",
                        "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,"
                        "-service,-route,-attachdetach,-persistentvolume-binder,"
                        "-persistentvolume-expander",
                    ],
                    workdir,
                )
            )
    except BaseException:
        plane.stop()
        raise
    return plane


def _etcd_or_port_clash(error: ControlPlaneError) -> bool:
    text = str(error)
    return "address already in use" in text or "bind:" in text


def _install_crds(plane: ControlPlane) -> None:
    files = sorted(SNAPSHOT_CRDS.glob("*.yaml"))
    if not files:
        raise ControlPlaneError(f"no VolumeSnapshot CRDs in {SNAPSHOT_CRDS}")
    if IMAGECACHE_CRD.exists():
        files.append(IMAGECACHE_CRD)
    names: list[str] = []
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                names.append(doc["metadata"]["name"])
    deadline = time.monotonic() + 30
    while True:  # right after /readyz the CRD endpoints can still answer 503 for a moment
        result = plane.kubectl(*sum((["-f", str(p)] for p in files), ["apply"]), check=False)
        if result.returncode == 0:
            break
        if time.monotonic() > deadline:
            raise ControlPlaneError(f"installing CRDs failed:\n{result.stderr}\n{plane.logs()}")
        time.sleep(0.5)
    plane.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        *(f"crd/{name}" for name in names),
    )  # fmt: skip


def start_control_plane(
    assets: Path, workdir: Path | None = None, controller_manager: bool = True
) -> ControlPlane:
    """Start the plane in `workdir` (a new temp dir by default) and install the CRDs."""
    assets = assets.absolute()
    for binary in ["etcd", "kube-apiserver"] + (["kube-controller-manager"] * controller_manager):
        if not os.access(assets / binary, os.X_OK):
            raise ControlPlaneError(
                f"{assets / binary} is missing or not executable: run hack/envtest-setup.sh"
            )
    base = workdir or Path(tempfile.mkdtemp(prefix="imagecache-envtest-"))
    last_error: ControlPlaneError | None = None
    for attempt in range(_START_ATTEMPTS):
        attempt_dir = base / f"attempt-{attempt}"
        attempt_dir.mkdir(parents=True)
        try:
            plane = _start_once(assets, attempt_dir, controller_manager)
        except ControlPlaneError as error:
            last_error = error
            if _etcd_or_port_clash(error):
                continue
            raise
        try:
            _install_crds(plane)
        except BaseException:
            plane.stop()
            raise
        return plane
    assert last_error is not None
    raise last_error


def _running_cmdlines() -> str:
    lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            lines.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return "\n".join(lines)


def _sweep_stale(min_age: float = 120.0) -> None:
    """Remove what a SIGKILLed run of this fixture left: its temp dir and etcd data, once no
    running process names them (its processes died with it, see die_with_parent)."""
    running = _running_cmdlines()
    now = time.time()
    candidates = [*Path(tempfile.gettempdir()).glob("imagecache-envtest-*")]
    candidates += [*Path("/dev/shm").glob("imagecache-etcd-*")]
    for path in candidates:
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > min_age and str(path) not in running:
                shutil.rmtree(path, ignore_errors=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def control_plane(assets: Path, keep_workdir: bool = False) -> Iterator[ControlPlane]:
    _sweep_stale()
    workdir = Path(tempfile.mkdtemp(prefix="imagecache-envtest-"))
    plane: ControlPlane | None = None
    # SIGTERM (e.g. `timeout`) as Ctrl-C: pytest then still runs the teardown below.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        plane = start_control_plane(assets, workdir)
        yield plane
    finally:
        if plane is not None:
            plane.stop()
        _remove_etcd_data(workdir)
        if not keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
