"""`imagecache snapshotter [serve|configure|forget-images]`: the node snapshotter's command line.

serve runs the containerd proxy snapshotter on a unix socket; configure points containerd's
CRI plugin at it; forget-images, on rolling back, removes the images containerd could not
unpack for another snapshotter. See docs/snapshotter.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

from webhook import logs
from webhook.flags import HelpFormatter

DEFAULT_SOCKET = "/run/imagecache/snapshotter.sock"
DEFAULT_ROOT = "/var/lib/imagecache/snapshotter"
DEFAULT_DISKS_ROOT = "/var/lib/kubelet/pods"
DEFAULT_CONTAINERD_CONFIG = "/etc/containerd/config.toml"
DEFAULT_CONTAINERD_SOCKET = "/run/containerd/containerd.sock"

log = logging.getLogger("imagecache.snapshotter")


class UsageError(Exception):
    """A flag value that cannot work; the message names the flag and the fix."""


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagecache snapshotter",
        formatter_class=HelpFormatter,
        description="Node snapshotter: a containerd proxy snapshotter that starts cached "
        "images from the cache disks' unpacked layers (serve), configure containerd to "
        "use it (configure), and on rolling back remove the images no other snapshotter can "
        "unpack (forget-images).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="run the proxy snapshotter", formatter_class=HelpFormatter,
        description="Run the containerd proxy snapshotter on a unix socket: ordinary overlay "
        "snapshots, and layers taken ready-unpacked from the cache disks mounted on this node "
        "(neither downloaded nor unpacked). See docs/snapshotter.md.",
    )
    serve.add_argument("--socket", default=DEFAULT_SOCKET,
                       help=f"unix socket containerd dials (default {DEFAULT_SOCKET})")
    serve.add_argument("--root", default=DEFAULT_ROOT,
                       help=f"the snapshotter's own directory (default {DEFAULT_ROOT})")
    serve.add_argument("--disks-root", default=DEFAULT_DISKS_ROOT,
                       help=f"where cache disks are mounted (default {DEFAULT_DISKS_ROOT})")
    serve.add_argument("--glob", action="append", dest="globs", metavar="PATTERN",
                       help="pattern below --disks-root where cache disks are mounted; "
                       "repeatable (default: the kubelet's CSI volume layout)")
    serve.add_argument("--depth", type=int, default=2,
                       help="also take any directory up to this many levels below "
                       "--disks-root that holds imagecache.json (default 2)")
    serve.add_argument("--metrics-listen", default="",
                       help="HOST:PORT for Prometheus /metrics (default: none)")
    serve.add_argument("--no-materialize", dest="materialize", action="store_false",
                       help="do not copy disk layers into --root in the background")
    serve.add_argument("--materialize-delay", type=float, default=10.0, metavar="SECONDS",
                       help="start copying a disk layer this long after its pull, so that "
                       "the copy does not slow the containers starting (default 10)")
    serve.add_argument("--containerd-socket", default=DEFAULT_CONTAINERD_SOCKET,
                       help="containerd's socket, to learn a container's pod and to remove "
                       f"images whose layers are gone (default {DEFAULT_CONTAINERD_SOCKET}; "
                       "'' : neither)")
    logs.add_flags(serve, level_help="info: startup, layers taken from cache disks, copies "
                   "and removed images; debug: also one line per gRPC call with its duration")
    serve.add_argument("--disk-origin", choices=["api", "any"], default="api",
                       help="api (default): use a cache disk's layers only once the API shows "
                       "that its volume was cloned from a snapshot the controller made; "
                       "any: trust every cache disk mounted on the node")
    serve.add_argument("--kubeconfig", default="",
                       help="for --disk-origin api: the API's kubeconfig (default: the pod's "
                       "service account)")
    serve.add_argument("--controller-namespace", default="",
                       help="the imagecache controller's namespace: its builder disks and "
                       "primary snapshots there are trusted too (default: none)")
    serve.add_argument("--supervise", action="store_true",
                       help="serve in a child process and start it again whenever it exits "
                       "(the chart's DaemonSet: while CRI uses the snapshotter, its container "
                       "could not be created again)")
    conf = sub.add_parser(
        "configure", help="point containerd's CRI plugin at the snapshotter",
        formatter_class=HelpFormatter,
        description="Add [proxy_plugins.imagecache] to containerd's configuration and set the "
        "CRI plugin's snapshotter, keeping everything else in the file; prints whether "
        "containerd must be restarted. Roll back with --snapshotter overlayfs.",
    )
    conf.add_argument("--containerd-config", default=DEFAULT_CONTAINERD_CONFIG,
                      help=f"containerd's main config file (default "
                      f"{DEFAULT_CONTAINERD_CONFIG})")
    conf.add_argument("--socket", default=DEFAULT_SOCKET,
                      help=f"the snapshotter's socket (default {DEFAULT_SOCKET})")
    conf.add_argument("--drop-in", default="",
                      help="write [proxy_plugins.imagecache] to this file (one of the "
                      "config's imports; added to them if not) instead of the main file")
    conf.add_argument("--snapshotter", default="imagecache",
                      help="the CRI snapshotter to set (default imagecache; roll back with "
                      "the previous one, e.g. overlayfs)")
    forget = sub.add_parser(
        "forget-images", help="on rolling back: remove the images with a cache disk's layer",
        formatter_class=HelpFormatter,
        description="On rolling back to another snapshotter (after `configure --snapshotter "
        "overlayfs` and a containerd restart): remove from containerd, through CRI, every "
        "image with a layer taken from a cache disk (never downloaded: no other snapshotter "
        "can unpack it), so that the kubelet pulls it again. Reads the snapshotter's store "
        "read-only.")
    forget.add_argument("--root", default=DEFAULT_ROOT,
                        help=f"the snapshotter's root (its serve --root; default {DEFAULT_ROOT})")
    forget.add_argument("--containerd-socket", default=DEFAULT_CONTAINERD_SOCKET,
                        help=f"containerd's socket (default {DEFAULT_CONTAINERD_SOCKET})")
    forget.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    return parser


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UsageError(f"--metrics-listen {text!r}: give HOST:PORT, e.g. 127.0.0.1:5006")
    return host.strip("[]"), int(port)


def _disk_origin(args: argparse.Namespace, metrics: Any) -> Any:
    """The origin check of --disk-origin api (None: every disk trusted). Without API access
    the snapshotter still serves: ordinary snapshots, and no disk used (fail safe)."""
    from webhook.snapshotter.kubeapi import KubeConfigError, KubeReader
    from webhook.snapshotter.origin import DiskOrigin

    if args.disk_origin == "any":
        log.warning("--disk-origin any: every cache disk mounted on this node is trusted; "
                    "use it only where pods cannot mount volumes that look like cache disks")
        return None
    try:
        reader = KubeReader.load(args.kubeconfig)
    except KubeConfigError as exc:
        log.error("no API access: cache disks will not be used until it works (%s)", exc)
        return DiskOrigin(None, args.controller_namespace, metrics, no_reader_reason=str(exc))
    return DiskOrigin(reader, args.controller_namespace, metrics)


def serve(args: argparse.Namespace) -> int:
    import grpc
    from prometheus_client import start_http_server

    from webhook.snapshotter.api import snapshots_pb2_grpc as pb_grpc
    from webhook.snapshotter.containerd import ContainerdClient
    from webhook.snapshotter.disks import KUBELET_CSI_GLOB, DiskLayers
    from webhook.snapshotter.metrics import SnapshotterMetrics
    from webhook.snapshotter.service import SnapshotsService
    from webhook.snapshotter.snapshotter import Snapshotter

    if args.depth < 0:
        raise UsageError("--depth must be 0 or more")
    metrics_at = _hostport(args.metrics_listen) if args.metrics_listen else None
    socket = Path(args.socket)
    socket.parent.mkdir(parents=True, exist_ok=True)
    if socket.exists() or socket.is_symlink():
        socket.unlink()  # a previous run's; containerd reconnects to the new one
    metrics = SnapshotterMetrics()
    disks = DiskLayers(args.disks_root, args.globs or [KUBELET_CSI_GLOB], args.depth,
                       origin=_disk_origin(args, metrics))
    client = ContainerdClient(args.containerd_socket) if args.containerd_socket else None
    snapshotter = Snapshotter(Path(args.root), disks, metrics, args.materialize, client,
                              copy_delay=max(0.0, args.materialize_delay))
    removed = snapshotter.cleanup()
    if removed:
        log.info("removed %d directories a previous run left", removed)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="rpc"),
                         options=[("grpc.max_receive_message_length", 16 << 20)])
    pb_grpc.add_SnapshotsServicer_to_server(  # type: ignore[no-untyped-call]
        SnapshotsService(snapshotter), server)
    if not server.add_insecure_port(f"unix://{socket}"):
        raise UsageError(f"--socket {socket}: cannot listen there")
    os.chmod(socket, 0o600)
    server.start()
    if metrics_at is not None:
        httpd, _ = start_http_server(metrics_at[1], metrics_at[0], registry=metrics.registry)
        log.info("metrics on http://%s:%d/metrics", metrics_at[0], httpd.server_port,
                 extra={"fields": {"metrics": f"{metrics_at[0]}:{httpd.server_port}"}})
    disks.refresh(force=True)
    metrics.disks.set(disks.count())
    metrics.snapshots.set(len(snapshotter.store.all()))
    log.info("serving on unix://%s (root %s, disks below %s)", socket, args.root,
             args.disks_root, extra={"fields": {"socket": str(socket)}})
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(2):
        disks.refresh()
        metrics.disks.set(disks.count())
        metrics.snapshots.set(len(snapshotter.store.all()))
        try:
            snapshotter.remove_dangling_images()
        except Exception as exc:  # the loop must go on; the next pass tries again
            log.error("checking for dangling layers failed: %s: %s", type(exc).__name__, exc)
    log.info("stopping")
    server.stop(grace=5).wait()
    snapshotter.close()
    if client is not None:
        client.close()
    return 0


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    logs.setup(getattr(args, "log_level", logs.DEFAULT_LEVEL),
               getattr(args, "log_format", logs.DEFAULT_FORMAT))
    try:
        if args.command == "serve" and args.supervise:
            from webhook.snapshotter.supervise import supervise

            return supervise([a for a in argv[1:] if a != "--supervise"])
        if args.command == "serve":
            return serve(args)
        if args.command == "forget-images":
            from webhook.snapshotter.forget import ForgetError, forget_images

            try:
                return forget_images(Path(args.root), args.containerd_socket, args.dry_run)
            except ForgetError as exc:
                print(f"imagecache snapshotter forget-images: {exc}", file=sys.stderr)
                return 1
        from webhook.snapshotter.configure import configure

        return configure(Path(args.containerd_config), args.socket,
                         Path(args.drop_in) if args.drop_in else None, args.snapshotter)
    except UsageError as exc:
        print(f"imagecache snapshotter: {exc}", file=sys.stderr)
        return 2

    except OSError as exc:  # a root, socket or state it cannot use: the path and the reason
        print(f"imagecache snapshotter: {exc.filename or ''}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
