"""Leader election on a coordination.k8s.io/v1 Lease, the way client-go does it.

Expiry is judged on this process's own clock: a candidate notes when it last saw the lease
record change and takes over once it has not changed for leaseDurationSeconds (clocks of
different machines are never compared). Takeover is an update with the resourceVersion read,
so of two candidates only one wins.

The leader leads until `renewed_at + renew_deadline`, where `renewed_at` is when its last
successful renewal *started* (the lease record it wrote cannot have been seen by anyone
before that). Every renewal attempt, and each of its requests, is bounded by the time left
to that deadline; when the deadline passes the leader stops at that moment, whatever its
requests are doing. A candidate takes over no earlier than lease_seconds after it saw that
record, and renew_deadline < lease_seconds, so two leaders never act at once (as long as the
two clocks run at about the same rate). `time_left()` is the fence the controller's writes
check (webhook.kube.client.Kube.fence).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from webhook.controller.ownership import lacks_owner, with_owner
from webhook.kube.client import LEASE, ApiError, Kube, Obj, sleep_or_stop

log = logging.getLogger(__name__)
RELEASE_TIMEOUT = 2.0  # a clean shutdown gives up the lease if it can do so quickly
FAILURES = (ApiError, OSError, aiohttp.ClientError, TimeoutError)


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def describe(exc: BaseException) -> str:
    """The exception's type and message: a TimeoutError's str() is empty."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass
class LeaseConfig:
    namespace: str
    name: str
    identity: str
    lease_seconds: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    owner: dict[str, Any] | None = None  # ownerReference put on the Lease (ownership.py)

    def problem(self) -> str | None:
        """What makes these durations unsafe, or None."""
        if not 0 < self.retry_period < self.renew_deadline < self.lease_seconds:
            return (
                f"need 0 < --retry-period ({self.retry_period:g}) < --renew-deadline "
                f"({self.renew_deadline:g}) < --lease-duration ({self.lease_seconds:g}): "
                "otherwise a leader can still act after another candidate took over"
            )
        return None


