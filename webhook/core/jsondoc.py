"""Reading a JSON object out of untrusted bytes (a manifest, a termination message, a file
on a cache disk), with an error that names what was read."""

from __future__ import annotations

import json
from typing import Any


def json_object(text: str | bytes, what: str, error: type[Exception]) -> dict[str, Any]:
    """`text` as a JSON object; else `error`, naming `what`, for text that is not JSON or
    holds something else than an object."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise error(f"{what} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise error(f"{what} must be a JSON object")
    return doc
