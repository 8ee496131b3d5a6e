"""A real single-node Kubernetes for the node tests: started with the shared `node-up.sh`,
always stopped with `node-down.sh`; registries on the node's bridge; images pushed with skopeo.

Where things are (environment variables):
  IMAGECACHE_NODE_SCRIPTS   node-up.sh, node-down.sh, mk-local-image.py (default
                            $IMAGECACHE_SHARED/node, i.e. <repo>/../shared/node)
  IMAGECACHE_NODE_DIR       the node's directory (default /dev/shm/imagecache-node-<BASE>)
  IMAGECACHE_NODE_BASEPORT  first of the node's ports (default: the first free block from 23000)
  IMAGECACHE_NODE_KEEP=1    leave the node running after the session (to look around)
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from envtest import KUBECTL, REPO_ROOT, SHARED

SCRIPTS = Path(os.environ.get("IMAGECACHE_NODE_SCRIPTS", str(SHARED / "node")))
SNAPSHOT_CRDS = SHARED / "testdata" / "crds"
ADMIN_TOKEN = "admintoken"  # node-up.sh's static token (system:masters)
NODE_NAME = "127.0.0.1"
IMAGECACHE = str(Path(sys.executable).parent / "imagecache")  # the worktree's console script
# Offsets from BASE: node-up uses +0..+4; these are the test's own listeners.
PUBLIC_REGISTRY, AUTH_REGISTRY, MIRROR_PORT, METRICS_PORT = 10, 11, 12, 13
SNAPSHOTTER_METRICS = 14
BLOCK = 20  # ports per node
T = TypeVar("T")
Obj = dict[str, Any]


class NodeError(RuntimeError):
    """The node (or something on it) did not do what the test waited for; says what and why."""


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_base() -> int:
    fixed = os.environ.get("IMAGECACHE_NODE_BASEPORT")
    if fixed:
        return int(fixed)
    for base in range(23000, 23900, BLOCK):
        if (
            all(_free(base + i) for i in range(BLOCK))
            and not Path(f"/sys/class/net/kn{base}").exists()
        ):
            return base
    raise NodeError("no free block of 20 ports in 23000-23900 for the node")


def run(
    argv: list[str],
    *,
    timeout: float = 300,
    check: bool = True,
    env: dict[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        input=input,
    )
    if check and done.returncode != 0:
        raise NodeError(
            f"{' '.join(argv[:4])}... exited {done.returncode}:\n"
            f"{done.stderr[-3000:]}\n{done.stdout[-2000:]}"
        )
    return done


def eventually(
    what: str,
    probe: Callable[[], T | None],
    timeout: float = 120,
    interval: float = 0.5,
    explain: Callable[[], str] | None = None,
) -> T:
    """probe() until it returns something other than None/False, within a bounded deadline;
    on timeout raise NodeError naming `what` and, if given, what explain() says."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        try:
            value = probe()
            if value is not None and value is not False:
                return value
        except (NodeError, urllib.error.URLError, OSError, KeyError, ValueError) as exc:
            last_error = f" (last error: {exc})"
        if time.monotonic() > deadline:
            more = ""
            if explain is not None:
                with contextlib.suppress(Exception):
                    more = "\n" + explain()
            raise NodeError(f"timed out after {timeout:.0f}s waiting for {what}{last_error}{more}")
        time.sleep(interval)


@dataclass
class Api:
    """The node's kube-apiserver over HTTPS with the admin token (stdlib only, so a background
    thread such as the CSI stand-in can use it too)."""

    port: int
    ctx: ssl.SSLContext = field(default_factory=ssl._create_unverified_context)

    def call(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"https://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": content_type},
        )
        with urllib.request.urlopen(request, context=self.ctx, timeout=60) as answer:
            text = answer.read()
        return json.loads(text) if text else None

    def get(self, path: str) -> Obj | None:
        try:
            return self.call("GET", path)  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def items(self, path: str) -> list[Obj]:
        listed = self.get(path)
        return list((listed or {}).get("items") or [])

    def create(self, path: str, obj: Obj) -> Obj | None:
        try:
            return self.call("POST", path, obj)  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            if exc.code == 409:
                return None
            raise

    def merge_patch(self, path: str, patch: Obj) -> Obj:
        return self.call("PATCH", path, patch, "application/merge-patch+json")  # type: ignore[no-any-return]

    def delete(self, path: str) -> None:
        with contextlib.suppress(urllib.error.HTTPError):
            self.call("DELETE", path)


