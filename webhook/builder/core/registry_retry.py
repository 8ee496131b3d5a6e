"""When to try a registry request again, and how long to wait first."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# 408/429: the server asks us to slow down; 5xx: a transient server or proxy fault.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 300.0


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, min((when - now).total_seconds(), MAX_RETRY_AFTER))


def backoff_delay(
    attempt: int, base: float, cap: float, jitter: float, retry_after: float | None = None
) -> float:
    """Delay before retry number `attempt` (1-based): exponential from `base`, capped, with
    `jitter` in [0, 1) spreading it by up to half so that parallel downloads do not retry in
    lockstep. A server's Retry-After wins when it asks for longer."""
    delay: float = min(cap, base * 2.0 ** (attempt - 1))
    delay *= 1 - 0.5 * jitter
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay
