"""The webhook's Prometheus metrics, in a registry of their own (not the process-global one,
so two servers in one process, as in the tests, never collide)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

OUTCOMES = ("patched", "unchanged", "denied", "invalid", "ignored", "error")
DECISIONS = ("hit", "mismatch", "miss", "unavailable")
RELOAD_RESULTS = ("success", "error")
# Answers take well under a millisecond on a warm index: buckets start at 0.5 ms.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, index_size: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Admission counts are plain ints on the request path (the handlers and /metrics all
        # run on the event loop thread), added to the counters whenever the registry is
        # collected: _Flush is registered first.
        self._answered: dict[str, int] = {}
        self._decided: dict[str, int] = {}
        self.registry.register(_Flush(self._flush))
        requests = Counter(
            "imagecache_admission_requests",
            "Admission requests answered, by outcome (patched, unchanged, denied, invalid, "
            "ignored, error).",
            ["result"],
            registry=self.registry,
        )
        decisions = Counter(
            "imagecache_admission_decisions",
            "Cache decisions made for pods that opted in (hit, mismatch, miss, unavailable).",
            ["decision"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "imagecache_admission_duration_seconds",
            "Time from the request body read to the answer, in seconds.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
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
        # Children bound once: labels() per request costs a dict lookup and a lock.
        self.requests = {o: requests.labels(result=o) for o in OUTCOMES}
        self._requests = requests
        self.decisions = {d: decisions.labels(decision=d) for d in DECISIONS}
        self._decisions = decisions
        self.tls_reloads = {r: reloads.labels(result=r) for r in RELOAD_RESULTS}

    def answered(self, outcome: str) -> None:
        self._answered[outcome] = self._answered.get(outcome, 0) + 1

    def decided(self, decision: str) -> None:
        self._decided[decision] = self._decided.get(decision, 0) + 1

    def admitted(self, outcome: str, decision: str | None, seconds: float) -> None:
        """One admission answer: its outcome, its cache decision (if any) and its duration."""
        self.duration.observe(seconds)
        answered = self._answered
        answered[outcome] = answered.get(outcome, 0) + 1
        if decision is not None:
            decided = self._decided
            decided[decision] = decided.get(decision, 0) + 1

    def _flush(self) -> None:
        for outcome, count in self._answered.items():
            child = self.requests.get(outcome)
            if child is None:  # an outcome the core added later: count it anyway
                child = self.requests[outcome] = self._requests.labels(result=outcome)
            child.inc(count)
        self._answered.clear()
        for decision, count in self._decided.items():
            child = self.decisions.get(decision)
            if child is None:  # a decision the core added later: count it anyway
                child = self.decisions[decision] = self._decisions.labels(decision=decision)
            child.inc(count)
        self._decided.clear()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Flush(Collector):
    """Collects nothing; makes the registry add the pending counts before it collects."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self.flush = flush

    def collect(self) -> Iterable[Metric]:
        self.flush()
        return []
