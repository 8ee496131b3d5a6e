"""`imagecache --help` is an answer, not an error: stdout and exit 0 (issue 12); a wrong or
missing command is a usage error: stderr and exit 2. Run as the installed console script."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    script = shutil.which("imagecache") or ""
    command = [script] if script else [sys.executable, "-m", "webhook"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_goes_to_stdout_and_succeeds(flag: str) -> None:
    done = _run(flag)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: imagecache COMMAND")
    for command in ("serve", "controller", "build", "mirror", "certs", "explain"):
        assert f"  {command} " in done.stdout
    assert done.stderr == ""


@pytest.mark.parametrize("args", [(), ("no-such-command",)])
def test_usage_errors_go_to_stderr(args: tuple[str, ...]) -> None:
    done = _run(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("usage: imagecache COMMAND")
