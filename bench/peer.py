"""What both webhook benchmarks share: the bare aiohttp peer, and a JSON POST to a local
HTTPS server that a test CA vouches for."""

from __future__ import annotations

import json
import ssl
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web


def run_bare_peer(
    mutate: Callable[[web.Request], Awaitable[web.Response]], port: int, context: ssl.SSLContext
) -> int:
    """A bare aiohttp TLS server (web.Application): POST /mutate, GET /readyz. Runs until
    SIGTERM."""

    async def readyz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_post("/mutate", mutate)
    app.router.add_get("/readyz", readyz)
    web.run_app(app, host="127.0.0.1", port=port, ssl_context=context, print=None,
                access_log=None)  # fmt: skip
    return 0


def post_json(url: str, body: bytes, cafile: Path, timeout: float = 10) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=str(cafile))
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, context=context, timeout=timeout) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer
