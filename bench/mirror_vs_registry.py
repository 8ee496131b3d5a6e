"""Node mirror vs Debian's docker-registry, same machine, same blobs, same run.

    .venv/bin/python bench/mirror_vs_registry.py [--layers 4 --layer-mib 64 --reps 5]

Builds an image of incompressible layers, pushes it to docker-registry (filesystem storage
on local disk), copies it with skopeo onto a cache disk, starts `imagecache mirror serve`,
then measures, alternating the two servers in every repetition:

- blob throughput: curl GETs of every layer, one at a time and all at once (MB/s);
- manifest latency: sequential GETs on one keep-alive connection (ms, median and p95);
- a CRI PullImage of the whole image by a fresh containerd, from the registry and through
  the mirror (seconds), when containerd can run here (root).

Prints medians as a Markdown table (docs/mirror.md quotes it); --json writes every sample.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from mirror_testkit import (  # noqa: E402
    Containerd,
    CriImages,
    MirrorProcess,
    containerd_unavailable,
    kubelet_mount,
    make_cache_disk,
)
from registry_fixture import ACCEPT_ALL, Registry, image, layer, missing_tools  # noqa: E402

from webhook.mirror.configure import configure  # noqa: E402


def curl_get(urls: list[str], parallel: bool) -> tuple[int, float]:
    """(bytes, seconds) for GETs of `urls` by one curl, one after the other on one connection
    or all at once; seconds as curl measured them (no process start-up in them)."""
    args = ["curl", "-sf", "-w", "%{size_download} %{time_total}\n"]
    if parallel:
        args += ["--parallel", "--parallel-immediate", "--parallel-max", str(len(urls))]
    for url in urls:
        args += ["-o", "/dev/null", url]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"curl failed ({proc.returncode}): {proc.stderr.strip()}")
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()]
    sizes = [int(float(size)) for size, _ in rows]
    times = [float(t) for _, t in rows]
    return sum(sizes), max(times) if parallel else sum(times)


def manifest_latencies(host: str, path: str, count: int) -> list[float]:
    address, _, port = host.rpartition(":")
    conn = http.client.HTTPConnection(address, int(port), timeout=30)
    out = []
    for _ in range(count):
        start = time.perf_counter()
        conn.request("GET", path, headers={"Accept": ACCEPT_ALL})
        response = conn.getresponse()
        response.read()
        out.append((time.perf_counter() - start) * 1000)
        if response.status != 200:
            raise RuntimeError(f"{host}{path}: {response.status}")
    conn.close()
    return out


def cri_pull(work: Path, certs: Path, image: str) -> float:
    ctd = Containerd(work, certs)
    cri = CriImages(ctd.socket, work)
    try:
        start = time.perf_counter()
        cri.pull(image, timeout=600)
        return time.perf_counter() - start
    finally:
        cri.close()
        ctd.stop()
        shutil.rmtree(work, ignore_errors=True)


def mbps(sample: tuple[int, float]) -> float:
    return sample[0] / sample[1] / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--layer-mib", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--manifest-requests", type=int, default=300)
    parser.add_argument("--cri-reps", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write every sample here")
    args = parser.parse_args()
    missing = missing_tools("docker-registry", "skopeo", "curl")
    if missing:
        print(f"cannot run: {missing}", file=sys.stderr)
        return 2

    samples: dict[str, dict[str, list[float]]] = {"registry": {}, "mirror": {}}
    with tempfile.TemporaryDirectory(prefix="mirror-bench-") as tmp:
        work = Path(tmp)
        up = Registry(work / "upstream").start()
        mirror = None
        try:
            print(f"building {args.layers} x {args.layer_mib} MiB layers ...", file=sys.stderr)
            img = image([layer(n, args.layer_mib << 20) for n in range(args.layers)])
            up.client().push_image("library/bench", "1", img)
            ref = f"{up.host}/library/bench:1"
            disk = kubelet_mount(work / "pods", "uid", "pvc")
            make_cache_disk(disk, "bench", [(ref, ref)])
            # Manifests are read by tag here: the node pool serves tags.
            mirror = MirrorProcess(work / "pods", work / "mirror.log", "--serve-tags")
            blobs = [b.digest for b in img.layers]
            bases = {"registry": (up.host, ""), "mirror": (mirror.host, f"?ns={up.host}")}

            for rep in range(args.reps):
                print(f"repetition {rep + 1}/{args.reps}", file=sys.stderr)
                for name, (host, query) in bases.items():
                    urls = [f"http://{host}/v2/library/bench/blobs/{b}{query}" for b in blobs]
                    samples[name].setdefault("blob_mbps_single", []).append(
                        mbps(curl_get(urls, parallel=False)))
                    samples[name].setdefault("blob_mbps_parallel", []).append(
                        mbps(curl_get(urls, parallel=True)))
                    lat = manifest_latencies(host, f"/v2/library/bench/manifests/1{query}",
                                             args.manifest_requests)
                    samples[name].setdefault("manifest_ms_median", []).append(
                        statistics.median(lat))
                    samples[name].setdefault("manifest_ms_p95", []).append(
                        statistics.quantiles(lat, n=20)[18])

            reason = containerd_unavailable()
            if reason is None and args.cri_reps > 0:
                certs_direct, certs_mirror = work / "certs-direct", work / "certs-mirror"
                (certs_direct / up.host).mkdir(parents=True)
                (certs_direct / up.host / "hosts.toml").write_text(
                    f'server = "http://{up.host}"\n')
                configure(str(certs_mirror), [up.host], mirror.url, plain_http=[up.host])
                for rep in range(args.cri_reps):
                    print(f"CRI pull {rep + 1}/{args.cri_reps}", file=sys.stderr)
                    for name, certs in (("registry", certs_direct), ("mirror", certs_mirror)):
                        seconds = cri_pull(work / f"ctd-{name}-{rep}", certs, ref)
                        samples[name].setdefault("cri_pull_s", []).append(seconds)
            elif reason:
                print(f"CRI pull skipped: {reason}", file=sys.stderr)
        finally:
            if mirror is not None:
                mirror.stop()
            up.stop()

    size_mib = args.layers * args.layer_mib
    print(f"\nimage: {args.layers} layers x {args.layer_mib} MiB = {size_mib} MiB; "
          f"medians of {args.reps} repetitions ({args.cri_reps} for CRI pulls)\n")
    print("| measure | docker-registry | mirror | mirror / registry |")
    print("|---|---|---|---|")
    rows = [
        ("blob GET, one at a time (MB/s)", "blob_mbps_single", True),
        (f"blob GET, {args.layers} at once (MB/s)", "blob_mbps_parallel", True),
        ("manifest GET median (ms)", "manifest_ms_median", False),
        ("manifest GET p95 (ms)", "manifest_ms_p95", False),
        (f"CRI PullImage {size_mib} MiB (s)", "cri_pull_s", False),
    ]
    for label, key, higher_better in rows:
        if key not in samples["mirror"]:
            continue
        reg = statistics.median(samples["registry"][key])
        mir = statistics.median(samples["mirror"][key])
        ratio = mir / reg if higher_better else reg / mir
        fmt = ",.0f" if higher_better else ".2f"
        print(f"| {label} | {reg:{fmt}} | {mir:{fmt}} | {ratio:.2f}x "
              f"{'throughput' if higher_better else 'speed'} |")
    if args.json:
        args.json.write_text(json.dumps(samples, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
