"""Requests the node mirror answers: distribution paths, `?ns=`, Range and Accept.

Pure decisions over strings. The aiohttp shell hands in the method, path, query and headers
and gets back what to look up (`Route`), which bytes to send (`ByteRange`) or which error to
answer (`ApiError`, an OCI error body). Every name goes through `imageref.parse` and every
digest through `mirror_index.is_digest` before the shell builds a path from it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from webhook.core.imageref import InvalidReference, parse
from webhook.mirror.core.mirror_index import is_digest

BASE, MANIFEST, BLOB, TAGS = "base", "manifest", "blob", "tags"
READ_METHODS = frozenset({"GET", "HEAD"})
# 19 digits hold any file size; a longer number in a Range is an attack or a bug.
_RANGE_SPEC = re.compile(r"^(\d{0,19})-(\d{0,19})$")


@dataclass(frozen=True, slots=True)
class ApiError:
    status: int
    code: str  # an OCI distribution error code
    message: str
    headers: tuple[tuple[str, str], ...] = ()

    def body(self) -> dict[str, Any]:
        return {"errors": [{"code": self.code, "message": self.message, "detail": {}}]}


@dataclass(frozen=True, slots=True)
class Route:
    kind: str  # BASE, MANIFEST, BLOB or TAGS
    registry: str = ""
    repository: str = ""
    reference: str = ""  # a tag or digest for MANIFEST, a digest for BLOB, "" for TAGS

    @property
    def by_digest(self) -> bool:
        return is_digest(self.reference)

    @property
    def image(self) -> str:
        """The reference in the usual spelling, for logs and error messages."""
        sep = "@" if self.by_digest else ":"
        return f"{self.registry}/{self.repository}{sep}{self.reference}"


def normalize_registry(host: str) -> str:
    """`host[:port]` as the index spells it (`index.docker.io` -> `docker.io`, lowercase);
    InvalidReference when it is not a registry host (a bare word would be a Docker Hub path)."""
    ref = parse(f"{host}/x/y")
    if ref.repository != "x/y":
        raise InvalidReference(host, "is not a registry host; write host[:port], e.g. ghcr.io")
    return ref.registry


def parse_route(method: str, path: str, ns: str | None, default_registry: str) -> Route | ApiError:
    """What `method path?ns=` asks for. Without ns the request is for `default_registry`
    (Docker's registry-mirrors send no ns and mean Docker Hub); empty refuses such requests."""
    if method not in READ_METHODS:
        return ApiError(405, "UNSUPPORTED", f"the mirror is read-only: {method} is not served")
    if path in ("/v2", "/v2/"):
        return Route(BASE)
    if not path.startswith("/v2/"):
        return ApiError(404, "NOT_FOUND", "not an OCI distribution path (want /v2/...)")
    parts = path[len("/v2/") :].split("/")
    tags_list = parts[-2:] == ["tags", "list"]
    if len(parts) < 3 or (parts[-2] not in ("manifests", "blobs") and not tags_list):
        return ApiError(
            404, "UNSUPPORTED", "the mirror serves only /v2/<name>/manifests/<reference>, "
            "/v2/<name>/blobs/<digest> and /v2/<name>/tags/list"
        )
    name, kind, reference = "/".join(parts[:-2]), parts[-2], parts[-1]
    if ns is not None:
        try:
            registry = normalize_registry(ns)
        except InvalidReference as exc:
            return ApiError(400, "NAME_INVALID", f"ns={ns!r} {exc.reason}")
    elif default_registry:
        registry = default_registry
    else:
        return ApiError(404, "NAME_UNKNOWN", "requests without ?ns=<registry> are not served")
    if kind == "tags":
        try:
            ref = parse(f"{registry}/{name}")
        except InvalidReference as exc:
            return ApiError(400, "NAME_INVALID", f"{name!r}: {exc.reason}")
        return Route(TAGS, ref.registry, ref.repository)
    looks_like_digest = ":" in reference
    if looks_like_digest and not is_digest(reference):
        return ApiError(
            400, "DIGEST_INVALID",
            f"digest {reference!r} is not sha256:<64 hex> or sha512:<128 hex> (lowercase)",
        )
    if kind == "blobs" and not looks_like_digest:
        return ApiError(400, "DIGEST_INVALID", f"a blob is named by its digest, not {reference!r}")
    try:
        ref = parse(f"{registry}/{name}{'@' if looks_like_digest else ':'}{reference}")
    except InvalidReference as exc:
        return ApiError(400, "NAME_INVALID", f"{name!r}: {exc.reason}")
    if ref.registry != registry:
        return ApiError(400, "NAME_INVALID", f"registry {registry!r} is not a registry host")
    return Route(MANIFEST if kind == "manifests" else BLOB, ref.registry, ref.repository,
                 reference)


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    length: int
    size: int  # of the whole blob
    partial: bool  # answer 206 with Content-Range

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.start + self.length - 1}/{self.size}"


def _unsatisfiable(size: int, why: str) -> ApiError:
    return ApiError(416, "RANGE_INVALID", f"Range {why}; the blob has {size} bytes",
                    (("Content-Range", f"bytes */{size}"),))


def parse_range(header: str | None, size: int) -> ByteRange | ApiError:
    """The bytes a single-range `Range: bytes=a-b | a- | -n` asks for (RFC 9110 14.1.2), the
    whole blob without one, 416 for anything else: several ranges, other units, junk."""
    if header is None or not header.strip():
        return ByteRange(0, size, size, partial=False)
    unit, eq, spec = header.strip().partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return _unsatisfiable(size, f"{header!r} is not of the form bytes=<first>-<last>")
    if "," in spec:
        return _unsatisfiable(size, "with several ranges is not supported: ask for one")
    match = _RANGE_SPEC.fullmatch(spec.strip())
    if match is None or match.group(0) == "-":
        return _unsatisfiable(size, f"{header!r} is not of the form bytes=<first>-<last>")
    first, last = match.group(1), match.group(2)
    if not first:  # suffix: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            return _unsatisfiable(size, f"{header!r} asks for no bytes")
        n = min(n, size)
        return ByteRange(size - n, n, size, partial=True)
    start = int(first)
    end = int(last) if last else size - 1
    if end < start:
        return _unsatisfiable(size, f"{header!r} ends before it starts")
    if start >= size:
        return _unsatisfiable(size, f"{header!r} starts past the end")
    end = min(end, size - 1)
    return ByteRange(start, end - start + 1, size, partial=True)


def tag_refused(route: Route, serve_tags: bool) -> ApiError | None:
    """The 404 for a manifest asked by tag, or a tag list, unless tags are served.

    A tag is the registry's to resolve: from a disk it would hand a pod that never opted in
    (or one that asks with imagePullPolicy: Always) whatever another pod's cache pinned. Pods
    that use a cache are pinned to digests by the webhook, so by digest is all they need."""
    if serve_tags or route.kind not in (MANIFEST, TAGS) or route.by_digest:
        return None
    what = "tag lists" if route.kind == TAGS else f"tags ({route.image})"
    return ApiError(
        404,
        "NAME_UNKNOWN" if route.kind == TAGS else "MANIFEST_UNKNOWN",
        f"this mirror serves manifests by digest only, not {what}: the registry resolves "
        "tags (imagecache mirror serve --serve-tags serves them from the cache disks)",
    )


def page_of_tags(tags: Iterable[str], n: str | None, last: str | None) -> list[str] | ApiError:
    """The tags/list page `?n=&last=` asks for (distribution's pagination: sorted, after
    `last`, at most n)."""
    chosen = sorted(set(tags))
    if last:
        chosen = [t for t in chosen if t > last]
    if n is not None:
        if not n.isdigit() or len(n) > 6:
            return ApiError(400, "PAGINATION_NUMBER_INVALID", f"n={n!r} must be a number")
        chosen = chosen[: int(n)]
    return chosen


def accepts(accept_headers: Iterable[str], media_type: str) -> bool:
    """Whether a client that sent these Accept headers takes `media_type`; no Accept at all
    takes anything."""
    offered = [
        item.split(";", 1)[0].strip().lower()
        for header in accept_headers
        for item in header.split(",")
    ]
    offered = [o for o in offered if o]
    if not offered:
        return True
    major = media_type.split("/", 1)[0].lower()
    return any(o in ("*/*", f"{major}/*", media_type.lower()) for o in offered)
