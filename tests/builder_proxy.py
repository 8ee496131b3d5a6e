"""A fault-injecting HTTP proxy in front of a real registry, for the builder's tests:
counts blob requests, flips bytes, throttles, holds a response until released, and can be
stopped (the registry "goes away") and started again on the same port."""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from registry_fixture import ThreadedApp

_BLOB = re.compile(r"^/v2/.+/blobs/(sha256:[a-f0-9]{64})$")
_PASS_HEADERS = ("Content-Type", "Content-Length", "Docker-Content-Digest", "Content-Range",
                 "WWW-Authenticate", "Location", "Accept-Ranges", "Retry-After",
                 "Docker-Distribution-Api-Version")


@dataclass
class RegistryProxy:
    upstream: str
    port: int = 0
    counts: Counter[str] = field(default_factory=Counter)  # blob GETs by digest
    ranges: list[tuple[str, str]] = field(default_factory=list)  # (digest, Range header)
    completed: Counter[str] = field(default_factory=Counter)  # blob bodies sent in full
    corrupt: set[str] = field(default_factory=set)
    rate: dict[str, float] = field(default_factory=dict)  # bytes per second for a digest
    holds: dict[str, threading.Event] = field(default_factory=dict)
    requested: dict[str, threading.Event] = field(default_factory=dict)
    fail_status: dict[str, list[int]] = field(default_factory=dict)  # statuses to answer first
    require_auth: str | None = None  # an Authorization value to demand (Basic challenge)
    redirect_blobs_to: str | None = None  # answer blob GETs with 307 to this origin
    blob_auth: list[str | None] = field(default_factory=list)  # Authorization on blob GETs
    app: ThreadedApp | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def watch(self, digest: str) -> threading.Event:
        return self.requested.setdefault(digest, threading.Event())

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        match = _BLOB.match(request.path)
        digest = match.group(1) if match and request.method == "GET" else None
        if self.require_auth and request.headers.get("Authorization") != self.require_auth:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="proxy"'})
        if digest:
            self.blob_auth.append(request.headers.get("Authorization"))
        if digest and self.redirect_blobs_to:
            raise web.HTTPTemporaryRedirect(self.redirect_blobs_to + request.path_qs)
        if digest:
            self.counts[digest] += 1
            if "Range" in request.headers:
                self.ranges.append((digest, request.headers["Range"]))
            self.watch(digest).set()
            statuses = self.fail_status.get(digest)
            if statuses:
                return web.Response(status=statuses.pop(0), headers={"Retry-After": "0"})
            hold = self.holds.get(digest)
            if hold is not None:
                await asyncio.get_running_loop().run_in_executor(None, hold.wait)
        # Clients send several Accept lines; keep every one.
        headers = CIMultiDict((k, v) for k, v in request.headers.items()
                              if k in ("Accept", "Authorization", "Range"))
        async with aiohttp.ClientSession(auto_decompress=False) as session, session.request(
            request.method, self.upstream + request.path_qs, headers=headers,
            data=await request.read() or None, allow_redirects=False,
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for name in _PASS_HEADERS:
                if name in upstream.headers:
                    response.headers[name] = upstream.headers[name]
            await response.prepare(request)
            flip = digest in self.corrupt and upstream.status in (200, 206)
            rate = self.rate.get(digest or "")
            async for chunk in upstream.content.iter_chunked(64 * 1024):
                if flip:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                    flip = False
                if rate:
                    await asyncio.sleep(len(chunk) / rate)
                await response.write(chunk)
            await response.write_eof()
            if digest and upstream.status in (200, 206):
                self.completed[digest] += 1
            return response

    def start(self) -> RegistryProxy:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.app = ThreadedApp(app, self.port).start()
        self.port = self.app.port
        return self

    def stop(self) -> None:
        for event in self.holds.values():
            event.set()
        if self.app is not None:
            self.app.stop()
            self.app = None

    def __enter__(self) -> RegistryProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
