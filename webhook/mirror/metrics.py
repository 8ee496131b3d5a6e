"""Prometheus metrics of the node mirror, on a registry of its own (one per server)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
OTHER = "other"  # registry label of requests for registries no disk holds: bounded labels


class MirrorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "imagecache_mirror_requests", "Requests answered, by method, kind and status code.",
            ["method", "kind", "code"], registry=self.registry,
        )
        self.bytes = Counter(
            "imagecache_mirror_served_bytes", "Bytes of manifests and blobs sent (GET bodies).",
            ["kind"], registry=self.registry,
        )
        self.hits = Counter(
            "imagecache_mirror_hits", "Manifests and blobs found on a cache disk.",
            ["registry", "kind"], registry=self.registry,
        )
        self.misses = Counter(
            "imagecache_mirror_misses",
            "Manifests and blobs asked for but not held (the client falls back upstream).",
            ["registry", "kind"], registry=self.registry,
        )
        self.disks = Gauge(
            "imagecache_mirror_disks",
            "Cache disks found, by state: served, refused (built with credentials), broken.",
            ["state"], registry=self.registry,
        )

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
