#!/usr/bin/env python3
"""Benchmark: `imagecache build` against `skopeo copy` pulling the same images from the same
local registry (Debian docker-registry) into an OCI layout, in the same run.

    python bench/builder_vs_skopeo.py            # multi-image set + a 2 GiB layer, 3 reps
    python bench/builder_vs_skopeo.py --big-gib 0 --reps 5

Reported per set: median wall time of each tool, the ratio (skopeo / builder: above 1 means
the builder is faster), and the peak RSS of the child (its VmHWM; see run_child). skopeo copies
one image per invocation, so it runs once per image, one after the other; its peak is the
largest of those runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from registry_fixture import (
    OCI_CONFIG,
    OCI_LAYER_TAR,
    OCI_MANIFEST,
    Blob,
    Registry,
    builder_args,
    image,
    layer,
    main_command,
    missing_tools,
    repo_env,
    sparse_layer_file,
)


def _hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """(seconds, peak RSS in KiB) of one child process.

    The peak is the child's own VmHWM, polled from /proc while it runs. ru_maxrss from
    wait4 is not used: Linux carries the parent's RSS at fork into the child's ru_maxrss
    across exec, so it would report this (big) benchmark process rather than the child.
    """
    os.sync()  # no run pays for the writeback of the one before
    start = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert child.stderr is not None
    peak = 0
    stop = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _hwm_kib(child.pid))
            stop.wait(0.005)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    err = child.stderr.read()
    child.wait()
    seconds = time.perf_counter() - start
    stop.set()
    watcher.join()
    if child.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({child.returncode}): {err.decode()[-2000:]}")
    return seconds, peak


def run_builder(refs: list[str], host: str, out: Path) -> tuple[float, int]:
    out.mkdir()
    args = builder_args(out, out.parent / "termination", refs, "--insecure-registry", host,
                        "--log-level", "WARNING", name="bench", retries=None)
    return run_child(main_command("webhook.builder.command", args), repo_env())


def run_skopeo(refs: list[str], out: Path) -> tuple[float, int]:
    total, peak = 0.0, 0
    for ref in refs:
        seconds, rss = run_child(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                                  f"docker://{ref}", f"oci:{out}:{ref}"])
        total, peak = total + seconds, max(peak, rss)
    return total, peak


def push_multi(registry: Registry, layers_per_image: int, layer_mib: int) -> tuple[list[str], int]:
    pusher = registry.client()
    base = layer(1000, 2 * layer_mib << 20, compress=False)
    refs, total = [], len(base.data)
    for n in range(4):
        layers = [base] + [layer(1000 + 10 * n + k, layer_mib << 20, compress=False)
                           for k in range(1, layers_per_image)]
        img = image(layers)
        pusher.push_image(f"bench/app{n}", "1", img)
        refs.append(f"{registry.host}/bench/app{n}:1")
        total += sum(len(b.data) for b in layers[1:])
    return refs, total


def push_big(registry: Registry, work: Path, gib: float) -> tuple[list[str], int]:
    path = work / "big-layer.tar"
    digest, size = sparse_layer_file(path, int(gib * (1 << 30)))
    pusher = registry.client()
    pusher.push_blob_file("bench/big", path, digest)
    path.unlink()
    config = Blob(OCI_CONFIG, json.dumps({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [digest]}}).encode())
    pusher.push_blob("bench/big", config)
    manifest = Blob(OCI_MANIFEST, json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.descriptor(),
        "layers": [{"mediaType": OCI_LAYER_TAR, "digest": digest, "size": size}]}).encode())
    pusher.push_manifest("bench/big", "1", manifest)
    return [f"{registry.host}/bench/big:1"], size


def measure(name: str, refs: list[str], nbytes: int, host: str, work: Path,
            reps: int) -> dict[str, object]:
    builder: list[tuple[float, int]] = []
    skopeo: list[tuple[float, int]] = []
    for rep in range(reps):
        # Alternate who goes first so that neither always gets the warmer cache.
        order = ["builder", "skopeo"] if rep % 2 == 0 else ["skopeo", "builder"]
        for tool in order:
            out = work / f"{''.join(c if c.isalnum() else '-' for c in name)}-{tool}-{rep}"
            out.mkdir()
            if tool == "builder":
                builder.append(run_builder(refs, host, out / "disk"))
            else:
                skopeo.append(run_skopeo(refs, out / "oci"))
            shutil.rmtree(out)
    b_time = statistics.median(t for t, _ in builder)
    s_time = statistics.median(t for t, _ in skopeo)
    result = {
        "set": name, "images": len(refs), "MiB": round(nbytes / 2**20, 1), "reps": reps,
        "builder_s": round(b_time, 2), "skopeo_s": round(s_time, 2),
        "speedup_skopeo_over_builder": round(s_time / b_time, 2),
        "builder_MBps": round(nbytes / b_time / 1e6, 1),
        "builder_peak_MiB": round(statistics.median(r for _, r in builder) / 1024, 1),
        "skopeo_peak_MiB": round(statistics.median(r for _, r in skopeo) / 1024, 1),
        "builder_runs_s": [round(t, 2) for t, _ in builder],
        "skopeo_runs_s": [round(t, 2) for t, _ in skopeo],
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--big-gib", type=float, default=2.0, help="0 skips the big layer")
    parser.add_argument("--layer-mib", type=int, default=16,
                        help="layer size of the multi-image set; 0 skips that set")
    args = parser.parse_args()
    missing = missing_tools("skopeo", "docker-registry")
    if missing:
        print(f"cannot run: {missing}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-builder-") as tmp:
        work = Path(tmp)
        with Registry(work / "registry") as registry:
            results = []
            if args.layer_mib > 0:
                refs, nbytes = push_multi(registry, 4, args.layer_mib)
                results.append(measure("4 images x 4 layers", refs, nbytes, registry.host,
                                       work, args.reps))
            if args.big_gib > 0:
                refs, nbytes = push_big(registry, work, args.big_gib)
                results.append(measure(f"1 layer of {args.big_gib:g} GiB", refs, nbytes,
                                       registry.host, work, args.reps))
    print()
    print("| set | builder s | skopeo s | skopeo/builder | builder MB/s | builder peak MiB "
          "| skopeo peak MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['set']} ({r['MiB']} MiB) | {r['builder_s']} | {r['skopeo_s']} | "
              f"{r['speedup_skopeo_over_builder']} | {r['builder_MBps']} | "
              f"{r['builder_peak_MiB']} | {r['skopeo_peak_MiB']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
