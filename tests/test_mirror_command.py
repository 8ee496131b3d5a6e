"""`imagecache mirror serve` as a process: start, serve, metrics listener, stop; flag errors."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest
from mirror_testkit import MirrorProcess, kubelet_mount, make_disk
from registry_fixture import fetch, wait_for_line

from webhook.mirror.command import main


def test_serve_runs_until_sigterm_with_a_metrics_listener(tmp_path: Path) -> None:
    root = tmp_path / "pods"
    digest = make_disk(kubelet_mount(root, "uid", "pvc"), "a", "docker.io/library/a:1")
    mirror = MirrorProcess(root, tmp_path / "mirror.log", "--metrics-listen", "127.0.0.1:0",
                           "--poll-interval", "0.5")
    try:
        metrics_host = wait_for_line(mirror.log, r"metrics on http://(127\.0\.0\.1:\d+)/metrics",
                                     mirror.proc, 10)
        status, headers, _ = fetch(f"{mirror.url}/v2/")
        assert (status, headers["Docker-Distribution-API-Version"]) == (200, "registry/2.0")
        # No ns: docker.io. By digest only (no --serve-tags): the tag is the registry's.
        status, headers, _ = fetch(f"{mirror.url}/v2/library/a/manifests/{digest}")
        assert (status, headers["Docker-Content-Digest"]) == (200, digest)
        status, _, body = fetch(f"{mirror.url}/v2/library/a/manifests/1")
        assert status == 404 and b"serves manifests by digest only" in body
        status, _, body = fetch(f"http://{metrics_host}/metrics")
        assert status == 200
        assert 'imagecache_mirror_disks{state="served"} 1.0' in body.decode()
        text = body.decode()
        assert 'imagecache_mirror_hits_total{kind="manifest",registry="docker.io"} 1.0' in text
        assert 'imagecache_mirror_misses_total{kind="manifest",registry="docker.io"} 1.0' in text
        assert fetch(f"http://{metrics_host}/v2/")[0] == 404  # only /metrics there
    finally:
        mirror.proc.send_signal(signal.SIGTERM)
        assert mirror.stop() == 0
    log = "\n".join(mirror.lines())
    assert "cache disk" in log and "serving 1 repositories" in log
    assert "manifests by digest only" in log
    assert "node mirror stopped" in log
    assert "Traceback" not in log


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen", "nope"], "--listen 'nope' must be HOST:PORT"),
        (["--metrics-listen", "1.2.3.4"], "--metrics-listen '1.2.3.4' must be HOST:PORT"),
        (["--default-registry", "library"], "--default-registry 'library' is not a registry"),
        (["--depth", "-1"], "--depth must be 0 or more"),
        (["--poll-interval", "0"], "--poll-interval more than 0"),
    ],
)
def test_serve_refuses_bad_flags_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("imagecache mirror: ") and message in err
    assert "Traceback" not in err


def test_serve_says_when_the_port_is_taken(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--listen", f"127.0.0.1:{port}", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--listen 127.0.0.1:{port}: cannot listen" in err
    assert "Traceback" not in err


def test_help_lists_both_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "serve" in out and "configure" in out
