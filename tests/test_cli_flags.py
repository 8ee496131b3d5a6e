"""Every flag of every command says what it does and what it defaults to (issue 13.5): walks
each parser `imagecache` dispatches to, subcommands included, as `--help` prints them."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest
from cli_run import run_cli, subparsers

from webhook import cli
from webhook.flags import HelpFormatter, shown


def walk() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    todo = [(f"imagecache {name}", parser) for name, parser in cli.parsers().items()]
    while todo:
        name, parser = todo.pop()
        yield name, parser
        todo += [(f"{name} {sub}", p) for sub, p in subparsers(parser).items()]


PARSERS = dict(walk())


def test_the_walk_finds_every_command_and_subcommand() -> None:
    assert {"imagecache serve", "imagecache controller", "imagecache build",
            "imagecache mirror serve", "imagecache mirror configure",
            "imagecache snapshotter serve", "imagecache snapshotter configure",
            "imagecache certs generate", "imagecache explain"} <= set(PARSERS)  # fmt: skip


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_flag_has_help_showing_its_default(name: str) -> None:
    parser = PARSERS[name]
    assert (parser.description or "").strip(), f"{name}: no description"
    formatter = parser._get_formatter()
    problems = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        flag = "/".join(action.option_strings) or action.dest
        if not action.help or action.help == argparse.SUPPRESS:
            problems.append(f"{flag}: no help")
            continue
        if action.option_strings and not action.required:
            text = formatter._get_help_string(action)
            if "default" not in text.lower():
                problems.append(f"{flag}: help does not show the default ({text!r})")
    assert problems == [], f"{name}: {problems}"


def test_the_formatter_appends_defaults_people_can_read() -> None:
    parser = argparse.ArgumentParser(prog="x", formatter_class=HelpFormatter)
    parser.add_argument("--a", default=5, help="five")
    parser.add_argument("--b", action="store_true", help="flag")
    parser.add_argument("--c", help="said in words (default: the same as --a)")
    parser.add_argument("--d", default="50%", help="percent")
    text = parser.format_help()
    assert "five (default: 5)" in text and "flag (default: off)" in text
    assert "said in words (default: the same as --a)" in text and "(default: 50%)" in text
    assert (shown(None), shown(True), shown(("0.0.0.0", 8080))) == ("none", "on", "0.0.0.0:8080")


def test_the_real_help_shows_them() -> None:
    """`imagecache controller --help` as people read it: a default the code alone knew."""
    text = " ".join(run_cli("controller", "--help").stdout.split())
    assert "--lease-name LEASE_NAME" in text or "--lease-name NAME" in text
    assert "(default: imagecache-controller)" in text
    assert "concurrent reconciles (default: 4)" in text
    generate = " ".join(run_cli("certs", "generate", "--help").stdout.split())
    assert "--out DIR" in generate and "(default: 365)" in generate
