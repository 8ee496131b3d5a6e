"""Stream one blob from a registry to the blob store: verified while written, resumed
with a Range request after a dropped connection, retried with backoff."""

from __future__ import annotations

import asyncio
import logging
import time

from webhook.builder.blobstore import BlobSink, BlobStore
from webhook.builder.core.registry_endpoint import blob_path, registry_error_summary
from webhook.builder.registry_client import NETWORK_ERRORS, RegistryClient
from webhook.core.build_errors import BuildFailure, Reason, format_bytes
from webhook.core.registry_manifest import Descriptor

log = logging.getLogger("imagecache.builder")

CHUNK = 2 << 20  # bytes handed to the writer thread at a time
PROGRESS_SECONDS = 10.0


def _short(digest: str) -> str:
    return digest.split(":", 1)[1][:12]


def _range_start(content_range: str | None) -> int | None:
    # "bytes 100-199/200" -> 100
    if not content_range or not content_range.startswith("bytes "):
        return None
    start = content_range[6:].split("-", 1)[0]
    return int(start) if start.isdigit() else None


async def _stream_into(
    client: RegistryClient, registry: str, repository: str, sink: BlobSink, what: str
) -> None:
    """One GET, appended to what the sink holds (Range) or restarting it."""
    loop = asyncio.get_running_loop()
    headers = {"Range": f"bytes={sink.written}-"} if sink.written else {}
    resp = await client.request("GET", registry, repository,
                                blob_path(repository, sink.descriptor.digest), headers, what)
    async with resp:
        if resp.status == 404:
            raise BuildFailure(
                Reason.IMAGE_NOT_FOUND,
                f"{what} not found in registry {registry}/{repository}: "
                f"{registry_error_summary(await resp.read())}",
            )
        if resp.status == 206 and _range_start(resp.headers.get("Content-Range")) == sink.written:
            pass  # resumes where we are
        elif resp.status == 200:
            if sink.written:
                await loop.run_in_executor(None, sink.reset)
        else:
            raise BuildFailure(
                Reason.REGISTRY_ERROR,
                f"registry {registry} answered HTTP {resp.status} for {what}: "
                f"{registry_error_summary(await resp.read())}",
            )
        # Disk writes and hashing run in a thread while the next pieces arrive; pieces are
        # handed over as they came off the socket (no copying them together).
        pending: asyncio.Future[None] | None = None
        pieces: list[bytes] = []
        held = 0
        last_log = time.monotonic()
        start_bytes, start_time = sink.written, last_log
        try:
            while data := await resp.content.readany():
                pieces.append(data)
                held += len(data)
                if held < CHUNK:
                    continue
                if pending is not None:
                    await pending
                pending = loop.run_in_executor(None, sink.write, pieces)
                pieces, held = [], 0
                now = time.monotonic()
                if now - last_log >= PROGRESS_SECONDS:
                    last_log = now
                    rate = (sink.written - start_bytes) / max(now - start_time, 1e-6)
                    log.info("%s: %s of %s (%d%%), %.1f MB/s", what,
                             format_bytes(sink.written), format_bytes(sink.descriptor.size),
                             100 * sink.written // max(sink.descriptor.size, 1), rate / 1e6)
        except NETWORK_ERRORS:
            # What arrived before the break is a valid prefix: keep it for the Range resume.
            if pending is not None:
                await pending
                pending = None
            if pieces:
                await loop.run_in_executor(None, sink.write, pieces)
            raise
        else:
            if pending is not None:
                await pending
                pending = None
            if pieces:
                await loop.run_in_executor(None, sink.write, pieces)
        finally:
            if pending is not None:
                # Let the write in flight finish before anyone touches the file again.
                await asyncio.gather(pending, return_exceptions=True)


async def fetch_blob(
    client: RegistryClient,
    store: BlobStore,
    registry: str,
    repository: str,
    descriptor: Descriptor,
    role: str,
) -> float:
    """Download `descriptor` into the store; returns seconds taken."""
    loop = asyncio.get_running_loop()
    what = f"{role} {_short(descriptor.digest)}"
    started = time.monotonic()
    log.info("%s: download %s from %s/%s", what, format_bytes(descriptor.size),
             registry, repository)
    sink = await loop.run_in_executor(None, store.open_sink, descriptor)
    attempt = 0
    try:
        while True:
            try:
                await _stream_into(client, registry, repository, sink, what)
            except NETWORK_ERRORS as exc:
                attempt += 1
                delay = client.policy.next_delay(
                    attempt,
                    f"registry {registry} dropped the download of {what} at "
                    f"{format_bytes(sink.written)} of {format_bytes(descriptor.size)}: "
                    f"{exc or type(exc).__name__}; gave up after {attempt} attempts",
                )
                log.warning("%s: interrupted at %s (%s); resume %d/%d in %.1fs", what,
                            format_bytes(sink.written), exc or type(exc).__name__, attempt,
                            client.policy.retries, delay)
                await asyncio.sleep(delay)
                continue
            if sink.verified():
                break
            # Wrong bytes (or too few): never keep them; the next try starts over.
            attempt += 1
            got = (f"{sink.written} bytes" if sink.written != descriptor.size
                   else f"digest {sink.actual_digest()}")
            delay = client.policy.next_delay(
                attempt,
                f"{what} from registry {registry}/{repository}: got {got}, expected "
                f"{descriptor.digest} ({descriptor.size} bytes); gave up after "
                f"{attempt} attempts",
                Reason.DIGEST_MISMATCH,
            )
            log.warning("%s: got %s, expected %s; retry %d/%d", what, got, descriptor.digest,
                        attempt, client.policy.retries)
            await loop.run_in_executor(None, sink.reset)
            await asyncio.sleep(delay)
        await loop.run_in_executor(None, sink.commit)
    except BaseException:
        await loop.run_in_executor(None, sink.abort)
        raise
    seconds = time.monotonic() - started
    log.info("%s: done, %s in %.2fs (%.1f MB/s)", what, format_bytes(descriptor.size), seconds,
             descriptor.size / max(seconds, 1e-6) / 1e6)
    return seconds
