"""Routes and handlers: the thin HTTP shell around webhook.core.review.

The admission handlers never answer 500: the core never raises, and a last-resort guard
turns anything unexpected into a 400 JSON answer and an error log line. With the webhook's
failurePolicy Ignore the pod is then admitted unchanged, which is the safe outcome.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from webhook.core.caches import CacheIndex
from webhook.core.review import MAX_BODY_BYTES, review
from webhook.server.logs import log
from webhook.server.metrics import CONTENT_TYPE, Metrics

JSON = "application/json"
# One encoder for every answer: json.dumps() with keyword arguments builds a new one per call.
_encode = json.JSONEncoder(separators=(",", ":")).encode


@dataclass
class State:
    """What the handlers share with the cache sources and the lifecycle."""

    index: CacheIndex = field(default_factory=CacheIndex)
    synced: bool = False  # the index holds a full file or LIST
    stopping: bool = False  # SIGTERM received: not ready, still serving
    in_flight: int = 0  # admission requests being handled (shutdown waits for them)
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set when in_flight is 0


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(body=_encode(body).encode(), status=status, content_type=JSON)


def _error(status: int, message: str) -> web.Response:
    return _json(status, {"error": message})


def _json_content_type(value: str) -> bool:
    """Lenient: absent, or any media type that says JSON (`application/json; charset=utf-8`,
    `application/merge+json`, `text/json`)."""
    if value == JSON:  # what the apiserver sends
        return True
    media = value.split(";", 1)[0].strip().lower()
    return media == "" or media.endswith("/json") or media.endswith("+json")


async def _read_body(request: web.Request) -> bytes | web.Response:
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        # Refused before reading a byte of it.
        return _error(
            413, f"request body is {length} bytes, over the limit of {MAX_BODY_BYTES} bytes"
        )
    try:
        return await request.read()  # client_max_size stops chunked bodies past the limit
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"request body is over the limit of {MAX_BODY_BYTES} bytes")


class Admission:
    def __init__(self, state: State, metrics: Metrics, logger: logging.Logger) -> None:
        self.state, self.metrics, self.logger = state, metrics, logger

    async def mutate(self, request: web.Request) -> web.Response:
        return await self._guarded(request, default_auto=False)

    async def mutate_auto(self, request: web.Request) -> web.Response:
        return await self._guarded(request, default_auto=True)

    async def _guarded(self, request: web.Request, *, default_auto: bool) -> web.Response:
        started = time.perf_counter()
        self.state.in_flight += 1
        self.state.idle.clear()
        try:
            response = await self._admit(request, default_auto, started)
        except Exception as exc:  # last resort: the apiserver gets JSON, the log the reason
            self.metrics.answered("error")
            self.logger.exception(
                "admission handler failed", extra={"fields": {"path": request.path}}
            )
            response = _error(
                400, f"the webhook could not handle this request: {type(exc).__name__}"
            )
        finally:
            self.state.in_flight -= 1
            if self.state.in_flight == 0:
                self.state.idle.set()
        if self.state.stopping:
            # Shutting down: the client should not send its next request on this connection.
            response.force_close()
        return response

    async def _admit(
        self, request: web.Request, default_auto: bool, started: float
    ) -> web.Response:
        if not _json_content_type(request.headers.get("Content-Type", "")):
            self.metrics.answered("invalid")
            return _error(
                415, f"Content-Type must be application/json, not {request.content_type!r}"
            )
        body = await _read_body(request)
        if isinstance(body, web.Response):
            self.metrics.answered("invalid")
            log(self.logger, logging.WARNING, "request body refused", path=request.path,
                length=request.content_length)  # fmt: skip
            return body
        decided = time.perf_counter()
        result = review(body, self.state.index, now=datetime.now(UTC), default_auto=default_auto)
        response = _json(result.status, result.body)
        elapsed = time.perf_counter() - decided
        self.metrics.admitted(result.outcome, result.decision, elapsed)
        if result.status != 200:
            level = logging.WARNING
        else:
            level = logging.INFO if result.decision is not None else logging.DEBUG
        if self.logger.isEnabledFor(level):
            log(self.logger, level, "admission", path=request.path, status=result.status,
                outcome=result.outcome, duration_ms=round(elapsed * 1000, 3),
                total_ms=round((time.perf_counter() - started) * 1000, 3),
                **result.log)  # fmt: skip
        return response


def make_app(state: State, metrics: Metrics, logger: logging.Logger) -> web.Application:
    admission = Admission(state, metrics, logger)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if state.stopping:
            return web.Response(status=503, text="shutting down\n")
        if not state.synced:
            return web.Response(status=503, text="cache index not synced yet\n")
        return web.Response(text=f"ok: {len(state.index)} caches\n")

    async def metrics_page(_: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    # One byte over the limit makes aiohttp stop reading; _read_body answers in JSON.
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/mutate", admission.mutate)
    app.router.add_post("/mutate/auto", admission.mutate_auto)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    return app
