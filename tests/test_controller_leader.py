"""Leader election against real apiservers (issue 10 point 6, issue 12 "already seen").

Two kube-apiservers on one etcd, as in an HA control plane: controller `a` talks to the
second one, which the test pauses (SIGSTOP, by the PID it started) in the middle of `a`'s
renewals, while controller `b` talks to the first one and takes the lease over. From the
controllers' own logs (wall-clock timestamps of "became leader" and "stopped leading", or the
process's exit when there is no such line) the test checks that there is never a moment
where both act.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
from controller_harness import Cluster, ControllerProcess, eventually, unique
from envtest import ControlPlane, second_apiserver

pytestmark = pytest.mark.envtest

LINE_TIME = re.compile(r'^\{"time":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z"')  # JSON lines


def _assets() -> Path:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if not assets:
        pytest.skip("KUBEBUILDER_ASSETS is not set")
    return Path(assets)


def _lines(process: ControllerProcess, needle: str) -> list[tuple[float, str]]:
    """(wall-clock time, line) of the log lines containing `needle`."""
    found = []
    for line in process.log.read_text(errors="replace").splitlines():
        stamp = LINE_TIME.match(line)
        if stamp and needle in line:
            when = datetime.strptime(stamp.group(1) + "+0000",
                                     "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
            found.append((when, line))
    return found


async def _logged(process: ControllerProcess, needle: str, within: float = 60) -> float:
    async def probe() -> float | None:
        lines = _lines(process, needle)
        return lines[0][0] if lines else None

    try:
        return await eventually(probe, f"{needle!r} in {process.log.name}", within)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{process.tail()}") from None


async def _exited(process: ControllerProcess, within: float) -> tuple[int, float]:
    """(exit code, wall-clock time it was seen gone)."""
    assert process.popen is not None
    popen = process.popen

    async def probe() -> tuple[int, float] | None:
        code = popen.poll()
        return None if code is None else (code, time.time())

    return await eventually(probe, f"{process.log.name} to exit", within)


async def _in_flight(process: ControllerProcess) -> float:
    """The controller's API requests waiting for an answer (its metrics answer even while
    the apiserver is paused)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{process.port}/metrics") as response,
    ):
        text = await response.text()
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("imagecache_api_requests_in_flight ")
    )


def _controller(
    plane: ControlPlane, namespace: str, identity: str, *lease: str
) -> ControllerProcess:
    # The cache selector matches nothing: only the election is exercised.
    return ControllerProcess(
        plane, namespace, f"test={unique('none')}", "--identity", identity, *lease
    ).start()


async def test_never_two_leaders_when_the_leaders_apiserver_pauses(
    apiserver: ControlPlane, cluster: Cluster
) -> None:
    namespace = await cluster.namespace(unique("imc-lease"))
    lease = ("--lease-duration", "6", "--renew-deadline", "3", "--retry-period", "0.5")
    with second_apiserver(apiserver, _assets()) as (paused_plane, pid):
        a = _controller(paused_plane, namespace, "a", *lease)
        b: ControllerProcess | None = None
        try:
            a_start = await _logged(a, "became leader")
            b = _controller(apiserver, namespace, "b", *lease)
            await _logged(b, "waiting to become leader")
            os.kill(pid, signal.SIGSTOP)  # a's renewals now get no answer
            try:
                b_start = await _logged(b, "became leader", within=90)
            finally:
                os.kill(pid, signal.SIGCONT)
            a_code, a_gone = await _exited(a, within=90)
            stopped = _lines(a, "stopped leading")
            a_end = stopped[0][0] if stopped else a_gone
            assert a_start < a_end <= b_start, (
                f"a led from {a_start:.3f} to {a_end:.3f}, b from {b_start:.3f}: "
                f"{a_end - b_start:.3f}s with two leaders\n--- a ---\n{a.tail()}"
            )
            assert a_code == 1  # a leader that lost its lease exits and restarts clean
            # What a logged while its apiserver did not answer names the request and the error.
            failures = _lines(a, "leader election:")
            assert failures, a.tail()
            assert all(
                re.search(r"(reading|renewing) Lease \S+ failed: \w+", f) for _, f in failures
            )
            assert any("TimeoutError" in f for _, f in failures), a.tail()
        finally:
            a.kill()
            if b is not None:
                b.kill()


async def test_sigterm_stops_leader_and_candidate_while_the_apiserver_is_paused(
    apiserver: ControlPlane, cluster: Cluster
) -> None:
    namespace = await cluster.namespace(unique("imc-lease"))
    # Long deadlines: they must not be what ends the processes.
    lease = ("--lease-duration", "90", "--renew-deadline", "60", "--retry-period", "1")
    with second_apiserver(apiserver, _assets()) as (paused_plane, pid):
        a = _controller(paused_plane, namespace, "a", *lease)
        b: ControllerProcess | None = None
        try:
            await _logged(a, "became leader")  # before b starts: b is the candidate
            b = _controller(paused_plane, namespace, "b", *lease)
            await _logged(b, "waiting to become leader")
            os.kill(pid, signal.SIGSTOP)
            try:
                for process in (a, b):  # each waits for an answer from the paused apiserver

                    async def started(p: ControllerProcess = process) -> bool:
                        return await _in_flight(p) >= 1

                    await eventually(started, f"{process.log.name}: a request in flight", 30)
                sent = time.time()
                for process in (a, b):
                    assert process.popen is not None
                    process.popen.send_signal(signal.SIGTERM)
                results = await asyncio.gather(_exited(a, 30), _exited(b, 30))
            finally:
                os.kill(pid, signal.SIGCONT)
            for process, (code, gone) in zip((a, b), results, strict=True):
                assert code == 0, process.tail()
                assert gone - sent < 8, f"took {gone - sent:.1f}s to stop\n{process.tail()}"
        finally:
            a.kill()
            if b is not None:
                b.kill()
