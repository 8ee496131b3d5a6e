"""Admission webhook benchmark, one command:

    .venv/bin/python bench/admission_bench.py [--runs 3] [--duration 5] [--json out.json]

1. Serving: AdmissionReviews per second and p50/p99 latency over TLS with keep-alive, at
   concurrency 1, 16 and 64, for `imagecache serve` and, in the same run, for a bare aiohttp
   TLS handler that parses the same body and returns a fixed answer. Every request carries
   a uid of its own, as the apiserver sends them. Each server is its own
   process pinned to one core (os.sched_setaffinity); the load generator (wrk, else an
   aiohttp client) runs pinned to another. Runs are interleaved (bare, webhook, bare, ...)
   so that other load on the machine hits both alike; the tables show medians.
2. Matching: time of one decision and of a whole review() with 10 ... 10,000 caches in the
   index: each cache with images of its own; every cache also holding one of the pod's
   images; every cache holding all of them; and the same, each cache usable only from its
   own namespace (CASES).

This is the micro view; what a pod CREATE feels end to end is bench/pod_create_bench.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SERVER_CACHES = 1000  # caches in the served index
POD_IMAGES = ["nginx:1.25", "busybox:1.36"]


# --- inputs ---------------------------------------------------------------------------------


UID = "0b7e9d4e-1f0c-4c86-9d2b-6f3a0e1c2b3a"
WORKLOADS = {
    "replicas": "every request a new uid: the pods of one workload (same template, namespace)",
}


def review_body(uid: str = UID, namespace: str = "shop") -> bytes:
    """A Pod CREATE review like the apiserver sends (about 4 KiB, opted in with `auto`)."""
    pod = {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "generateName": "web-7d4b9c-",
            "namespace": "shop",
            "labels": {"app": "web", "pod-template-hash": "7d4b9c"},
            "annotations": {"imagecache.dev/use-image-cache": "auto"},
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c",
                 "uid": "5c0e6f0e-0000-4000-8000-000000000001", "controller": True,
                 "blockOwnerDeletion": True}
            ],
            "managedFields": [
                {"manager": "kube-controller-manager", "operation": "Update",
                 "apiVersion": "v1", "time": "2026-11-27T22:51:02Z", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                              "f:spec": {f"f:field{i}": {} for i in range(40)}}}
            ],
        },
        "spec": {
            "volumes": [{"name": "kube-api-access", "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
            "initContainers": [{"name": "init", "image": "busybox:1.36",
                                "command": ["sh", "-c", "true"]}],
            "containers": [
                {"name": "web", "image": "nginx:1.25",
                 "ports": [{"containerPort": 80, "protocol": "TCP"}],
                 "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                 "volumeMounts": [{"name": "kube-api-access",
                                   "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                                   "readOnly": True}],
                 "imagePullPolicy": "IfNotPresent"}
            ],
            "restartPolicy": "Always",
            "serviceAccountName": "default",
        },
        "status": {},
    }  # fmt: skip
    review = {
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }  # fmt: skip
    return json.dumps(review).encode()


KINDS = {
    "bare": "the peer: a bare aiohttp TLS handler (web.Application, one route) that parses the "
    "same body with json.loads and returns a fixed answer",
    "shell": "`imagecache serve` with the core's review() swapped for a canned answer (after "
    "the same json.loads): the server without the decision",
    "webhook": "`imagecache serve` as shipped",
}
CASES = {
    "own": "each cache holds images of its own; one holds the pod's",
    "shared": "every cache also holds the pod's init image (busybox): all are candidates",
    "all": "every cache holds every one of the pod's images: all are hits, order decides",
    "namespaced": "as `all`, but each cache is usable from its own namespace only, and the "
    "pod's namespace's cache comes last in order: every other one is walked and ruled out",
}


def cache_objects(count: int, case: str = "own") -> list[dict[str, Any]]:
    """`count` Ready caches; exactly one (`match`) holds every pod image, except in case
    `all`, where every cache does (see CASES)."""
    objects = []
    for n in range(count - 1):
        images = [f"registry.example.com/team{n % 97}/app{n}:v{n % 13}"]
        if case == "shared":
            images.append(POD_IMAGES[1])
        elif case in ("all", "namespaced"):
            images += POD_IMAGES
        namespaces = [f"team{n}"] if case == "namespaced" else None
        objects.append(_cache(f"cache-{n:05d}", images, namespaces))
    objects.append(_cache("match", POD_IMAGES, ["shop"] if case == "namespaced" else None))
    return objects


def _cache(name: str, images: list[str], namespaces: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"images": images, "imageCacheSize": 20}
    if namespaces:
        spec["namespaces"] = namespaces
    copies = [{"namespace": n, "snapshotName": f"imagecache-{name}", "readyToUse": True}
              for n in namespaces or ["shop"]]  # fmt: skip
    return {
        "apiVersion": "imagecache.dev/v1alpha1",
        "kind": "ImageCache",
        "metadata": {"name": name, "creationTimestamp": "2026-01-10T00:00:00Z"},
        "spec": spec,
        "status": {"phase": "Ready", "restoreSize": "20Gi", "namespaces": copies},
    }


def write_inputs(workdir: Path) -> None:
    import yaml

    from certs.command import main as certs_main

    with contextlib.redirect_stdout(io.StringIO()):
        assert certs_main(["generate", "--out", str(workdir), "--ip", "127.0.0.1"]) == 0
    (workdir / "body.json").write_bytes(review_body())
    # The load generators fill in @UID@ and @NS@ for each request (WORKLOADS).
    (workdir / "template.json").write_bytes(review_body("@UID@", "@NS@"))
    (workdir / "caches.yaml").write_text(
        yaml.safe_dump_all(cache_objects(SERVER_CACHES))
    )


# --- servers (child processes) --------------------------------------------------------------


def _pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def serve_webhook(workdir: Path, port: int, cpu: int | None, log_level: str = "info") -> int:
    _pin(cpu)
    from webhook.server.command import main

    return main([
        "--tls-cert", str(workdir / "tls.crt"), "--tls-key", str(workdir / "tls.key"),
        "--listen", f"127.0.0.1:{port}", "--caches", str(workdir / "caches.yaml"),
        "--log-level", log_level,  # info, the default, writes one JSON line per decision
    ])  # fmt: skip


def serve_shell(workdir: Path, port: int, cpu: int | None, log_level: str = "info") -> int:
    """`imagecache serve` with the core's review() swapped for a canned answer (after the same
    json.loads): what the shell itself costs over the bare handler. Bench-only patch."""
    import webhook.server.app as app_module
    from webhook.core.caches import CacheIndex
    from webhook.server.core.review import ReviewResult, review

    body = (workdir / "body.json").read_bytes()
    index = CacheIndex.from_objects(cache_objects(10))
    canned = review(body, index, now=datetime.now(UTC))

    def canned_review(
        data: bytes, _index: object, *, now: datetime, default_auto: bool = False
    ) -> ReviewResult:
        json.loads(data)
        return canned

    app_module.__dict__["review"] = canned_review
    return serve_webhook(workdir, port, cpu, log_level)


FIXED_ANSWER = json.dumps(
    {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
     "response": {"uid": UID, "allowed": True}}
).encode()  # fmt: skip


def peer_context(workdir: Path) -> ssl.SSLContext:
    """The webhook's TLS settings, for the peers."""
    from webhook.server.tls import new_context

    context = new_context()
    context.load_cert_chain(workdir / "tls.crt", workdir / "tls.key")
    return context


