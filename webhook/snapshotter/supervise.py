"""`imagecache snapshotter serve --supervise`: serve in a child process, started again when it
dies, so that the snapshotter's container never exits.

Why: while containerd's CRI uses the snapshotter (containerd 1.6 has one CRI snapshotter), a
new container on the node, the snapshotter's own included, needs the snapshotter to prepare
its root filesystem. A snapshotter container that exited could never be created again; the
node would start no container until containerd is rolled back. The supervisor stays small
(the child holds the gRPC server, the database and the copies), so it is not what the
container's OOM killer picks.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from types import FrameType

log = logging.getLogger("imagecache.snapshotter")

FIRST_DELAY, MAX_DELAY, STEADY = 0.5, 10.0, 60.0  # seconds


def next_delay(delay: float, ran: float) -> float:
    """Back off while the child keeps dying at once; start over after a steady run."""
    return FIRST_DELAY if ran >= STEADY else min(max(delay * 2, FIRST_DELAY), MAX_DELAY)


def supervise(serve_args: list[str]) -> int:
    argv = [sys.executable, "-m", "webhook.snapshotter.command", "serve", *serve_args]
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    delay = 0.0
    while True:
        started = time.monotonic()
        child = subprocess.Popen(argv)
        code = child.wait()
        if stopping:
            return code
        delay = next_delay(delay, time.monotonic() - started)
        log.error("the snapshotter (pid %d) exited with %d; starting it again in %.1f s",
                  child.pid, code, delay, extra={"fields": {"exitCode": code}})
        deadline = time.monotonic() + delay
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)
        if stopping:
            return code
