"""Logs of every part: one JSON object per line on stderr (for log collectors), or plain text
for terminals (`--log-format text`). One implementation and one pair of flags for `serve`,
`controller`, `build`, `mirror serve` and `snapshotter serve`.

Fields go in `extra={"fields": {...}}`; `log(logger, level, msg, **fields)` is the short form.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from typing import Any, TextIO

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("json", "text")
DEFAULT_LEVEL = "info"
DEFAULT_FORMAT = "json"
LOGGER = "imagecache.webhook"
# Our own loggers: the parts log as `imagecache.<part>`, some modules under their own name.
# The level applies to them; libraries (aiohttp, kubernetes_asyncio, grpc) log warnings only.
OWN = ("imagecache", "webhook", "certs")
_MARK = "_imagecache_handler"  # on the handler setup() installs, so a second setup replaces it

# One encoder for every line: json.dumps() with keyword arguments builds a new one per call.
_encode = json.JSONEncoder(default=str, separators=(",", ":")).encode


def _stamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def _exception(record: logging.LogRecord) -> str | None:
    if record.exc_info and record.exc_info[0] is not None:
        return "".join(traceback.format_exception(*record.exc_info)).rstrip()
    return None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _stamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        exception = _exception(record)
        if exception is not None:
            entry["exception"] = exception
        return _encode(entry)


class TextFormatter(logging.Formatter):
    """`TIME LEVEL LOGGER: MSG key=value ...`; a value with spaces or quotes JSON-quoted."""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_stamp(record.created)} {record.levelname.lower():<7} {record.name}: "
            f"{record.getMessage()}"
        )
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line += "".join(f" {key}={_text_value(value)}" for key, value in fields.items())
        exception = _exception(record)
        return line if exception is None else f"{line}\n{exception}"


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else _encode(value)
    plain = text and not any(c.isspace() or c in "\"=" for c in text)
    return text if plain else _encode(text)


FORMATTERS: dict[str, type[logging.Formatter]] = {"json": JsonFormatter, "text": TextFormatter}


def add_flags(parser: argparse.ArgumentParser, level_help: str = "") -> None:
    """`--log-level` and `--log-format`, the same on every part (any case accepted)."""
    parser.add_argument(
        "--log-level", type=str.lower, choices=LEVELS, default=DEFAULT_LEVEL,
        help=level_help or "least severe messages written",
    )  # fmt: skip
    parser.add_argument(
        "--log-format", type=str.lower, choices=FORMATS, default=DEFAULT_FORMAT,
        help="json: one JSON object per line on stderr, for log collectors; text: for terminals",
    )  # fmt: skip


def setup(
    level: str = DEFAULT_LEVEL,
    fmt: str = DEFAULT_FORMAT,
    stream: TextIO | None = None,
    name: str = LOGGER,
) -> logging.Logger:
    """Lines in `fmt` on `stream` (stderr) for our loggers at `level` and for libraries'
    warnings; returns the logger `name`. Handlers others installed (pytest's) stay."""
    # Thread, process and multiprocessing names are not in our lines: do not collect them
    # for every record (the admission path logs one line per decision).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(FORMATTERS[fmt.lower()]())
    setattr(handler, _MARK, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _MARK, False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # libraries: warnings and errors only
    for own in (*OWN, name):  # `name` too: its own level may have been set before
        logging.getLogger(own).setLevel(level.upper())
    return logging.getLogger(name)


def log(logger: logging.Logger, level: int, msg: str, **fields: Any) -> None:
    """Log `msg` with `fields` (the JSON line's own keys)."""
    if logger.isEnabledFor(level):
        logger.log(level, msg, extra={"fields": fields})
