"""Prometheus metrics of the node snapshotter, on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class SnapshotterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.calls = Histogram(
            "imagecache_snapshotter_call_seconds", "Snapshot API calls, by method and gRPC code.",
            ["method", "code"], registry=self.registry,
            buckets=(0.001, 0.005, 0.02, 0.1, 0.5, 2, 10),
        )
        self.prepared = Counter(
            "imagecache_snapshotter_prepared", "Ordinary snapshots made, by kind (active, view).",
            ["kind"], registry=self.registry,
        )
        self.disk_layers = Counter(
            "imagecache_snapshotter_disk_layers",
            "Layers committed from a cache disk: neither downloaded nor unpacked.",
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "imagecache_snapshotter_fallbacks",
            "Layers a cache disk could not serve for an unexpected reason (containerd pulled "
            "them instead).", registry=self.registry,
        )
        self.disk_origin = Counter(
            "imagecache_snapshotter_disk_origin",
            "Cache disks whose origin was checked through the API, by result: trusted, "
            "refused (not a clone of the controller's snapshot: never used), unknown (no "
            "answer from the API: not used for now, asked again later).",
            ["result"], registry=self.registry,
        )
        self.restored = Counter(
            "imagecache_snapshotter_restored",
            "Records of disk-backed layers made again from their disk: lost (a power cut "
            "right after a pull) while containerd still named them.", registry=self.registry,
        )
        self.materialized = Counter(
            "imagecache_snapshotter_materialized",
            "Disk layers copied into the snapshotter's root.", registry=self.registry,
        )
        self.images_removed = Counter(
            "imagecache_snapshotter_images_removed",
            "Images removed because a disk-backed layer of theirs was gone.",
            registry=self.registry,
        )
        self.snapshots = Gauge(
            "imagecache_snapshotter_snapshots", "Snapshots in the store.",
            registry=self.registry,
        )
        self.disks = Gauge(
            "imagecache_snapshotter_disks", "Cache disks found on the node.",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
