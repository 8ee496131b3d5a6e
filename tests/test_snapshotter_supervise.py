"""`imagecache snapshotter serve --supervise` (the chart's DaemonSet): the serving process,
killed, is started again in the same container, and SIGTERM still stops everything. Real
processes; a gRPC call shows the new one serves."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
from snapshotter_testkit import SERVING, SnapshotterProcess

from webhook.snapshotter.api import snapshots_pb2 as pb
from webhook.snapshotter.api import snapshots_pb2_grpc as pb_grpc
from webhook.snapshotter.supervise import FIRST_DELAY, MAX_DELAY, STEADY, next_delay


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _until(what: str, probe: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not probe():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_killed_snapshotter_is_started_again_in_place(tmp_path: Path) -> None:
    socket = tmp_path / "run" / "snapshotter.sock"
    (tmp_path / "disks").mkdir()
    snap = SnapshotterProcess(tmp_path / "root", tmp_path / "disks", socket,
                              tmp_path / "log", "--containerd-socket", "", "--supervise")
    assert snap.proc is not None
    try:
        _until("the serving child", lambda: _children(snap.proc.pid))  # type: ignore[union-attr]
        [first] = _children(snap.proc.pid)
        os.kill(first, signal.SIGKILL)
        _until("a second 'serving' line", lambda: snap.text().count(SERVING) >= 2)
        [second] = _children(snap.proc.pid)
        assert second != first and snap.proc.poll() is None
        assert f'"msg":"the snapshotter (pid {first}) exited with -9' in snap.text()
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            stub = pb_grpc.SnapshotsStub(channel)  # type: ignore[no-untyped-call]
            infos = list(stub.List(pb.ListSnapshotsRequest(snapshotter="imagecache"),
                                   timeout=30))
            assert infos == []
    finally:
        code = snap.stop()  # SIGTERM, forwarded to the child
    assert code == 0, snap.text()[-2000:]
    assert not _children(snap.proc.pid)


def test_restarts_back_off_while_it_keeps_dying() -> None:
    assert next_delay(0.0, 0.1) == FIRST_DELAY
    assert next_delay(FIRST_DELAY, 0.1) == 2 * FIRST_DELAY
    assert next_delay(MAX_DELAY, 0.1) == MAX_DELAY
    assert next_delay(MAX_DELAY, STEADY) == FIRST_DELAY
