"""`imagecache serve`: the admission webhook over HTTPS.

    imagecache serve --tls-cert FILE --tls-key FILE [--listen HOST:PORT]
                     [--caches FILE|default | --caches-from-cluster [--kubeconfig FILE]]
                     [--log-level LEVEL] [--log-format json|text]
                     [--shutdown-delay S] [--shutdown-timeout S]

Exits 0 after SIGTERM/SIGINT once requests in flight are answered; 1 when it cannot start
(the message says which flag or file to fix).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import sys
from pathlib import Path

from webhook import logs
from webhook.flags import HelpFormatter
from webhook.server.cache_file import DEFAULT, CacheFileError
from webhook.server.cluster import ClusterConfigError
from webhook.server.runtime import Options, Webhook
from webhook.server.tls import TlsConfigError

DEFAULT_LISTEN = "0.0.0.0:8443"


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT`, `[v6]:PORT` or `:PORT` (all addresses); port 0 picks a free one."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not HOST:PORT (e.g. 0.0.0.0:8443, [::]:8443, 127.0.0.1:0)"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            message = f"{value!r}: {host!r} is not an IPv6 address"
            raise argparse.ArgumentTypeError(message) from None
    return host or "0.0.0.0", int(port_text)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds >= 0")
    return seconds


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagecache serve",
        formatter_class=HelpFormatter,
        description="Serve the admission webhook over HTTPS: POST /mutate, POST /mutate/auto "
        "(namespaces labelled for auto), GET /healthz, /readyz, /metrics.",
    )
    parser.add_argument("--tls-cert", required=True, type=Path, metavar="FILE",
                        help="serving certificate (PEM, may hold the chain); reloaded on change")
    parser.add_argument("--tls-key", required=True, type=Path, metavar="FILE",
                        help="its private key (PEM); reloaded on change")
    parser.add_argument("--listen", type=parse_listen, default=parse_listen(DEFAULT_LISTEN),
                        metavar="HOST:PORT",
                        help=f"address to listen on (default {DEFAULT_LISTEN})")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--caches", metavar="FILE",
                        help=f"ImageCache YAML file, reloaded on change ('{DEFAULT}': the embedded "
                        "examples)")
    source.add_argument("--caches-from-cluster", action="store_true",
                        help="LIST+WATCH ImageCaches in the cluster (the default)")
    parser.add_argument("--kubeconfig", metavar="FILE",
                        help="with the cluster source: kubeconfig (default: in-cluster config, "
                        "then KUBECONFIG or ~/.kube/config)")
    logs.add_flags(parser, level_help="info: one line per decision that leaves a pod without "
                   "its cache (mismatch, miss, unavailable, denied) or warns, and each reload; "
                   "debug: also plain hits and pods that did not opt in; warning: only "
                   "requests refused as invalid")
    parser.add_argument("--shutdown-delay", type=_seconds, default=0.0, metavar="SECONDS",
                        help="after SIGTERM, answer /readyz 503 but keep serving this long, so "
                        "endpoints drop the pod first (default 0)")
    parser.add_argument("--shutdown-timeout", type=_seconds, default=10.0, metavar="SECONDS",
                        help="then stop accepting and give requests in flight this long "
                        "(default 10)")
    parser.add_argument("--reload-interval", type=_seconds, default=1.0, metavar="SECONDS",
                        help="how often the certificate and caches files are checked (default 1)")
    return parser  # fmt: skip


async def serve(options: Options, logger: logging.Logger) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        webhook = Webhook(options, logger)
    except TlsConfigError as exc:
        print(f"imagecache serve: error: {exc} (check --tls-cert and --tls-key)", file=sys.stderr)
        return 1
    try:
        await webhook.start()
    except (CacheFileError, ClusterConfigError) as exc:
        cluster = isinstance(exc, ClusterConfigError)
        hint = " (or serve from a file: --caches FILE)" if cluster else ""
        print(f"imagecache serve: error: {exc}{hint}", file=sys.stderr)
        await webhook.stop()
        return 1
    except OSError as exc:
        message = f"cannot listen on {options.host}:{options.port}: {exc.strerror or exc}"
        print(f"imagecache serve: error: {message} (choose another --listen)", file=sys.stderr)
        await webhook.stop()
        return 1
    await stop.wait()
    logs.log(logger, logging.INFO, "signal received, shutting down")
    await webhook.stop()
    return 0


def main(argv: list[str]) -> int:
    """Entry point; `argv` is what follows `imagecache serve`."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed the usage and the error
        return exc.code if isinstance(exc.code, int) else 2
    logger = logs.setup(args.log_level, args.log_format)
    host, port = args.listen
    options = Options(
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        host=host,
        port=port,
        caches=args.caches,
        kubeconfig=args.kubeconfig,
        reload_interval=args.reload_interval or 1.0,
        shutdown_delay=args.shutdown_delay,
        shutdown_timeout=args.shutdown_timeout,
    )
    try:
        return asyncio.run(serve(options, logger))
    except KeyboardInterrupt:
        return 0
