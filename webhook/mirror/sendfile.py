"""Sending a byte range of a file to a client socket with sendfile(2), off the event loop.

asyncio's loop.sendfile wakes the loop for every socket buffer's worth; on a 2-core node
those epoll round trips halve the throughput. Here a worker thread loops on os.sendfile and
poll(2): the kernel copies page cache to socket and the loop stays free for other requests.

The thread works on duplicates of the two descriptors and closes them itself, so a
connection or file closed meanwhile (client gone, server shutting down) can never hand a
descriptor number that the thread still uses to something else.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# A client that takes no byte for this long is dropped: its thread is wanted elsewhere.
STALL_SECONDS = 60.0
# Concurrent downloads (containerd fetches 3 layers at a time per image, kubelet may pull
# several images); a waiting sender sits in poll(2) and costs no CPU.
MAX_SENDERS = 64

_pool: ThreadPoolExecutor | None = None


def _senders() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(MAX_SENDERS, thread_name_prefix="mirror-sendfile")
    return _pool


def send_range(sock_fd: int, file_fd: int, offset: int, count: int) -> int:
    """Blocking: send `count` bytes of `file_fd` from `offset` to a non-blocking socket."""
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    sent = 0
    while sent < count:
        try:
            n = os.sendfile(sock_fd, file_fd, offset + sent, count - sent)
        except BlockingIOError:
            if not poller.poll(int(STALL_SECONDS * 1000)):
                raise TimeoutError(f"the client took no data for {STALL_SECONDS:.0f}s") from None
            continue
        if n == 0:
            raise ConnectionResetError(f"the file ended after {sent} of {count} bytes")
        sent += n
    return sent


def _send_owned(sock_fd: int, file_fd: int, offset: int, count: int) -> int:
    try:
        return send_range(sock_fd, file_fd, offset, count)
    finally:
        os.close(sock_fd)
        os.close(file_fd)


async def send_file(transport: asyncio.Transport, file: Any, offset: int, count: int) -> None:
    """Send the range after what the transport has written so far (the headers).

    Raises ConnectionError or TimeoutError when the client goes away or stalls."""
    loop = asyncio.get_running_loop()
    sock = transport.get_extra_info("socket")
    if sock is None or transport.get_extra_info("sslcontext") is not None:
        await loop.sendfile(transport, file, offset, count)  # TLS or odd transport: portable
        return
    # The headers may still sit in the transport's buffer: they go first.
    while transport.get_write_buffer_size():
        if transport.is_closing():
            raise ConnectionResetError("the client went away")
        await asyncio.sleep(0.001)
    reading = transport.is_reading()
    transport.pause_reading()
    try:
        file_fd = os.dup(file.fileno())
        try:
            sock_fd = os.dup(sock.fileno())
        except OSError:
            os.close(file_fd)
            raise
        future = loop.run_in_executor(_senders(), _send_owned, sock_fd, file_fd, offset, count)
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            # Shutting down: end the thread's send now rather than at its stall timeout.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            raise
    finally:
        if reading and not transport.is_closing():
            transport.resume_reading()
