"""Routes and handlers: the thin HTTP shell around webhook.server.core.review.

The admission handlers never answer 500: the core never raises, and a last-resort guard
turns anything unexpected into a 400 JSON answer and an error log line. With the webhook's
failurePolicy Ignore the pod is then admitted unchanged, which is the safe outcome.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web

from webhook.core.caches import CacheIndex
from webhook.logs import log
from webhook.server.core.review import MAX_BODY_BYTES, review
from webhook.server.metrics import CONTENT_TYPE, Metrics

JSON = "application/json"
# One encoder for every answer: json.dumps() with keyword arguments builds a new one per call.
_encode = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(slots=True)
class State:
    """What the handlers share with the cache sources and the lifecycle."""

    index: CacheIndex = field(default_factory=CacheIndex)
    synced: bool = False  # the index holds a full file or LIST
    stopping: bool = False  # SIGTERM received: not ready, still serving
    in_flight: int = 0  # admission requests being handled (shutdown waits for them)


def _error(status: int, message: str) -> web.Response:
    body = _encode({"error": message}).encode()
    return web.Response(body=body, status=status, content_type=JSON)


def _json_content_type(value: str) -> bool:
    """Lenient: absent, or any media type that says JSON (`application/json; charset=utf-8`,
    `application/merge+json`, `text/json`)."""
    if value == JSON:  # what the apiserver sends
        return True
    media = value.split(";", 1)[0].strip().lower()
    return media == "" or media.endswith("/json") or media.endswith("+json")


class Admission:
    def __init__(self, state: State, metrics: Metrics, logger: logging.Logger) -> None:
        self.state, self.metrics, self.logger = state, metrics, logger
        self.mutate = self._route("/mutate", default_auto=False)
        self.mutate_auto = self._route("/mutate/auto", default_auto=True)

    def _route(
        self, path: str, *, default_auto: bool
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        state, logger, admitted = self.state, self.logger, self.metrics.admitted

        async def handler(request: web.Request) -> web.Response:
            state.in_flight += 1
            try:
                response = self._refusal(request)
                if response is None:
                    try:
                        body = await request.read()
                    except web.HTTPRequestEntityTooLarge:  # a chunked body past the limit
                        response = self._too_large(None)
                if response is None:
                    started = time.perf_counter()
                    result = review(body, state.index, now=datetime.now(UTC),
                                    default_auto=default_auto)  # fmt: skip
                    response = web.Response(
                        body=result.answer, status=result.status, content_type=JSON
                    )
                    elapsed = time.perf_counter() - started
                    admitted(result.outcome, result.decision, elapsed)
                    # warning: not a review; info: a pod left without its cache, or warned;
                    # debug: the rest (plain hits are on the pod, in the audit log and in
                    # the metrics already).
                    if result.status != 200:
                        level = logging.WARNING
                    else:
                        level = logging.INFO if result.notable else logging.DEBUG
                    if logger.isEnabledFor(level):
                        log(logger, level, "admission", path=path, status=result.status,
                            outcome=result.outcome, duration_ms=round(elapsed * 1000, 3),
                            **result.log_fields())  # fmt: skip
            except Exception as exc:  # last resort: the apiserver gets JSON, the log the reason
                self.metrics.answered("error")
                logger.exception("admission handler failed", extra={"fields": {"path": path}})
                response = _error(
                    400, f"the webhook could not handle this request: {type(exc).__name__}"
                )
            finally:
                state.in_flight -= 1
            if state.stopping:
                # Shutting down: the client should not send its next request on this connection.
                response.force_close()
            return response

        return handler

    def _refusal(self, request: web.Request) -> web.Response | None:
        """415 for a body that is not JSON, 413 for one whose Content-Length is over the
        limit (before reading a byte of it), None for a body to read."""
        content_type = request.headers.get("Content-Type", "")
        if not _json_content_type(content_type):
            return self._refused(
                415, f"Content-Type must be application/json, not {content_type!r}"
            )
        length = request.headers.get("Content-Length")  # a number: the parser checked it
        if length is not None and int(length) > MAX_BODY_BYTES:
            return self._too_large(length)
        return None

    def _too_large(self, length: str | None) -> web.Response:
        size = f"{length} bytes, " if length is not None else ""
        return self._refused(413, f"request body is {size}over the limit of {MAX_BODY_BYTES} bytes")

    def _refused(self, status: int, message: str) -> web.Response:
        self.metrics.answered("invalid")
        log(self.logger, logging.WARNING, "request refused", status=status, error=message)
        return _error(status, message)


def make_app(state: State, metrics: Metrics, logger: logging.Logger) -> web.Application:
    """The five routes. aiohttp answers another path 404 and another method 405 (with
    Allow); a body over MAX_BODY_BYTES stops being read one byte past it (413, in JSON)."""
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

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/mutate", admission.mutate)
    app.router.add_post("/mutate/auto", admission.mutate_auto)
    app.router.add_get("/healthz", healthz)  # add_get answers HEAD too
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    return app
