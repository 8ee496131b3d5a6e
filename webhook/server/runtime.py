"""The webhook's lifecycle: cache source, TLS reloader and HTTPS listener; start and stop.

Stop is graceful: /readyz turns 503 first (for `shutdown_delay`, so that Service endpoints
drop this pod while it still answers), then the listener closes and requests in flight get
up to `shutdown_timeout` to finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from webhook.kube.client import Kube
from webhook.kube.informer import WatchOptions
from webhook.logs import log
from webhook.server.app import State, make_app
from webhook.server.cache_file import CacheFile
from webhook.server.cluster import watch_caches
from webhook.server.metrics import Metrics
from webhook.server.tls import TlsReloader

DRAIN_GRACE = 0.3  # seconds
DRAIN_POLL = 0.01  # seconds between looks at the requests still in flight


@dataclass
class Options:
    tls_cert: Path
    tls_key: Path
    host: str = "0.0.0.0"
    port: int = 8443
    caches: str | None = None  # a YAML file or "default"; None: LIST+WATCH the cluster
    kubeconfig: str | None = None
    reload_interval: float = 1.0  # seconds between checks of the certificate/caches files
    shutdown_delay: float = 0.0
    shutdown_timeout: float = 10.0
    watch: WatchOptions = field(default_factory=WatchOptions)


class Webhook:
    """Construction checks the certificate (TlsConfigError); start() loads the caches
    (CacheFileError, ClusterConfigError) and binds (OSError)."""

    def __init__(self, options: Options, logger: logging.Logger) -> None:
        self.options = options
        self.logger = logger
        self.state = State()
        self.metrics = Metrics(lambda: len(self.state.index))
        self.tls = TlsReloader(
            options.tls_cert,
            options.tls_key,
            logger,
            on_reload=lambda ok: self.metrics.tls_reloads["success" if ok else "error"].inc(),
        )
        self.addresses: list[tuple[str, int]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self._kube: Kube | None = None

    def replace(self, objects: list[Mapping[str, Any]]) -> None:
        self.state.index.replace(objects)
        self.metrics.resyncs.inc()
        self.state.synced = True

    def apply(self, event_type: str, obj: Mapping[str, Any]) -> None:
        self.state.index.apply(event_type, obj)

    def _spawn(self, name: str, coro: Any) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    async def start(self) -> None:
        opts = self.options
        if opts.caches is not None:
            source = CacheFile(opts.caches, self.replace, self.logger)
            count = source.load()
            log(self.logger, logging.INFO, "caches file loaded", file=source.name, caches=count)
            self._spawn("caches-file", source.run(opts.reload_interval))
        else:
            self._kube = await Kube.connect(opts.kubeconfig)
            self._spawn(
                "caches-watch",
                watch_caches(
                    self._kube,
                    on_replace=self.replace,
                    on_event=self.apply,
                    logger=self.logger,
                    options=opts.watch,
                ),
            )
        self._spawn("tls-reload", self.tls.run(opts.reload_interval))
        app = make_app(self.state, self.metrics, self.logger)
        runner = web.AppRunner(
            app, handle_signals=False, shutdown_timeout=opts.shutdown_timeout, access_log=None
        )
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, opts.host, opts.port, ssl_context=self.tls.context)
        await site.start()
        for address in runner.addresses:  # (host, port) or (host, port, flow, scope)
            self.addresses.append((str(address[0]), int(address[1])))
        log(self.logger, logging.INFO, "listening",
            addresses=[f"{h}:{p}" for h, p in self.addresses])  # fmt: skip

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    async def _drain(self, runner: web.AppRunner) -> None:
        # aiohttp's own graceful shutdown ignores bytes that arrive after it starts, so a
        # request whose body is still on its way would be cut off. Close the listener first,
        # let running handlers (and their bodies) finish, then close the connections.
        for site in list(runner.sites):
            await site.stop()
        # A connection accepted just before the listener closed has not sent its request yet:
        # give it DRAIN_GRACE to arrive (it is answered with Connection: close).
        timeout = self.options.shutdown_timeout
        grace = min(DRAIN_GRACE, timeout)
        await asyncio.sleep(grace)
        # Polled, not signalled: the request path only counts (see app.Admission).
        deadline = asyncio.get_running_loop().time() + timeout - grace
        while self.state.in_flight > 0:
            if asyncio.get_running_loop().time() >= deadline:
                log(self.logger, logging.WARNING, "shutdown timeout: cutting requests in flight",
                    requests=self.state.in_flight)  # fmt: skip
                break
            await asyncio.sleep(DRAIN_POLL)
        await runner.cleanup()

    async def stop(self) -> None:
        self.state.stopping = True
        if self._runner is not None:
            if self.options.shutdown_delay > 0:
                log(self.logger, logging.INFO, "not ready, still serving",
                    seconds=self.options.shutdown_delay)  # fmt: skip
                await asyncio.sleep(self.options.shutdown_delay)
            log(self.logger, logging.INFO, "stopping: no new connections, finishing requests")
            await self._drain(self._runner)
            self._runner = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._kube is not None:
            await self._kube.close()
            self._kube = None
        log(self.logger, logging.INFO, "stopped")
