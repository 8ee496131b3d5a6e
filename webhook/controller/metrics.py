"""Prometheus metrics of the controller, in a registry of its own (several controllers can
live in one test process), and the /healthz, /readyz and /metrics endpoints."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

PHASES = ("Pending", "Creating", "Ready", "Failed", "Expired")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.caches = Gauge(
            "imagecache_caches", "ImageCaches by phase", ["phase"], registry=self.registry
        )
        self.build_seconds = Histogram(
            "imagecache_build_duration_seconds",
            "From the builder Job's start to the cache being Ready",
            buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
            registry=self.registry,
        )
        self.reconciles = Counter(
            "imagecache_reconcile_total", "Reconcile passes", registry=self.registry
        )
        self.reconcile_errors = Counter(
            "imagecache_reconcile_errors_total",
            "Reconcile passes that failed (retried with backoff)",
            ["reason"],
            registry=self.registry,
        )
        self.api_requests = Counter(
            "imagecache_api_requests_total",
            "Requests to the Kubernetes API",
            ["verb"],
            registry=self.registry,
        )
        self.api_in_flight = Gauge(
            "imagecache_api_requests_in_flight",
            "Requests to the Kubernetes API waiting for an answer (watches not counted)",
            registry=self.registry,
        )
        self.pod_events = Counter(
            "imagecache_pod_events_total",
            "Events written on pods from the webhook's decisions",
            ["reason"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "imagecache_workqueue_depth", "Caches waiting to be reconciled", registry=self.registry
        )
        self.leader = Gauge(
            "imagecache_leader", "1 while this controller is the leader", registry=self.registry
        )

    def set_phases(self, counts: dict[str, int]) -> None:
        for phase in PHASES:
            self.caches.labels(phase=phase).set(counts.get(phase, 0))


def health_app(metrics: Metrics, healthy: Callable[[], str | None]) -> web.Application:
    """`healthy()` returns None when all is well, else what is wrong."""

    async def healthz(_: web.Request) -> web.Response:
        problem = healthy()
        if problem is None:
            return web.Response(text="ok\n")
        return web.Response(status=503, text=f"{problem}\n")

    async def metrics_page(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", healthz)
    app.router.add_get("/metrics", metrics_page)
    return app
