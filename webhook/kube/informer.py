"""The one LIST+WATCH loop (`ListWatch`), and the controller's cached `Informer` on top of it.

The loop: LIST (`on_replace(items)`, paged: `limit`/`continue`, each page through an optional
`transform` as it arrives, so a big cluster's whole list is never held raw), then WATCH from
the list's resourceVersion
(`on_event(type, obj)` per event), following resourceVersion through events and BOOKMARKs.
A watch the server ends (timeout) is resumed from the last version; 410 Gone means that
version is compacted away: LIST again. A continue token that expires between pages (410: the
list's snapshot was compacted away) falls back to one whole LIST, as client-go's pager does.
Errors and disconnects: retry with exponential
backoff and jitter (webhook.core.watch_plan.backoff_delay). Runs until cancelled.

Users: the webhook server's cache index (replace/apply) and the controller's informers
(an in-memory store that reports what changed, also across a relist).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
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
from webhook.kube.client import ApiError, Kube, Obj, Resource

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects
Handler = Callable[[str, Obj], None]  # (ADDED | MODIFIED | DELETED, object)
# What is kept of a listed object (None: not kept at all).
Transform = Callable[[Mapping[str, Any]], Mapping[str, Any] | None]
IndexFn = Callable[[Obj], str | None]


class WatchFailed(Exception):
    """The watch cannot go on from the current resourceVersion (retried with backoff)."""


@dataclass
class WatchOptions:
    timeout_seconds: int = 300  # the server ends each watch after this; we resume
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    page_size: int = 500  # objects per LIST page (client-go's reflector uses 500 too)
    random: Callable[[], float] = field(default=random.random)


def _log(logger: logging.Logger, level: int, msg: str, **fields: Any) -> None:
    # Fields as the server's JSON log format reads them (`extra={"fields": ...}`).
    logger.log(level, msg, extra={"fields": fields})


class ListWatch:
    """LIST+WATCH of one resource feeding two callbacks; `run()` until cancelled.

    `resource_version`: resume a watch from there instead of starting with a LIST (a version
    that is too old gets 410 Gone, and a LIST). Running again after a cancel resumes too.
    """

    def __init__(
        self,
        kube: Kube,
        res: Resource,
        *,
        on_replace: Callable[[list[Mapping[str, Any]]], None],
        on_event: Callable[[str, Mapping[str, Any]], None],
        logger: logging.Logger,
        namespace: str | None = None,
        label_selector: str | None = None,
        options: WatchOptions | None = None,
        resource_version: str | None = None,
        transform: Transform | None = None,
    ) -> None:
        self.kube = kube
        self.res = res
        self.transform = transform
        self.on_replace = on_replace
        self.on_event = on_event
        self.logger = logger
        self.namespace = namespace
        self.label_selector = label_selector
        self.options = options or WatchOptions()
        self.resource_version = resource_version
        self.relists = 0  # LISTs done (the first one included)
        self.expired_continues = 0  # paged LISTs that fell back to a whole LIST
        self.failed: str | None = None  # the last error, until the next progress
        where = f" in namespace {namespace}" if namespace else ""
        self.what = f"{res.plural} ({res.api_version}){where}"

    async def run(self) -> None:
        failures = 0  # consecutive rounds that got nothing done: they back off
        while True:
            try:
                if self.resource_version is None:
                    await self._list()
                if await self._watch_once():
                    failures = 0
                    self.failed = None
                elif self.resource_version is None and failures == 0:
                    failures = 1  # one immediate LIST after 410; a second 410 in a row waits
                else:
                    why = (
                        "410 Gone again"
                        if self.resource_version is None
                        else "the watch ended without events"
                    )
                    failures = await self._pause(why, failures)
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                failures = await self._pause(f"HTTP {exc}", failures)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError, WatchFailed) as exc:
                failures = await self._pause(str(exc) or type(exc).__name__, failures)
            except Exception as exc:  # a failing callback: log it, do not end the loop
                self.logger.exception(
                    "watch callback failed", extra={"fields": {"resource": self.what}}
                )
                failures = await self._pause(repr(exc), failures)

    async def _list(self) -> None:
        items, version, pages = await self._list_pages()
        self.relists += 1
        self.on_replace(items)
        self.resource_version = version
        self.failed = None
        _log(self.logger, logging.INFO, "listed", resource=self.what,
             items=len(items), pages=pages, resource_version=version)  # fmt: skip

    def _kept(self, raw: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        if self.transform is None:
            return raw
        return [kept for obj in raw if (kept := self.transform(obj)) is not None]

    async def _list_pages(self) -> tuple[list[Mapping[str, Any]], str, int]:
        """(items, the list's resourceVersion, pages read). Every page is of one snapshot
        (the first page's resourceVersion)."""
        items: list[Mapping[str, Any]] = []
        token: str | None = None
        pages = 0
        while True:
            try:
                page = await self.kube.list(self.res, self.namespace, self.label_selector,
                                            limit=self.options.page_size, continue_token=token)
            except ApiError as exc:
                if exc.status != GONE or token is None:
                    raise
                self.expired_continues += 1
                _log(self.logger, logging.WARNING, "list continue token expired, listing whole",
                     resource=self.what, pages_read=pages, error=exc.message)  # fmt: skip
                whole = await self.kube.list(self.res, self.namespace, self.label_selector)
                return self._kept(whole["items"]), list_resource_version(whole), pages + 1
            pages += 1
            version = list_resource_version(page)
            items.extend(self._kept(page["items"]))
            token = (page.get("metadata") or {}).get("continue") or None
            if token is None:
                return items, version, pages

    async def _pause(self, error: str, failures: int) -> int:
        opts = self.options
        self.failed = error
        delay = backoff_delay(
            failures, jitter=opts.random(), base=opts.backoff_base, cap=opts.backoff_cap
        )
        _log(self.logger, logging.WARNING, "watch failed, retrying", resource=self.what,
             error=error, retry_in_s=round(delay, 2), attempt=failures + 1)  # fmt: skip
        await asyncio.sleep(delay)
        return failures + 1

    def _relist(self, reason: str) -> None:
        _log(self.logger, logging.INFO, "listing again", resource=self.what, reason=reason)
        self.resource_version = None

    async def _watch_once(self) -> bool:
        """One watch request; whether any event or bookmark arrived (a watch that ends at
        once without any must not loop hot). Leaves resource_version None to LIST again."""
        version = self.resource_version
        assert version is not None
        timeout = self.options.timeout_seconds
        started = time.monotonic()
        progressed = False
        stream = self.kube.watch(
            self.res, self.namespace, version, self.label_selector, timeout
        )
        try:
            async with contextlib.aclosing(stream):
                async for line in stream:
                    step = interpret(line)
                    if isinstance(step, Apply):
                        self.on_event(step.event_type, step.obj)
                        self.resource_version = step.resource_version or self.resource_version
                    elif isinstance(step, Bookmark):
                        self.resource_version = step.resource_version
                    elif isinstance(step, Relist):
                        self._relist(step.reason)
                        return progressed
                    else:
                        raise WatchFailed(step.reason)
                    progressed = True
        except ApiError as exc:
            if exc.status != GONE:
                raise
            self._relist(f"watch answered HTTP 410 for resourceVersion {version}")
            return False
        # A quiet watch that ran its course (the server's timeout) is progress too.
        return progressed or time.monotonic() - started >= min(timeout, 5)


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _as_obj(obj: Mapping[str, Any]) -> Obj:
    # Objects from the watch are parsed JSON, so dicts already.
    return obj if isinstance(obj, dict) else dict(obj)


def _rv(obj: Obj) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


class Informer:
    """A ListWatch into an in-memory store (with an optional index), telling `handler` what
    changed. After a disconnect the watch resumes from the last resourceVersion seen; after
    410 Gone it lists again and reports the difference, so no change is lost either way."""

    def __init__(
        self,
        kube: Kube,
        res: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        handler: Handler | None = None,
        index: IndexFn | None = None,
        keep: Callable[[Obj], bool] | None = None,
        transform: Callable[[Obj], Obj] | None = None,
        watch_timeout: int = 300,
        name: str = "",
    ) -> None:
        self.res = res
        self.handler = handler
        self.name = name or res.plural
        self.store: dict[Key, Obj] = {}
        self.index_fn = index
        self.keep = keep  # objects it rejects are not stored (as if deleted)
        self.transform = transform  # what is stored of an object, and handed to the handler
        self._index: dict[str, set[Key]] = {}
        self._index_of: dict[Key, str] = {}
        self.synced = asyncio.Event()
        self._log = logging.getLogger(f"{__name__}.{self.name}")
        self.loop = ListWatch(
            kube,
            res,
            on_replace=self._replace,
            on_event=self._event,
            logger=self._log,
            namespace=namespace,
            label_selector=label_selector,
            options=WatchOptions(timeout_seconds=watch_timeout),
            transform=self._admit,
        )

    @property
    def relists(self) -> int:
        return self.loop.relists

    @property
    def resource_version(self) -> str:
        return self.loop.resource_version or ""

    @property
    def failed(self) -> str | None:
        """The last error, for /healthz."""
        return self.loop.failed

    def __len__(self) -> int:
        return len(self.store)

    def __iter__(self) -> Iterator[Obj]:
        return iter(list(self.store.values()))

    def get(self, namespace: str, name: str) -> Obj | None:
        return self.store.get((namespace, name))

    def indexed(self, value: str) -> list[Obj]:
        """Objects whose index function gave `value` (e.g. those of one cache)."""
        keys = self._index.get(value, ())
        return [self.store[k] for k in keys if k in self.store]

    def _put(self, key: Key, obj: Obj) -> None:
        self.store[key] = obj
        if self.index_fn is None:
            return
        value = self.index_fn(obj)
        old = self._index_of.get(key)
        if old == value:
            return
        if old is not None:
            self._unindex(key, old)
        if value is not None:
            self._index.setdefault(value, set()).add(key)
            self._index_of[key] = value

    def _unindex(self, key: Key, value: str) -> None:
        keys = self._index.get(value)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._index[value]
        self._index_of.pop(key, None)

    def _drop(self, key: Key) -> None:
        self.store.pop(key, None)
        old = self._index_of.get(key)
        if old is not None:
            self._unindex(key, old)

    # Write-through: what our own writes returned, seen before the watch delivers it, so the
    # next reconcile does not act on the state from before the write.
    def remember(self, obj: Obj) -> None:
        key = key_of(obj)
        old = self.store.get(key)
        if old is None or _rv(obj) >= _rv(old):
            self._put(key, obj)

    def forget(self, namespace: str, name: str) -> None:
        self._drop((namespace, name))

    def _emit(self, kind: str, obj: Obj) -> None:
        if self.handler is not None:
            try:
                self.handler(kind, obj)
            except Exception:  # a handler bug must not stop the watch
                self._log.exception("%s: event handler failed", self.name)

    def _admit(self, obj: Mapping[str, Any]) -> Obj | None:
        """What is stored of `obj`: None if `keep` rejects it, else `transform(obj)`."""
        raw = _as_obj(obj)
        if self.keep is not None and not self.keep(raw):
            return None
        return raw if self.transform is None else self.transform(raw)

    def _replace(self, items: list[Mapping[str, Any]]) -> None:
        fresh = {key_of(o): _as_obj(o) for o in items}  # kept and transformed (_admit)
        old = self.store
        self.store = {}
        self._index.clear()
        self._index_of.clear()
        for key, obj in fresh.items():
            self._put(key, obj)
        for key, obj in fresh.items():
            previous = old.get(key)
            if previous is None:
                self._emit("ADDED", obj)
            elif _rv(previous) != _rv(obj):
                self._emit("MODIFIED", obj)
        for key, obj in old.items():
            if key not in fresh:
                self._emit("DELETED", obj)
        self.synced.set()

    def _event(self, kind: str, event_obj: Mapping[str, Any]) -> None:
        obj = _as_obj(event_obj)
        key = key_of(obj)
        if kind != "DELETED" and self.keep is not None and not self.keep(obj):
            if key not in self.store:
                return
            kind = "DELETED"
        if self.transform is not None:
            obj = self.transform(obj)
        if kind == "DELETED":
            self._drop(key)
            self._emit("DELETED", obj)
            return
        previous = self.store.get(key)
        if previous is not None and _rv(previous) > _rv(obj):
            return  # we already hold newer (write-through)
        self._put(key, obj)
        self._emit(kind, obj)

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set; run again, it resumes from the last version seen."""
        task = asyncio.create_task(self.loop.run(), name=f"informer-{self.name}")
        try:
            await stop.wait()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
