"""`imagecache build`: the builder Job's entry point (the lead's CLI calls main(argv)).

Exit codes and the termination message are the interface to the controller; see
docs/builder.md for the table.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from webhook import logs
from webhook.builder.build import BuildOptions, build
from webhook.builder.core.registry_auth import Credential, InvalidDockerConfig, parse_docker_config
from webhook.builder.registry_client import RetryPolicy
from webhook.core.build_errors import EXIT_CODES, BuildFailure, Reason
from webhook.core.build_result import encode_build_error, encode_build_result
from webhook.core.imageref import InvalidReference, parse
from webhook.core.registry_manifest import Platform
from webhook.flags import HelpFormatter

log = logging.getLogger("imagecache.builder")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise BuildFailure(Reason.INVALID_ARGUMENT, f"imagecache build: {message}")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="imagecache build",
        formatter_class=HelpFormatter,
        description="Pull a cache's images into an OCI image layout on the cache disk.",
    )
    p.add_argument("--name", required=True, help="the ImageCache's name")
    p.add_argument("--image", action="append", required=True, metavar="REF",
                   help="an image reference; repeat for each image")
    p.add_argument("--output", required=True, type=Path, metavar="DIR",
                   help="the cache disk's mount point")
    p.add_argument("--platform", action="append", metavar="OS/ARCH[/VARIANT]",
                   help="platform to pull from multi-arch images; repeatable "
                        "(default linux/amd64)")
    p.add_argument("--pull-secret-file", action="append", type=Path, default=[], metavar="PATH",
                   help="a .dockerconfigjson file of a pull secret; repeatable")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST[:PORT]",
                   help="reach this registry over plain HTTP or TLS without verification")
    p.add_argument("--ca-file", type=Path, metavar="PATH",
                   help="PEM bundle of extra CAs to trust for registries (default: none, the "
                   "system's CAs only)")
    p.add_argument("--termination-log", type=Path, default=Path("/dev/termination-log"),
                   metavar="PATH", help="where to write the result for the controller")
    p.add_argument("--concurrency", type=int, default=4, metavar="N",
                   help="parallel downloads (default 4)")
    p.add_argument("--serve-credentialed", action="store_true",
                   help="let the node mirror serve this cache although pulled with credentials")
    p.add_argument("--retries", type=int, default=5, metavar="N",
                   help="retries of a failed request (default 5)")
    p.add_argument("--retry-delay", type=float, default=0.5, metavar="SECONDS",
                   help="first retry delay, doubled per retry up to 30s (default 0.5)")
    p.add_argument("--resolve-only", action="store_true",
                   help="resolve the images and report their sizes; download and write "
                        "nothing (--output is not used)")
    p.add_argument("--layers", action="store_true",
                   help="also unpack every layer under /layers/<chainID hex>/ for the node "
                        "snapshotter (needs root with the unpacking capabilities, "
                        "docs/builder.md); without it a /layers/ of an earlier build is removed")
    logs.add_flags(p, level_help="info: the plan, each download with its progress, the "
                   "summary; warning: retries and layers not unpacked; debug: also the "
                   "traceback of an internal error")
    return p


def _load_credentials(paths: list[Path]) -> list[Credential]:
    credentials: list[Credential] = []
    for path in paths:
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise BuildFailure(
                Reason.INVALID_ARGUMENT,
                f"--pull-secret-file {path}: cannot read it ({exc.strerror or exc})",
            ) from None
        try:
            credentials += parse_docker_config(text, str(path))
        except InvalidDockerConfig as exc:
            raise BuildFailure(Reason.INVALID_ARGUMENT, str(exc)) from None
    return credentials


def _options(args: argparse.Namespace) -> BuildOptions:
    for image in args.image:  # refuse a bad reference before any network traffic
        try:
            parse(image)
        except InvalidReference as exc:
            raise BuildFailure(Reason.INVALID_ARGUMENT, f"--image: {exc}") from None
    try:
        platforms = [Platform.parse(p) for p in (args.platform or ["linux/amd64"])]
    except ValueError as exc:
        raise BuildFailure(Reason.INVALID_ARGUMENT, f"--platform: {exc}") from None
    if args.concurrency < 1:
        raise BuildFailure(Reason.INVALID_ARGUMENT, "--concurrency must be at least 1")
    if args.retries < 0 or args.retry_delay < 0:
        raise BuildFailure(Reason.INVALID_ARGUMENT, "--retries and --retry-delay must be >= 0")
    return BuildOptions(
        name=args.name,
        images=list(args.image),
        output=args.output,
        platforms=list(dict.fromkeys(platforms)),
        credentials=_load_credentials(args.pull_secret_file),
        insecure=list(args.insecure_registry),
        ca_file=args.ca_file,
        concurrency=args.concurrency,
        serve_credentialed=args.serve_credentialed,
        policy=RetryPolicy(retries=args.retries, base_delay=args.retry_delay),
        resolve_only=args.resolve_only,
        layers=args.layers,
    )


def _write_termination(path: Path | None, text: str) -> None:
    if path is None:
        return
    try:
        path.write_text(text)
    except OSError as exc:
        log.warning("cannot write the termination message to %s: %s", path,
                    exc.strerror or exc)


def main(argv: list[str]) -> int:
    # Found first, so that even a bad command line reports through the termination log, in
    # the log format asked for (a bad --log-level or --log-format: the defaults).
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--termination-log", type=Path, default=Path("/dev/termination-log"))
    early.add_argument("--log-level", type=str.lower, default=logs.DEFAULT_LEVEL)
    early.add_argument("--log-format", type=str.lower, default=logs.DEFAULT_FORMAT)
    known = early.parse_known_args(argv)[0]
    termination: Path | None = known.termination_log
    logs.setup(known.log_level if known.log_level in logs.LEVELS else logs.DEFAULT_LEVEL,
               known.log_format if known.log_format in logs.FORMATS else logs.DEFAULT_FORMAT,
               name=log.name)
    try:
        if any(a in ("-h", "--help") for a in argv):
            parser().print_help()
            return 0
        args = parser().parse_args(argv)
        termination = args.termination_log
        options = _options(args)
        summary = asyncio.run(build(options))
    except BuildFailure as exc:
        log.error("build failed (%s): %s", exc.reason, exc.message)
        _write_termination(termination, encode_build_error(exc.reason, exc.message))
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("build interrupted; run it again to resume")
        return 130
    except Exception as exc:  # the last line of defence: a message, not a traceback
        log.debug("internal error", exc_info=True)
        message = f"internal error: {type(exc).__name__}: {exc}"
        log.error("build failed (%s): %s", Reason.INTERNAL, message)
        _write_termination(termination, encode_build_error(Reason.INTERNAL, message))
        return EXIT_CODES[Reason.INTERNAL]
    result = encode_build_result(
        [(i.reference, i.top.descriptor.digest, i.size) for i in summary.images],
        summary.total_bytes,
    )
    _write_termination(termination, result)
    return 0