def serve_bare(workdir: Path, port: int, cpu: int | None) -> int:
    """The floor: same TLS settings, parse the body as JSON, answer a fixed review."""
    _pin(cpu)
    from aiohttp import web

    answer = FIXED_ANSWER

    async def mutate(request: web.Request) -> web.Response:
        json.loads(await request.read())
        return web.Response(body=answer, content_type="application/json")

    from peer import run_bare_peer

    return run_bare_peer(mutate, port, peer_context(workdir))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    def __init__(self, kind: str, workdir: Path, cpu: int | None, log_level: str) -> None:
        self.kind = kind
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, __file__, f"_serve-{kind}", str(workdir), str(self.port),
             log_level, "" if cpu is None else str(cpu)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self.url = f"https://127.0.0.1:{self.port}/mutate"
        self._wait_ready(workdir)

    def _wait_ready(self, workdir: Path) -> None:
        from tests.https_probe import https_ok

        deadline = time.monotonic() + 30
        while True:
            if https_ok(f"https://127.0.0.1:{self.port}/readyz", workdir / "ca.crt"):
                return
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit(f"the {self.kind} server did not start")
            time.sleep(0.1)

    def check_answer(self, workdir: Path) -> dict[str, Any]:
        from peer import post_json

        return post_json(self.url, (workdir / "body.json").read_bytes(), workdir / "ca.crt")

    def cpu_seconds(self) -> float:
        """User + system CPU the server process has used so far (from /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- load generators --------------------------------------------------------------------------


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def run_wrk(
    url: str, template: Path, workload: str, concurrency: int, duration: int, cpu: int | None
) -> dict[str, float]:
    script = template.with_name(f"{workload}.lua")
    namespace = '"shop"'
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'local f = io.open("{template}", "rb")\nlocal template = f:read("*a")\nf:close()\n'
        "local n = 0\n"
        "request = function()\n"
        "  n = n + 1\n"
        '  local uid = string.format("0b7e9d4e-1f0c-4c86-9d2b-%012x", n)\n'
        f'  local body = template:gsub("@UID@", uid):gsub("@NS@", {namespace})\n'
        "  return wrk.format(nil, nil, nil, body)\n"
        "end\n"
    )
    result = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True, preexec_fn=lambda: _pin(cpu),
    )  # fmt: skip
    out = result.stdout

    def latency(pct: str) -> float:
        match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if match is None:
            raise SystemExit(f"cannot read the {pct}% latency from wrk:\n{out}")
        return float(match.group(1)) * _UNITS[match.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if rps is None:
        raise SystemExit(f"cannot read requests/sec from wrk:\n{out}")
    if errors or socket_errors:
        raise SystemExit(f"the load run had errors:\n{out}")
    done = re.search(r"(\d+) requests in", out)
    assert done is not None, out
    return {"rps": float(rps.group(1)), "p50_ms": latency("50"), "p99_ms": latency("99"),
            "requests": float(done.group(1))}  # fmt: skip


def run_python_client(
    url: str, template: Path, workload: str, concurrency: int, duration: int, cpu: int | None
) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, __file__, "_client", url, str(template), workload, str(concurrency),
         str(duration), "" if cpu is None else str(cpu)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    measured: dict[str, float] = json.loads(result.stdout)
    return measured


def python_client(
    url: str, template: Path, workload: str, concurrency: int, duration: float, cpu: int | None
) -> int:
    """Fallback load generator: aiohttp with a keep-alive pool of `concurrency` connections."""
    _pin(cpu)
    import aiohttp

    head, _, rest = template.read_bytes().partition(b"@UID@")
    middle, _, tail = rest.partition(b"@NS@")
    latencies: list[float] = []
    errors = 0
    sent = 0

    def body() -> bytes:
        nonlocal sent
        sent += 1
        namespace = "shop"
        return b"".join([head, f"0b7e9d4e-1f0c-4c86-9d2b-{sent:012x}".encode(), middle,
                         namespace.encode(), tail])  # fmt: skip

    async def worker(session: aiohttp.ClientSession, until: float) -> None:
        nonlocal errors
        while time.perf_counter() < until:
            start = time.perf_counter()
            headers = {"Content-Type": "application/json"}
            async with session.post(url, data=body(), headers=headers) as response:
                await response.read()
                if response.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - start)

    async def main() -> float:
        context = ssl.create_default_context(cafile=str(template.parent / "ca.crt"))
        connector = aiohttp.TCPConnector(ssl=context, limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            start = time.perf_counter()
            await asyncio.gather(*(worker(session, start + duration) for _ in range(concurrency)))
            return time.perf_counter() - start

    elapsed = asyncio.run(main())
    if errors:
        raise SystemExit(f"{errors} requests failed")
    latencies.sort()
    print(json.dumps({
        "rps": len(latencies) / elapsed,
        "requests": len(latencies),
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
    }))  # fmt: skip
    return 0


# --- matching -------------------------------------------------------------------------------


def _per_call(fn: Callable[[], object]) -> float:
    """Microseconds per call: best of 5 repeats (the least disturbed by other load)."""
    import timeit

    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=5, number=number)) / number * 1e6


def bench_matching(sizes: list[int], cpu: int | None) -> list[dict[str, Any]]:
    _pin(cpu)
    from webhook.core.caches import CacheIndex
    from webhook.server.core.matching import decide, read_request
    from webhook.server.core.review import review

    body = review_body()
    now = datetime(2026, 11, 27, tzinfo=UTC)
    wanted = read_request({"imagecache.dev/use-image-cache": "auto"})
    rows = []
    for case in CASES:
        for size in sizes:
            index = CacheIndex.from_objects(cache_objects(size, case))
            # Case `all`: equal sizes and ages, so the first name in order wins.
            expected = "cache-00000" if case == "all" and size > 1 else "match"
            decision = decide(POD_IMAGES, "shop", wanted, index, now)
            assert decision.outcome == "hit" and decision.cache, decision
            assert decision.cache.name == expected, decision.cache.name
            result = review(body, index, now=now, default_auto=False)
            assert result.decision == "hit", result.body

            rows.append({
                "caches": size,
                "case": case,
                "decide_us": _per_call(partial(decide, POD_IMAGES, "shop", wanted, index, now)),
                "review_us": _per_call(partial(review, body, index, now=now)),
            })  # fmt: skip
    return rows


# --- the run --------------------------------------------------------------------------------


def cpus() -> tuple[int | None, int | None]:
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        print("warning: one CPU only; server and load generator share it", file=sys.stderr)
        return available[0], available[0]
    return available[0], available[1]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per point (median reported)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--client", choices=["wrk", "python"], default=None,
                        help="load generator (default: wrk if installed)")  # fmt: skip
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"],
                        help="the webhook's --log-level (info: a line per decision)")
    parser.add_argument("--skip-serving", action="store_true")
    parser.add_argument("--skip-matching", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    client = args.client or ("wrk" if shutil.which("wrk") else "python")
    load = run_wrk if client == "wrk" else run_python_client
    server_cpu, client_cpu = cpus()
    results: dict[str, Any] = {"client": client, "cpus": [server_cpu, client_cpu]}

    if not args.skip_serving:
        load_before = os.getloadavg()
        with tempfile.TemporaryDirectory(prefix="imagecache-bench-") as tmp:
            workdir = Path(tmp)
            write_inputs(workdir)
            servers = {
                kind: Server(kind, workdir, server_cpu, args.log_level)
                for kind in KINDS
            }
            try:
                answer = servers["webhook"].check_answer(workdir)
                assert answer["response"]["auditAnnotations"]["cache"] == "match", answer
                samples: dict[tuple[str, str, int], list[dict[str, float]]] = {}
                template = workdir / "template.json"
                points = [("replicas", c) for c in args.concurrency]
                for server in servers.values():  # warm up
                    load(server.url, template, "replicas", 16, 1, client_cpu)
                for _ in range(args.runs):
                    for workload, concurrency in points:
                        for kind, server in servers.items():
                            cpu = server.cpu_seconds()
                            measured = load(
                                server.url, template, workload, concurrency, args.duration,
                                client_cpu,
                            )  # fmt: skip
                            cpu = server.cpu_seconds() - cpu
                            measured["cpu_us"] = cpu / measured.pop("requests") * 1e6
                            samples.setdefault((workload, kind, concurrency), []).append(measured)
                            print(f"  {workload:8} {kind:8} c={concurrency:<3} {measured}",
                                  file=sys.stderr)  # fmt: skip
            finally:
                for server in servers.values():
                    server.stop()
        serving = []
        for workload, concurrency in points:
            row: dict[str, Any] = {"workload": workload, "concurrency": concurrency}
            for kind in servers:
                runs = samples[(workload, kind, concurrency)]
                for key in ("rps", "p50_ms", "p99_ms", "cpu_us"):
                    row[f"{kind}_{key}"] = statistics.median(r[key] for r in runs)
            row["ratio"] = row["webhook_rps"] / row["bare_rps"]
            row["shell_ratio"] = row["shell_rps"] / row["bare_rps"]
            serving.append(row)
        results["serving"] = serving
        load_after = os.getloadavg()
        results["loadavg"] = [load_before, load_after]
        print(f"\nServing ({client}, {args.runs} runs x {args.duration:g} s, medians; "
              f"servers on CPU {server_cpu}, load on CPU {client_cpu}, {SERVER_CACHES} caches "
              f"in the index, --log-level {args.log_level}; load average "
              f"{load_before[0]:.2f} before, {load_after[0]:.2f} after).\n")
        for kind, text in KINDS.items():
            print(f"- {kind}: {text}")
        for workload, text in WORKLOADS.items():
            print(f"- workload {workload}: {text}")
        print("\n| workload | concurrency | bare req/s | webhook req/s | webhook / bare "
              "| shell / bare | bare p50 / p99 ms | webhook p50 / p99 ms |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for row in serving:
            print(f"| {row['workload']} | {row['concurrency']} | {row['bare_rps']:.0f} "
                  f"| {row['webhook_rps']:.0f} | **{row['ratio']:.0%}** "
                  f"| {row['shell_ratio']:.0%} "
                  f"| {row['bare_p50_ms']:.2f} / {row['bare_p99_ms']:.2f} "
                  f"| {row['webhook_p50_ms']:.2f} / {row['webhook_p99_ms']:.2f} |")
        print("\nServer CPU per request (µs, from /proc: user + system; other load on the "
              "machine disturbs it less than throughput)\n")
        print("| workload | concurrency | bare | shell | webhook | webhook - bare "
              "| bare / webhook |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for row in serving:
            bare, shell, hook = (row[k + "_cpu_us"] for k in KINDS)
            print(f"| {row['workload']} | {row['concurrency']} | {bare:.1f} "
                  f"| {shell:.1f} | {hook:.1f} | {hook - bare:.1f} | {bare / hook:.0%} |")

    if not args.skip_matching:
        rows = bench_matching(args.sizes, client_cpu)
        results["matching"] = rows
        print("\nMatching (one call, best of 5 repeats; µs). Cases: "
              + "; ".join(f"{case}: {text}" for case, text in CASES.items()) + "\n")
        print("| caches | " + " | ".join(f"decide, {c}" for c in CASES) + " | "
              + " | ".join(f"review(), {c}" for c in CASES) + " |")
        print("|---:|" + "---:|" * (2 * len(CASES)))
        by = {(r["caches"], r["case"]): r for r in rows}
        for size in args.sizes:
            cells = [f"{by[(size, c)]['decide_us']:.1f}" for c in CASES]
            cells += [f"{by[(size, c)]['review_us']:.1f}" for c in CASES]
            print(f"| {size:,} | " + " | ".join(cells) + " |")  # fmt: skip

    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        command, *rest = sys.argv[1:]
        cpu = int(rest[-1]) if rest[-1] else None
        if command == "_serve-webhook":
            sys.exit(serve_webhook(Path(rest[0]), int(rest[1]), cpu, rest[2]))
        if command == "_serve-shell":
            sys.exit(serve_shell(Path(rest[0]), int(rest[1]), cpu, rest[2]))
        if command == "_serve-bare":
            sys.exit(serve_bare(Path(rest[0]), int(rest[1]), cpu))
        if command == "_client":
            sys.exit(python_client(rest[0], Path(rest[1]), rest[2], int(rest[3]), float(rest[4]),
                                   cpu))  # fmt: skip
        raise SystemExit(f"unknown internal command {command}")
    sys.exit(main(sys.argv[1:]))
