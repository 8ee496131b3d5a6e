"""Pod start-up on a real node, one command: no cache (cold pull) vs from the cache (through
the node mirror) vs image already present, interleaved in one run.

    sudo .venv/bin/python bench/node_bench.py [--rounds 5] [--layers 4] [--mib 130]

Starts its own node (../shared/node/node-up.sh, as the node tests do: tests/node), builds the
chart's image (hack/image.sh), installs the chart, makes a realistic image (real files from
/usr/lib, gzip, LAYERS x MIB MiB unpacked: 520 MiB by default), pushes it to a registry on the
node's bridge, builds an ImageCache of it, then times pod create -> Running (the API's view,
polled every 20 ms) for, in each round:
  cold     image removed from containerd (its layers gone from the content store): pulled
           from the registry, unpacked;
  cached   the same removal, the pod opts in: the webhook pins it and adds the clone, the
           CSI stand-in provides the clone (tests/node/csi_standin.py), containerd fetches
           from the disk through the node mirror and unpacks;
  present  the image is in containerd already.
Then the node's containerd is switched to the node snapshotter (docs/snapshotter.md): layers
are unpacked onto the cache disk (`imagecache build --layers` into the stand-in's snapshots,
which every clone copies), `imagecache snapshotter serve` runs in the node's mount namespace
with --disks-root the kubelet's pods dir, `imagecache snapshotter configure` switches CRI in
config.toml, containerd restarts as systemd would (tests/node/node_harness.py,
Node.restart_containerd; node-up.sh would rewrite config.toml) and the local images are
imported again for the snapshotter; the bench stops unless containerd then runs with it, and
a snap-cached round counts only if the snapshotter's log took the layers from the disk.
containerd 1.6 has one CRI snapshotter per daemon, so these modes run interleaved in a second
set of rounds, not with the first three:
  snap-cached   as cached, containerd takes the layers from the pod's disk (no fetch, no unpack);
  snap-cold     as cold, through the snapshotter (its ordinary overlay snapshots);
  snap-present  as present, through the snapshotter.
Prints one line per pod (with the registry's blob GETs for it) and the medians; the node is
always stopped at the end. Node directory: IMAGECACHE_NODE_DIR (as the node tests).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parent / "tests" / "node")]

from node_harness import Node, eventually, pick_base, run  # noqa: E402
from node_site import IMAGE, NAMESPACE, Site, build_image, deployment, set_up_site, tke_manifest  # noqa: E402

NS = "bench"
MODES = ("cold", "cached", "present")
# After the switch; snap-cached first: when its pod (and disk) is gone the snapshotter removes
# the image (never dangling), so snap-present follows snap-cold, which leaves it present.
SNAP_MODES = ("snap-cached", "snap-cold", "snap-present")
IMAGECACHE = str(Path(sys.executable).parent / "imagecache")


def pull_seconds(node: Node, name: str) -> float | None:
    """The kubelet's own pull time ("Successfully pulled image ... in 12.3s"); None: no pull."""
    events = (
        node.api.get(
            f"/api/v1/namespaces/{NS}/events?fieldSelector="
            f"involvedObject.name%3D{name},reason%3DPulled"
        )
        or {}
    )
    for event in events.get("items") or []:
        found = re.search(r" in ([0-9.]+)(m?s)", event.get("message") or "")
        if found:
            value = float(found.group(1))
            return value / 1000 if found.group(2) == "ms" else value
    return None


def time_pod(node: Node, name: str, image: str, cached: bool) -> tuple[float, str]:
    """Seconds from just before the POST to phase Running, and the webhook's decision."""
    annotations = {"imagecache.dev/use-image-cache": "auto"} if cached else {}
    template = deployment(name, NS, image, 1, annotations)["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, **template["metadata"]},
        "spec": template["spec"],
    }
    start = time.monotonic()
    node.api.call("POST", f"/api/v1/namespaces/{NS}/pods", pod)
    path = f"/api/v1/namespaces/{NS}/pods/{name}"
    deadline = start + 600
    while True:
        got = node.api.get(path) or {}
        if (got.get("status") or {}).get("phase") == "Running":
            elapsed = time.monotonic() - start
            decision = (got["metadata"].get("annotations") or {}).get(
                "imagecache.dev/decision", "-"
            )
            return elapsed, decision
        if time.monotonic() > deadline:
            raise RuntimeError(f"pod {name} not Running after 600 s: {got.get('status')}")
        time.sleep(0.02)


