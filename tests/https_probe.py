"""Whether a local HTTPS endpoint that a test CA vouches for answers 200: the readiness
probe of the webhook processes that tests and benchmarks start."""

from __future__ import annotations

import ssl
import urllib.request
from pathlib import Path


def https_ok(url: str, cafile: Path, timeout: float = 2) -> bool:
    """True once `url` answers 200; False while it refuses, times out or answers otherwise."""
    context = ssl.create_default_context(cafile=str(cafile))
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as answer:
            return bool(answer.status == 200)
    except OSError:  # urllib's HTTPError and URLError are OSErrors
        return False
