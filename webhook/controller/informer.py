"""LIST + WATCH into an in-memory store, surviving disconnects and 410 Gone.

After a disconnect the watch resumes from the last resourceVersion seen (bookmarks keep it
fresh); when the server answers 410 Gone (that version was compacted away) the informer lists
again and reports the difference to the handler, so no change is lost either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp

from webhook.controller.kube import ApiError, Kube, Obj, Resource, sleep_or_stop

log = logging.getLogger(__name__)
Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects
Handler = Callable[[str, Obj], None]  # (ADDED | MODIFIED | DELETED, object)
IndexFn = Callable[[Obj], str | None]


def key_of(obj: Obj) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _rv(obj: Obj) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


class Gone(Exception):
    pass


class Informer:
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
        watch_timeout: int = 300,
        name: str = "",
    ) -> None:
        self.kube = kube
        self.res = res
        self.namespace = namespace
        self.label_selector = label_selector
        self.handler = handler
        self.watch_timeout = watch_timeout
        self.name = name or res.plural
        self.store: dict[Key, Obj] = {}
        self.index_fn = index
        self.keep = keep  # objects it rejects are not stored (as if deleted)
        self._index: dict[str, set[Key]] = {}
        self._index_of: dict[Key, str] = {}
        self.synced = asyncio.Event()
        self.relists = 0  # how many times a LIST was needed (first one included)
        self.resource_version = ""
        self.failed: str | None = None  # last error, for /healthz

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
                log.exception("%s: event handler failed", self.name)

    async def _list(self) -> None:
        listed = await self.kube.list(self.res, self.namespace, self.label_selector)
        self.relists += 1
        fresh = {
            key_of(o): o for o in listed.get("items") or [] if self.keep is None or self.keep(o)
        }
        old = self.store
        self.store = {}
        self._index.clear()
        self._index_of.clear()
        for key, obj in fresh.items():
            self._put(key, obj)
        self.resource_version = str((listed.get("metadata") or {}).get("resourceVersion") or "")
        for key, obj in fresh.items():
            previous = old.get(key)
            if previous is None:
                self._emit("ADDED", obj)
            elif _rv(previous) != _rv(obj):
                self._emit("MODIFIED", obj)
        for key, obj in old.items():
            if key not in fresh:
                self._emit("DELETED", obj)

    async def _watch(self) -> None:
        async for event in self.kube.watch(
            self.res,
            self.namespace,
            self.resource_version,
            self.label_selector,
            self.watch_timeout,
        ):
            kind = event.get("type")
            obj: Any = event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise Gone(str(obj.get("message", "")))
                raise ApiError(int(obj.get("code") or 500), "WatchError", str(obj.get("message")))
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if rv:
                self.resource_version = str(rv)
            if kind == "BOOKMARK":
                continue
            key = key_of(obj)
            if kind in ("ADDED", "MODIFIED") and self.keep is not None and not self.keep(obj):
                if key not in self.store:
                    continue
                kind = "DELETED"
            if kind == "DELETED":
                self._drop(key)
                self._emit("DELETED", obj)
            elif kind in ("ADDED", "MODIFIED"):
                previous = self.store.get(key)
                if previous is not None and _rv(previous) > _rv(obj):
                    continue  # we already hold newer (write-through)
                self._put(key, obj)
                self._emit(kind, obj)

    async def _watch_until(self, stop: asyncio.Event) -> bool:
        """Watch until the server ends the stream (False) or `stop` is set (True)."""
        watching = asyncio.ensure_future(self._watch())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({watching, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not watching.done():
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watching
        if stop.is_set() and not watching.done():
            return True
        if watching.cancelled():
            return True
        watching.result()  # raises what the watch raised
        return stop.is_set()

    async def run(self, stop: asyncio.Event) -> None:
        # Run again after a stop, it resumes from the last version seen (a 410 relists).
        need_list = not self.resource_version
        failures = 0
        while not stop.is_set():
            try:
                if need_list:
                    await self._list()
                    need_list = False
                    self.synced.set()
                if await self._watch_until(stop):
                    return
                failures = 0
                self.failed = None
            except Gone as exc:
                log.info("%s: watch expired (%s): listing again", self.name, exc)
                need_list = True
            except ApiError as exc:
                if exc.status == 410:
                    need_list = True
                    continue
                failures += 1
                self.failed = str(exc)
                log.warning("%s: %s", self.name, exc)
                need_list = True
            except (OSError, TimeoutError, ValueError, aiohttp.ClientError) as exc:
                failures += 1
                self.failed = str(exc) or type(exc).__name__
                log.warning("%s: watch interrupted: %s", self.name, self.failed)
            if failures:
                delay = min(30.0, 0.5 * 2 ** min(failures, 6)) * (0.5 + random.random())
                if await sleep_or_stop(stop, delay):
                    return
