"""The node snapshotter's test parts: `imagecache snapshotter serve` as a process, a private
containerd 1.6 whose CRI plugin uses it (proxy plugin), and the CRI image and runtime
services over gRPC, used as the kubelet uses them (pull, run a pod sandbox, create, start,
exec). Nothing stands in for a part: each is the real program.
"""

from __future__ import annotations

import contextlib
import importlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import mirror_testkit
from registry_fixture import main_command, repo_env, stop_process

DATA = Path(__file__).parent / "data"
SERVING = '"msg":"serving on unix://'


def cri_runtime_modules(workdir: Path) -> tuple[ModuleType, ModuleType, ModuleType, ModuleType]:
    """(image messages, image stubs, runtime messages, runtime stubs), generated now."""
    from grpc_tools import protoc  # type: ignore[import-untyped]

    out = workdir / "cri_gen"
    out.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    code = protoc.main(["grpc_tools.protoc", f"-I{DATA}", f"-I{include}", f"--python_out={out}",
                        f"--grpc_python_out={out}", str(DATA / "mirror_cri_api.proto"),
                        str(DATA / "cri_runtime_api.proto")])
    if code != 0:
        raise RuntimeError("grpc_tools.protoc failed on tests/data/cri_runtime_api.proto")
    sys.path.insert(0, str(out))
    try:
        return tuple(importlib.import_module(m) for m in (  # type: ignore[return-value]
            "mirror_cri_api_pb2", "mirror_cri_api_pb2_grpc", "cri_runtime_api_pb2",
            "cri_runtime_api_pb2_grpc"))
    finally:
        sys.path.remove(str(out))


