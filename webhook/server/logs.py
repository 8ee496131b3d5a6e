"""Structured logs: one JSON object per line on stderr, ready for any log collector.

Fields go in `extra={"fields": {...}}`; `log(logger, level, msg, **fields)` is the short form.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from collections.abc import Mapping
from typing import Any, TextIO

LEVELS = ("debug", "info", "warning", "error")
LOGGER = "imagecache.webhook"

# One encoder for every line: json.dumps() with keyword arguments builds a new one per call.
_encode = json.JSONEncoder(default=str, separators=(",", ":")).encode


class JsonFormatter(logging.Formatter):
    _second = -1
    _prefix = ""

    def _time(self, created: float) -> str:
        second = int(created)
        if second != self._second:  # strftime once per second, not once per line
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{int((created - second) * 1000):03d}Z"

    def line(
        self, created: float, level: str, logger: str, msg: str, fields: object, exc: str = ""
    ) -> str:
        """The JSON line; `format` and the direct path of `log` both write this."""
        entry: dict[str, Any] = {
            "time": self._time(created),
            "level": level,
            "logger": logger,
            "msg": msg,
        }
        if isinstance(fields, dict):
            entry.update(fields)
        if exc:
            entry["exception"] = exc
        return _encode(entry)

    def format(self, record: logging.LogRecord) -> str:
        exc = ""
        if record.exc_info and record.exc_info[0] is not None:
            exc = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return self.line(
            record.created,
            record.levelname.lower(),
            record.name,
            record.getMessage(),
            getattr(record, "fields", None),
            exc,
        )


class _Direct:
    """The configuration setup() made, for the logger it returned: while it is untouched, `log`
    writes the line itself instead of making a LogRecord and passing it through the logger's
    and the handler's filters (about a quarter of the cost of the admission line). Anything
    else (a handler added, as pytest's caplog does, a filter, another logger) takes the
    ordinary path."""

    def __init__(self, logger: logging.Logger, handler: logging.StreamHandler[TextIO]) -> None:
        self.logger = logger
        self.handler = handler
        self.root = logging.getLogger()
        self.handlers: list[logging.Handler] = [handler]

    def applies(self, logger: logging.Logger, level: int) -> bool:
        root, handler = self.root, self.handler
        return (
            logger is self.logger
            and logger.propagate
            and logger.parent is root
            and not logger.handlers
            and not logger.filters
            and root.handlers == self.handlers
            and not root.filters
            and not handler.filters
            and level >= handler.level
            and isinstance(handler.formatter, JsonFormatter)
        )

    def write(self, level: int, msg: str, fields: Mapping[str, Any]) -> None:
        """Write one line as Handler.handle and StreamHandler.emit would."""
        handler = self.handler
        formatter = handler.formatter
        assert isinstance(formatter, JsonFormatter)
        handler.acquire()
        try:
            line = formatter.line(
                time.time(), logging.getLevelName(level).lower(), self.logger.name, msg, fields
            )
            handler.stream.write(line + handler.terminator)
            handler.flush()
        except RecursionError:
            raise
        except Exception:
            handler.handleError(_record(self.logger, level, msg, fields))
        finally:
            handler.release()


_direct: _Direct | None = None


def setup(level: str, stream: TextIO | None = None) -> logging.Logger:
    """JSON lines on `stream` (stderr) for our logger and aiohttp's; returns our logger."""
    global _direct
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
    _direct = _Direct(logger, handler)
    return logger


def log(logger: logging.Logger, level: int, msg: str, **fields: Any) -> None:
    if not logger.isEnabledFor(level):
        return
    direct = _direct
    if direct is not None and direct.applies(logger, level):
        direct.write(level, msg, fields)
    else:
        logger.handle(_record(logger, level, msg, fields))


def _record(
    logger: logging.Logger, level: int, msg: str, fields: Mapping[str, Any]
) -> logging.LogRecord:
    # makeRecord instead of logger.log(): skips the stack walk that finds the caller's file
    # and line (unused by the JSON format).
    record = logger.makeRecord(logger.name, level, "", 0, msg, (), None)
    record.fields = fields
    return record