class LeaderElector:
    def __init__(self, kube: Kube, config: LeaseConfig) -> None:
        self.kube = kube
        self.config = config
        self.is_leader = False
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._lease: Obj | None = None
        self._renewed_at = 0.0  # monotonic start of the last successful attempt
        self._doing = ""  # the request in flight, for the log

    @property
    def where(self) -> str:
        return f"Lease {self.config.namespace}/{self.config.name}"

    def time_left(self) -> float:
        """Seconds this process may still act as the leader (0 when it is not leading)."""
        if not self.is_leader:
            return 0.0
        return max(0.0, self._renewed_at + self.config.renew_deadline - time.monotonic())

    def _spec(self, transitions: int, acquire: str | None = None) -> Obj:
        now = _micro_time()
        return {
            "holderIdentity": self.config.identity,
            "leaseDurationSeconds": max(1, round(self.config.lease_seconds)),
            "acquireTime": acquire or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    async def _request(self, doing: str, call: Awaitable[Obj]) -> Obj:
        self._doing = doing
        return await call

    async def _try(self) -> bool:
        """One attempt to acquire or renew; True if we hold the lease afterwards."""
        cfg = self.config
        try:
            lease = await self._request(
                f"reading {self.where}", self.kube.get(LEASE, cfg.namespace, cfg.name)
            )
        except ApiError as exc:
            if exc.status != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": with_owner({"name": cfg.name, "namespace": cfg.namespace}, cfg.owner),
                "spec": self._spec(0),
            }
            try:
                self._lease = await self._request(f"creating {self.where}", self.kube.create(body))
            except ApiError as conflict:
                if conflict.status == 409:
                    return False
                raise
            return True
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        record = (holder, str(spec.get("renewTime") or ""))
        now = time.monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = float(spec.get("leaseDurationSeconds") or cfg.lease_seconds)
        if holder and holder != cfg.identity and now - self._observed_at < duration:
            return False  # held by someone else, and still renewed
        transitions = int(spec.get("leaseTransitions") or 0)
        if lacks_owner(lease, cfg.owner):  # made by a controller before ownership
            lease["metadata"] = with_owner(lease.get("metadata") or {}, cfg.owner)
        if holder == cfg.identity:
            lease["spec"] = self._spec(transitions, spec.get("acquireTime"))
        else:
            lease["spec"] = self._spec(transitions + 1)
        doing = "renewing" if holder == cfg.identity else f"taking over (from {holder or 'nobody'})"
        try:
            self._lease = await self._request(
                f"{doing} {self.where}", self.kube.replace(LEASE, lease)
            )
        except ApiError as exc:
            if exc.status == 409:  # someone else wrote it first
                return False
            raise
        self._observed = (cfg.identity, self._lease["spec"]["renewTime"])
        self._observed_at = time.monotonic()
        return True

    async def _bounded(self, stop: asyncio.Event, deadline: float) -> bool | None:
        """`_try()` cut off at the monotonic `deadline` (TimeoutError naming the request that
        got no answer) or by `stop` (None)."""
        attempt = asyncio.ensure_future(self._try())
        stopped = asyncio.ensure_future(stop.wait())
        budget = max(0.0, deadline - time.monotonic())
        try:
            done, _ = await asyncio.wait(
                {attempt, stopped}, timeout=budget, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (attempt, stopped):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        if attempt in done:
            return attempt.result()
        if stopped in done:
            return None
        raise TimeoutError(f"no answer within {budget:.1f}s")

    def _failed(self, exc: BaseException) -> None:
        log.warning("leader election: %s failed: %s", self._doing or "?", describe(exc))

    def _lead(self, started: float) -> None:
        self.is_leader = True
        self._renewed_at = started
        log.info("became leader (%s) of %s", self.config.identity, self.where)

    def _step_down(self, why: str) -> None:
        self.is_leader = False
        log.error("stopped leading %s: %s", self.where, why)

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until leader (True) or stopped (False)."""
        cfg = self.config
        while not stop.is_set():
            started = time.monotonic()
            try:
                won = await self._bounded(stop, started + cfg.renew_deadline)
            except FAILURES as exc:
                self._failed(exc)
            else:
                if won is None:
                    return False
                if won:
                    self._lead(started)
                    return True
            if await sleep_or_stop(stop, cfg.retry_period):
                return False
        return False

    async def hold(self, stop: asyncio.Event) -> None:
        """Renew every retry period until stopped (returns, still leader) or until the renew
        deadline passes without a renewal (steps down at that moment and returns)."""
        cfg = self.config
        while True:
            deadline = self._renewed_at + cfg.renew_deadline
            pause = min(cfg.retry_period, deadline - time.monotonic())
            if await sleep_or_stop(stop, max(0.0, pause)):
                return
            started = time.monotonic()
            if started >= deadline:
                self._step_down(f"not renewed within the renew deadline ({cfg.renew_deadline:g}s)")
                return
            try:
                won = await self._bounded(stop, deadline)
            except FAILURES as exc:
                self._failed(exc)
                continue  # retry until the deadline
            if won is None:
                return
            if not won:
                holder = self._observed[0] if self._observed else "?"
                self._step_down(f"the lease was taken by {holder or 'nobody'}")
                return
            self._renewed_at = started

    async def release(self) -> None:
        """Give the lease up on a clean shutdown, so another candidate takes over at once;
        only while still leading, and only if the apiserver answers quickly."""
        left = self.time_left()
        if left <= 0 or self._lease is None:
            self.is_leader = False
            return
        lease = dict(self._lease)
        lease["spec"] = {**lease.get("spec", {}), "holderIdentity": "", "leaseDurationSeconds": 1}
        try:
            async with asyncio.timeout(min(left, RELEASE_TIMEOUT)):
                await self._request(f"releasing {self.where}", self.kube.replace(LEASE, lease))
        except FAILURES as exc:
            self._failed(exc)
        self.is_leader = False
