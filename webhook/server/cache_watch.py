"""LIST+WATCH of a custom resource, feeding callbacks: an informer without the cache.

Generic (any group/version/plural, cluster-scoped or in one namespace) so the controller can
use it too. The loop: LIST (`on_replace(items)`), then WATCH from the list's resourceVersion
(`on_event(type, obj)` per event), following resourceVersion through events and BOOKMARKs.
A watch the server ends (timeout) is resumed from the last version; 410 Gone means that
version is compacted away: LIST again. Errors and disconnects: retry with exponential
backoff and jitter. Runs until cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from webhook.core.watch_plan import (
    GONE,
    Apply,
    Bookmark,
    Relist,
    backoff_delay,
    interpret,
    list_resource_version,
)
from webhook.server.logs import log

MAX_LINE = 16 * 1024 * 1024  # one watch event; an ImageCache is a few KiB


class WatchFailed(Exception):
    """The watch cannot go on from the current resourceVersion (retried with backoff)."""


@dataclass
class WatchTarget:
    group: str
    version: str
    plural: str
    namespace: str | None = None  # None: cluster-scoped, or all namespaces
    label_selector: str | None = None

    def describe(self) -> str:
        where = f" in namespace {self.namespace}" if self.namespace else ""
        return f"{self.plural}.{self.group}/{self.version}{where}"


@dataclass
class WatchOptions:
    timeout_seconds: int = 300  # the server ends each watch after this; we resume
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    random: Callable[[], float] = field(default=random.random)


class _Api:
    def __init__(self, api_client: Any, target: WatchTarget) -> None:
        from kubernetes_asyncio import client  # see webhook.server.cluster

        self.api = client.CustomObjectsApi(api_client)
        self.target = target

    def _call(self, **kwargs: Any) -> Any:
        t = self.target
        if t.label_selector:
            kwargs["label_selector"] = t.label_selector
        if t.namespace:
            return self.api.list_namespaced_custom_object(
                t.group, t.version, t.namespace, t.plural, **kwargs
            )
        return self.api.list_cluster_custom_object(t.group, t.version, t.plural, **kwargs)

    async def list(self) -> Mapping[str, Any]:
        listing: Mapping[str, Any] = await self._call(_request_timeout=60)
        return listing

    async def watch(self, resource_version: str, timeout_seconds: int) -> Any:
        return await self._call(
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout_seconds,
            _preload_content=False,
            # The server closes the stream at timeout_seconds; a stream silent for much longer
            # than that is a dead connection.
            _request_timeout=timeout_seconds + 30,
        )


async def _lines(response: aiohttp.ClientResponse) -> Any:
    """The stream's lines, without aiohttp's 128 KiB readline limit."""
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line, buffer = buffer[:end], buffer[end + 1 :]
            if line.strip():
                yield line
        if len(buffer) > MAX_LINE:
            raise WatchFailed(f"a watch event is larger than {MAX_LINE} bytes")
    if buffer.strip():
        yield buffer


async def list_and_watch(
    api_client: Any,
    target: WatchTarget,
    *,
    on_replace: Callable[[list[Mapping[str, Any]]], None],
    on_event: Callable[[str, Mapping[str, Any]], None],
    logger: logging.Logger,
    options: WatchOptions | None = None,
    resource_version: str | None = None,
) -> None:
    """Keep the callbacks fed until cancelled.

    `resource_version`: resume a watch from there instead of starting with a LIST (a version
    that is too old gets 410 Gone, and a LIST).
    """
    from kubernetes_asyncio.client.exceptions import ApiException

    opts = options or WatchOptions()
    api = _Api(api_client, target)
    version = resource_version
    failures = 0  # consecutive rounds that got nothing done: they back off
    what = target.describe()
    while True:
        try:
            if version is None:
                listing = await api.list()
                version = list_resource_version(listing)
                on_replace(list(listing["items"]))
                log(logger, logging.INFO, "listed", resource=what, items=len(listing["items"]),
                    resource_version=version)  # fmt: skip
            version, progressed = await _watch_once(api, version, opts, on_event, logger, what)
            if progressed:
                failures = 0
            elif version is None and failures == 0:
                failures = 1  # one immediate LIST after 410; a second 410 in a row waits
            else:
                why = "410 Gone again" if version is None else "the watch ended without events"
                failures = await _pause(logger, what, why, failures, opts)
        except asyncio.CancelledError:
            raise
        except ApiException as exc:
            if exc.status == GONE:
                log(logger, logging.INFO, "resourceVersion expired, listing again", resource=what)
                version = None
                continue
            error = f"HTTP {exc.status} {exc.reason or ''}".strip()
            failures = await _pause(logger, what, error, failures, opts)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, WatchFailed) as exc:
            failures = await _pause(logger, what, str(exc) or type(exc).__name__, failures, opts)
        except Exception as exc:  # a failing callback: log it, do not end the loop
            logger.exception("watch callback failed", extra={"fields": {"resource": what}})
            failures = await _pause(logger, what, repr(exc), failures, opts)


async def _pause(
    logger: logging.Logger, what: str, error: str, failures: int, opts: WatchOptions
) -> int:
    delay = backoff_delay(
        failures, jitter=opts.random(), base=opts.backoff_base, cap=opts.backoff_cap
    )
    log(logger, logging.WARNING, "watch failed, retrying", resource=what, error=error,
        retry_in_s=round(delay, 2), attempt=failures + 1)  # fmt: skip
    await asyncio.sleep(delay)
    return failures + 1


async def _watch_once(
    api: _Api,
    version: str,
    opts: WatchOptions,
    on_event: Callable[[str, Mapping[str, Any]], None],
    logger: logging.Logger,
    what: str,
) -> tuple[str | None, bool]:
    """One watch request: (the version to resume from or None to LIST again, whether any
    event or bookmark arrived; a watch that ends at once without any must not loop hot)."""
    started = time.monotonic()
    progressed = False
    response = await api.watch(version, opts.timeout_seconds)
    try:
        if response.status == GONE:
            log(logger, logging.INFO, "listing again", resource=what,
                reason=f"watch answered HTTP 410 for resourceVersion {version}")  # fmt: skip
            return None, False
        if response.status >= 400:
            body = (await response.text())[:500]
            raise WatchFailed(f"watch answered HTTP {response.status}: {body}")
        async for line in _lines(response):
            step = interpret(line)
            if isinstance(step, Apply):
                on_event(step.event_type, step.obj)
                version = step.resource_version or version
            elif isinstance(step, Bookmark):
                version = step.resource_version
            elif isinstance(step, Relist):
                log(logger, logging.INFO, "listing again", resource=what, reason=step.reason)
                return None, progressed
            else:
                raise WatchFailed(step.reason)
            progressed = True
    finally:
        response.release()
    # A quiet watch that ran its course (the server's timeout) is progress too.
    return version, progressed or time.monotonic() - started >= min(opts.timeout_seconds, 5)
