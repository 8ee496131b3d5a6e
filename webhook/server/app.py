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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from webhook.core.caches import CacheIndex
from webhook.core.review import MAX_BODY_BYTES, review
from webhook.server.logs import log
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
    ) -> Callable[[web.BaseRequest], Awaitable[web.Response]]:
        # One coroutine per request, with what it reads bound here and nothing on the way to
        # the answer that is not needed: this runs for every pod the cluster creates.
        state, logger, admitted = self.state, self.logger, self.metrics.admitted

        async def handler(request: web.BaseRequest) -> web.Response:
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

    def _refusal(self, request: web.BaseRequest) -> web.Response | None:
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


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def make_server(state: State, metrics: Metrics, logger: logging.Logger) -> web.Server:
    """aiohttp's low-level server with the five routes in one table: no web.Application, URL
    dispatcher or middleware chain between the socket and the admission handler (they cost
    about 5 µs of each request's 60-80, see docs/webhook.md)."""
    admission = Admission(state, metrics, logger)

    async def healthz(_: web.BaseRequest) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.BaseRequest) -> web.Response:
        if state.stopping:
            return web.Response(status=503, text="shutting down\n")
        if not state.synced:
            return web.Response(status=503, text="cache index not synced yet\n")
        return web.Response(text=f"ok: {len(state.index)} caches\n")

    async def metrics_page(_: web.BaseRequest) -> web.Response:
        response = web.Response(body=metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    routes: dict[str, dict[str, Handler]] = {
        "/mutate": {"POST": admission.mutate},
        "/mutate/auto": {"POST": admission.mutate_auto},
        "/healthz": {"GET": healthz, "HEAD": healthz},
        "/readyz": {"GET": readyz, "HEAD": readyz},
        "/metrics": {"GET": metrics_page, "HEAD": metrics_page},
    }
    allowed = {path: ", ".join(methods) for path, methods in routes.items()}

    async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
        # The request target as sent, without the query (the apiserver adds ?timeout=10s).
        path = request.raw_path.partition("?")[0]
        methods = routes.get(path)
        if methods is None:
            return web.Response(status=404, text=f"no route {path!r}: the webhook serves "
                                f"{', '.join(routes)}\n")  # fmt: skip
        handler = methods.get(request.method)
        if handler is None:
            return web.Response(status=405, text=f"{path} takes {allowed[path]}\n",
                                headers={"Allow": allowed[path]})  # fmt: skip
        return await handler(request)

    loop = asyncio.get_running_loop()

    def request_factory(
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        # One byte over the limit makes aiohttp stop reading (the handler answers in JSON).
        return web.BaseRequest(message, payload, protocol, writer, task, loop,
                               client_max_size=MAX_BODY_BYTES)  # fmt: skip

    return web.Server(dispatch, request_factory=request_factory, access_log=None)
