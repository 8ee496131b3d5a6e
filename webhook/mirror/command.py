"""`imagecache mirror [serve|configure]`: the node mirror's command line.

serve (the default) runs the read-only registry for containerd; configure writes containerd's
hosts.toml files so that containerd asks the mirror first. See docs/mirror.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from aiohttp import web

from webhook import logs
from webhook.core.imageref import DOCKER_HUB, InvalidReference
from webhook.flags import HelpFormatter
from webhook.mirror.configure import configure
from webhook.mirror.core.mirror_disks import KUBELET_CSI_GLOB
from webhook.mirror.core.mirror_hosts import HostsConfigError, parse_hostport
from webhook.mirror.core.mirror_routes import normalize_registry
from webhook.mirror.disks import DiskWatcher
from webhook.mirror.metrics import MirrorMetrics
from webhook.mirror.poller import DiskPoller
from webhook.mirror.server import MirrorServer

log = logging.getLogger("imagecache.mirror")

DEFAULT_LISTEN = "127.0.0.1:5005"
DEFAULT_ROOT = "/var/lib/kubelet/pods"
SUBCOMMANDS = ("serve", "configure")


class UsageError(Exception):
    """A flag value that cannot work; the message names the flag and the fix."""


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagecache mirror",
        formatter_class=HelpFormatter,
        description="Node mirror: serve images from cache disks mounted on this node to "
        "containerd (serve, the default), or point containerd at it (configure).",
    )
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser(
        "serve", help="run the read-only OCI registry (default)", formatter_class=HelpFormatter,
        description="Serve manifests (by digest) and blobs from the cache disks mounted on this "
        "node, as a read-only OCI registry that containerd asks first (hosts.toml); anything "
        "else is a 404, so containerd falls back to the registry. /metrics for Prometheus.",
    )
    serve.add_argument("--listen", default=DEFAULT_LISTEN,
                       help=f"HOST:PORT to serve on (default {DEFAULT_LISTEN}; port 0 picks one)")
    serve.add_argument("--metrics-listen", default="",
                       help="HOST:PORT for a separate /metrics listener (/metrics is also "
                       "served on --listen)")
    serve.add_argument("--root", default=DEFAULT_ROOT,
                       help=f"directory searched for cache disks (default {DEFAULT_ROOT})")
    serve.add_argument("--glob", action="append", dest="globs", metavar="PATTERN",
                       help=f"pattern below --root where cache disks are mounted; repeatable "
                       f"(default {KUBELET_CSI_GLOB!r})")
    serve.add_argument("--depth", type=int, default=2,
                       help="also take any directory up to this many levels below --root "
                       "that holds imagecache.json (default 2; 0: only --root itself)")
    serve.add_argument("--poll-interval", type=float, default=1.0,
                       help="seconds between looks for disks mounted or unmounted (default 1)")
    serve.add_argument("--default-registry", default=DOCKER_HUB,
                       help="registry of requests without ?ns= (default docker.io, as Docker's "
                       "registry-mirrors mean; '' refuses them)")
    serve.add_argument("--serve-tags", action="store_true",
                       help="also answer manifests by tag from the disks (default: by digest "
                       "only, the registry resolves tags); only for node pools where every "
                       "pod opts in")
    logs.add_flags(serve, level_help="info: one line per manifest, blob or tags request "
                   "and per disk found or gone; debug: also /v2/ probes and other requests")

    conf = sub.add_parser(
        "configure", help="write containerd hosts.toml files for the mirror",
        formatter_class=HelpFormatter,
        description="Write a hosts.toml per registry under containerd's config_path so that "
        "containerd asks the mirror first and the registry after it; prints each file and "
        "whether it changed. containerd reads the files on each pull (no restart).",
    )
    conf.add_argument("--config-path", default="/etc/containerd/certs.d",
                      help="containerd's registry config_path (default /etc/containerd/certs.d)")
    conf.add_argument("--registry", action="append", dest="registries", required=True,
                      metavar="HOST", help="registry to mirror, e.g. docker.io; repeatable")
    conf.add_argument("--mirror", default=f"http://{DEFAULT_LISTEN}",
                      help=f"URL of the mirror (default http://{DEFAULT_LISTEN})")
    conf.add_argument("--plain-http", action="append", default=[], metavar="HOST",
                      help="upstream registry reached over plain http; repeatable")
    conf.add_argument("--serve-tags", action="store_true",
                      help="let containerd resolve tags at the mirror (capability 'resolve'); "
                      "only with `serve --serve-tags`")
    conf.add_argument("--skip-verify", action="append", default=[], metavar="HOST",
                      help="upstream registry whose TLS certificate is not verified; repeatable")
    return parser


def _registry_flag(value: str) -> str:
    if value == "":
        return ""
    try:
        return normalize_registry(value)
    except InvalidReference as exc:
        raise UsageError(f"--default-registry {value!r} {exc.reason}") from None


async def _start_site(runner: web.AppRunner, listen: str, flag: str) -> str:
    host, port = parse_hostport(listen, flag)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise UsageError(f"{flag} {listen}: cannot listen ({exc.strerror or exc})") from None
    bound = runner.addresses[0]
    return f"{bound[0]}:{bound[1]}" if ":" not in str(bound[0]) else f"[{bound[0]}]:{bound[1]}"


async def serve(args: argparse.Namespace) -> int:
    default_registry = _registry_flag(args.default_registry)
    parse_hostport(args.listen, "--listen")
    if args.metrics_listen:
        parse_hostport(args.metrics_listen, "--metrics-listen")
    if args.depth < 0 or args.poll_interval <= 0:
        raise UsageError("--depth must be 0 or more and --poll-interval more than 0")
    watcher = DiskWatcher(args.root, args.globs or [KUBELET_CSI_GLOB], args.depth)
    metrics = MirrorMetrics()

    def poll() -> None:
        watcher.refresh()
        for state, count in watcher.counts().items():
            metrics.disks.labels(state).set(count)

    poller = DiskPoller(poll)
    await poller.poll()
    server = MirrorServer(lambda: watcher.index, metrics, default_registry, args.serve_tags,
                          look_again=poller.look_again, clock=poller.now)
    runners = [web.AppRunner(server.app(), access_log=None, handle_signals=False)]
    address = await _start_site(runners[0], args.listen, "--listen")
    log.info("node mirror serving on http://%s (root %s; manifests by %s)", address, args.root,
             "digest and tag" if args.serve_tags else "digest only")
    if args.metrics_listen:
        runners.append(web.AppRunner(server.metrics_app(), access_log=None))
        try:
            metrics_address = await _start_site(runners[1], args.metrics_listen,
                                                "--metrics-listen")
        except UsageError:
            await runners[0].cleanup()
            raise
        log.info("metrics on http://%s/metrics", metrics_address)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.poll_interval)
            if not stop.is_set():
                try:
                    await poller.poll()
                except Exception:
                    log.exception("looking for cache disks failed; trying again")
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
    log.info("node mirror stopped")
    return 0


def run_configure(args: argparse.Namespace) -> int:
    results = configure(args.config_path, args.registries, args.mirror,
                        plain_http=args.plain_http, skip_verify=args.skip_verify,
                        resolve=args.serve_tags)
    for written in results:
        print(f"{written.path}: {'written' if written.changed else 'unchanged'}")
    return 0


def main(argv: list[str]) -> int:
    """Entry point of `imagecache mirror`; returns the exit code."""
    if not argv or argv[0] not in (*SUBCOMMANDS, "-h", "--help"):
        argv = ["serve", *argv]
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage error or the help
        return exc.code if isinstance(exc.code, int) else 2
    try:
        if args.command == "configure":
            return run_configure(args)
        logs.setup(args.log_level, args.log_format)
        return asyncio.run(serve(args))
    except (UsageError, HostsConfigError) as exc:
        print(f"imagecache mirror: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"imagecache mirror: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
