"""Failure paths against a real registry behind a fault-injecting proxy: corrupted blobs,
a registry that goes away mid-download (and one that comes back: Range resume), 503s,
a full disk (checked up front, and ENOSPC while writing), and resume after SIGKILL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from builder_proxy import RegistryProxy
from registry_fixture import (
    Image,
    Registry,
    builder_args,
    image,
    layer,
    main_command,
    needs,
    repo_env,
    sha256,
)

from webhook.builder.command import main
from webhook.core.build_result import BuildError, BuildResult, decode_build_result
from webhook.core.cachedisk import MANIFEST_FILE

pytestmark = [pytest.mark.registry, needs("docker-registry")]


@dataclass
class Upstream:
    registry: Registry
    small: Image  # three small layers
    big: Image  # one 3 MB layer and two small ones


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    with Registry(tmp_path_factory.mktemp("registry")) as registry:
        small = image([layer(41, 100_000), layer(42, 120_000), layer(43, 90_000)])
        big = image([layer(44, 3_000_000), layer(45, 50_000), layer(46, 60_000)])
        pusher = registry.client()
        pusher.push_image("fail/small", "1", small)
        pusher.push_image("fail/big", "1", big)
        yield Upstream(registry, small, big)


@pytest.fixture
def proxy(upstream: Upstream) -> Iterator[RegistryProxy]:
    with RegistryProxy(upstream.registry.url) as p:
        yield p


def args_for(proxy_host: str, out: Path, term: Path, *images: str, retries: int = 1,
             delay: float = 0.05) -> list[str]:
    return builder_args(out, term, [f"{proxy_host}/{ref}" for ref in images],
                        "--insecure-registry", proxy_host, retries=retries, delay=delay)


def run(proxy: RegistryProxy, tmp_path: Path, *images: str, out: Path | None = None,
        retries: int = 1) -> tuple[int, BuildResult | BuildError, Path]:
    out = out or tmp_path / "disk"
    out.mkdir(exist_ok=True)
    term = tmp_path / "termination"
    code = main(args_for(proxy.host, out, term, *images, retries=retries))
    return code, decode_build_result(term.read_text()), out


def blob_file(out: Path, digest: str) -> Path:
    return out / "oci/blobs/sha256" / digest.split(":")[1]


def partials(out: Path) -> list[Path]:
    tmp = out / ".imagecache-tmp"
    return list(tmp.iterdir()) if tmp.exists() else []


def in_thread(target: object, *args: object) -> tuple[threading.Thread, list[int]]:
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(target(*args)),  # type: ignore[operator]
                              daemon=True)
    thread.start()
    return thread, result


def test_corrupted_blob_is_never_kept(upstream: Upstream, proxy: RegistryProxy,
                                      tmp_path: Path) -> None:
    bad = upstream.small.layers[1].digest
    proxy.corrupt.add(bad)
    code, result, out = run(proxy, tmp_path, "fail/small:1", retries=2)
    assert code == 13
    assert isinstance(result, BuildError) and result.reason == "DigestMismatch"
    assert f"expected {bad}" in result.message and "gave up after 3 attempts" in result.message
    assert proxy.counts[bad] == 3
    assert not blob_file(out, bad).exists()
    assert not (out / MANIFEST_FILE).exists() and not partials(out)


def test_retries_503_then_succeeds(upstream: Upstream, proxy: RegistryProxy,
                                   tmp_path: Path) -> None:
    flaky = upstream.small.layers[0].digest
    proxy.fail_status[flaky] = [503, 429]
    code, result, out = run(proxy, tmp_path, "fail/small:1", retries=3)
    assert code == 0, result
    assert proxy.counts[flaky] == 3
    data = blob_file(out, flaky).read_bytes()
    assert sha256(data) == flaky


def stop_mid_download(proxy: RegistryProxy, tmp_path: Path, big: str, retries: int,
                      delay: float) -> tuple[threading.Thread, list[int], Path, Path]:
    """Start a build of fail/big:1 in a thread, slowed to 3 s for `big`; stop the proxy (the
    registry goes away) with that download half done. (thread, [exit code], out, term)"""
    proxy.rate[big] = 1_000_000  # 3 s for the layer
    started = proxy.watch(big)
    out = tmp_path / "disk"
    out.mkdir()
    term = tmp_path / "termination"
    thread, code = in_thread(main, args_for(proxy.host, out, term, "fail/big:1",
                                            retries=retries, delay=delay))
    assert started.wait(20)
    time.sleep(0.5)
    proxy.stop()
    return thread, code, out, term


def test_registry_gone_mid_download(upstream: Upstream, proxy: RegistryProxy,
                                    tmp_path: Path) -> None:
    big = upstream.big.layers[0].digest
    thread, code, out, term = stop_mid_download(proxy, tmp_path, big, retries=2, delay=0.1)
    thread.join(60)
    result = decode_build_result(term.read_text())
    assert code == [14], result
    assert isinstance(result, BuildError) and result.reason == "RegistryUnreachable"
    assert "gave up after" in result.message and proxy.host in result.message
    assert not blob_file(out, big).exists() and not (out / MANIFEST_FILE).exists()
    assert not partials(out)


def test_registry_back_mid_download_resumes_with_range(upstream: Upstream,
                                                       proxy: RegistryProxy,
                                                       tmp_path: Path) -> None:
    big = upstream.big.layers[0].digest
    thread, code, out, term = stop_mid_download(proxy, tmp_path, big, retries=6, delay=0.3)
    with RegistryProxy(upstream.registry.url, port=proxy.port) as second:
        thread.join(60)
        assert code == [0], term.read_text()
        ranges = [r for d, r in second.ranges if d == big]
        assert ranges and int(ranges[0].removeprefix("bytes=").rstrip("-")) > 0, second.ranges
        assert second.completed[big] == 1
    data = blob_file(out, big).read_bytes()
    assert sha256(data) == big


@pytest.fixture
def tmpfs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    size = getattr(request, "param", "2m")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("mount(8) is not installed")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("tmpfs", ["2m"], indirect=True)
def test_disk_full_is_found_before_downloading(upstream: Upstream, proxy: RegistryProxy,
                                               tmp_path: Path, tmpfs: Path) -> None:
    code, result, out = run(proxy, tmp_path, "fail/big:1", out=tmpfs)
    assert code == 12
    assert isinstance(result, BuildError) and result.reason == "DiskFull"
    assert "needs 3." in result.message and "free of 2.0 MiB" in result.message
    assert "imageCacheSize" in result.message
    assert sum(proxy.counts.values()) == 0  # nothing was downloaded
    assert not (out / MANIFEST_FILE).exists()


@pytest.mark.parametrize("tmpfs", ["4m"], indirect=True)
def test_disk_full_while_writing(upstream: Upstream, proxy: RegistryProxy,
                                 tmp_path: Path, tmpfs: Path) -> None:
    """The space check passes; then something else fills the disk before the layer lands."""
    big = upstream.big.layers[0].digest
    hold = proxy.holds[big] = threading.Event()
    started = proxy.watch(big)
    term = tmp_path / "termination"
    thread, code = in_thread(main, args_for(proxy.host, tmpfs, term, "fail/big:1"))
    assert started.wait(20)
    filler = tmpfs / "filler"
    with open(filler, "wb", buffering=0) as f, pytest.raises(OSError, match="No space"):
        while True:
            f.write(b"\0" * 65536)
    hold.set()
    thread.join(60)
    result = decode_build_result(term.read_text())
    assert code == [12], result
    assert isinstance(result, BuildError) and result.reason == "DiskFull"
    assert f"cache disk {tmpfs} is full" in result.message
    assert not blob_file(tmpfs, big).exists() and not (tmpfs / MANIFEST_FILE).exists()
    assert not partials(tmpfs)


def test_resume_after_sigkill(upstream: Upstream, proxy: RegistryProxy, tmp_path: Path) -> None:
    """Kill the builder mid-download; a rerun keeps what was verified and fetches the rest."""
    big, *small = (b.digest for b in upstream.big.layers)
    proxy.rate[big] = 1_000_000
    out = tmp_path / "disk"
    out.mkdir()
    term = tmp_path / "termination"
    child = subprocess.Popen(main_command("webhook.builder.command",
                                          args_for(proxy.host, out, term, "fail/big:1")),
                             env=repo_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = all(blob_file(out, d).exists() for d in small)
            partial = [p for p in partials(out) if p.stat().st_size > 0]
            if done and partial:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the builder did not get to the middle of the big layer")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stderr is not None:
            child.stderr.close()
    assert not (out / MANIFEST_FILE).exists()  # a killed build is never complete
    assert partials(out) and not blob_file(out, big).exists()
    assert proxy.counts[big] == 1 and all(proxy.counts[d] == 1 for d in small)

    proxy.rate.clear()
    code, result, _ = run(proxy, tmp_path, "fail/big:1", out=out)
    assert code == 0, result
    assert all(proxy.counts[d] == 1 for d in small)  # verified blobs are not fetched again
    assert proxy.counts[big] == 2
    assert not partials(out) and (out / MANIFEST_FILE).exists()
    assert sha256(blob_file(out, big).read_bytes()) == big
