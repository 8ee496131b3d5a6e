"""ImageCache objects as the webhook sees them, and the index it matches against.

The webhook answers from this in-memory index only (no API calls while admitting); it is
fed by a LIST+WATCH or a YAML file. Lookups go through a map from normalized image key to
cache names, so deciding costs the same with 10 caches or 10,000.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import yaml

from webhook.core import names
from webhook.core.cache_namespaces import usable_namespaces
from webhook.core.imageref import ImageRef, InvalidReference, parse
from webhook.core.quantity import GIB, InvalidQuantity, parse_bytes

DEFAULT_SIZE_GIB = 20
READY = "Ready"


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 timestamp as Kubernetes writes it, or None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class CacheView:
    """What matching needs of one ImageCache."""

    name: str
    images: tuple[ImageRef, ...]
    keys: frozenset[str]  # image keys this cache can serve (see ImageRef.match_key)
    phase: str
    created: datetime | None
    size_bytes: int  # disk a pod gets: status.restoreSize, else spec.imageCacheSize GiB
    restore_size: str | None
    storage_class: str | None
    expire_time: datetime | None
    namespaces: frozenset[str] | None  # None: every namespace
    bad_images: tuple[str, ...] = ()  # spec images that do not parse (explained, not matched)
    # status.namespaces: namespace -> the snapshot a pod's disk there clones, ready copies only
    copies: Mapping[str, str] = field(default_factory=dict)
    # status.images: image key (name:tag) -> the digest the build resolved it to
    digests: Mapping[str, str] = field(default_factory=dict)

    @property
    def order(self) -> tuple[int, float, str]:
        """Auto matching's preference: smaller disk first, then newer, then by name."""
        created = self.created.timestamp() if self.created else float("-inf")
        return (self.size_bytes, -created, self.name)

    def holds(self, ref: ImageRef) -> bool:
        return ref.match_key in self.keys

    def expired(self, now: datetime) -> bool:
        return self.phase == "Expired" or (self.expire_time is not None and self.expire_time <= now)

    def usable_from(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    def closed_reason(self, namespace: str, now: datetime) -> str | None:
        """Why a pod in `namespace` may not use this cache at all now (phase, expiry,
        namespaces), or None if it may once its copy there is ready."""
        if self.phase != READY:
            return f"phase is {self.phase or 'unset'}, not Ready"
        if self.expired(now):
            return "expired"
        if not self.usable_from(namespace):
            allowed = ", ".join(sorted(self.namespaces or ())) or "none"
            return f"not usable from namespace {namespace!r} (spec.namespaces: {allowed})"
        return None

    def unusable_reason(self, namespace: str, now: datetime) -> str | None:
        """Why a pod in `namespace` cannot use this cache now, or None if it can: a pod's
        disk can only clone a ready snapshot of its own namespace."""
        why = self.closed_reason(namespace, now)
        if why is None and namespace not in self.copies:
            return no_ready_copy(namespace)
        return why

    def waits_for_copy(self, namespace: str, now: datetime) -> bool:
        """Usable from `namespace` but for its copy there, which is not ready (yet)."""
        return namespace not in self.copies and self.closed_reason(namespace, now) is None


def no_ready_copy(namespace: str) -> str:
    return f"no ready copy in namespace {namespace} yet"


def _str_list(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _built(images: object) -> tuple[set[str], dict[str, str]]:
    """From status.images: the image keys (each built reference by tag, and pinned by its
    digest), and the digest of each reference by tag."""
    keys: set[str] = set()
    digests: dict[str, str] = {}
    for item in images if isinstance(images, list) else []:
        if not isinstance(item, Mapping):
            continue
        try:
            ref = parse(str(item.get("image", "")))
        except InvalidReference:
            continue
        keys.update(k for k in (ref.tagged, ref.pinned) if k)
        digest = item.get("digest")
        if isinstance(digest, str) and digest:
            try:
                keys.add(parse(f"{ref.name}@{digest}").match_key)
            except InvalidReference:
                continue
            if ref.tagged is not None and ref.digest is None:
                digests[ref.tagged] = digest
    return keys, digests


def _ready_copies(entries: object) -> dict[str, str]:
    """status.namespaces: namespace -> snapshotName of each copy that is readyToUse."""
    copies: dict[str, str] = {}
    for item in entries if isinstance(entries, list) else []:
        if not isinstance(item, Mapping) or item.get("readyToUse") is not True:
            continue
        namespace, snapshot = item.get("namespace"), item.get("snapshotName")
        if isinstance(namespace, str) and namespace and isinstance(snapshot, str) and snapshot:
            copies[namespace] = snapshot
    return copies


def cache_view(obj: Mapping[str, Any]) -> CacheView:
    """Read an ImageCache object; tolerant, since the index must never fail on one bad cache."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    refs: list[ImageRef] = []
    bad: list[str] = []
    for text in _str_list(spec.get("images")):
        try:
            refs.append(parse(text))
        except InvalidReference:
            bad.append(text)
    built, digests = _built(status.get("images"))
    # What a Ready cache holds is what its snapshot was built from (status.images): during a
    # rebuild spec.images already lists images the served snapshot does not have.
    keys = built if built else {k for r in refs for k in (r.tagged, r.pinned) if k}
    restore = status.get("restoreSize")
    restore_size = str(restore) if restore not in (None, "") else None
    size_gib = spec.get("imageCacheSize")
    size_gib = size_gib if isinstance(size_gib, int) and size_gib > 0 else DEFAULT_SIZE_GIB
    size_bytes = size_gib * GIB
    if restore_size is not None:
        try:
            size_bytes = parse_bytes(restore_size)
        except InvalidQuantity:
            restore_size = None
    namespaces = usable_namespaces(spec)
    # status.storageClassName is the class the controller really used (its default included).
    storage_class = status.get("storageClassName") or spec.get("storageClassName")
    return CacheView(
        name=str(meta.get("name", "")),
        images=tuple(refs),
        keys=frozenset(keys),
        phase=str(status.get("phase") or ""),
        created=parse_time(meta.get("creationTimestamp")),
        size_bytes=size_bytes,
        restore_size=restore_size,
        storage_class=storage_class if isinstance(storage_class, str) and storage_class else None,
        expire_time=parse_time(status.get("expireTime")),
        namespaces=namespaces,
        bad_images=tuple(bad),
        copies=_ready_copies(status.get("namespaces")),
        digests=digests,
    )


@dataclass(frozen=True, slots=True)
class _Parts:
    everywhere: tuple[CacheView, ...]  # spec.namespaces unset: usable from every namespace
    listed: dict[str, tuple[CacheView, ...]]  # by namespace, those that list it
    copied: dict[str, tuple[CacheView, ...]]  # by namespace, those with a ready copy there


@dataclass
class CacheIndex:
    """Caches by name, and cache names by image key."""

    _caches: dict[str, CacheView] = field(default_factory=dict)
    _by_key: dict[str, set[str]] = field(default_factory=dict)
    _in_order: dict[str, tuple[CacheView, ...]] = field(default_factory=dict)  # sorted lazily
    _parts: dict[str, _Parts] = field(default_factory=dict)  # in_order split by namespaces

    @classmethod
    def from_objects(cls, objects: Iterable[Mapping[str, Any]]) -> CacheIndex:
        index = cls()
        index.replace(objects)
        return index

    def __len__(self) -> int:
        return len(self._caches)

    def __iter__(self) -> Iterator[CacheView]:
        return iter(self._caches.values())

    def get(self, name: str) -> CacheView | None:
        return self._caches.get(name)

    def with_key(self, key: str) -> set[str]:
        """Names of the caches that hold image `key` (empty set if none)."""
        return self._by_key.get(key, set())

    def in_order(self, key: str) -> tuple[CacheView, ...]:
        """The caches that hold image `key`, in auto matching's order (sorted once per change)."""
        ordered = self._in_order.get(key)
        if ordered is None:
            ordered = tuple(
                sorted((self._caches[n] for n in self.with_key(key)), key=lambda c: c.order)
            )
            self._in_order[key] = ordered
        return ordered

    def _split(self, key: str) -> _Parts:
        """in_order(key) split by namespace, once per change, so that a namespace's own
        caches are found without reading every other namespace's."""
        parts = self._parts.get(key)
        if parts is None:
            everywhere: list[CacheView] = []
            listed: dict[str, list[CacheView]] = {}
            copied: dict[str, list[CacheView]] = {}
            for cache in self.in_order(key):
                if cache.namespaces is None:
                    everywhere.append(cache)
                else:
                    for name in cache.namespaces:
                        listed.setdefault(name, []).append(cache)
                for name in cache.copies:
                    copied.setdefault(name, []).append(cache)
            parts = _Parts(
                tuple(everywhere),
                {n: tuple(c) for n, c in listed.items()},
                {n: tuple(c) for n, c in copied.items()},
            )
            self._parts[key] = parts
        return parts

    def usable_from(self, key: str, namespace: str) -> tuple[tuple[CacheView, ...], ...]:
        """in_order(key) without the caches `namespace` may not use (spec.namespaces), as
        runs, each in order: the caches usable from every namespace, and those that list
        `namespace`."""
        parts = self._split(key)
        own = parts.listed.get(namespace)
        return (parts.everywhere, own) if own else (parts.everywhere,)

    def copied_to(self, key: str, namespace: str) -> tuple[CacheView, ...]:
        """in_order(key) with a ready copy in `namespace` (only they can be used there)."""
        return self._split(key).copied.get(namespace, ())

    def replace(self, objects: Iterable[Mapping[str, Any]]) -> None:
        """Start over from a full LIST."""
        self._caches.clear()
        self._by_key.clear()
        self._in_order.clear()
        self._parts.clear()
        for obj in objects:
            self.apply("ADDED", obj)

    def apply(self, event_type: str, obj: Mapping[str, Any]) -> None:
        """Apply one watch event (ADDED, MODIFIED, DELETED)."""
        view = cache_view(obj)
        if not view.name:
            return
        self._remove(view.name)
        if event_type != "DELETED":
            self._caches[view.name] = view
            for key in view.keys:
                self._by_key.setdefault(key, set()).add(view.name)
                self._in_order.pop(key, None)
                self._parts.pop(key, None)

    def _remove(self, name: str) -> None:
        old = self._caches.pop(name, None)
        if old is None:
            return
        for key in old.keys:
            self._in_order.pop(key, None)
            self._parts.pop(key, None)
            holders = self._by_key.get(key)
            if holders is not None:
                holders.discard(name)
                if not holders:
                    del self._by_key[key]


def parse_cache_documents(text: str) -> list[dict[str, Any]]:
    """ImageCache objects from YAML: several documents, or a `kind: List`/`...List`."""
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ValueError(f"caches file is not valid YAML: {exc}") from None
    objects: list[dict[str, Any]] = []
    for doc in documents:
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ValueError("each YAML document must be an ImageCache object or a List of them")
        items = doc.get("items") if str(doc.get("kind", "")).endswith("List") else [doc]
        for item in items or []:
            if not isinstance(item, dict) or item.get("kind") != names.KIND:
                kind = item.get("kind") if isinstance(item, dict) else type(item).__name__
                raise ValueError(f"expected kind {names.KIND}, found {kind!r}")
            if not (item.get("metadata") or {}).get("name"):
                raise ValueError("an ImageCache in the caches file has no metadata.name")
            objects.append(item)
    return objects
