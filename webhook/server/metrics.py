"""The webhook's Prometheus metrics, in a registry of their own (not the process-global one,
so two servers in one process, as in the tests, never collide)."""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

OUTCOMES = ("patched", "unchanged", "denied", "invalid", "ignored", "error")
DECISIONS = ("hit", "mismatch", "miss", "unavailable")
RELOAD_RESULTS = ("success", "error")
# Answers take well under a millisecond on a warm index: buckets start at 0.5 ms.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Admissions(Collector):
    """The admission metrics as plain ints and a float, turned into metric families only when
    /metrics is read: the request path adds to a dict and a list, with no locks (handlers and
    /metrics all run on the event loop thread), which prometheus_client's Counter and
    Histogram would take on every request."""

    __slots__ = ("answered", "buckets", "decided", "seconds")

    def __init__(self) -> None:
        # defaultdicts: an outcome or decision the core adds later is counted too.
        self.answered: defaultdict[str, int] = defaultdict(int, dict.fromkeys(OUTCOMES, 0))
        self.decided: defaultdict[str, int] = defaultdict(int, dict.fromkeys(DECISIONS, 0))
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)  # the last one: over 2.5 s
        self.seconds = 0.0

    def admitted(self, outcome: str, decision: str | None, seconds: float) -> None:
        """One admission answer: its outcome, its cache decision (if any) and its duration."""
        self.buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.seconds += seconds
        self.answered[outcome] += 1
        if decision is not None:
            self.decided[decision] += 1

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "imagecache_admission_requests",
            "Admission requests answered, by outcome (patched, unchanged, denied, invalid, "
            "ignored, error).",
            labels=["result"],
        )
        for outcome, count in self.answered.items():
            requests.add_metric([outcome], count)
        decisions = CounterMetricFamily(
            "imagecache_admission_decisions",
            "Cache decisions made for pods that opted in (hit, mismatch, miss, unavailable).",
            labels=["decision"],
        )
        for decision, count in self.decided.items():
            decisions.add_metric([decision], count)
        cumulative, total = [], 0
        for bound, count in zip((*map(str, DURATION_BUCKETS), "+Inf"), self.buckets, strict=True):
            total += count
            cumulative.append((bound, float(total)))
        duration = HistogramMetricFamily(
            "imagecache_admission_duration_seconds",
            "Time from the request body read to the answer, in seconds.",
            buckets=cumulative,
            sum_value=self.seconds,
        )
        return [requests, decisions, duration]


class Metrics:
    def __init__(self, index_size: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.admissions = Admissions()
        self.registry.register(self.admissions)
        size = Gauge(
            "imagecache_cache_index_size",
            "ImageCache objects in the webhook's in-memory index.",
            registry=self.registry,
        )
        size.set_function(index_size)
        reloads = Counter(
            "imagecache_tls_reloads",
            "Serving certificate reloads after the files changed, by result.",
            ["result"],
            registry=self.registry,
        )
        self.resyncs = Counter(
            "imagecache_cache_index_resyncs",
            "Full replacements of the cache index (file loads, LISTs after start or 410 Gone).",
            registry=self.registry,
        )
        self.tls_reloads = {r: reloads.labels(result=r) for r in RELOAD_RESULTS}
        # The admission path's two calls, bound once.
        self.admitted = self.admissions.admitted

    def answered(self, outcome: str) -> None:
        """An admission request refused before review (wrong content type, body too big)."""
        self.admissions.answered[outcome] += 1

    def render(self) -> bytes:
        return generate_latest(self.registry)
