"""A work queue of object keys: deduplicated, one worker per key at a time, delayed adds,
and per-key exponential backoff for failures (reset when the key succeeds)."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
import time


class WorkQueue:
    def __init__(self, base_delay: float = 0.5, max_delay: float = 60.0) -> None:
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._active: set[str] = set()
        self._dirty: set[str] = set()  # added while being processed: queue again when done
        self._failures: dict[str, int] = {}
        self._timers: list[tuple[float, int, str]] = []
        self._counter = itertools.count()
        self._wakeup = asyncio.Event()
        self.base_delay = base_delay
        self.max_delay = max_delay

    def __len__(self) -> int:
        return len(self._queued)

    def add(self, key: str) -> None:
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._counter), key))
        self._wakeup.set()

    def retry(self, key: str) -> float:
        """Queue `key` again after its backoff; returns the delay."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay: float = min(self.max_delay, self.base_delay * 2.0**failures)
        delay *= 0.8 + 0.4 * random.random()
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    async def get(self) -> str:
        key = await self._queue.get()
        self._queued.discard(key)
        self._active.add(key)
        return key

    def done(self, key: str) -> None:
        self._active.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    async def run_timers(self, stop: asyncio.Event) -> None:
        """Move delayed keys into the queue when due."""
        while not stop.is_set():
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, key = heapq.heappop(self._timers)
                self.add(key)
            timeout = self._timers[0][0] - now if self._timers else 1.0
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), max(0.01, min(timeout, 1.0)))
