"""Looking for cache disks: one poll at a time, on a timer and when a request misses.

kubelet mounts a pod's cache disk and containerd pulls the pod's images a moment later,
often before the next timed poll; without a fresh look that pull would miss and go to the
registry. So a miss asks for a poll begun after its request arrived before it answers 404.
Polls never overlap and concurrent misses share one, so a burst of misses for images no disk
holds costs a few cheap scans (a glob and two stats per disk), one after another at most.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class DiskPoller:
    def __init__(self, poll: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._poll = poll
        self._clock = clock
        self._lock = asyncio.Lock()
        self._started = float("-inf")  # when the last poll began
        self.looks_on_miss = 0

    async def poll(self) -> None:
        async with self._lock:
            await self._run()

    async def _run(self) -> None:
        self._started = self._clock()
        await asyncio.to_thread(self._poll)

    async def look_again(self, arrived: float) -> bool:
        """After a miss of a request that arrived at `arrived` (this clock): returns once a
        poll begun since then has finished (True: a second lookup sees the disks as of now)."""
        async with self._lock:
            if self._started < arrived:
                self.looks_on_miss += 1
                await self._run()
            return True

    def now(self) -> float:
        return self._clock()
