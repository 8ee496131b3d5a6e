"""Structured logs: one JSON object per line on stderr, ready for any log collector.

Fields go in `extra={"fields": {...}}`; `log(logger, level, msg, **fields)` is the short form.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from typing import Any, TextIO

LEVELS = ("debug", "info", "warning", "error")
LOGGER = "imagecache.webhook"

# One encoder for every line: json.dumps() with keyword arguments builds a new one per call.
_encode = json.JSONEncoder(default=str, separators=(",", ":")).encode


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        created = record.created
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        entry: dict[str, Any] = {
            "time": f"{stamp}.{int(created % 1 * 1000):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return _encode(entry)


def setup(level: str, stream: TextIO | None = None) -> logging.Logger:
    """JSON lines on `stream` (stderr) for our logger and aiohttp's; returns our logger."""
    # Thread, process and multiprocessing names are not in our lines: do not collect them
    # for every record (the admission path logs one line per decision).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # libraries: warnings and errors only
    logger = logging.getLogger(LOGGER)
    logger.setLevel(level.upper())
    return logger


def log(logger: logging.Logger, level: int, msg: str, **fields: Any) -> None:
    """Log `msg` with `fields` (the JSON line's own keys)."""
    if logger.isEnabledFor(level):
        logger.log(level, msg, extra={"fields": fields})
