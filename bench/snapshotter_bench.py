"""Start a realistic image, the kubelet's way (CRI PullImage + CreateContainer +
StartContainer), five ways, interleaved in one run (issue 11.5):

  a  overlayfs, pulled from a loopback docker-registry (what a node does today)
  b  overlayfs, pulled through `imagecache mirror serve` from the cache disk
  c  `imagecache snapshotter serve`, the layers taken from the cache disk (zero pull/unpack)
  d  the image already present (containerd's own overlayfs)
  e  the snapshotter, the image on no disk (its overhead for uncached images; compare to a)

    .venv/bin/python bench/snapshotter_bench.py [--layers 4 --layer-mib 132 --rounds 3]
    .venv/bin/python bench/snapshotter_bench.py --modes a,e --rounds 15   # e's overhead

With two modes, each round runs both, in alternating order (a e, then e a, ...), so that a
drift of the machine's load weighs on both alike; the report then gives the per-round ratio
(second mode / first), its median and spread, and the load average around each round.

The image is made of real files (this machine's /usr, as a distro image holds them), gzip
level 6, pushed to docker-registry; the cache disk is written by the real builder (OCI
layout + /layers/). Every measurement starts a fresh containerd (and snapshotter) with the
pause image already pulled and a host-network pod sandbox running; only pull + create +
start of the container is timed. Prints medians as a Markdown table, peak RSS of the
snapshotter (VmHWM), and --json writes every sample. Needs root.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from layerkit import busybox_layer  # noqa: E402
from mirror_testkit import MirrorProcess, kubelet_mount  # noqa: E402
from registry_fixture import OCI_LAYER_GZIP, Blob, Registry, run_builder  # noqa: E402
from snapshotter_testkit import (  # noqa: E402
    Containerd,
    Cri,
    SnapshotterProcess,
    plain_http_hosts,
)

from webhook.mirror.configure import configure  # noqa: E402

SLEEP = ["/bin/busybox", "sleep", "3600"]
POD_UID = "pod-bench"
# The bench has no apiserver to prove the disk's origin: it trusts its own disk.
DISK_ORIGIN = ("--disk-origin", "any")
SOURCES = ("/usr/lib", "/usr/share", "/usr/bin", "/usr/libexec", "/usr/sbin", "/usr/include")
MAX_FILE = 4 << 20  # a distro's files: many small ones, no single huge blob


def real_file_layers(count: int, mib: int, cache: Path) -> list[Blob]:
    """`count` gzip layers of about `mib` MiB of this machine's files each (kept in `cache`
    so that a second run does not compress them again)."""
    cache.mkdir(parents=True, exist_ok=True)
    paths = sorted(cache.glob(f"layer-{count}x{mib}-*.tar.gz"))
    if len(paths) == count:
        return [Blob(OCI_LAYER_GZIP, p.read_bytes()) for p in paths]
    files: list[Path] = []
    for source in SOURCES:
        for directory, _, names in os.walk(source):
            files += [Path(directory, n) for n in sorted(names)]
    budget, layers, n = mib << 20, [], 0
    for index in range(count):
        path = cache / f"layer-{count}x{mib}-{index}.tar.gz"
        used = 0
        with gzip.open(path, "wb", compresslevel=6) as raw, tarfile.open(
                fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            while used < budget and n < len(files):
                file = files[n]
                n += 1
                try:
                    st = file.lstat()
                    if (not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE
                            or used + st.st_size > budget):
                        continue
                    # gettarinfo remembers the inode: a later hard link names this member,
                    # so only files that are then added may pass through it.
                    info = tar.gettarinfo(str(file), arcname=str(file).lstrip("/"))
                    with open(file, "rb") as f:
                        tar.addfile(info, f)
                    used += info.size
                except OSError:
                    continue
        if used < budget // 2:
            raise RuntimeError(f"not enough files under {SOURCES} for {count}x{mib} MiB")
        layers.append(Blob(OCI_LAYER_GZIP, path.read_bytes()))
    return layers


def image_with(layers: list[Blob]) -> tuple[Blob, Blob, list[Blob]]:
    """(manifest, config, layers) of an OCI image: busybox first, then `layers`."""
    from layerkit import image_of

    img = image_of([busybox_layer(), *layers], config={"Cmd": SLEEP})
    return img.manifest, img.config, list(img.layers)


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def start_once(work: Path, certs: Path, socket: Path, sandbox_image: str, image: str,
               snapshotter: str, present: bool = False) -> tuple[float, float, float]:
    """Seconds for PullImage, for CreateContainer + StartContainer after it, and that
    containerd spent applying layers, in a fresh containerd."""
    ctd = Containerd(work, certs, socket, sandbox_image, snapshotter)
    cri = Cri(ctd.socket, work)
    try:
        # The pod whose volume the cache disk is (kubelet_mount's "pod-bench"): in c, its
        # container may use the disk (a neighbour pod's would wait for a copy).
        sandbox = cri.run_pod("bench", POD_UID)
        if present:
            cri.pull(image, timeout=900)
            first = cri.start_container(sandbox, "warm", image, SLEEP)
            del first
        os.sync()  # start from clean page cache writeback: no run pays for the one before
        started = time.monotonic()
        cri.pull(image, timeout=900)
        pulled = time.monotonic()
        cri.start_container(sandbox, "timed", image, SLEEP)
        return pulled - started, time.monotonic() - pulled, applied_seconds(ctd.log)
    finally:
        try:
            cri.remove_pods()
        finally:
            cri.close()
            ctd.stop()
            shutil.rmtree(work, ignore_errors=True)


GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|µs|us|ns|m|s)")
GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9}


def applied_seconds(log: Path) -> float:
    """Seconds containerd spent applying (decompressing + writing) layers: the sum of its
    `diff applied` lines' d=, the part of a pull any snapshotter pays alike."""
    total = 0.0
    for line in log.read_text(errors="replace").splitlines():
        if "diff applied" in line and (field := re.search(r"\bd=(\S+)", line)):
            total += sum(float(n) * GO_UNITS[u] for n, u in GO_DURATION.findall(field[1]))
    return total


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def call_seconds(log: Path) -> dict[str, float]:
    """Per gRPC method, the seconds the snapshotter spent answering (its debug lines)."""
    total: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        if '"ms":' in line and '"method":' in line:
            entry = json.loads(line)
            total[entry["method"]] = total.get(entry["method"], 0.0) + entry["ms"] / 1000
    return total


