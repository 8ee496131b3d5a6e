"""DiskPoller: a miss gets a poll begun after its request arrived; concurrent misses share
one (webhook.mirror.poller)."""

from __future__ import annotations

import asyncio

from webhook.mirror.poller import DiskPoller


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


async def test_concurrent_misses_share_one_poll() -> None:
    clock, polls = Clock(), []
    poller = DiskPoller(lambda: polls.append(clock.t), clock=clock)
    await poller.poll()
    clock.t += 1
    arrived = clock()
    results = await asyncio.gather(*(poller.look_again(arrived) for _ in range(5)))
    assert results == [True] * 5
    assert len(polls) == 2 and poller.looks_on_miss == 1


async def test_a_poll_begun_after_the_request_is_enough() -> None:
    clock, polls = Clock(), []
    poller = DiskPoller(lambda: polls.append(clock.t), clock=clock)
    arrived = clock()
    clock.t += 0.5
    await poller.poll()  # the timed poll, begun after the request arrived
    assert await poller.look_again(arrived) is True
    assert len(polls) == 1 and poller.looks_on_miss == 0
