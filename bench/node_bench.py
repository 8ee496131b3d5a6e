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
Prints one line per pod and the medians; the node is always stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parent / "tests" / "node")]

from node_harness import Node, eventually, pick_base  # noqa: E402
from node_site import IMAGE, build_image, deployment, set_up_site, tke_manifest  # noqa: E402

NS = "bench"
MODES = ("cold", "cached", "present")


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--mib", type=int, default=130, help="MiB per layer, unpacked")
    parser.add_argument("--keep", action="store_true", help="leave the node running")
    args = parser.parse_args()
    base = pick_base()
    node = Node(base, Path(f"/dev/shm/imagecache-bench-{base}"))
    work = Path(tempfile.mkdtemp(prefix="imagecache-node-bench-"))
    site = None
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
        times: dict[str, list[float]] = {m: [] for m in MODES}
        pulls: dict[str, list[float]] = {m: [] for m in MODES}
        for r in range(args.rounds):
            for mode in MODES:
                if mode != "present":
                    node.forget_image(image, blobs, chains)
                name = f"{mode}-{r}"
                elapsed, decision = time_pod(node, name, image, cached=mode == "cached")
                if mode == "cached" and decision != "hit":
                    raise RuntimeError(f"{name}: decision {decision}, not hit")
                times[mode].append(elapsed)
                pulled = eventually(
                    "the kubelet's Pulled event",
                    lambda n=name, m=mode: pull_seconds(node, n) if m != "present" else 0.0,
                    60,
                )
                pulls[mode].append(pulled)
                print(
                    f"round {r} {mode:8} {elapsed:6.2f} s  (of which pulling {pulled:5.2f} s; "
                    f"decision {decision})",
                    flush=True,
                )
                delete_pod(node, name)
        med = {m: statistics.median(v) for m, v in times.items()}
        print(
            json.dumps(
                {
                    "medians_s": {m: round(v, 2) for m, v in med.items()},
                    "cached_over_present": round(med["cached"] / med["present"], 2),
                    "cold_over_cached": round(med["cold"] / med["cached"], 2),
                    "rounds": args.rounds,
                },
                indent=1,
            )
        )
        return 0
    finally:
        if site is not None:
            site.standin.stop()
        if not args.keep:
            node.down()


if __name__ == "__main__":
    sys.exit(main())
