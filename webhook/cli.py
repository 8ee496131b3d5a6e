"""`imagecache`: one console script for every part (DESIGN.md, "Parts")."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import yaml

from webhook import logs
from webhook.core.caches import CacheIndex, parse_cache_documents
from webhook.core.names import GROUP, NAMESPACE_AUTO_LABEL, PLURAL, VERSION
from webhook.flags import HelpFormatter
from webhook.server.core.explain import (
    EXIT_DENIED,
    EXIT_HIT,
    EXIT_MISMATCH,
    EXIT_MISS,
    EXIT_NO_DECISION,
    EXIT_UNAVAILABLE,
    explain,
    pod_from_manifest,
)

PROG = "imagecache"
DISTRIBUTION = "imagecache"
# Each part keeps its own argument parser (`parser()`) and `main(argv)`; this only dispatches.
PARTS = {
    "serve": ("webhook.server.command", "run the admission webhook (TLS)"),
    "controller": ("webhook.controller.command", "run the ImageCache controller"),
    "build": ("webhook.builder.command", "pull a cache's images into an OCI layout"),
    "mirror": ("webhook.mirror.command", "run the node mirror, or write containerd hosts.toml"),
    "snapshotter": ("webhook.snapshotter.command",
                    "run the node snapshotter, or configure containerd for it"),
    "certs": ("certs.command", "generate a CA and serving certificates"),
}
COMMANDS = {**{name: text for name, (_, text) in PARTS.items()},
            "explain": "explain a pod's cache decision (exit status: the outcome)",
            "help": "this list, or `help COMMAND`: that command's flags"}  # fmt: skip
EXIT_USAGE = 2
EXIT_CLUSTER = 1
DEFAULT_CACHES = "default"
EMBEDDED = "data/default-caches.yaml"  # in the webhook package


def version() -> str:
    """The installed distribution's version (pyproject.toml), never a second copy of it."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def usage() -> str:
    lines = [f"usage: {PROG} COMMAND [ARGS]   ({PROG} COMMAND --help: its flags)", "",
             "commands:"]  # fmt: skip
    lines += [f"  {name:<11} {text}" for name, text in COMMANDS.items()]
    lines += ["", "options:", "  -h, --help  this list", "  --version   the installed version"]
    return "\n".join(lines) + "\n"


def read_caches_file(path: str) -> list[dict[str, Any]]:
    """ImageCache objects from a YAML file, or the embedded examples for `default`."""
    if path == DEFAULT_CACHES:
        text = resources.files("webhook").joinpath(EMBEDDED).read_text()
    else:
        text = Path(path).read_text()
    return parse_cache_documents(text)


def kubeconfig_problem(kubeconfig: str | None, env: dict[str, str], home: Path) -> str | None:
    """Why no cluster configuration can be found, with the fix; None when one may load."""
    if kubeconfig:
        return None if Path(kubeconfig).is_file() else f"--kubeconfig {kubeconfig}: no such file"
    if env.get("KUBERNETES_SERVICE_HOST"):
        return None  # in a pod: the service account
    listed = [p for p in env.get("KUBECONFIG", "").split(os.pathsep) if p]
    if any(Path(p).is_file() for p in listed):
        return None
    default = home / ".kube" / "config"
    if not listed and default.is_file():
        return None
    looked = f"KUBECONFIG={env['KUBECONFIG']}" if listed else f"KUBECONFIG is unset, no {default}"
    return (f"no kubeconfig found ({looked}, not in a pod): pass --kubeconfig FILE, or explain "
            "against caches from a file: --caches FILE")  # fmt: skip


async def _read_cluster(kubeconfig: str | None, namespace: str) -> tuple[list[Any], bool, str]:
    from webhook.kube.client import NAMESPACE, ApiError, ClusterConfigError, Kube, Resource

    kube = await Kube.connect(kubeconfig)
    where = kube.host
    try:
        listed = await kube.list(Resource(f"{GROUP}/{VERSION}", "ImageCache", PLURAL, False))
        ns = await kube.get(NAMESPACE, None, namespace)
    except ApiError as exc:
        raise ClusterConfigError(f"the cluster at {where} answered {exc}") from None
    except OSError as exc:
        raise ClusterConfigError(f"cannot reach the cluster at {where}: {exc}") from None
    finally:
        await kube.close()
    labels = (ns.get("metadata") or {}).get("labels") or {}
    return list(listed.get("items") or []), labels.get(NAMESPACE_AUTO_LABEL) == "auto", where


