"""The matching policy: pod images + caches + namespace -> a decision that explains itself.

DESIGN.md, "Matching policy". Only Ready, unexpired caches usable from the pod's namespace
and with a ready copy there take part. auto/exact: caches that hold every image, smallest
first, then newest, then by name. auto/partial: caches that hold at least one image, most
images held first, then the same order. manual: the named cache, even when it lacks images.
When the only cache that would do lacks a ready copy in the namespace: `unavailable`.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal, NamedTuple

from webhook.core import names
from webhook.core.caches import CacheIndex, CacheView, no_ready_copy
from webhook.core.imageref import ImageRef, InvalidReference, parse
from webhook.core.quantity import InvalidQuantity, parse_bytes

Outcome = Literal["hit", "mismatch", "miss", "unavailable"]
_TRUE = frozenset({"true", "yes", "1", "on"})
_FALSE = frozenset({"false", "no", "0", "off"})
REJECTED_LOGGED = 10  # rejections kept without `explain` (for logs; explain lists them all)
_ORDER = operator.attrgetter("order")


@dataclass(frozen=True, slots=True)
class Request:
    """What the pod's annotations (and its namespace's default) ask for."""

    mode: Literal["auto", "manual"] | None  # None: the pod did not opt in
    cache_name: str | None = None
    partial: bool = False
    required: bool = False
    disk_size: int | None = None  # bytes, from imagecache.dev/disk-size
    pin: bool = True  # pin the cached images to their digests (imagecache.dev/pin)
    source: str = ""  # the annotation (or namespace label) that opted in
    problems: tuple[str, ...] = ()  # option values that were ignored, and why


def read_request(annotations: Mapping[str, str], *, namespace_auto: bool = False) -> Request:
    """Read the opt-in and option annotations; bad option values become `problems`."""
    mode: Literal["auto", "manual"] | None = None
    cache_name: str | None = None
    source = ""
    for key in (names.USE_CACHE, names.TKE_USE_CACHE, names.ECI_CACHE_ID):
        value = str(annotations.get(key, "")).strip()
        if value:
            source = key
            if value == "auto" and key != names.ECI_CACHE_ID:
                mode = "auto"
            else:
                mode, cache_name = "manual", value
            break
    if mode is None and str(annotations.get(names.ECI_AUTO, "")).strip().lower() in _TRUE:
        mode, source = "auto", names.ECI_AUTO
    if mode is None and namespace_auto:
        mode, source = "auto", f"namespace label {names.NAMESPACE_AUTO_LABEL}=auto"

    problems: list[str] = []
    match = str(annotations.get(names.MATCH, "exact")).strip().lower() or "exact"
    if match not in ("exact", "partial"):
        problems.append(f"annotation {names.MATCH}={match!r} is not exact or partial; using exact")
        match = "exact"
    disk_size: int | None = None
    if names.DISK_SIZE in annotations:
        try:
            disk_size = parse_bytes(str(annotations[names.DISK_SIZE]))
        except InvalidQuantity as exc:
            problems.append(f"annotation {names.DISK_SIZE} ignored: {exc}")
    pin = str(annotations.get(names.PIN, "true")).strip().lower() or "true"
    if pin not in _TRUE and pin not in _FALSE:
        problems.append(f"annotation {names.PIN}={pin!r} is not true or false; pinning")
    return Request(
        mode=mode,
        cache_name=cache_name,
        partial=match == "partial",
        required=str(annotations.get(names.REQUIRED, "")).strip().lower() in _TRUE,
        disk_size=disk_size,
        pin=pin not in _FALSE,
        source=source,
        problems=tuple(problems),
    )


@dataclass(frozen=True, slots=True)
class Rejected:
    cache: str
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    request: Request
    outcome: Outcome | None  # None: not opted in, nothing to decide
    reason: str
    cache: CacheView | None = None
    missing: tuple[str, ...] = ()  # pod images (as written) the chosen cache lacks
    rejected: tuple[Rejected, ...] = ()
    warnings: tuple[str, ...] = ()
    # unavailable for want of a copy: the cache the pod would get once its namespace's copy
    # is ready (recorded on the pod, so the controller makes that copy)
    waiting: CacheView | None = None
    snapshot: str | None = None  # hit, mismatch: the cache's ready copy in the pod's namespace

    @property
    def denied(self) -> str | None:
        """The message to deny the pod with, when `required` is set and no cache is used."""
        if self.request.required and self.outcome in ("miss", "unavailable"):
            return (
                f"imagecache: the pod requires an image cache ({names.REQUIRED}=true) "
                f"but none can be used: {self.reason}"
            )
        return None

    def unavailable(self, reason: str) -> Decision:
        """The same decision, turned down after matching (e.g. the pod cannot take the volume)."""
        return replace(
            self,
            outcome="unavailable",
            reason=reason,
            cache=None,
            missing=(),
            waiting=None,
            snapshot=None,
            warnings=(*self.warnings, f"imagecache: no cache used: {reason}"),
        )


def _parse_images(images: Sequence[str]) -> tuple[dict[str, ImageRef], list[str]]:
    refs: dict[str, ImageRef] = {}
    bad: list[str] = []
    for image in images:
        try:
            refs[image] = parse(image)
        except InvalidReference:
            bad.append(image)
    return refs, bad


def decide(
    images: Sequence[str],
    namespace: str,
    request: Request,
    index: CacheIndex,
    now: datetime,
    *,
    explain: bool = False,
) -> Decision:
    """Decide which cache (if any) a pod with `images` in `namespace` gets.

    With `explain`, every cache holding any of the images is listed with the reason it was
    not chosen; without, auto/exact stops at the first usable cache in order (admission).
    """
    if request.mode is None:
        return Decision(request, None, "the pod did not opt in to an image cache")
    refs, bad = _parse_images(images)
    warnings = tuple(f"imagecache: {p}" for p in request.problems) if request.problems else ()
    ask = _Ask(images, namespace, request, index, now, refs, bad, warnings)
    if request.mode == "manual":
        return _decide_manual(ask)
    if not explain and not request.partial and refs and not bad:
        return _first_exact(ask)
    return _decide_auto(ask)


class _Ask(NamedTuple):
    """One pod's question, as every way of deciding reads it."""

    images: Sequence[str]
    namespace: str
    request: Request
    caches: CacheIndex
    now: datetime
    refs: Mapping[str, ImageRef]  # the valid references, by image as written
    bad: Sequence[str]  # the images that are not valid references
    warnings: tuple[str, ...]


