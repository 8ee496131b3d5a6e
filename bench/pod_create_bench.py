"""Pod CREATE latency through a real kube-apiserver, one command:

    KUBEBUILDER_ASSETS=$PWD/.envtest .venv/bin/python bench/pod_create_bench.py \
        [--rounds 3] [--pods 300] [--webhook-src DIR] [--json out.json]

What a user feels of the webhook is not its microseconds but what it adds to each pod CREATE.
This starts etcd and kube-apiserver (the envtest binaries, as the tests do), registers a
MutatingWebhookConfiguration (caBundle, failurePolicy Fail so that no failure hides) with one
entry per peer, each selected by a namespace label, and creates pods one after another on a
kept-alive HTTPS connection, timing each POST:

- none: a namespace no webhook entry selects (the apiserver's own cost);
- bare: a bare aiohttp TLS handler (web.Application, one route) that parses the review and
  answers the very same response the webhook gives this pod (patch, audit annotations), its
  uid swapped in: the peer of issue 10.9;
- webhook: `imagecache serve` watching the ImageCache in the apiserver.

The pod opts in with `auto` and hits a Ready cache with a ready copy in each namespace. Rounds
are interleaved (none, bare, webhook, then the order rotated) so that other load on the
machine hits all alike. Printed: median and p99 per peer over all rounds, and what each
webhook adds over `none`. `--webhook-src DIR` serves the webhook from another source tree
(e.g. an older commit, `git archive COMMIT | tar -x -C DIR`) to compare versions.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from envtest import control_plane, free_port  # noqa: E402
from peer import post_json, run_bare_peer  # noqa: E402

PEERS = ("none", "bare", "webhook")
IMAGES = {"busybox:1.36": "sha256:" + "b" * 64, "nginx:1.25": "sha256:" + "a" * 64}
CACHE = "bench-web"


def namespace_of(peer: str) -> str:
    return f"bench-{peer}"


def cache_object() -> dict[str, Any]:
    return {
        "apiVersion": "imagecache.dev/v1alpha1",
        "kind": "ImageCache",
        "metadata": {"name": CACHE},
        "spec": {"images": list(IMAGES)},
    }


def cache_status() -> dict[str, Any]:
    """Ready, built from IMAGES, with a ready copy in every benchmark namespace."""
    return {
        "phase": "Ready",
        "restoreSize": "20Gi",
        "storageClassName": "standard",
        "images": [
            {"image": f"docker.io/library/{image}", "digest": digest, "size": 1}
            for image, digest in IMAGES.items()
        ],
        "namespaces": [
            {"namespace": namespace_of(p), "snapshotName": f"imagecache-{CACHE}",
             "readyToUse": True}
            for p in PEERS
        ],
    }


def pod_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-",
            "labels": {"app": "web"},
            "annotations": {"imagecache.dev/use-image-cache": "auto"},
        },
        "spec": {
            "automountServiceAccountToken": False,
            "initContainers": [{"name": "init", "image": "busybox:1.36"}],
            "containers": [{"name": "web", "image": "nginx:1.25"}],
        },
    }


def sample_review(namespace: str) -> bytes:
    """What the apiserver sends for pod_manifest() (the fields the answer depends on)."""
    pod = pod_manifest()
    pod["metadata"]["namespace"] = namespace
    return json.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "sample", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": namespace, "operation": "CREATE", "object": pod},
    }).encode()  # fmt: skip


# --- the bare peer (a child process) ------------------------------------------------------


def serve_bare(workdir: Path, port: int) -> int:
    """Parse the review, answer the webhook's response to the sample pod with this uid."""
    from aiohttp import web

    template = json.loads((workdir / "answer.json").read_text())

    async def mutate(request: web.Request) -> web.Response:
        review = json.loads(await request.read())
        answer = dict(template)
        answer["response"] = {**template["response"], "uid": review["request"]["uid"]}
        return web.json_response(answer)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(workdir / "tls.crt", workdir / "tls.key")
    return run_bare_peer(mutate, port, context)


# --- processes ------------------------------------------------------------------------------


