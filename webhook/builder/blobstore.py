"""The cache disk as the builder writes it: blobs streamed to temp files, verified, renamed.

A blob file under `oci/blobs/<alg>/` exists only once its digest and size were checked
(written to a temp name, fsynced, renamed), so a resumed build trusts what it finds there
after a size check. Temp files live in `.imagecache-tmp/` beside `oci/` (same filesystem,
so the rename is atomic) and are removed at start and at the end.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from webhook.core.build_errors import BuildFailure, Reason, format_bytes
from webhook.core.cachedisk import MANIFEST_FILE, OCI_DIR
from webhook.core.ocilayout import (
    BLOBS_DIR,
    INDEX_FILE,
    LAYOUT_FILE,
    blob_relpath,
    layout_file_body,
    split_digest,
)
from webhook.core.registry_manifest import Descriptor

log = logging.getLogger("imagecache.builder")

TMP_DIR = ".imagecache-tmp"
# Filesystem overhead per file when checking free space: a block rounded up, an inode.
PER_FILE_OVERHEAD = 8192
# Start writeback every this many bytes, so the disk works while the network does and the
# final fsync of a multi-GB layer has little left to do.
WRITEBACK_STEP = 32 << 20


def disk_full(path: Path, needed: int | None = None) -> BuildFailure:
    try:
        usage = shutil.disk_usage(path)
        free = f"{format_bytes(usage.free)} free of {format_bytes(usage.total)}"
    except OSError:
        free = "free space unknown"
    need = f"needs {format_bytes(needed)} ({needed} bytes), " if needed is not None else ""
    return BuildFailure(
        Reason.DISK_FULL,
        f"cache disk {path} is full: the build {need}{free}; raise the ImageCache's "
        "imageCacheSize (or leave it 0 to size the disk from the images)",
    )


def _write_failure(path: Path, exc: OSError) -> BuildFailure:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return disk_full(path)
    return BuildFailure(Reason.INTERNAL, f"cannot write {path}: {exc.strerror or exc}")


class BlobSink:
    """One blob being written: hashed and counted on the way, committed by rename.
    Its methods block (file I/O); the caller runs them in a thread."""

    def __init__(self, store: BlobStore, descriptor: Descriptor) -> None:
        self.descriptor = descriptor
        self.algorithm, self.encoded = split_digest(descriptor.digest)
        self.final = store.blob_path(descriptor.digest)
        self.temp = store.tmp / f"{self.encoded}.{os.getpid()}"
        self._store = store
        # Unbuffered: chunks are large already, and nothing is left in a buffer to fail
        # at close time.
        self._file = open(self.temp, "wb", buffering=0)  # noqa: SIM115 - closed by commit/abort
        self._hash = hashlib.new(self.algorithm)
        self.written = 0
        self._writeback_from = 0

    def write(self, pieces: Sequence[bytes]) -> None:
        size = sum(len(p) for p in pieces)
        if self.written + size > self.descriptor.size:
            raise BuildFailure(
                Reason.DIGEST_MISMATCH,
                f"blob {self.descriptor.digest}: the registry sent more than the "
                f"{self.descriptor.size} bytes the manifest declares",
            )
        try:
            done = os.writev(self._file.fileno(), pieces)
            if done < size:  # a short write: finish piece by piece
                rest = memoryview(b"".join(pieces))[done:]
                while rest:
                    rest = rest[os.write(self._file.fileno(), rest) :]
        except OSError as exc:
            raise _write_failure(self._store.output, exc) from None
        for piece in pieces:
            self._hash.update(piece)
        self.written += size
        if self.written - self._writeback_from >= WRITEBACK_STEP:
            self._start_writeback()

    def _start_writeback(self) -> None:
        # Linux: DONTNEED on dirty pages starts their writeback without waiting for it, and
        # drops pages written earlier; the node's page cache is not filled with the layer.
        if hasattr(os, "posix_fadvise"):
            with contextlib.suppress(OSError):
                os.posix_fadvise(self._file.fileno(), self._writeback_from,
                                 self.written - self._writeback_from, os.POSIX_FADV_DONTNEED)
        self._writeback_from = self.written

    def reset(self) -> None:
        """Start over (the server ignored a Range request, or the content was wrong)."""
        self._file.seek(0)
        self._file.truncate()
        self._hash = hashlib.new(self.algorithm)
        self.written = 0
        self._writeback_from = 0

    def verified(self) -> bool:
        return self.written == self.descriptor.size and self._hash.hexdigest() == self.encoded

    def actual_digest(self) -> str:
        return f"{self.algorithm}:{self._hash.hexdigest()}"

    def commit(self) -> None:
        if not self.verified():
            raise AssertionError("commit of an unverified blob")
        try:
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.temp, self.final)
        except OSError as exc:
            self.abort()
            raise _write_failure(self._store.output, exc) from None

    def abort(self) -> None:
        try:
            self._file.close()
        finally:
            self.temp.unlink(missing_ok=True)


class BlobStore:
    def __init__(self, output: Path) -> None:
        self.output = output
        self.oci = output / OCI_DIR
        self.tmp = output / TMP_DIR

    def blob_path(self, digest: str) -> Path:
        return self.oci / blob_relpath(digest)

    def prepare(self) -> int:
        """Make the directories, withdraw a previous build's completeness marker, and drop
        leftover temp files of a killed build. Returns how many were dropped."""
        try:
            if not self.output.is_dir():
                raise BuildFailure(
                    Reason.INVALID_ARGUMENT,
                    f"--output {self.output} is not a directory; mount the cache disk there",
                )
            # Whatever happens next, no reader may take this disk as complete until the end.
            (self.output / MANIFEST_FILE).unlink(missing_ok=True)
            for algorithm in ("sha256", "sha512"):
                (self.oci / BLOBS_DIR / algorithm).mkdir(parents=True, exist_ok=True)
            self.tmp.mkdir(exist_ok=True)
            dropped = 0
            for leftover in self.tmp.iterdir():
                leftover.unlink(missing_ok=True)
                dropped += 1
            return dropped
        except OSError as exc:
            raise _write_failure(self.output, exc) from None

    def present(self, descriptors: list[Descriptor]) -> set[str]:
        """Digests already stored with the right size (a resumed build skips them)."""
        found = set()
        for d in descriptors:
            try:
                if self.blob_path(d.digest).stat().st_size == d.size:
                    found.add(d.digest)
            except FileNotFoundError:
                continue
        return found

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.output).free

    def check_space(self, bytes_to_write: int, files: int) -> None:
        needed = bytes_to_write + files * PER_FILE_OVERHEAD + 64 * 1024
        if needed > self.free_bytes():
            raise disk_full(self.output, needed)

    def open_sink(self, descriptor: Descriptor) -> BlobSink:
        try:
            return BlobSink(self, descriptor)
        except OSError as exc:
            raise _write_failure(self.output, exc) from None

    def write_file(self, path: Path, body: bytes) -> None:
        """Write a small file whole or not at all (temp, fsync, rename)."""
        temp = self.tmp / f"{path.name}.{os.getpid()}.tmp"
        try:
            with open(temp, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise _write_failure(self.output, exc) from None

    def write_blob(self, digest: str, body: bytes) -> None:
        """Store a small blob held in memory (a manifest) after checking its digest."""
        algorithm, encoded = split_digest(digest)
        if hashlib.new(algorithm, body).hexdigest() != encoded:
            raise AssertionError(f"write_blob: body does not match {digest}")
        self.write_file(self.blob_path(digest), body)

    def write_layout(self, index_body: bytes) -> None:
        self.write_file(self.oci / LAYOUT_FILE, layout_file_body())
        self.write_file(self.oci / INDEX_FILE, index_body)

    def write_cache_manifest(self, text: str) -> None:
        """imagecache.json: last, atomically, and synced with its directory."""
        self.write_file(self.output / MANIFEST_FILE, text.encode())
        fd = os.open(self.output, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def prune(self, keep: set[str]) -> int:
        """Remove blobs no image of this build references (left from an earlier build)."""
        removed = 0
        for algorithm_dir in (self.oci / BLOBS_DIR).iterdir():
            if not algorithm_dir.is_dir():
                continue
            for blob in algorithm_dir.iterdir():
                if f"{algorithm_dir.name}:{blob.name}" not in keep:
                    blob.unlink(missing_ok=True)
                    removed += 1
        return removed

    def finish(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
