"""Leader election on a coordination.k8s.io/v1 Lease, the way client-go does it.

Expiry is judged on this process's own clock: a candidate notes when it last saw the lease
record change and takes over once it has not changed for leaseDurationSeconds (clocks of
different machines are never compared). Takeover is an update with the resourceVersion read,
so of two candidates only one wins. A leader that cannot renew within the renew deadline
steps down (the process exits and restarts clean).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp

from webhook.kube.client import LEASE, ApiError, Kube, Obj, sleep_or_stop

log = logging.getLogger(__name__)


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class LeaseConfig:
    namespace: str
    name: str
    identity: str
    lease_seconds: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


class LeaderElector:
    def __init__(self, kube: Kube, config: LeaseConfig) -> None:
        self.kube = kube
        self.config = config
        self.is_leader = False
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._lease: Obj | None = None

    def _spec(self, transitions: int, acquire: str | None = None) -> Obj:
        now = _micro_time()
        return {
            "holderIdentity": self.config.identity,
            "leaseDurationSeconds": max(1, round(self.config.lease_seconds)),
            "acquireTime": acquire or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    async def _try(self) -> bool:
        """One attempt to acquire or renew; True if we hold the lease afterwards."""
        cfg = self.config
        try:
            lease = await self.kube.get(LEASE, cfg.namespace, cfg.name)
        except ApiError as exc:
            if exc.status != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": cfg.name, "namespace": cfg.namespace},
                "spec": self._spec(0),
            }
            try:
                self._lease = await self.kube.create(body)
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
        if holder == cfg.identity:
            lease["spec"] = self._spec(transitions, spec.get("acquireTime"))
        else:
            lease["spec"] = self._spec(transitions + 1)
        try:
            self._lease = await self.kube.replace(LEASE, lease)
        except ApiError as exc:
            if exc.status == 409:  # someone else wrote it first
                return False
            raise
        self._observed = (cfg.identity, self._lease["spec"]["renewTime"])
        self._observed_at = time.monotonic()
        return True

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until leader (True) or stopped (False)."""
        while not stop.is_set():
            try:
                if await self._try():
                    self.is_leader = True
                    log.info("became leader (%s)", self.config.identity)
                    return True
            except (ApiError, OSError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("leader election: %s", exc)
            if await sleep_or_stop(stop, self.config.retry_period):
                return False
        return False

    async def hold(self, stop: asyncio.Event) -> None:
        """Renew until stopped (returns) or until renewal fails for the renew deadline
        (sets is_leader False and returns)."""
        last_renew = time.monotonic()
        while not stop.is_set():
            if await sleep_or_stop(stop, self.config.retry_period):
                return
            try:
                if await self._try():
                    last_renew = time.monotonic()
                    continue
                log.error("lost the lease to %s", self._observed[0] if self._observed else "?")
                self.is_leader = False
                return
            except (ApiError, OSError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("renewing the lease: %s", exc)
            if time.monotonic() - last_renew > self.config.renew_deadline:
                log.error("could not renew the lease for %.0fs", self.config.renew_deadline)
                self.is_leader = False
                return

    async def release(self) -> None:
        """Give the lease up on a clean shutdown, so another candidate takes over at once."""
        if not self.is_leader or self._lease is None:
            return
        lease = dict(self._lease)
        lease["spec"] = {**lease.get("spec", {}), "holderIdentity": "", "leaseDurationSeconds": 1}
        try:
            await self.kube.replace(LEASE, lease)
        except (ApiError, OSError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("releasing the lease: %s", exc)
        self.is_leader = False