class Server:
    def __init__(
        self, argv: list[str], port: int, workdir: Path, env: dict[str, str], cwd: Path = ROOT
    ) -> None:
        self.port = port
        self.log = workdir / f"server-{port}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=cwd, start_new_session=True,
            )  # fmt: skip
        context = ssl.create_default_context(cafile=str(workdir / "ca.crt"))
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(
                f"https://127.0.0.1:{port}/readyz", context=context, timeout=2
            ) as answer:
                if answer.status == 200:
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"server {argv} did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def post(self, workdir: Path, body: bytes) -> dict[str, Any]:
        return post_json(f"https://127.0.0.1:{self.port}/mutate", body, workdir / "ca.crt")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def configuration(workdir: Path, ports: dict[str, int]) -> dict[str, Any]:
    bundle = base64.b64encode((workdir / "ca.crt").read_bytes()).decode()
    hooks = []
    for peer, port in ports.items():
        hooks.append({
            "name": f"{peer}.bench.imagecache.dev",
            "clientConfig": {"url": f"https://127.0.0.1:{port}/mutate", "caBundle": bundle},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"bench-peer": peer}},
            "failurePolicy": "Fail", "sideEffects": "None", "timeoutSeconds": 10,
            "reinvocationPolicy": "IfNeeded", "admissionReviewVersions": ["v1"],
        })  # fmt: skip
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "imagecache-bench"},
        "webhooks": hooks,
    }


class PodClient:
    """POST pods on one kept-alive HTTPS connection to the apiserver."""

    def __init__(self, url: str, token: str, ca_file: Path) -> None:
        host, _, port = url.removeprefix("https://").partition(":")
        context = ssl.create_default_context(cafile=str(ca_file))
        self.connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=30)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.body = json.dumps(pod_manifest()).encode()

        self.retried: dict[str, int] = {}

    def create(self, namespace: str) -> tuple[float, dict[str, Any]]:
        """The time of one successful POST. The apiserver's own 500 ServerTimeout (etcd slow
        on a loaded machine) is retried, at most 3 times, and counted in `retried`."""
        for attempt in range(4):
            started = time.perf_counter()
            self.connection.request(
                "POST", f"/api/v1/namespaces/{namespace}/pods", self.body, self.headers
            )
            response = self.connection.getresponse()
            data = response.read()
            elapsed = time.perf_counter() - started
            if response.status == 201:
                pod: dict[str, Any] = json.loads(data)
                return elapsed, pod
            if response.status != 500 or b"ServerTimeout" not in data or attempt == 3:
                raise SystemExit(f"pod create in {namespace}: {response.status} {data[:500]!r}")
            self.retried[namespace] = self.retried.get(namespace, 0) + 1
        raise AssertionError("unreachable")


def check_patched(pod: dict[str, Any], peer: str) -> None:
    annotations = pod["metadata"].get("annotations") or {}
    if peer == "none":
        assert "imagecache.dev/decision" not in annotations, annotations
        return
    assert annotations.get("imagecache.dev/decision") == "hit", (peer, annotations)
    assert any(v["name"] == "imagecache" for v in pod["spec"].get("volumes", [])), peer


def comparable(pod: dict[str, Any]) -> Any:
    """What the webhook changed, for comparing the peers' pods."""
    return (pod["metadata"].get("annotations"), pod["metadata"].get("labels"),
            pod["spec"].get("volumes"), pod["spec"]["containers"],
            pod["spec"].get("initContainers"))  # fmt: skip


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


# --- the run --------------------------------------------------------------------------------