def paired_report(modes: str, samples: dict[str, list[float]], loads: list[float]) -> str:
    """Per round: second mode / first (both ran back to back); median, quartiles, range."""
    first, second = modes[0], modes[1]
    ratios = [b / a for a, b in zip(samples[first], samples[second], strict=False) if a > 0]
    if not ratios:
        return ""
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return (f"\n{second}/{first} per round: " + " ".join(f"{r:.3f}" for r in ratios)
            + f"\n{second}/{first} paired median {statistics.median(ratios):.3f}, quartiles "
            f"{quartiles[0]:.3f}-{quartiles[2]:.3f}, range {min(ratios):.3f}-{max(ratios):.3f}"
            f" ({len(ratios)} rounds)\n{first} alone: median "
            f"{statistics.median(samples[first]):.2f}s, stdev "
            f"{statistics.pstdev(samples[first]):.2f}s; load average (1 min) "
            f"{min(loads):.1f}-{max(loads):.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--layer-mib", type=int, default=132)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/snap-bench-layers"))
    parser.add_argument("--modes", default="abcde",
                        help="which of a-e to run, e.g. abcde or a,e (default all)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep-logs", type=Path,
                        help="copy each c/e run's snapshotter log here (with --log-level debug: "
                        "one line per gRPC call with its duration)")
    parser.add_argument("--call-times", action="store_true",
                        help="run the snapshotter with --log-level debug and report, per c/e "
                        "run, the seconds its gRPC calls took and its CPU seconds")
    parser.add_argument("--snapshotter-arg", action="append", default=[],
                        help="extra argument for `snapshotter serve`, e.g. --log-level=debug")
    args = parser.parse_args()
    modes = args.modes.replace(",", "")
    if not modes or set(modes) - set("abcde") or len(set(modes)) != len(modes):
        print(f"--modes {args.modes!r}: give distinct letters of a-e, e.g. a,e",
              file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("needs root (containerd, overlay mounts)", file=sys.stderr)
        return 2
    samples: dict[str, list[float]] = {m: [] for m in "abcde"}
    pulls: dict[str, list[float]] = {m: [] for m in "abcde"}
    rss: list[int] = []
    loads: list[float] = []
    applied: dict[str, list[float]] = {m: [] for m in "abcde"}
    calls: dict[str, list[dict[str, float]]] = {m: [] for m in "abcde"}
    cpu: dict[str, list[float]] = {m: [] for m in "abcde"}
    debug = ["--log-level=debug"] if args.call_times else []
    with tempfile.TemporaryDirectory(prefix="snap-bench-", dir="/tmp") as tmp:
        work = Path(tmp)
        layers = real_file_layers(args.layers, args.layer_mib, args.cache)
        manifest, config, all_layers = image_with(layers)
        unpacked = sum(len(gzip.decompress(b.data)) for b in all_layers)
        packed = sum(len(b.data) for b in all_layers)
        print(f"image: {len(all_layers)} layers, {unpacked / 2**20:.0f} MiB unpacked, "
              f"{packed / 2**20:.0f} MiB gzip", file=sys.stderr)
        with Registry(work / "registry") as registry:
            from registry_fixture import Image

            pusher = registry.client()
            pusher.push_image("bench", "1", Image(manifest, config, tuple(all_layers)))
            pause = __import__("layerkit").image_of(
                [busybox_layer(("sleep",))],
                config={"Entrypoint": ["/bin/busybox", "sleep", "2147483647"]})
            pusher.push_image("pause", "1", pause)
            digest = "sha256:" + hashlib.sha256(manifest.data).hexdigest()
            image = f"{registry.host}/bench@{digest}"
            sandbox_image = f"{registry.host}/pause:1"
            pods = work / "pods"
            disk = kubelet_mount(pods, POD_UID, "pvc-bench")
            disk.mkdir(parents=True)
            if set(modes) & set("bc"):  # only they read the cache disk
                started = time.monotonic()
                code, result = run_builder(disk, work / "term", [f"{registry.host}/bench:1"],
                                           "--insecure-registry", registry.host, "--layers")
                if code != 0:
                    raise RuntimeError(f"build failed: {result}")
                print(f"cache disk built in {time.monotonic() - started:.1f}s",
                      file=sys.stderr)
            direct = work / "certs-direct"
            plain_http_hosts(direct, registry.host)
            mirror = MirrorProcess(pods, work / "mirror.log")
            via_mirror = work / "certs-mirror"
            configure(str(via_mirror), [registry.host], mirror.url, plain_http=[registry.host])
            nodisk = work / "no-disks"
            nodisk.mkdir()
            try:
                for round_ in range(args.rounds):
                    loads.append(os.getloadavg()[0])
                    # Two modes alternate their order: a slow drift weighs on both alike.
                    order = modes[::-1] if len(modes) == 2 and round_ % 2 else modes
                    for mode in order:
                        print(f"round {round_ + 1}/{args.rounds} mode {mode} "
                              f"(load {os.getloadavg()[0]:.1f})", file=sys.stderr)
                        run = work / f"run-{mode}-{round_}"
                        socket = run / "snap.sock"
                        run.mkdir()
                        snap = None
                        if mode in "ce":
                            snap = SnapshotterProcess(run / "snaproot",
                                                      pods if mode == "c" else nodisk, socket,
                                                      run / "snapshotter.log",
                                                      # the run's containerd (Mounts asks it)
                                                      "--containerd-socket",
                                                      str(run / "ctd" / "containerd.sock"),
                                                      *DISK_ORIGIN, *debug,
                                                      *args.snapshotter_arg)
                        cpu_before = cpu_seconds(snap.proc.pid) if snap and snap.proc else 0.0
                        try:
                            pull, start, apply = start_once(
                                run / "ctd", via_mirror if mode == "b" else direct, socket,
                                sandbox_image, image,
                                "imagecache" if mode in "ce" else "overlayfs",
                                present=mode == "d")
                        finally:
                            if snap is not None and snap.proc is not None:
                                rss.append(vm_hwm_kib(snap.proc.pid))
                                cpu[mode].append(cpu_seconds(snap.proc.pid) - cpu_before)
                                snap.stop()
                                if args.call_times:
                                    calls[mode].append(call_seconds(snap.log))
                                if args.keep_logs:
                                    args.keep_logs.mkdir(parents=True, exist_ok=True)
                                    shutil.copy(snap.log, args.keep_logs /
                                                f"snapshotter-{mode}-{round_}.log")
                            shutil.rmtree(run, ignore_errors=True)  # its snapshots too
                        samples[mode].append(pull + start)
                        pulls[mode].append(pull)
                        applied[mode].append(apply)
                        extra = f", snapshotter CPU {cpu[mode][-1]:.2f}s" if mode in "ce" else ""
                        if calls[mode]:
                            extra += ", its calls " + " ".join(
                                f"{m} {t:.2f}s" for m, t in sorted(calls[mode][-1].items()))
                        print(f"  {pull + start:.3f}s (pull {pull:.3f}s, layers applied in "
                              f"{apply:.2f}s{extra})", file=sys.stderr)
                loads.append(os.getloadavg()[0])
            finally:
                mirror.stop()
    med = {m: statistics.median(v) for m, v in samples.items() if v}
    names = {"a": "overlayfs, from the registry", "b": "overlayfs, through the mirror",
             "c": "snapshotter, from the cache disk", "d": "image already present",
             "e": "snapshotter, image on no disk"}
    print(f"\n{args.layers} real-file layers + busybox, {unpacked / 2**20:.0f} MiB unpacked, "
          f"{packed / 2**20:.0f} MiB gzip; medians of {args.rounds} interleaved rounds\n")
    print("| mode | pull + create + start (s) | of which pull (s) | vs a |")
    print("|---|---|---|---|")
    for mode in med:
        versus = "" if "a" not in med else (
            f"{med['a'] / med[mode]:.1f}x faster" if mode in "bcd"
            else f"{med[mode] / med['a']:.2f}x a")
        print(f"| {mode}: {names[mode]} | {med[mode]:.3f} | "
              f"{statistics.median(pulls[mode]):.3f} | {versus} |")
    if "c" in med and "d" in med:
        print(f"\nc vs d: {med['c'] / med['d']:.2f}x")
    if len(modes) == 2:
        print(paired_report(modes, samples, loads))
    for mode in med:
        line = f"{mode}: containerd applied layers in {statistics.median(applied[mode]):.2f}s"
        if cpu[mode]:
            line += f"; snapshotter CPU {statistics.median(cpu[mode]):.2f}s"
        if calls[mode]:
            took = statistics.median(sum(c.values()) for c in calls[mode])
            line += f"; its calls took {took:.3f}s"
        print(line + " (medians)")
    if rss:
        print(f"snapshotter peak RSS: {max(rss) / 1024:.1f} MiB")
    if args.json:
        args.json.write_text(json.dumps({"samples": samples, "pulls": pulls, "rss_kib": rss,
                                         "loadavg": loads, "applied": applied, "cpu": cpu,
                                         "calls": calls}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