@dataclass
class Registry:
    """A Debian docker-registry on the node's bridge address (reachable from the host, i.e.
    containerd, and from pods alike), plain HTTP, optionally behind htpasswd."""

    name: str
    host: str  # GW:PORT, what image references and the ImageCache name
    log: Path
    user: str | None = None
    password: str | None = None

    def push(self, archive: Path, repository: str) -> str:
        """skopeo copy an OCI archive to HOST/repository; returns the manifest digest."""
        creds = ["--dest-creds", f"{self.user}:{self.password}"] if self.user else []
        run(
            [
                "skopeo",
                "copy",
                "-q",
                "--dest-tls-verify=false",
                *creds,
                f"oci-archive:{archive}",
                f"docker://{self.host}/{repository}",
            ]
        )
        return str(self.inspect(repository)["Digest"])

    def layers(self, repository: str) -> list[str]:
        return list(self.inspect(repository)["Layers"])

    def chain_ids(self, repository: str) -> list[str]:
        """The chain IDs of the image's layers (what containerd names their snapshots)."""
        config = json.loads(
            run(
                [
                    "skopeo",
                    "inspect",
                    "--config",
                    "--tls-verify=false",
                    *self._creds(),
                    f"docker://{self.host}/{repository}",
                ]
            ).stdout
        )
        chains: list[str] = []
        for diff in config["rootfs"]["diff_ids"]:
            chains.append(
                diff
                if not chains
                else "sha256:" + hashlib.sha256(f"{chains[-1]} {diff}".encode()).hexdigest()
            )
        return chains

    def _creds(self) -> list[str]:
        return ["--creds", f"{self.user}:{self.password}"] if self.user else []

    def inspect(self, repository: str) -> dict[str, Any]:
        argv = ["skopeo", "inspect", "--tls-verify=false", *self._creds()]
        return json.loads(run([*argv, f"docker://{self.host}/{repository}"]).stdout)  # type: ignore[no-any-return]

    def mark(self) -> int:
        """Position in the access log, to count requests made after it."""
        return self.log.stat().st_size if self.log.exists() else 0

    def blob_gets(self, since: int, repository: str) -> list[str]:
        with self.log.open("rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        needle = f'"GET /v2/{repository}/blobs/'
        return [line for line in text.splitlines() if needle in line]


class Node:
    """One node from node-up.sh: DIR, ports, kubectl/ctr/helm bound to it."""

    def __init__(self, base: int, directory: Path) -> None:
        self.base = base
        self.dir = directory
        self.kubeconfig = directory / "kubeconfig"
        self.api = Api(base)
        self.gateway = ""
        self.image_tag = "dev"

    # --- lifecycle ---------------------------------------------------------------------------

    def up(self, extra_images: Iterable[Path] = ()) -> None:
        env = {"EXTRA_IMAGES": " ".join(str(p) for p in extra_images)}
        run(
            ["bash", str(SCRIPTS / "node-up.sh"), str(self.dir), str(self.base)],
            timeout=600,
            env=env,
        )
        self.gateway = (self.dir / "gateway").read_text().strip()
        # The CNI plugin gives the bridge its gateway address with the first pod; registries on
        # that address must bind before, so give it now (the plugin accepts an existing one).
        bridge = (self.dir / "bridge").read_text().strip()
        if self.gateway not in run(["ip", "-4", "addr", "show", "dev", bridge]).stdout:
            run(["ip", "addr", "add", f"{self.gateway}/24", "dev", bridge])

    def restart_containerd(self, timeout: float = 120) -> None:
        """Stop containerd by DIR/containerd.pid and start it again with node-up.sh's command
        line, as `systemctl restart containerd` does on a real node. Not node-up.sh itself: it
        writes config.toml afresh at every start, which would undo the CRI switch that
        `imagecache snapshotter configure` made in it, where a real node's unit keeps its
        /etc/containerd/config.toml. The new pid goes into the pid file (node-down.sh stops it)
        and the log is appended to DIR/containerd.log. Running containers survive (their shims
        are their own processes). Returns once the new containerd answers on its socket."""
        pidfile = self.dir / "containerd.pid"
        pid = int(pidfile.read_text().strip())
        if not _is_ours(pid, self.dir):
            raise NodeError(f"{pidfile} names pid {pid}, which is not this node's containerd")
        os.kill(pid, signal.SIGTERM)
        eventually(f"containerd (pid {pid}) to stop", lambda: not _is_ours(pid, self.dir), 60, 0.2)
        config = self.dir / "containerd" / "config.toml"
        log = self.dir / "containerd.log"
        # exactly node-up.sh's `start containerd`: detached (bash exits, so init reaps it)
        run(
            [
                "bash",
                "-c",
                'setsid nsenter --mount="$1/ns/mnt" -- containerd --config "$2" '
                '>> "$3" 2>&1 < /dev/null & echo $! > "$1/containerd.pid"',
                "restart",
                str(self.dir),
                str(config),
                str(log),
            ]
        )
        sock = self.dir / "containerd" / "containerd.sock"
        eventually(
            "containerd to answer after its restart",
            lambda: run(["ctr", "-a", str(sock), "version"], check=False).returncode == 0,
            timeout,
            0.2,
            explain=lambda: log.read_text(errors="replace")[-3000:],
        )

    def use_snapshotter(
        self, name: str, images: Iterable[Path], proxy_socket: Path | None = None
    ) -> None:
        """Point the node's CRI at snapshotter `name` as an operator would on a real node:
        `imagecache snapshotter configure` edits config.toml in place (the proxy plugin goes
        into conf.d), containerd restarts (restart_containerd), and the local images (pause,
        busybox and `images`) are imported again for that snapshotter: what was unpacked for
        another one is not seen by it. Waits for the node to be Ready again."""
        conf = self.dir / "containerd"
        argv = [IMAGECACHE, "snapshotter", "configure", "--containerd-config",
                str(conf / "config.toml"), "--snapshotter", name]  # fmt: skip
        if proxy_socket is not None:
            argv += ["--socket", str(proxy_socket),
                     "--drop-in", str(conf / "conf.d" / "imagecache.toml")]  # fmt: skip
        run(argv)
        self.restart_containerd()
        if self.cri_snapshotter() != name:
            raise NodeError(f"containerd's CRI snapshotter is {self.cri_snapshotter()!r}, not "
                            f"{name!r}, after configure and restart")  # fmt: skip
        local = [self.dir / "images" / "pause.tar", self.dir / "images" / "busybox.tar"]
        for tar in (*local, *images):
            self.ctr("images", "import", "--snapshotter", name, str(tar))
        self.wait_ready()

    def cri_snapshotter(self) -> str:
        """The CRI snapshotter containerd runs with, from `containerd config dump` (what it
        reads: config.toml and its imports)."""
        config = self.dir / "containerd" / "config.toml"
        dump = tomllib.loads(run(["containerd", "--config", str(config), "config", "dump"]).stdout)
        return str(dump["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["snapshotter"])

    def wait_ready(self, timeout: float = 180) -> None:
        def ready() -> bool:
            node = self.api.get(f"/api/v1/nodes/{NODE_NAME}") or {}
            conditions = (node.get("status") or {}).get("conditions") or []
            return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

        eventually(f"node {NODE_NAME} Ready", ready, timeout, interval=0.5)

    def tag_by_digest(self, image: str, archive: Path) -> str:
        """Also name `image` by its digest (`repo:<12 hex>`), so that a chart upgrade with a
        rebuilt image rolls the pods; returns that tag."""
        digest = Path(str(archive) + ".digest").read_text().strip()
        tag = digest.split(":", 1)[1][:12]
        self.ctr("images", "tag", "--force", image, f"{image.rsplit(':', 1)[0]}:{tag}")
        self.image_tag = tag
        return tag

    def down(self) -> str:
        """Stop the node and remove its directory (on /dev/shm it holds images in memory)."""
        done = run(
            ["bash", str(SCRIPTS / "node-down.sh"), str(self.dir), "--purge"],
            timeout=600,
            check=False,
        )
        return done.stderr

    # --- tools -------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return run([KUBECTL, *args], env=self.env(), input=input, check=check, timeout=timeout)

    def apply(self, *objs: Obj) -> None:
        # one List: kubectl versions differ on "---" between JSON documents
        text = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)})
        self.kubectl("apply", "-f", "-", input=text)

    def get(self, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        ns = ["-n", namespace] if namespace else []
        done = self.kubectl("get", kind, name, *ns, "-o", "json", check=False)
        if done.returncode != 0:
            if "NotFound" in done.stderr:
                return None
            raise NodeError(done.stderr)
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    def list(self, kind: str, namespace: str | None = None, selector: str = "") -> list[Obj]:
        ns = ["-n", namespace] if namespace else ["-A"]
        sel = ["-l", selector] if selector else []
        done = self.kubectl("get", kind, *ns, *sel, "-o", "json")
        return list(json.loads(done.stdout).get("items") or [])

    def helm(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        binary = str(REPO_ROOT / ".tools" / "bin" / "helm")
        if not os.access(binary, os.X_OK):
            binary = shutil.which("helm") or "helm"
        return run([binary, *args], env=self.env(), timeout=timeout)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        sock = self.dir / "containerd" / "containerd.sock"
        return run(["ctr", "-a", str(sock), "-n", "k8s.io", *args], check=check)

    def in_node(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command in the node's mount namespace (where pod volumes are mounted)."""
        return run(["nsenter", f"--mount={self.dir}/ns/mnt", "--", *argv], check=check)

    def describe(self, kind: str, name: str, namespace: str | None = None) -> str:
        ns = ["-n", namespace] if namespace else []
        return self.kubectl("describe", kind, name, *ns, check=False).stdout[-4000:]

    def events(self, namespace: str, name: str) -> list[Obj]:
        return [
            e
            for e in self.list("events", namespace)
            if (e.get("involvedObject") or {}).get("name") == name
        ]

    # --- registries and images ---------------------------------------------------------------

    def registry(self, name: str, offset: int, users: dict[str, str] | None = None) -> Registry:
        """docker-registry on GW:BASE+offset; node-down.sh stops it (pid file registry-NAME.pid)."""
        host = f"{self.gateway}:{self.base + offset}"
        cfg = self.dir / f"registry-{name}.yml"
        log = self.dir / f"registry-{name}.log"
        pidf = self.dir / f"registry-{name}.pid"
        store = self.dir / f"registry-{name}"
        store.mkdir(exist_ok=True)
        lines = [
            "version: 0.1",
            "log: {level: info, formatter: text}",
            "storage:",
            f"  filesystem: {{rootdirectory: {store}}}",
            "  delete: {enabled: true}",
            f"http: {{addr: '{host}'}}",
        ]
        user = password = None
        if users:
            from registry_fixture import htpasswd_line

            (self.dir / f"registry-{name}.htpasswd").write_text(
                "".join(htpasswd_line(u, p) for u, p in users.items())
            )
            lines += [
                "auth:",
                "  htpasswd:",
                "    realm: imagecache-node-test",
                f"    path: {self.dir}/registry-{name}.htpasswd",
            ]
            user, password = next(iter(users.items()))
        cfg.write_text("\n".join(lines) + "\n")
        alive = pidf.exists() and Path(f"/proc/{pidf.read_text().strip()}").exists()
        if not alive:
            with log.open("ab") as out:
                proc = subprocess.Popen(
                    ["docker-registry", "serve", str(cfg)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            pidf.write_text(str(proc.pid))

        def answers() -> bool:
            try:
                urllib.request.urlopen(f"http://{host}/v2/", timeout=2)
            except urllib.error.HTTPError as exc:
                return exc.code == 401
            return True

        eventually(
            f"registry {name} on {host}",
            answers,
            timeout=30,
            explain=lambda: log.read_text()[-2000:],
        )
        return Registry(name, host, log, user, password)

    def make_image(
        self,
        name: str,
        out: Path,
        *,
        layers: int = 2,
        mib: int = 4,
        salt: str = "",
        src: str = "/usr/share/doc",
    ) -> Path:
        """A runnable image (busybox + real files) as an OCI archive, from mk-local-image.py."""
        if not out.exists():
            run(
                [
                    "python3",
                    str(SCRIPTS / "mk-local-image.py"),
                    "filler",
                    "--name",
                    name,
                    "--out",
                    str(out),
                    "--layers",
                    str(layers),
                    "--mib",
                    str(mib),
                    "--src",
                    src,
                    "--salt",
                    salt or name,
                ],
                timeout=900,
            )
        return out

    def forget_image(
        self,
        ref: str,
        blobs: Iterable[str],
        chains: Sequence[str],
        timeout: float = 120,
        snapshotter: str = "overlayfs",
    ) -> None:
        """Make the next pod of `ref` really pull and unpack it: remove the image's names, the
        containers of it that no longer run (what the kubelet's GC would do later) and its
        layer snapshots, and wait until none of `blobs` (manifest and layers) is left in the
        content store and none of `chains` (its layers' chain IDs) among the snapshots: with
        a layer's snapshot left, containerd would neither fetch nor unpack that layer."""
        repo = ref.split("@")[0].rsplit(":", 1)[0]
        wanted = set(blobs)

        def gone() -> bool:
            running = {
                line.split()[0]
                for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]
                if "RUNNING" in line
            }
            for line in self.ctr("containers", "ls").stdout.splitlines()[1:]:
                cid, image = line.split()[:2]
                if image.startswith(repo) and cid not in running:
                    self.ctr("tasks", "rm", "-f", cid, check=False)
                    self.ctr("containers", "rm", cid, check=False)
            # CRI also names an image by its config digest: find every name by its target too
            listed = [line.split()[:3] for line in self.ctr("images", "ls").stdout.splitlines()[1:]]
            names = [
                name
                for name, _, target in listed
                if name.startswith((repo + ":", repo + "@")) or target in wanted
            ]
            if names:
                self.ctr("images", "rm", "--sync", *names, check=False)
            for chain in reversed(chains):  # children first
                self.ctr("snapshots", "--snapshotter", snapshotter, "rm", chain, check=False)
            listed_snapshots = self.ctr("snapshots", "--snapshotter", snapshotter, "ls").stdout
            snapshots = {
                line.split()[0]
                for line in listed_snapshots.splitlines()[1:]
                if line.strip()
            }
            content = set(self.ctr("content", "ls", "-q").stdout.split())
            return not (wanted & content or set(chains) & snapshots)

        def left() -> str:
            return "\n".join(
                [
                    self.ctr("images", "ls").stdout,
                    self.ctr("snapshots", "--snapshotter", snapshotter, "ls").stdout,
                    "in the content store: " + " ".join(wanted & set(
                        self.ctr("content", "ls", "-q").stdout.split()
                    )),
                ]
            )  # fmt: skip

        eventually(
            f"containerd to forget {ref} (no blob of it in the content store, no layer snapshot)",
            gone,
            timeout,
            interval=1,
            explain=left,
        )

    def pull_secret(self, namespace: str, name: str, registry: Registry) -> Obj:
        auth = base64.b64encode(f"{registry.user}:{registry.password}".encode()).decode()
        config = {
            "auths": {
                registry.host: {
                    "username": registry.user,
                    "password": registry.password,
                    "auth": auth,
                }
            }
        }
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": name, "namespace": namespace},
            "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
        }

    # --- waiting -------------------------------------------------------------------------------

    def wait_pods(
        self,
        namespace: str,
        selector: str,
        count: int,
        phase: str = "Running",
        timeout: float = 180,
        ready: bool = True,
    ) -> list[Obj]:
        def probe() -> list[Obj] | None:
            pods = [
                p
                for p in self.list("pods", namespace, selector)
                if not p["metadata"].get("deletionTimestamp")
            ]
            good = [
                p
                for p in pods
                if (p.get("status") or {}).get("phase") == phase
                and (not ready or phase != "Running" or _ready(p))
            ]
            return good if len(good) >= count else None

        def explain() -> str:
            out = self.kubectl(
                "get", "pods", "-n", namespace, "-l", selector, "-o", "wide", check=False
            ).stdout
            pods = self.list("pods", namespace, selector)
            if pods:
                out += self.describe("pod", pods[0]["metadata"]["name"], namespace)
            return out

        return eventually(
            f"{count} pod(s) {selector} {phase} in {namespace}", probe, timeout, explain=explain
        )

    def wait_deleted(
        self, kind: str, name: str, namespace: str | None = None, timeout: float = 120
    ) -> None:
        eventually(
            f"{kind} {name} deleted", lambda: self.get(kind, name, namespace) is None, timeout
        )


def _is_ours(pid: int, directory: Path) -> bool:
    """node-up.sh's `alive`: a live process whose command line mentions the node's DIR."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return f"{directory}/".encode() in cmdline.replace(b"\0", b" ")


def _ready(pod: Obj) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def node_affinity() -> Obj:
    return {
        "required": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]}
                    ]
                }
            ]
        }
    }


def local_pv(
    name: str, path: Path, storage_class: str, size: str = "100Gi", claim: Obj | None = None
) -> Obj:
    spec: Obj = {
        "capacity": {"storage": size},
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": storage_class,
        "persistentVolumeReclaimPolicy": "Retain",
        "local": {"path": str(path)},
        "nodeAffinity": node_affinity(),
    }
    if claim is not None:
        spec["claimRef"] = claim
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": {"imagecache-test/pv": "true"}},
        "spec": spec,
    }
