"""Re-reading a mounted file on an interval (the serving certificate, the caches file)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable


async def poll_forever(
    check: Callable[[], Awaitable[None]], interval: float, logger: logging.Logger, what: str
) -> None:
    """Call `check` every `interval` seconds until cancelled; a failing check is logged
    (`what` check failed) and the next one runs as usual."""
    while True:
        await asyncio.sleep(interval)
        try:
            await check()
        except Exception:  # never let the poller die; say why it stumbled
            logger.exception("%s check failed", what)
