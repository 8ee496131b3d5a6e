"""The node mirror's HTTP side: a read-only OCI distribution API on aiohttp.

Every decision (route, registry from ?ns=, Range, Accept) is made by
webhook.mirror.core.mirror_routes; lookups go to the NodeIndex the DiskWatcher keeps current.
Manifests are answered from memory (indexed with their bytes), blobs with sendfile from the
disk. Anything not held is a 404 with an OCI error body, so containerd tries the next host.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import BinaryIO

from aiohttp import web

from webhook.mirror.core.mirror_index import NodeIndex
from webhook.mirror.core.mirror_routes import (
    BASE,
    BLOB,
    MANIFEST,
    TAGS,
    ApiError,
    Route,
    accepts,
    page_of_tags,
    parse_range,
    parse_route,
    tag_refused,
)
from webhook.mirror.disks import open_blob
from webhook.mirror.metrics import CONTENT_TYPE, OTHER, MirrorMetrics
from webhook.mirror.sendfile import send_file

log = logging.getLogger("imagecache.mirror")

API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")


@dataclass
class Outcome:
    """What one request came to, for the metrics and the log line."""

    kind: str = "other"
    registry: str = OTHER
    hit: bool | None = None  # None: not a lookup
    disk: str = ""
    bytes: int = 0
    note: str = ""


def error_response(error: ApiError) -> web.Response:
    # For HEAD aiohttp sends the headers (Content-Length included) and drops the body.
    response = web.Response(status=error.status, body=json.dumps(error.body()).encode(),
                            content_type="application/json")
    for name, value in error.headers:
        response.headers[name] = value
    return response


class MirrorServer:
    def __init__(
        self,
        index: Callable[[], NodeIndex],
        metrics: MirrorMetrics,
        default_registry: str = "docker.io",
        serve_tags: bool = False,
        look_again: Callable[[float], Awaitable[bool]] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._index = index
        self.metrics = metrics
        self.default_registry = default_registry
        self.serve_tags = serve_tags
        # On a manifest or blob miss: a fresh look for disks, then one more lookup
        # (webhook.mirror.poller: the disk may have been mounted since the last poll).
        self._look_again = look_again
        self._clock = clock

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        app.on_response_prepare.append(_add_api_version)
        return app

    def metrics_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """Answer, then count and log; an unexpected failure is a 500 with an OCI body."""
        outcome = Outcome()
        try:
            response = await self._dispatch(request, outcome)
        except ConnectionError:
            log.info("%s %s: %s", request.method, request.path, outcome.note or "client gone")
            self.metrics.requests.labels(request.method, outcome.kind, "aborted").inc()
            raise
        except Exception:
            log.exception("failed to answer %s %s", request.method, request.path_qs)
            response = error_response(ApiError(500, "UNKNOWN", "the mirror failed; see its log"))
        self._record(request, response, outcome)
        return response

    def _record(self, request: web.Request, response: web.StreamResponse, o: Outcome) -> None:
        self.metrics.requests.labels(request.method, o.kind, str(response.status)).inc()
        if o.bytes:
            self.metrics.bytes.labels(o.kind).inc(o.bytes)
        if o.hit is not None:
            counter = self.metrics.hits if o.hit else self.metrics.misses
            counter.labels(o.registry, o.kind).inc()
        level = logging.INFO if o.kind in (MANIFEST, BLOB, TAGS) else logging.DEBUG
        if log.isEnabledFor(level):
            ns = request.query.get("ns")
            target = request.path if ns is None else f"{request.path}?ns={ns}"
            log.log(level, "%s %s -> %d %s%s", request.method, target, response.status,
                    o.note, f" from {o.disk}" if o.disk else "")

    async def _dispatch(self, request: web.Request, outcome: Outcome) -> web.StreamResponse:
        arrived = self._clock() if self._clock is not None else 0.0
        if request.path == "/metrics" and request.method == "GET":
            outcome.kind = "metrics"
            return await self._metrics(request)
        route = parse_route(request.method, request.path, request.query.get("ns"),
                            self.default_registry)
        if isinstance(route, ApiError):
            outcome.note = f"{route.code}: {route.message}"
            return error_response(route)
        outcome.kind = route.kind
        if route.kind == BASE:
            return web.json_response({})
        index = self._index()
        # Label only registries a disk holds: ?ns= is the client's to choose.
        if route.registry in index.registries:
            outcome.registry = route.registry
        refused = tag_refused(route, self.serve_tags)
        if refused is not None:
            return self._miss(outcome, refused)
        if route.kind == TAGS:
            return self._tags(request, index, route, outcome)
        response = await self._lookup(request, index, route, outcome)
        if outcome.hit is False and self._look_again is not None and await self._look_again(
            arrived
        ):
            outcome.hit, outcome.note = None, ""
            response = await self._lookup(request, self._index(), route, outcome)
        return response

    async def _lookup(
        self, request: web.Request, index: NodeIndex, route: Route, outcome: Outcome
    ) -> web.StreamResponse:
        if route.kind == MANIFEST:
            return self._manifest(request, index, route, outcome)
        return await self._blob(request, index, route, outcome)

    def _tags(
        self, request: web.Request, index: NodeIndex, route: Route, outcome: Outcome
    ) -> web.Response:
        if not index.holds_repository(route.registry, route.repository):
            return self._miss(outcome, ApiError(
                404, "NAME_UNKNOWN",
                f"{route.registry}/{route.repository} is not on a cache disk of this node",
            ))
        page = page_of_tags(index.tags(route.registry, route.repository),
                            request.query.get("n"), request.query.get("last"))
        if isinstance(page, ApiError):
            return error_response(page)
        outcome.hit = True
        return web.json_response({"name": route.repository, "tags": page})

    @staticmethod
    def _miss(outcome: Outcome, error: ApiError) -> web.Response:
        outcome.hit = False
        outcome.note = f"miss ({error.code}: {error.message})"
        return error_response(error)

    def _manifest(
        self, request: web.Request, index: NodeIndex, route: Route, outcome: Outcome
    ) -> web.Response:
        found = index.manifest(route.registry, route.repository, route.reference)
        if found is None:
            return self._miss(outcome, ApiError(
                404, "MANIFEST_UNKNOWN", f"{route.image} is not on a cache disk of this node"
            ))
        disk, manifest = found
        # By digest the content is fixed; by tag a client that cannot read the stored type
        # is better served by the registry, which may hold or convert another one.
        if not route.by_digest and not accepts(request.headers.getall("Accept", []),
                                               manifest.media_type):
            return self._miss(outcome, ApiError(
                404, "MANIFEST_UNKNOWN",
                f"{route.image} is stored as {manifest.media_type}, which the Accept header "
                "does not take",
            ))
        outcome.hit, outcome.disk, outcome.note = True, disk, f"hit {manifest.digest}"
        outcome.bytes = 0 if request.method == "HEAD" else len(manifest.body)
        return web.Response(
            body=manifest.body,
            headers={
                "Content-Type": manifest.media_type,
                "Docker-Content-Digest": manifest.digest,
                "ETag": f'"{manifest.digest}"',
            },
        )

    async def _blob(
        self, request: web.Request, index: NodeIndex, route: Route, outcome: Outcome
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        for disk in index.blob_disks(route.registry, route.repository, route.reference):
            opened = await loop.run_in_executor(None, open_blob, disk, route.reference)
            if opened is None:
                continue  # unmounted under us, or damaged: try the next disk holding it
            fd, size = opened
            with os.fdopen(fd, "rb") as blob:
                return await self._send_blob(request, route, blob, size, disk, outcome)
        return self._miss(outcome, ApiError(
            404, "BLOB_UNKNOWN",
            f"blob {route.reference} of {route.registry}/{route.repository} is not on a cache "
            "disk of this node",
        ))

    async def _send_blob(
        self, request: web.Request, route: Route, blob: BinaryIO, size: int, disk: str,
        outcome: Outcome,
    ) -> web.StreamResponse:
        chosen = parse_range(request.headers.get("Range"), size)
        if isinstance(chosen, ApiError):
            outcome.note = f"{chosen.code}: {chosen.message}"
            return error_response(chosen)
        response = web.StreamResponse(
            status=206 if chosen.partial else 200,
            headers={
                "Content-Type": "application/octet-stream",
                "Docker-Content-Digest": route.reference,
                "ETag": f'"{route.reference}"',
                "Accept-Ranges": "bytes",
            },
        )
        if chosen.partial:
            response.headers["Content-Range"] = chosen.content_range
        response.content_length = chosen.length
        outcome.hit, outcome.disk, outcome.note = True, disk, "hit"
        await response.prepare(request)
        if request.method == "GET" and chosen.length:
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("the client went away")
            try:
                await send_file(transport, blob, chosen.start, chosen.length)
            except (OSError, TimeoutError) as exc:
                # Half a body is on the wire: only closing tells the client it is cut short.
                transport.close()
                outcome.note = f"aborted ({exc})"
                raise ConnectionResetError(str(exc)) from None
            outcome.bytes = chosen.length
        await response.write_eof()
        return response


async def _add_api_version(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[API_VERSION[0]] = API_VERSION[1]
