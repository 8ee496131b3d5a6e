"""The packaging around the chart: Dockerfile and .dockerignore, Makefile, hack/kind-e2e.sh.
Docker and kind cannot run here; what can be checked without them is."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helm_chart import HELM_MISSING, REPO_ROOT, helm_binary

DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()
KIND_E2E = REPO_ROOT / "hack" / "kind-e2e.sh"


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_multi_stage_non_root_with_the_console_script() -> None:
    steps = _instructions(DOCKERFILE)
    froms = [rest for word, rest in steps if word == "FROM"]
    # Debian's python3, as hack/image.sh builds it without Docker (debootstrap bookworm)
    assert froms == ["${DEBIAN_IMAGE} AS base", "base AS build", "base"]
    assert ("ARG", "DEBIAN_IMAGE=debian:bookworm-slim") in steps
    runtime = steps[[i for i, (w, _) in enumerate(steps) if w == "FROM"][2] :]
    assert ("COPY", "--from=build /opt/venv /opt/venv") in runtime
    assert not [rest for word, rest in runtime if word == "RUN"], "the runtime stage runs nothing"
    users = [rest for word, rest in steps if word == "USER"]
    assert users == ["65532:65532"]  # numeric: runAsNonRoot can check it
    assert ("ENTRYPOINT", '["imagecache"]') in steps
    env = " ".join(rest for word, rest in runtime if word == "ENV")
    assert "PATH=/opt/venv/bin:$PATH" in env  # `python` of the helm test pod is the venv's
    # hack/image.sh makes the same image: user, entrypoint, workdir, venv on PATH
    script = (REPO_ROOT / "hack" / "image.sh").read_text()
    for same in ('"User": "65532:65532"', '"Entrypoint": ["imagecache"]', '"WorkingDir": "/tmp"',
                 "PATH=/opt/venv/bin:", "debootstrap --variant=minbase"):
        assert same in script, same


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies() -> None:
    ignore = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore
    copied = set()
    for word, rest in _instructions(DOCKERFILE):
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _dest = rest.split()
            copied |= set(sources)
    assert copied == allowed == {"pyproject.toml", "README.md", "webhook", "certs"}
    for source in copied:
        assert (REPO_ROOT / source).exists(), source


def test_makefile_has_the_usual_targets() -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    expected = {
        "test": "bash hack/test.sh",
        "lint": "lint-imports",
        "image": "docker build -t imagecache:dev .",
        "serve-local": "bash hack/serve-local.sh",
        "bench": "bench/admission_bench.py",
    }
    for target, command in expected.items():
        out = subprocess.run([make, "-n", target], cwd=REPO_ROOT, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert command in out.stdout, (target, out.stdout)


@pytest.mark.skipif(helm_binary() is None, reason=HELM_MISSING)
def test_make_chart_lint_passes() -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    out = subprocess.run(
        [make, "chart-lint", f"HELM={helm_binary()}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("== helm template") == 4
    assert "ERROR" not in out.stdout


def test_the_scripts_are_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:  # hack/test.sh installs it; by hand: apt-get install shellcheck
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    scripts = [*sorted(KIND_E2E.parent.glob("*.sh")), KIND_E2E.parent.parent / ".ci" / "run"]
    assert KIND_E2E in scripts
    out = subprocess.run([shellcheck, *map(str, scripts)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_kind_e2e_stops_early_naming_the_missing_tool(tmp_path: Path) -> None:
    # Only bash and dirname on PATH: the script must refuse before touching anything.
    for tool in ("bash", "dirname"):
        found = shutil.which(tool)
        assert found is not None
        (tmp_path / tool).symlink_to(found)
    out = subprocess.run(
        [str(KIND_E2E)], capture_output=True, text=True, timeout=30,
        env={"PATH": str(tmp_path), "HOME": str(tmp_path)},
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "kind-e2e: docker is not installed: https://docs.docker.com/engine/install/"
    )
    assert os.access(KIND_E2E, os.X_OK)


def test_kind_e2e_pins_its_upstream_versions() -> None:
    text = KIND_E2E.read_text()
    assert re.search(r"^SNAPSHOTTER_VERSION=v\d+\.\d+\.\d+ ", text, re.M)
    assert re.search(r"^HOSTPATH_VERSION=v\d+\.\d+\.\d+ ", text, re.M)
    assert "set -euo pipefail" in text and "trap cleanup EXIT" in text