class SnapshotterProcess:
    """`imagecache snapshotter serve` (webhook.snapshotter.command.main) as its own process.
    Without an apiserver to prove a disk's origin, it trusts every disk (`--disk-origin any`)
    unless `extra` says otherwise (tests/test_snapshotter_origin.py)."""

    def __init__(self, root: Path, disks_root: Path, socket: Path, log: Path,
                 *extra: str) -> None:
        origin = () if "--disk-origin" in extra else ("--disk-origin", "any")
        self.args = ["serve", "--socket", str(socket), "--root", str(root), "--disks-root",
                     str(disks_root), *origin, *extra]
        self.log = log
        self.socket = socket
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        before = self.text().count(SERVING)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(main_command("webhook.snapshotter.command", self.args),
                                         stdout=out, stderr=subprocess.STDOUT, env=repo_env())
        deadline = time.monotonic() + 60
        while not (self.text().count(SERVING) > before and self.socket.exists()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"snapshotter exited {self.proc.returncode}: "
                                   f"{self.text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("snapshotter did not start within 60s")
            time.sleep(0.05)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def stop(self) -> int:
        assert self.proc is not None
        return stop_process(self.proc)


class Containerd(mirror_testkit.Containerd):
    """containerd with its own root, state and socket; CRI uses the `imagecache` proxy
    snapshotter at `snapshotter_socket`, pulls through hosts.toml files in `certs_d`, and
    runs pods with `sandbox_image`."""

    def __init__(self, workdir: Path, certs_d: Path, snapshotter_socket: Path,
                 sandbox_image: str, snapshotter: str = "imagecache") -> None:
        super().__init__(
            workdir, certs_d, snapshotter=snapshotter, boot_seconds=60,
            proxy=f"""[proxy_plugins]
  [proxy_plugins.imagecache]
    type = "snapshot"
    address = "{snapshotter_socket}"
""",
            cri=f"""  sandbox_image = "{sandbox_image}"
  # This machine may not lower oom_score_adj (the sandbox's -998): keep containerd's own.
  restrict_oom_score_adj = true
""",
            cri_containerd="    disable_snapshot_annotations = false\n",
        )


def plain_http_hosts(certs_d: Path, host: str) -> None:
    """hosts.toml that makes containerd reach `host` over plain HTTP."""
    (certs_d / host).mkdir(parents=True, exist_ok=True)
    (certs_d / host / "hosts.toml").write_text(
        f'server = "http://{host}"\n[host."http://{host}"]\n  capabilities = ["pull", "resolve"]\n')


class Cri:
    """The CRI image and runtime services of a containerd, as the kubelet calls them."""

    def __init__(self, socket: Path, workdir: Path) -> None:
        import grpc

        self.ipb, istubs, self.rpb, rstubs = cri_runtime_modules(workdir)
        self.channel = grpc.insecure_channel(f"unix://{socket}")
        self.images = istubs.ImageServiceStub(self.channel)
        self.runtime = rstubs.RuntimeServiceStub(self.channel)
        self.logs = workdir / "pod-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self._sandboxes: list[str] = []

    def pull(self, image: str, timeout: float = 300) -> str:
        request = self.ipb.PullImageRequest(image=self.ipb.ImageSpec(image=image))
        return str(self.images.PullImage(request, timeout=timeout).image_ref)

    def remove_image(self, image: str) -> None:
        self.images.RemoveImage(self.ipb.RemoveImageRequest(image=self.ipb.ImageSpec(
            image=image)), timeout=60)

    def image_present(self, image: str) -> bool:
        request = self.ipb.ImageStatusRequest(image=self.ipb.ImageSpec(image=image))
        return bool(self.images.ImageStatus(request, timeout=30).image.id)

    def _host_namespaces(self) -> Any:
        return self.rpb.NamespaceOption(network=self.rpb.NODE, pid=self.rpb.CONTAINER,
                                        ipc=self.rpb.POD)

    def sandbox_config(self, name: str, uid: str) -> Any:
        return self.rpb.PodSandboxConfig(
            metadata=self.rpb.PodSandboxMetadata(name=name, uid=uid, namespace="default"),
            log_directory=str(self.logs / uid),
            linux=self.rpb.LinuxPodSandboxConfig(
                security_context=self.rpb.LinuxSandboxSecurityContext(
                    namespace_options=self._host_namespaces())))

    def run_pod(self, name: str, uid: str) -> tuple[str, Any]:
        config = self.sandbox_config(name, uid)
        (self.logs / uid).mkdir(exist_ok=True)
        sandbox = self.runtime.RunPodSandbox(self.rpb.RunPodSandboxRequest(config=config),
                                             timeout=300).pod_sandbox_id
        self._sandboxes.append(sandbox)
        return str(sandbox), config

    def start_container(self, sandbox: tuple[str, Any], name: str, image: str,
                        command: list[str], uid: str = "") -> str:
        sandbox_id, config = sandbox
        labels = {"io.kubernetes.pod.uid": uid or config.metadata.uid,
                  "io.kubernetes.container.name": name}
        container = self.rpb.ContainerConfig(
            metadata=self.rpb.ContainerMetadata(name=name), image=self.ipb.ImageSpec(image=image),
            command=command, labels=labels, log_path=f"{name}.log",
            linux=self.rpb.LinuxContainerConfig(security_context=(
                self.rpb.LinuxContainerSecurityContext(
                    namespace_options=self._host_namespaces()))))
        cid = self.runtime.CreateContainer(self.rpb.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=container, sandbox_config=config),
            timeout=300).container_id
        self.runtime.StartContainer(self.rpb.StartContainerRequest(container_id=cid),
                                    timeout=120)
        return str(cid)

    def exec(self, container: str, cmd: list[str]) -> tuple[int, str]:
        reply = self.runtime.ExecSync(self.rpb.ExecSyncRequest(container_id=container, cmd=cmd,
                                                               timeout=60), timeout=90)
        return int(reply.exit_code), (reply.stdout + reply.stderr).decode(errors="replace")

    def remove_pods(self) -> None:
        for sandbox in self._sandboxes:
            self.runtime.StopPodSandbox(self.rpb.StopPodSandboxRequest(pod_sandbox_id=sandbox),
                                        timeout=120)
            self.runtime.RemovePodSandbox(self.rpb.RemovePodSandboxRequest(
                pod_sandbox_id=sandbox), timeout=120)
        self._sandboxes.clear()

    def close(self) -> None:
        self.channel.close()


@contextlib.contextmanager
def cri_of(containerd: Containerd, snapshotter: SnapshotterProcess,
           workdir: Path) -> Iterator[Cri]:
    """CRI on `containerd`; on the way out the pods are removed, then containerd and the
    snapshotter stopped, whatever failed."""
    cri = Cri(containerd.socket, workdir)
    try:
        yield cri
    finally:
        try:
            cri.remove_pods()
        finally:
            cri.close()
            containerd.stop()
            snapshotter.stop()
