"""The JSON lines `logs.setup()` and `logs.log()` write, through the logging machinery: fields,
levels, filters and other handlers work as logging's own do."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from webhook.server import logs

FIELDS = {"path": "/mutate", "status": 200, "duration_ms": 0.25, "dry_run": False,
          "note": "two\nlines \"quoted\" é", "file": Path("/x"), "cache": None}  # fmt: skip


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """setup() on a fresh stream; the logging configuration before it is put back after."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger(logs.LOGGER).level)
    out = io.StringIO()
    try:
        yield out
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        logging.getLogger(logs.LOGGER).setLevel(saved[2])


def test_lines_are_json_with_the_fields(stream: io.StringIO) -> None:
    logger = logs.setup("debug", stream)
    logs.log(logger, logging.INFO, "admission", **FIELDS)
    logs.log(logger, logging.WARNING, "refused", length=5)
    logs.log(logger, logging.DEBUG, "plain")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line.pop("time"))
    assert lines[0] == {"level": "info", "logger": logs.LOGGER, "msg": "admission",
                        **FIELDS, "file": "/x"}  # fmt: skip
    assert lines[1] == {"level": "warning", "logger": logs.LOGGER, "msg": "refused", "length": 5}
    assert lines[2] == {"level": "debug", "logger": logs.LOGGER, "msg": "plain"}
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed", extra={"fields": {"path": "/mutate"}})
    last = json.loads(stream.getvalue().splitlines()[-1])
    assert last["path"] == "/mutate" and "ValueError: boom" in last["exception"]


def test_level_filtering(stream: io.StringIO) -> None:
    logger = logs.setup("warning", stream)
    logs.log(logger, logging.INFO, "admission", uid="u1")
    logs.log(logger, logging.WARNING, "kept", uid="u2")
    assert [json.loads(line)["uid"] for line in stream.getvalue().splitlines()] == ["u2"]
    logger.setLevel(logging.DEBUG)
    logs.log(logger, logging.DEBUG, "now kept", uid="u3")
    assert json.loads(stream.getvalue().splitlines()[-1])["uid"] == "u3"
    logging.getLogger().handlers[0].setLevel(logging.ERROR)  # the handler's level counts too
    logs.log(logger, logging.WARNING, "dropped", uid="u4")
    logs.log(logger, logging.ERROR, "kept", uid="u5")
    assert [json.loads(line)["uid"] for line in stream.getvalue().splitlines()][-1] == "u5"
    assert "u4" not in stream.getvalue()


def test_other_handlers_and_filters_still_see_the_records(stream: io.StringIO) -> None:
    logger = logs.setup("info", stream)
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    extra = Keep()
    logger.addHandler(extra)  # as pytest's caplog does, on the root logger or ours
    try:
        logs.log(logger, logging.INFO, "admission", uid="u1")
    finally:
        logger.removeHandler(extra)
    assert [r.fields for r in seen] == [{"uid": "u1"}]  # type: ignore[attr-defined]
    assert json.loads(stream.getvalue())["uid"] == "u1"  # and the line was written once

    def drop_u2(record: logging.LogRecord) -> bool:
        return getattr(record, "fields", {}).get("uid") != "u2"

    logger.addFilter(drop_u2)
    try:
        logs.log(logger, logging.INFO, "admission", uid="u2")
        logs.log(logger, logging.INFO, "admission", uid="u3")
    finally:
        logger.removeFilter(drop_u2)
    uids = [json.loads(line)["uid"] for line in stream.getvalue().splitlines()]
    assert uids == ["u1", "u3"]


def test_a_failing_stream_is_reported_as_logging_reports_it(
    stream: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    logger = logs.setup("info", stream)
    stream.close()  # writes now raise ValueError
    logs.log(logger, logging.INFO, "admission", uid="u1")  # does not raise
    assert "--- Logging error ---" in capsys.readouterr().err
