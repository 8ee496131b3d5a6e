"""The lines `logs.setup()` and `logs.log()` write (JSON, or text for terminals), through the
logging machinery: fields, levels, filters and other handlers work as logging's own do; and
every part's command line takes the same `--log-level` and `--log-format` (issue 13.2)."""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_run import cli_command, run_cli, subparsers
from registry_fixture import wait_for_line

from webhook import cli, logs

FIELDS = {"path": "/mutate", "status": 200, "duration_ms": 0.25, "dry_run": False,
          "note": "two\nlines \"quoted\" é", "file": Path("/x"), "cache": None}  # fmt: skip


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """setup() on a fresh stream; the logging configuration before it is put back after."""
    root = logging.getLogger()
    own = [logging.getLogger(name) for name in (*logs.OWN, logs.LOGGER)]
    saved = (list(root.handlers), root.level, [logger.level for logger in own])
    out = io.StringIO()
    try:
        yield out
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        for logger, level in zip(own, saved[2], strict=True):
            logger.setLevel(level)


def test_lines_are_json_with_the_fields(stream: io.StringIO) -> None:
    logger = logs.setup("debug", stream=stream)
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
    logger = logs.setup("warning", stream=stream)
    logs.log(logger, logging.INFO, "admission", uid="u1")
    logs.log(logger, logging.WARNING, "kept", uid="u2")
    assert [json.loads(line)["uid"] for line in stream.getvalue().splitlines()] == ["u2"]
    logger.setLevel(logging.DEBUG)
    logs.log(logger, logging.DEBUG, "now kept", uid="u3")
    assert json.loads(stream.getvalue().splitlines()[-1])["uid"] == "u3"
    logging.getLogger().handlers[-1].setLevel(logging.ERROR)  # ours (last): its level counts
    logs.log(logger, logging.WARNING, "dropped", uid="u4")
    logs.log(logger, logging.ERROR, "kept", uid="u5")
    assert [json.loads(line)["uid"] for line in stream.getvalue().splitlines()][-1] == "u5"
    assert "u4" not in stream.getvalue()


def test_other_handlers_and_filters_still_see_the_records(stream: io.StringIO) -> None:
    logger = logs.setup("info", stream=stream)
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
    logger = logs.setup("info", stream=stream)
    stream.close()  # writes now raise ValueError
    logs.log(logger, logging.INFO, "admission", uid="u1")  # does not raise
    assert "--- Logging error ---" in capsys.readouterr().err


def test_text_lines_for_terminals(stream: io.StringIO) -> None:
    logger = logs.setup("INFO", "TEXT", stream=stream)  # any case
    logs.log(logger, logging.INFO, "admission", path="/mutate", note='two words "q"', n=3)
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    first, second, *trace = stream.getvalue().splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info    imagecache\.webhook: "
                        r'admission path=/mutate note="two words \\"q\\"" n=3', first), first
    assert second.endswith("error   imagecache.webhook: failed")
    assert trace[0] == "Traceback (most recent call last):" and trace[-1] == "ValueError: boom"


def test_the_level_is_every_parts_and_libraries_say_only_warnings(stream: io.StringIO) -> None:
    logs.setup("debug", stream=stream)
    logging.getLogger("imagecache.controller").debug("ours")
    logging.getLogger("webhook.controller.leader").debug("ours too")  # modules named __name__
    logging.getLogger("aiohttp.access").info("theirs")
    logging.getLogger("kubernetes_asyncio.client").warning("their warning")
    assert [json.loads(line)["msg"] for line in stream.getvalue().splitlines()] == [
        "ours", "ours too", "their warning"]


PARTS = [("serve", []), ("controller", []), ("build", []), ("mirror", ["serve"]),
         ("snapshotter", ["serve"])]  # fmt: skip


@pytest.mark.parametrize(("part", "sub"), PARTS, ids=[p for p, _ in PARTS])
def test_every_long_running_part_takes_the_same_log_flags(part: str, sub: list[str]) -> None:
    parser = cli.parsers()[part]
    for name in sub:
        parser = subparsers(parser)[name]
    actions = {a.dest: a for a in parser._actions}
    assert actions["log_level"].choices == logs.LEVELS and actions["log_level"].default == "info"
    assert actions["log_format"].choices == logs.FORMATS
    assert actions["log_format"].default == "json"
    required = {"serve": ["--tls-cert", "c", "--tls-key", "k"], "controller": [],
                "build": ["--name", "n", "--image", "x", "--output", "o"]}.get(part, [])
    args = parser.parse_args([*required, "--log-level", "DEBUG", "--log-format", "Text"])
    assert (args.log_level, args.log_format) == ("debug", "text")


def test_the_builder_logs_in_the_format_asked_for(tmp_path: Path) -> None:
    """The real console script: the builder's error line, JSON by default, text on request."""
    base = ["build", "--name", "c", "--image", "Bad:Ref", "--output", str(tmp_path),
            "--termination-log", str(tmp_path / "term")]  # fmt: skip
    done = run_cli(*base)
    assert done.returncode != 0
    line = json.loads(done.stderr.strip().splitlines()[-1])
    assert line["level"] == "error" and line["logger"] == "imagecache.builder"
    assert "--image" in line["msg"]
    done = run_cli(*base, "--log-format", "text", "--log-level", "WARNING")
    last = done.stderr.strip().splitlines()[-1]
    expected = r"\S+Z error   imagecache\.builder: build failed \(InvalidArgument\)"
    assert re.match(expected, last), last


def test_the_mirror_logs_text_when_asked(tmp_path: Path) -> None:
    """A real `imagecache mirror serve --log-format text`: its start line, then SIGTERM."""
    log_file = tmp_path / "mirror.log"
    with log_file.open("wb") as out:
        proc = subprocess.Popen([*cli_command(), "mirror", "serve", "--listen", "127.0.0.1:0",
                                 "--root", str(tmp_path), "--log-format", "text"],
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_for_line(log_file, r" info    imagecache\.mirror: node mirror serving on http://",
                      proc, 60)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert "{" not in log_file.read_text()  # no JSON
