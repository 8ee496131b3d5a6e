"""`imagecache controller`: run the ImageCache controller (leader-elected)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from dataclasses import replace
from datetime import timedelta

from aiohttp import web

from webhook import logs
from webhook.controller.certificates import CertificateManager, CertSettings
from webhook.controller.controller import Controller, ControllerError
from webhook.controller.core.reconcile_model import Settings
from webhook.controller.leader import LeaderElector, LeaseConfig
from webhook.controller.metrics import Metrics, health_app
from webhook.controller.ownership import read_owner
from webhook.core.names import DECISION
from webhook.flags import HelpFormatter
from webhook.kube.client import Kube

log = logging.getLogger("imagecache.controller")
EXIT_LOST_LEASE = 1  # also: could not start (the message says why)
EXIT_USAGE = 2
STOP_WITHIN = 2.0  # seconds the parts get to stop on their own after SIGTERM or a lost lease


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a positive integer")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: write HOST:PORT, e.g. 0.0.0.0:8080")
    return host or "0.0.0.0", int(port)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imagecache controller",
        formatter_class=HelpFormatter,
        description="Build ImageCaches into VolumeSnapshots, copy them to namespaces, expire "
        "them, and report cache decisions on pods. See docs/controller.md.",
    )
    env = os.environ.get
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube)")
    p.add_argument(
        "--namespace",
        default=env("POD_NAMESPACE", "imagecache-system"),
        help="namespace of builds, primary snapshots and the lease (default: $POD_NAMESPACE "
        "or imagecache-system)",
    )
    p.add_argument(
        "--builder-image",
        default=env("IMAGECACHE_IMAGE"),
        help="image of the builder Job (default: $IMAGECACHE_IMAGE; the controller's own)",
    )
    p.add_argument("--builder-command", default="imagecache", help="the image's console script")
    p.add_argument("--builder-cpu", default="500m", help="builder CPU request (default 500m)")
    p.add_argument(
        "--builder-cpu-limit", default="2", help="builder CPU limit (default 2; '' for none)"
    )
    p.add_argument("--builder-memory", default="4Gi", help="builder memory (default 4Gi)")
    p.add_argument("--builder-service-account",
                   help="service account of the builder pods (default: the namespace's default)")
    p.add_argument("--builder-layers", action="store_true",
                   help="builds unpack layers under /layers/ for the node snapshotter (the "
                        "build Job then runs as root with the unpacking capabilities)")
    p.add_argument("--storage-class", help="default StorageClass of build disks")
    p.add_argument(
        "--snapshot-class", help="default VolumeSnapshotClass (default: the cluster's default)"
    )
    p.add_argument(
        "--default-cache-size",
        type=_non_negative,
        default=20,
        help="GiB for caches without spec.imageCacheSize; 0 sizes them from the images",
    )
    p.add_argument(
        "--platform",
        action="append",
        dest="platforms",
        help="platform for caches without spec.platforms (repeatable; default linux/amd64)",
    )
    p.add_argument("--build-deadline", type=_positive, default=3600, help="seconds per build")
    p.add_argument("--backoff-limit", type=_non_negative, default=1, help="builder pod retries")
    p.add_argument(
        "--in-use-grace",
        type=_non_negative,
        default=300,
        help="seconds a new pod whose cache claim is not made yet protects the snapshot it "
        "clones (default 300; a claim not yet Bound protects it for as long as it takes)",
    )
    p.add_argument(
        "--pull-secret-namespace",
        action="append",
        dest="pull_secret_namespaces",
        default=[],
        help="a namespace whose Secrets spec.imagePullSecrets may name (repeatable; '*': any; "
        "default: only --namespace). Must match the RBAC that lets the controller get them",
    )
    p.add_argument(
        "--cache-selector",
        help="label selector: reconcile only the ImageCaches it selects (default: all)"
    )
    p.add_argument(
        "--pod-selector",
        default=DECISION,
        help=f"label selector of the pods watched for decision Events (default {DECISION}: "
        "the pods the webhook labelled with its decision; '' watches all pods)",
    )
    p.add_argument("--workers", type=_positive, default=4, help="concurrent reconciles")
    p.add_argument("--resync", type=_positive, default=600, help="seconds between full resyncs")
    p.add_argument(
        "--status-batch", type=float, default=10.0, help="seconds between lastMatchedTime writes"
    )
    p.add_argument("--watch-timeout", type=_positive, default=300, metavar="SECONDS",
                   help="how long each watch request lasts before it is made again")
    p.add_argument(
        "--listen",
        type=_listen,
        default=("0.0.0.0", 8080),
        help="HOST:PORT of /healthz, /readyz and /metrics (default 0.0.0.0:8080)",
    )
    p.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="elect one active controller on a Lease (default on)",
    )
    p.add_argument("--lease-name", default="imagecache-controller", metavar="NAME",
                   help="the Lease (in --namespace) the candidates elect a leader on")
    p.add_argument(
        "--owner-deployment",
        metavar="NAME",
        help="the controller's Deployment (in --namespace): it owns the TLS Secret and the "
        "Lease the controller creates, so deleting it removes them (needs get on deployments; "
        "default: none, they are left behind)",
    )
    p.add_argument("--lease-duration", type=float, default=15.0, help="seconds (default 15)")
    p.add_argument("--renew-deadline", type=float, default=10.0, help="seconds (default 10)")
    p.add_argument("--retry-period", type=float, default=2.0, help="seconds (default 2)")
    p.add_argument(
        "--identity",
        default=env("POD_NAME") or f"{socket.gethostname()}_{os.getpid()}",
        help="this candidate's name in the Lease (default: $POD_NAME or host_pid)",
    )
    logs.add_flags(p)
    certs = p.add_argument_group(
        "webhook certificates (without cert-manager: all three of the first flags, or none)"
    )
    certs.add_argument(
        "--webhook-configuration",
        help="MutatingWebhookConfiguration whose caBundle to keep (default: none, "
        "certificates are someone else's, e.g. cert-manager's)",
    )
    certs.add_argument("--webhook-secret",
                       help="Secret (in --namespace) for the CA and cert (default: none)")
    certs.add_argument("--webhook-service",
                       help="Service the certificate is issued for (default: none)")
    certs.add_argument("--webhook-ca-days", type=_positive, default=3650, help="default 3650")
    certs.add_argument("--webhook-cert-days", type=_positive, default=365, help="default 365")
    certs.add_argument(
        "--webhook-cert-overlap",
        type=_positive,
        default=3600,
        help="seconds both CAs stay in caBundle around a CA change (default 3600: far longer "
        "than the kubelet takes to refresh a mounted Secret)",
    )
    return p


def cert_settings_from(args: argparse.Namespace) -> CertSettings | None:
    """The certificate manager's settings, None without the webhook flags (cert-manager)."""
    given = [args.webhook_configuration, args.webhook_secret, args.webhook_service]
    if not any(given):
        return None
    if not all(given):
        raise ValueError(
            "--webhook-configuration, --webhook-secret and --webhook-service go together: "
            "pass all three to let the controller keep the webhook's certificates, or none "
            "when cert-manager does"
        )
    return CertSettings(
        namespace=args.namespace,
        secret=args.webhook_secret,
        webhook_configuration=args.webhook_configuration,
        service=args.webhook_service,
        ca_days=args.webhook_ca_days,
        serving_days=args.webhook_cert_days,
        overlap=timedelta(seconds=args.webhook_cert_overlap),
    )


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        namespace=args.namespace,
        builder_image=args.builder_image,
        builder_command=(args.builder_command,),
        storage_class=args.storage_class,
        snapshot_class=args.snapshot_class,
        default_size_gib=args.default_cache_size,
        platforms=tuple(args.platforms or ("linux/amd64",)),
        cpu=args.builder_cpu,
        cpu_limit=args.builder_cpu_limit or None,
        memory=args.builder_memory,
        build_deadline_seconds=args.build_deadline,
        backoff_limit=args.backoff_limit,
        in_use_grace_seconds=args.in_use_grace,
        builder_service_account=args.builder_service_account,
        resync_seconds=args.resync,
        pull_secret_namespaces=tuple(args.pull_secret_namespaces),
        builder_layers=args.builder_layers,
        log_level=args.log_level,
        log_format=args.log_format,
    )