def _first_exact(ask: _Ask) -> Decision:
    """auto/exact for admission: walk the holders of the rarest image in order, stop at the
    first usable one that holds them all. Past the rejections kept for the log, only the
    holders with a ready copy in the pod's namespace are read. Costs the same with 10 caches
    or 10,000, unless thousands of them are not Ready or expired."""
    _, namespace, request, index, now, refs, _, warnings = ask
    keys = {ref.match_key for ref in refs.values()}
    rarest = min(keys, key=lambda k: len(index.with_key(k))) if len(keys) > 1 else next(iter(keys))
    rejected: list[Rejected] = []
    chosen: CacheView | None = None
    waiting: CacheView | None = None
    for cache in index.in_order(rarest):
        why = cache.closed_reason(namespace, now)
        if why is None and not keys <= cache.keys:
            why = "lacks " + ", ".join(i for i, r in refs.items() if not cache.holds(r))
        if why is None and namespace not in cache.copies:
            why = no_ready_copy(namespace)
            waiting = waiting or cache
        if why is None:
            chosen = cache
            break
        rejected.append(Rejected(cache.name, why))
        if len(rejected) == REJECTED_LOGGED:
            # The walk on would only find the first usable cache: look where it can be.
            chosen = _first_usable_after(cache, keys, index.copied_to(rarest, namespace),
                                         namespace, now)  # fmt: skip
            if chosen is None and waiting is None:
                waiting = _first_waiting_after(
                    cache, keys, index.usable_from(rarest, namespace), namespace, now
                )
            break
    if chosen is not None:
        reason = f"ImageCache {chosen.name!r} holds every image"
        return Decision(request, "hit", reason, chosen, (), tuple(rejected), warnings,
                        snapshot=chosen.copies[namespace])  # fmt: skip
    if waiting is not None:
        return _waiting(request, namespace, waiting, tuple(rejected), warnings)
    reason = "no usable ImageCache holds every one of the pod's images"
    return Decision(request, "miss", reason, rejected=tuple(rejected), warnings=warnings)


def _first_usable_after(
    last: CacheView, keys: set[str], run: Sequence[CacheView], namespace: str, now: datetime
) -> CacheView | None:
    """The first cache after `last` in auto order, from `run` (in order, each with a ready
    copy in `namespace`), that `namespace` may use now and that holds `keys`."""
    for i in range(bisect.bisect_right(run, last.order, key=_ORDER), len(run)):
        cache = run[i]
        if keys <= cache.keys and cache.closed_reason(namespace, now) is None:
            return cache
    return None


def _first_waiting_after(
    last: CacheView,
    keys: set[str],
    runs: Sequence[Sequence[CacheView]],
    namespace: str,
    now: datetime,
) -> CacheView | None:
    """The first cache after `last` in auto order that holds `keys` and waits for its copy
    in `namespace`, from `runs` (each in order; together, the caches the namespace may use)."""
    found: CacheView | None = None
    for run in runs:
        for i in range(bisect.bisect_right(run, last.order, key=_ORDER), len(run)):
            cache = run[i]
            if keys <= cache.keys and cache.waits_for_copy(namespace, now):
                if found is None or cache.order < found.order:
                    found = cache
                break
    return found