@contextlib.contextmanager
def servers(workdir: Path, plane: Any, webhook_src: Path | None) -> Iterator[dict[str, Server]]:
    env = dict(os.environ)
    source = (webhook_src or ROOT).absolute()
    env["PYTHONPATH"] = str(source)  # `-m webhook` imports from there (the cwd too)
    hook_port = free_port()
    webhook = Server(
        [sys.executable, "-m", "webhook", "serve", "--listen", f"127.0.0.1:{hook_port}",
         "--tls-cert", str(workdir / "tls.crt"), "--tls-key", str(workdir / "tls.key"),
         "--kubeconfig", str(plane.kubeconfig), "--log-level", "info"],
        hook_port, workdir, env, source,
    )  # fmt: skip
    version = subprocess.run(
        [sys.executable, "-c", "import webhook; print(webhook.__file__)"], env=env, cwd=source,
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    print(f"  webhook served from {version}", file=sys.stderr)
    running = {"webhook": webhook}
    try:
        deadline = time.monotonic() + 60
        while True:  # the watch delivers the cache's status
            answer = webhook.post(workdir, sample_review(namespace_of("webhook")))
            if answer["response"].get("auditAnnotations", {}).get("decision") == "hit":
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"the webhook does not see the cache: {answer}")
            time.sleep(0.3)
        (workdir / "answer.json").write_text(json.dumps(answer))
        bare_port = free_port()
        running["bare"] = Server(
            [sys.executable, __file__, "_serve-bare", str(workdir), str(bare_port)],
            bare_port, workdir, dict(os.environ),
        )  # fmt: skip
        yield running
    finally:
        for server in running.values():
            server.stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if not assets:
        raise SystemExit("set KUBEBUILDER_ASSETS to the envtest binaries (hack/envtest-setup.sh)")
    with tempfile.TemporaryDirectory(prefix="imagecache-podbench-") as tmp, control_plane(
        Path(assets)
    ) as plane:
        workdir = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "webhook", "certs", "generate", "--out", str(workdir),
             "--ip", "127.0.0.1"], check=True, capture_output=True,
        )  # fmt: skip
        for peer in PEERS:
            plane.kubectl("create", "namespace", namespace_of(peer))
            plane.kubectl("label", "namespace", namespace_of(peer), f"bench-peer={peer}")
        plane.apply(cache_object())
        plane.kubectl("patch", "imagecache", CACHE, "--subresource=status", "--type=merge",
                      "-p", json.dumps({"status": cache_status()}))  # fmt: skip
        with servers(workdir, plane, args.webhook_src) as running:
            ports = {peer: server.port for peer, server in running.items()}
            plane.apply(configuration(workdir, ports))
            client = PodClient(plane.url, plane.token, plane.ca_file)
            # Warm up, and wait until the apiserver calls the webhooks (its configuration
            # watch): every peer's pods come out as expected, the two webhooks' alike.
            deadline = time.monotonic() + 60
            while True:
                made = {p: client.create(namespace_of(p))[1] for p in PEERS}
                try:
                    for peer, pod in made.items():
                        check_patched(pod, peer)
                    break
                except AssertionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            if comparable(made["bare"]) != comparable(made["webhook"]):
                raise SystemExit(
                    "the peers' pods differ:\n"
                    f"{json.dumps(comparable(made['bare']))}\n"
                    f"{json.dumps(comparable(made['webhook']))}"
                )
            for peer in PEERS:
                for _ in range(20):
                    client.create(namespace_of(peer))
            client.retried.clear()
            samples: dict[str, list[list[float]]] = {p: [] for p in PEERS}
            for round_number in range(args.rounds):
                order = PEERS[round_number % 3:] + PEERS[: round_number % 3]
                for peer in order:
                    times = []
                    for _ in range(args.pods):
                        elapsed, pod = client.create(namespace_of(peer))
                        times.append(elapsed * 1000)
                    check_patched(pod, peer)
                    samples[peer].append(times)
                    print(f"  round {round_number + 1} {peer:8} median "
                          f"{statistics.median(times):.2f} ms, "
                          f"p99 {percentile(times, 0.99):.2f} ms", file=sys.stderr)  # fmt: skip
    result: dict[str, Any] = {"rounds": args.rounds, "pods": args.pods,
                              "webhook_src": str(args.webhook_src or ROOT)}  # fmt: skip
    for peer in PEERS:
        every = [t for times in samples[peer] for t in times]
        result[peer] = {
            "median_ms": statistics.median(every),
            "p99_ms": percentile(every, 0.99),
            "round_medians_ms": [statistics.median(t) for t in samples[peer]],
            "retried": client.retried.get(namespace_of(peer), 0),
        }
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pods", type=int, default=300, help="pods per peer per round")
    parser.add_argument("--webhook-src", type=Path,
                        help="serve the webhook from this source tree (default: this one)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    result = run(args)
    none = result["none"]["median_ms"]
    print(f"\nPod CREATE through kube-apiserver, {args.rounds} interleaved rounds x {args.pods} "
          f"pods per peer, one client, kept-alive connection (webhook from "
          f"{result['webhook_src']}).\n")
    print("| peer | median ms | p99 ms | added to the median vs none | round medians ms "
          "| ServerTimeouts retried |")
    print("|---|---:|---:|---:|---|---:|")
    for peer in PEERS:
        row = result[peer]
        added = "" if peer == "none" else f"{row['median_ms'] - none:+.2f} ms"
        rounds = ", ".join(f"{m:.2f}" for m in row["round_medians_ms"])
        print(f"| {peer} | {row['median_ms']:.2f} | {row['p99_ms']:.2f} | {added} | {rounds} "
              f"| {row['retried']} |")
    bare_added = result["bare"]["median_ms"] - none
    hook_added = result["webhook"]["median_ms"] - none
    if bare_added > 0:
        print(f"\nwebhook adds {hook_added / bare_added:.2f}x what the bare peer adds")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_serve-bare":
        sys.exit(serve_bare(Path(sys.argv[2]), int(sys.argv[3])))
    sys.exit(main(sys.argv[1:]))
