"""Run the installed `imagecache` console script, and walk the command line's parsers."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path


def cli_command() -> list[str]:
    """The console script the project installs (beside this Python, or on PATH)."""
    beside = Path(sys.executable).parent / "imagecache"
    script = str(beside) if beside.exists() else shutil.which("imagecache")
    if script is None:
        raise RuntimeError("no `imagecache` console script: pip install -e . first")
    return [script]


def run_cli(*args: str, stdin: str | None = None, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cli_command(), *args], capture_output=True, text=True, input=stdin,
                          env=env, cwd=cwd, timeout=120, check=False)  # fmt: skip


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands of `parser` (`mirror serve`, `certs generate`, ...), by name."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found