def explain_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} explain",
        formatter_class=HelpFormatter,
        description="Print the cache decision for a pod (or a workload's pod template), the "
        "rejected candidates and why, and the patch the webhook would send: the webhook's own "
        "decision function on the caches of --caches FILE, of the cluster (--cluster), or, "
        f"with neither, of the embedded examples (webhook/{EMBEDDED}). The first line of the "
        "output says which.",
        epilog=f"""exit status (for scripts):
  {EXIT_HIT}  hit: the pod gets a cache holding all its images
  {EXIT_MISMATCH}  mismatch: the named cache lacks some images (they are pulled)
  {EXIT_MISS}  miss: no cache holds the pod's images
  {EXIT_UNAVAILABLE}  unavailable: no cache can be used now (e.g. no ready copy in the namespace)
  {EXIT_DENIED}  denied: the pod asks imagecache.dev/required and would be refused
  {EXIT_NO_DECISION}  no decision: the pod does not opt in, or is skipped (mirror pod, ...)
  {EXIT_CLUSTER}  the caches could not be read from the cluster (the message says why)
  {EXIT_USAGE}  a bad command line, manifest or caches file""",
    )
    parser.add_argument("manifest", help="Pod, Deployment, Job, ... YAML file ('-' for stdin)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--caches", metavar="FILE",
                        help=f"ImageCache YAML file ('{DEFAULT_CACHES}': the embedded examples, "
                        "also used when neither --caches nor --cluster is given)")
    source.add_argument("--cluster", action="store_true",
                        help="read the ImageCaches and the namespace's label from the cluster "
                        "(default: no, the embedded examples)")
    parser.add_argument("--kubeconfig", metavar="FILE",
                        help="with --cluster: kubeconfig file (default: in-cluster, then "
                        "KUBECONFIG or ~/.kube/config)")
    parser.add_argument("-n", "--namespace",
                        help="the pod's namespace (default: its metadata.namespace, else "
                        "'default')")
    parser.add_argument("--namespace-auto", action="store_true",
                        help=f"treat the namespace as labelled {NAMESPACE_AUTO_LABEL}=auto "
                        "(default: no; with --cluster, the namespace's own label counts too)")
    return parser  # fmt: skip


def explain_main(argv: list[str]) -> int:
    try:
        args = explain_parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed the usage and the error, or the help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    # Libraries (the Kubernetes client) speak only of errors, in our format.
    logs.setup("error", "text")
    try:
        text = sys.stdin.read() if args.manifest == "-" else Path(args.manifest).read_text()
        docs = [d for d in yaml.safe_load_all(text) if d]
        if len(docs) != 1 or not isinstance(docs[0], dict):
            raise ValueError(f"{args.manifest} must hold exactly one object")
        pod = pod_from_manifest(docs[0])
        namespace = args.namespace or (pod.get("metadata") or {}).get("namespace") or "default"
        namespace_auto = args.namespace_auto
        if not args.cluster:
            objects = read_caches_file(args.caches or DEFAULT_CACHES)
            source = (f"the embedded examples (webhook/{EMBEDDED}; --caches FILE or --cluster for "
                      "yours)"
                      if (args.caches or DEFAULT_CACHES) == DEFAULT_CACHES
                      else f"the file {args.caches}")  # fmt: skip
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"{PROG} explain: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.cluster:
        # Here, not at the top: the cluster client (aiohttp) is most of the start-up time.
        from webhook.kube.client import ClusterConfigError

        problem = kubeconfig_problem(args.kubeconfig, dict(os.environ), Path.home())
        if problem is not None:
            print(f"{PROG} explain: {problem}", file=sys.stderr)
            return EXIT_CLUSTER
        try:
            objects, labelled, where = asyncio.run(_read_cluster(args.kubeconfig, namespace))
        except ClusterConfigError as exc:
            print(f"{PROG} explain: {exc}", file=sys.stderr)
            return EXIT_CLUSTER
        namespace_auto = namespace_auto or labelled
        source = f"the cluster at {where}"
    try:
        index = CacheIndex.from_objects(objects)
    except ValueError as exc:
        print(f"{PROG} explain: {exc}", file=sys.stderr)
        return EXIT_USAGE
    result = explain(pod, index, namespace=namespace, now=datetime.now(UTC),
                     namespace_auto=namespace_auto, source=source)  # fmt: skip
    sys.stdout.write(result.text)
    return result.exit_code


def _part(name: str) -> Any:
    return importlib.import_module(PARTS[name][0])


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command's argument parser, by command (for `help COMMAND` and the tests)."""
    found = {name: _part(name).parser() for name in PARTS}
    found["explain"] = explain_parser()
    return found


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else None
    if command == "explain":
        return explain_main(argv[1:])
    if command in PARTS:
        part_main: Callable[[list[str]], int] = _part(command).main
        try:
            return part_main(argv[1:])
        except SystemExit as exc:  # argparse's --help (0) or usage error (2) in some parts
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if command == "--version":
        print(f"{PROG} {version()}")
        return 0
    if command in ("-h", "--help") or argv == ["help"]:
        sys.stdout.write(usage())  # an answer, not an error: stdout and success
        return 0
    if command == "help" and len(argv) == 2 and argv[1] in COMMANDS:
        return main([argv[1], "--help"]) if argv[1] != "help" else main(["help"])
    # A wrong or missing command: say so, on stderr, with the usage error code.
    if command is None:
        problem = "no command given"
    elif command == "help":
        problem = f"help {' '.join(argv[1:])}: no such command"
    else:
        problem = f"unknown command {command!r}"
    sys.stderr.write(f"{PROG}: {problem}\n\n{usage()}")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
