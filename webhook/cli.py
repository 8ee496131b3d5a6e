"""`imagecache`: one console script for every part (DESIGN.md, "Parts")."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from webhook.core.caches import CacheIndex, parse_cache_documents
from webhook.core.names import GROUP, NAMESPACE_AUTO_LABEL, PLURAL, VERSION
from webhook.server.cluster import ClusterConfigError
from webhook.server.core.explain import explain, pod_from_manifest

# Each part keeps its own argument parser; the console script only dispatches.
PARTS = {
    "serve": ("webhook.server.command", "run the admission webhook (TLS)"),
    "controller": ("webhook.controller.command", "run the ImageCache controller"),
    "build": ("webhook.builder.command", "pull a cache's images into an OCI layout"),
    "mirror": ("webhook.mirror.command", "run the node mirror, or write containerd hosts.toml"),
    "snapshotter": ("webhook.snapshotter.command",
                    "run the node snapshotter, or configure containerd for it"),
    "certs": ("certs.command", "generate a CA and serving certificates"),
}
DEFAULT_CACHES = "default"


def read_caches_file(path: str) -> list[dict[str, Any]]:
    """ImageCache objects from a YAML file, or the embedded examples for `default`."""
    if path == DEFAULT_CACHES:
        text = resources.files("webhook").joinpath("data/default-caches.yaml").read_text()
    else:
        text = Path(path).read_text()
    return parse_cache_documents(text)


async def _read_cluster(kubeconfig: str | None, namespace: str) -> tuple[list[Any], bool]:
    from webhook.kube.client import NAMESPACE, ApiError, Kube, Resource

    kube = await Kube.connect(kubeconfig)
    try:
        listed = await kube.list(Resource(f"{GROUP}/{VERSION}", "ImageCache", PLURAL, False))
        ns = await kube.get(NAMESPACE, None, namespace)
    except ApiError as exc:
        raise ValueError(f"the cluster answered {exc}") from None
    finally:
        await kube.close()
    labels = (ns.get("metadata") or {}).get("labels") or {}
    return list(listed.get("items") or []), labels.get(NAMESPACE_AUTO_LABEL) == "auto"


def explain_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="imagecache explain",
        description="Print the cache decision for a pod (or a workload's pod template), "
        "the rejected candidates and why, and the patch the webhook would send.",
    )
    parser.add_argument("manifest", help="Pod, Deployment, Job, ... YAML file ('-' for stdin)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--caches", metavar="FILE", help="ImageCache YAML ('default': examples)")
    source.add_argument("--cluster", action="store_true", help="read caches from the cluster")
    parser.add_argument("--kubeconfig", help="with --cluster: kubeconfig file")
    parser.add_argument("-n", "--namespace", help="the pod's namespace (default: its own)")
    parser.add_argument(
        "--namespace-auto",
        action="store_true",
        help=f"treat the namespace as labelled {NAMESPACE_AUTO_LABEL}=auto",
    )
    args = parser.parse_args(argv)
    try:
        text = sys.stdin.read() if args.manifest == "-" else Path(args.manifest).read_text()
        docs = [d for d in yaml.safe_load_all(text) if d]
        if len(docs) != 1 or not isinstance(docs[0], dict):
            raise ValueError(f"{args.manifest} must hold exactly one object")
        pod = pod_from_manifest(docs[0])
        namespace = args.namespace or (pod.get("metadata") or {}).get("namespace") or "default"
        namespace_auto = args.namespace_auto
        if args.cluster:
            objects, labelled = asyncio.run(_read_cluster(args.kubeconfig, namespace))
            namespace_auto = namespace_auto or labelled
        else:
            objects = read_caches_file(args.caches or DEFAULT_CACHES)
    except (OSError, ValueError, yaml.YAMLError, ClusterConfigError) as exc:
        print(f"imagecache explain: {exc}", file=sys.stderr)
        return 2
    index = CacheIndex.from_objects(objects)
    now = datetime.now(UTC)
    sys.stdout.write(
        explain(pod, index, namespace=namespace, now=now, namespace_auto=namespace_auto)
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "explain":
        return explain_main(argv[1:])
    if argv and argv[0] in PARTS:
        module = importlib.import_module(PARTS[argv[0]][0])
        part_main: Callable[[list[str]], int] = module.main
        return part_main(argv[1:])
    # Asked for help: stdout and success (so `imagecache --help | less` works); a wrong or
    # missing command: stderr and the usage error code.
    asked = argv[:1] in (["-h"], ["--help"])
    out = sys.stdout if asked else sys.stderr
    print("usage: imagecache COMMAND [ARGS]\n\ncommands:", file=out)
    for name, (_, text) in {**PARTS, "explain": ("", "explain a pod's cache decision")}.items():
        print(f"  {name:<11} {text}", file=out)
    return 0 if asked else 2


if __name__ == "__main__":
    sys.exit(main())