def _waiting(
    request: Request,
    namespace: str,
    cache: CacheView,
    rejected: tuple[Rejected, ...],
    warnings: tuple[str, ...],
) -> Decision:
    """unavailable: `cache` would be used but its copy in `namespace` is not ready."""
    reason = f"{no_ready_copy(namespace)}: ImageCache {cache.name!r} is used once it is ready"
    return Decision(
        request,
        "unavailable",
        reason,
        rejected=rejected,
        warnings=(*warnings, f"imagecache: {reason}; images are pulled from their registries"),
        waiting=cache,
    )


def _decide_manual(ask: _Ask) -> Decision:
    images, namespace, request, index, now, refs, _, warnings = ask
    name = request.cache_name or ""
    cache = index.get(name)
    why = (
        f"ImageCache {name!r} does not exist"
        if cache is None
        else cache.closed_reason(namespace, now)
    )
    if cache is None or why is not None:
        reason = f"ImageCache {name!r} cannot be used: {why}" if cache else f"{why}"
        return Decision(
            request,
            "unavailable",
            reason,
            rejected=(Rejected(name, str(why)),),
            warnings=(*warnings, f"imagecache: {reason}; images are pulled from their registries"),
        )
    if namespace not in cache.copies:
        rejected = (Rejected(name, no_ready_copy(namespace)),)
        return _waiting(request, namespace, cache, rejected, warnings)
    snapshot = cache.copies[namespace]
    missing = tuple(i for i in dict.fromkeys(images) if i not in refs or not cache.holds(refs[i]))
    if not missing:
        return Decision(request, "hit", f"ImageCache {name!r} holds every image", cache, (),
                        warnings=warnings, snapshot=snapshot)  # fmt: skip
    listed = ", ".join(missing)
    return Decision(
        request,
        "mismatch",
        f"ImageCache {name!r} lacks {listed}",
        cache,
        missing,
        snapshot=snapshot,
        warnings=(
            *warnings,
            f"imagecache: ImageCache {name!r} lacks {listed}; "
            "these are pulled from their registries",
        ),
    )


def _decide_auto(ask: _Ask) -> Decision:
    images, namespace, request, index, now, refs, bad, warnings = ask
    keys = {ref.match_key for ref in refs.values()}
    # Only caches that hold at least one of the pod's images are ever looked at.
    held: dict[str, int] = {}
    for key in keys:
        for name in index.with_key(key):
            held[name] = held.get(name, 0) + 1
    wanted = len(keys) + len(bad)
    rejected: list[Rejected] = []
    usable: list[tuple[CacheView, int]] = []
    waiting: list[tuple[CacheView, int]] = []
    for name, count in held.items():
        cache = index.get(name)
        if cache is None:
            continue
        why = cache.closed_reason(namespace, now)
        if why is None and not request.partial and count < wanted:
            lacking = [i for i, r in refs.items() if not cache.holds(r)] + list(bad)
            why = f"lacks {', '.join(lacking)}"
        if why is None and namespace not in cache.copies:
            why = no_ready_copy(namespace)
            waiting.append((cache, count))
        if why is not None:
            rejected.append(Rejected(name, why))
        else:
            usable.append((cache, count))
    rejected.sort(key=lambda r: r.cache)
    if bad:
        listed = ", ".join(bad)
        warnings = (*warnings, f"imagecache: cannot match invalid image references: {listed}")

    def first(pair: tuple[CacheView, int]) -> tuple[object, ...]:
        return (-pair[1], *pair[0].order) if request.partial else pair[0].order

    if not usable:
        if waiting:
            return _waiting(request, namespace, min(waiting, key=first)[0], tuple(rejected),
                            warnings)  # fmt: skip
        scope = "at least one" if request.partial else "every one"
        return Decision(
            request,
            "miss",
            f"no usable ImageCache holds {scope} of the pod's images",
            rejected=tuple(rejected),
            warnings=warnings,
        )
    usable.sort(key=first)
    chosen = usable[0][0]
    for other, _ in usable[1:]:
        rejected.append(Rejected(other.name, f"usable, but {chosen.name!r} comes first"))
    missing = tuple(i for i in dict.fromkeys(images) if i not in refs or not chosen.holds(refs[i]))
    outcome: Outcome = "mismatch" if missing else "hit"
    reason = f"ImageCache {chosen.name!r} holds " + (
        f"{usable[0][1]} of {wanted} images (partial match)" if missing else "every image"
    )
    return Decision(request, outcome, reason, chosen, missing, tuple(rejected), warnings,
                    snapshot=chosen.copies[namespace])  # fmt: skip