def delete_pod(node: Node, name: str) -> None:
    node.api.call("DELETE", f"/api/v1/namespaces/{NS}/pods/{name}", {"gracePeriodSeconds": 0})
    eventually(
        f"pod {name} gone",
        lambda: node.api.get(f"/api/v1/namespaces/{NS}/pods/{name}") is None,
        180,
        interval=0.2,
    )


def add_layers(site: Site, image: str, work: Path) -> None:
    """Unpack the image's layers onto the built disk: into each snapshot the stand-in holds
    (every pod's clone is a copy of one), as the builder does with --builder-layers."""
    snapshots = sorted((site.standin.root / "snapshots").iterdir())
    if not snapshots:
        raise RuntimeError("no snapshot of the cache disk to add layers to")
    for disk in snapshots:
        run(
            [
                IMAGECACHE, "build", "--name", "big", "--image", image, "--output", str(disk),
                "--insecure-registry", site.public.host, "--layers",
                "--termination-log", str(work / "termination"),
            ],
            timeout=900,
        )


def start_snapshotter(node: Node, work: Path) -> subprocess.Popen[bytes]:
    """`imagecache snapshotter serve` in the node's mount namespace (where the kubelet mounts
    the pods' disks and containerd mounts what it answers); returns when its socket exists.
    --no-materialize: a copy of the disk's layers into its root would make the next pods of
    the image start from the node's copy, not from their disk (nor really pull in snap-cold)."""
    root = node.dir / "imagecache-snapshotter"
    root.mkdir(exist_ok=True)
    sock = root / "snapshotter.sock"
    log = (work / "snapshotter.log").open("ab")
    proc = subprocess.Popen(
        [
            "nsenter", f"--mount={node.dir}/ns/mnt", "--",
            IMAGECACHE, "snapshotter", "serve",
            "--socket", str(sock),
            "--root", str(root / "root"),
            "--disks-root", str(node.dir / "kubelet" / "pods"),
            "--glob", "*/volumes/kubernetes.io~local-volume/*",
            "--containerd-socket", str(node.dir / "containerd" / "containerd.sock"),
            "--no-materialize",
            # the disk origin is checked as in the chart; outside a pod, with the node's
            # admin kubeconfig (the chart's narrow role is tested in tests/node)
            "--disk-origin", "api", "--kubeconfig", str(node.dir / "kubeconfig"),
            "--controller-namespace", NAMESPACE,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"snapshotter exited {proc.returncode}: see {log.name}")
        return sock.exists()

    try:
        eventually("the snapshotter's socket", up, 60, interval=0.2)
    except BaseException:
        proc.terminate()
        proc.wait(30)
        raise
    return proc


def switch_containerd(node: Node, archive: Path) -> None:
    """Configure CRI for the snapshotter in config.toml, restart containerd as systemd would
    (Node.restart_containerd: node-up.sh would write config.toml afresh and undo the switch),
    import the local images again for the snapshotter; refuses to go on unless containerd
    now runs with CRI's snapshotter = imagecache (else the snap-* modes would measure
    overlayfs)."""
    sock = node.dir / "imagecache-snapshotter" / "snapshotter.sock"
    node.use_snapshotter("imagecache", [archive], sock)
    node.tag_by_digest(IMAGE, archive)


def disk_layers(work: Path) -> int:
    """Layers the snapshotter has taken from a cache disk so far (its log)."""
    return (work / "snapshotter.log").read_text(errors="replace").count(" from cache disk ")


def measure(
    node: Node,
    site: Site,
    image: str,
    blobs: list[str],
    chains: list[str],
    mode: str,
    r: int,
    work: Path,
) -> tuple[float, float]:
    """One pod of `mode`: create -> Running seconds and the kubelet's pull seconds."""
    snapshotter = "imagecache" if mode.startswith("snap-") else "overlayfs"
    kind = mode.removeprefix("snap-")
    if kind != "present":
        node.forget_image(image, blobs, chains, snapshotter=snapshotter)
    name = f"{mode}-{r}"
    mark = site.public.mark()
    before = disk_layers(work) if mode == "snap-cached" else 0
    elapsed, decision = time_pod(node, name, image, cached=kind == "cached")
    if kind == "cached" and decision != "hit":
        raise RuntimeError(f"{name}: decision {decision}, not hit")
    from_disk = 0
    if mode == "snap-cached":  # every layer but busybox's base (the node may hold it)
        want = len(chains) - 1
        from_disk = eventually(  # the log line trails the answer to containerd a little
            f"{name}: {want}+ layers from the cache disk in the snapshotter's log (else the "
            "pod's image was pulled: not the snapshotter's number)",
            lambda: disk_layers(work) - before if disk_layers(work) - before >= want else None,
            30,
            interval=0.2,
        )
    pulled = eventually(
        "the kubelet's Pulled event",
        lambda: pull_seconds(node, name) if kind != "present" else 0.0,
        60,
    )
    gets = len(site.public.blob_gets(mark, "bench/big"))
    print(
        f"round {r} {mode:12} {elapsed:6.2f} s  (of which pulling {pulled:5.2f} s; "
        f"decision {decision}; {gets} blob GETs at the registry; "
        f"{from_disk} layers from the cache disk; "
        f"load {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    delete_pod(node, name)
    return elapsed, pulled


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--mib", type=int, default=130, help="MiB per layer, unpacked")
    parser.add_argument("--keep", action="store_true", help="leave the node running")
    args = parser.parse_args()
    base = pick_base()
    directory = os.environ.get("IMAGECACHE_NODE_DIR", f"/dev/shm/imagecache-bench-{base}")
    node = Node(base, Path(directory))
    work = Path(tempfile.mkdtemp(prefix="imagecache-node-bench-"))
    site = None
    snap: subprocess.Popen[bytes] | None = None
    try:
        archive = build_image()
        node.up([archive])
        node.tag_by_digest(IMAGE, archive)
        site = set_up_site(node, work)
        image = f"{site.public.host}/bench/big:1"
        t0 = time.monotonic()
        node.make_image(
            image, work / "big.tar", layers=args.layers, mib=args.mib, salt="bench", src="/usr/lib"
        )
        digest = site.public.push(work / "big.tar", "bench/big:1")
        blobs = [digest, *site.public.layers("bench/big:1")]
        chains = site.public.chain_ids("bench/big:1")
        print(
            f"image {image}: {args.layers} x {args.mib} MiB unpacked, "
            f"{(work / 'big.tar').stat().st_size / 2**20:.0f} MiB gzip "
            f"(made and pushed in {time.monotonic() - t0:.0f} s)",
            flush=True,
        )
        node.kubectl("create", "namespace", NS)
        node.apply(tke_manifest("big", [image], [site.public], namespaces=[NS]))
        t0 = time.monotonic()
        eventually(
            "cache big Ready with a copy in bench",
            lambda: any(
                c.get("namespace") == NS and c.get("readyToUse")
                for c in ((node.get("imc", "big") or {}).get("status") or {}).get("namespaces")
                or []
            ),
            900,
            interval=1,
        )
        print(f"cache built and ready in {time.monotonic() - t0:.0f} s", flush=True)
        times: dict[str, list[float]] = {m: [] for m in (*MODES, *SNAP_MODES)}
        for r in range(args.rounds):
            for mode in MODES:
                times[mode].append(measure(node, site, image, blobs, chains, mode, r, work)[0])
        t0 = time.monotonic()
        add_layers(site, image, work)
        snap = start_snapshotter(node, work)
        switch_containerd(node, archive)
        print(
            f"switched to the snapshotter in {time.monotonic() - t0:.0f} s "
            f"(its log: {work / 'snapshotter.log'})",
            flush=True,
        )
        for r in range(args.rounds):
            for mode in SNAP_MODES:
                times[mode].append(measure(node, site, image, blobs, chains, mode, r, work)[0])
        med = {m: statistics.median(v) for m, v in times.items()}
        print(
            json.dumps(
                {
                    "medians_s": {m: round(v, 2) for m, v in med.items()},
                    "cached_over_present": round(med["cached"] / med["present"], 2),
                    "cold_over_cached": round(med["cold"] / med["cached"], 2),
                    "snap_cached_over_present": round(med["snap-cached"] / med["present"], 2),
                    "cold_over_snap_cached": round(med["cold"] / med["snap-cached"], 2),
                    "snap_cold_over_cold": round(med["snap-cold"] / med["cold"], 2),
                    "rounds": args.rounds,
                    "loadavg": [round(x, 1) for x in os.getloadavg()],
                },
                indent=1,
            )
        )
        return 0
    finally:
        if site is not None:
            site.standin.stop()
        if snap is not None and not args.keep:
            snap.terminate()
            snap.wait(30)
        if not args.keep:
            node.down()


if __name__ == "__main__":
    sys.exit(main())
