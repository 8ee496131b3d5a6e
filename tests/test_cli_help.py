"""The `imagecache` console script as a user meets it (issues 12 and 13.1): `--help` and `help`
are answers (stdout, exit 0), `--version` comes from the installed distribution, a wrong or
missing command names itself on stderr with exit 2, and every command's `--help` is on stdout.
Run as the installed console script."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from cli_run import run_cli

from webhook import cli

COMMANDS = ("serve", "controller", "build", "mirror", "snapshotter", "certs", "explain")


@pytest.mark.parametrize("args", [("--help",), ("-h",), ("help",)])
def test_help_goes_to_stdout_and_succeeds(args: tuple[str, ...]) -> None:
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: imagecache COMMAND")
    for command in (*COMMANDS, "help"):
        assert f"\n  {command} " in done.stdout
    assert "--version" in done.stdout
    assert done.stderr == ""


@pytest.mark.parametrize(
    ("args", "problem"),
    [((), "no command given"), (("no-such-command",), "unknown command 'no-such-command'"),
     (("help", "nope"), "help nope: no such command"), (("--verbose",), "unknown command")],
)  # fmt: skip
def test_usage_errors_name_themselves_on_stderr(args: tuple[str, ...], problem: str) -> None:
    done = run_cli(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    first, *rest = done.stderr.splitlines()
    assert first.startswith(f"imagecache: {problem}"), done.stderr
    assert any(line.startswith("usage: imagecache COMMAND") for line in rest)


def test_version_is_the_distributions() -> None:
    done = run_cli("--version")
    assert done.returncode == 0 and done.stderr == ""
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert done.stdout == f"imagecache {pyproject['project']['version']}\n"
    assert metadata.version("imagecache") == pyproject["project"]["version"]
    assert "0.1.0" not in Path(cli.__file__).read_text()  # no second copy of it


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("how", ["flag", "help"])
def test_every_commands_help_is_on_stdout(command: str, how: str) -> None:
    done = run_cli(command, "--help") if how == "flag" else run_cli("help", command)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: imagecache {command}"), done.stdout[:200]
    assert done.stderr == ""