async def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    try:
        cert_settings = cert_settings_from(args)
    except ValueError as exc:
        print(f"imagecache controller: {exc}", file=sys.stderr)
        return EXIT_USAGE
    certificates: asyncio.Task[None] | None = None
    try:
        kube = await Kube.connect(args.kubeconfig)
    except Exception as exc:  # the config loaders raise many kinds; all mean "fix the config"
        print(
            f"imagecache controller: cannot load the cluster configuration: {exc}", file=sys.stderr
        )
        return EXIT_USAGE
    metrics = Metrics()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    controller = Controller(
        kube,
        settings,
        metrics,
        workers=args.workers,
        watch_timeout=args.watch_timeout,
        status_batch_seconds=args.status_batch,
        cache_selector=args.cache_selector,
        pod_selector=args.pod_selector or None,
    )
    metrics.api_in_flight.set_function(lambda: kube.in_flight)
    runner = web.AppRunner(health_app(metrics, controller.health))
    await runner.setup()
    host, port = args.listen
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        print(f"imagecache controller: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        await runner.cleanup()
        await kube.close()
        return EXIT_USAGE
    code = 0
    elector: LeaderElector | None = None
    owner = await read_owner(kube, settings.namespace, args.owner_deployment)
    if cert_settings is not None:
        cert_settings = replace(cert_settings, owner=owner)
    try:
        if args.leader_elect:
            elector = LeaderElector(kube, replace(lease_config(args, settings.namespace),
                                                  owner=owner))
            log.info("waiting to become leader of %s/%s", settings.namespace, args.lease_name)
            if not await elector.acquire(stop):
                return 0
            kube.fence = elector.time_left  # no write once the lease may have passed on
        metrics.leader.set(1)
        running = asyncio.create_task(controller.run(stop))
        if cert_settings is not None:
            certificates = asyncio.create_task(CertificateManager(kube, cert_settings).run(stop))
        if elector is not None:
            holding = asyncio.create_task(elector.hold(stop))
            await asyncio.wait({running, holding}, return_when=asyncio.FIRST_COMPLETED)
            if holding.done() and not elector.is_leader:
                metrics.leader.set(0)
                log.error("lost leadership: stopping")
                code = EXIT_LOST_LEASE
            stop.set()
            await holding
        else:
            # Without an election the controller runs until it ends or is told to stop.
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
        try:
            await finish(running, STOP_WITHIN)
        except ControllerError as exc:
            print(f"imagecache controller: {exc}", file=sys.stderr)
            code = EXIT_LOST_LEASE
        finally:
            stop.set()  # the certificate manager stops with the controller
            if certificates is not None:
                await finish(certificates, STOP_WITHIN)
    finally:
        metrics.leader.set(0)
        if elector is not None and code == 0:
            await elector.release()
        await runner.cleanup()
        await kube.close()
    return code


async def finish(task: asyncio.Task[None], within: float) -> None:
    """Let `task` end on its own (it was told to stop), or cancel it after `within` seconds:
    a request to an apiserver that does not answer must not hold up a shutdown."""
    await asyncio.wait({task}, timeout=within)
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return
    task.result()


def lease_config(args: argparse.Namespace, namespace: str) -> LeaseConfig:
    return LeaseConfig(
        namespace=namespace,
        name=args.lease_name,
        identity=args.identity,
        lease_seconds=args.lease_duration,
        renew_deadline=args.renew_deadline,
        retry_period=args.retry_period,
    )


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if not args.builder_image:
        print(
            "imagecache controller: --builder-image (or $IMAGECACHE_IMAGE) is required: the "
            "image the builder Jobs run, normally the controller's own",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.leader_elect and (problem := lease_config(args, args.namespace).problem()):
        print(f"imagecache controller: {problem}", file=sys.stderr)
        return EXIT_USAGE
    logs.setup(args.log_level, args.log_format)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 0
